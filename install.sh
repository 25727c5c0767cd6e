#!/usr/bin/env bash
# MUSE install: run inside the Python environment you want MUSE in (a venv is best).
#   bash install.sh            # engine, Studio, editor, test tools, bundled models
# torch is pinned (an unpinned torch pulls several GB); MUSE and its `studio` extra (sam2)
# are built without build isolation so sam2 uses this torch instead of downloading a second one
# (that is why setuptools and wheel are installed first).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "setuptools>=68" wheel
SAM2_BUILD_CUDA=0 "$PY" -m pip install -q --no-build-isolation -e ".[dev,studio]"
# The bundled person/pose/face models come from the mediapipe 0.10.14 wheel (Apache-2.0),
# converted to torch and ONNX into ~/.cache/muse; offline machines: muse models import --from WHEEL.
"$PY" -m muse.cli models import || echo "install.sh: bundled models not imported now (offline?); they import on first use or with: muse models import --from WHEEL" >&2
echo "install.sh: done. Try: muse run graphs/stream_4k.yaml"
