"""How far each bundled model's folded form (ConvEpilogue: convolution without bias, then one epilogue kernel) is
from the truth, beside the model as written at the same precision.

Truth: the model as written in float64 (cuDNN off). For each model, dtype and convolution engine it prints the
largest output error of the model as written and of the folded model, both relative to the output's scale, and
the ConvEpilogue steps whose own output differs most from their plain steps on the same inputs (a local error far
above the dtype's rounding is a bug; a model-level difference with small local errors is the model amplifying
rounding, which the written model does as much).

    python bench/fold_accuracy.py [--models selfie_segmentation pose_landmark_full] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from muse.models import bundled
from muse.models.conv_engine import conv_flags
from muse.models.tflite.epilogue import step_errors

TRACKED = ["selfie_segmentation", "selfie_segmentation_landscape", "pose_landmark_full", "face_landmark", "iris_landmark"]
ENGINES = ((False, False), (True, True), (True, False))  # (cuDNN, channels_last)
CPU_ENGINES = ((True, False),)


def _pictures() -> list:
    from skimage import data

    import cv2

    pics = [data.astronaut()]
    media = os.environ.get("MUSE_TEST_MEDIA", os.path.expanduser("~/.cache/muse/test-media"))
    for root, _, files in os.walk(media):
        if "messi5.jpg" in files:
            pics.append(cv2.cvtColor(cv2.imread(os.path.join(root, "messi5.jpg")), cv2.COLOR_BGR2RGB))
            break
    return pics


def _errors(got: tuple, truth: tuple) -> list[float]:
    out = []
    for g, t in zip(got, truth):
        scale = max(1.0, float(t.abs().max()))
        out.append(float((g.double() - t).abs().max()) / scale)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=TRACKED)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cpu only checks this script (the folded model runs plain there)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("fold_accuracy: needs CUDA (the epilogue kernel runs only there)", file=sys.stderr)
        return 2
    bundled.import_models(None, os.environ.get(bundled.MODELS_FROM_ENV) or None, onnx=False)
    pics = _pictures()
    rows = []
    for name in args.models:
        x64 = torch.cat([bundled.reference_input(name, p) for p in pics]).to(dev, torch.float64)
        truth_model = bundled.load_model(name, device=dev, dtype=torch.float64, fold=False)
        with torch.no_grad(), conv_flags(False, tf32=False):
            truth_all = truth_model(x64)
        for dtype in ((torch.float32, torch.float16) if dev.type == "cuda" else (torch.float32,)):
            written = bundled.load_model(name, device=dev, dtype=dtype, fold=False)
            folded = bundled.load_model(name, device=dev, dtype=dtype)
            for cudnn, cl in (ENGINES if dev.type == "cuda" else CPU_ENGINES):
                fmt = torch.channels_last if cl else torch.contiguous_format
                written.to(memory_format=fmt)
                folded.to(memory_format=fmt)
                for n in (1, len(pics)):
                    x = x64[:n].to(dtype).contiguous(memory_format=fmt)
                    truth = tuple(t[:n] for t in truth_all)
                    with torch.no_grad(), conv_flags(cudnn, tf32=False):
                        ew = _errors(written(x), truth)
                        ef = _errors(folded(x), truth)
                        local = sorted(step_errors(folded, x), reverse=True)[:3]
                    row = {"model": name, "dtype": str(dtype).split(".")[-1], "cudnn": cudnn, "channels_last": cl,
                           "batch": n, "written": ew, "folded": ef, "worst_local": local}
                    rows.append(row)
                    print(f"{name:32s} {row['dtype']:8s} cudnn={int(cudnn)} cl={int(cl)} n={n} "
                          f"written={['%.2e' % e for e in ew]} folded={['%.2e' % e for e in ef]} "
                          f"local={[('%.1e' % e, s) for e, s in local[:2]]}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
