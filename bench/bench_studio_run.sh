#!/usr/bin/env bash
# `muse studio run` end to end on a camera-less demo profile, with the default
# budget of the machine it runs on (the CPU plan without a GPU; the full student
# on a GPU). Prints wall time per stage, the quality gate's figures and the load.
#
#   bash bench/bench_studio_run.sh [OUT_DIR] [extra `muse studio run` args...]
#
# OUT_DIR (default a temp folder) receives the profile, run.json (stage results),
# run.err (progress stream), stages.json (seconds per stage) and summary.json.
set -euo pipefail
OUT=${1:-$(mktemp -d -t muse-studio-bench-XXXX)}
shift || true
mkdir -p "$OUT"
ROOT="$OUT/profiles"
PY=${PYTHON:-python}
echo "load before: $(cat /proc/loadavg)" | tee "$OUT/load.txt"
"$PY" -m muse.cli studio new bench --demo --root "$ROOT"
start=$(date +%s.%N)
# JSON-lines progress (no terminal): one line a second per stage, kept for the stage times
MUSE_PROGRESS=json "$PY" -m muse.cli studio run bench --root "$ROOT" "$@" > "$OUT/run.json" 2> "$OUT/run.err" &
pid=$!
( while kill -0 $pid 2>/dev/null; do echo "$(date -u +%H:%M:%S) $(cat /proc/loadavg)" >> "$OUT/load.txt"; sleep 30; done ) &
wait $pid
rc=$?
end=$(date +%s.%N)
echo "load after: $(cat /proc/loadavg)" | tee -a "$OUT/load.txt"
"$PY" - "$OUT" "$ROOT/bench" "$start" "$end" "$rc" <<'PYEOF'
import json, sys
from pathlib import Path
out, prof, start, end, rc = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
stages = {}
for line in (out / "run.err").read_text().splitlines():
    if not line.startswith("{"):
        continue
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    if rec.get("event") == "done":
        stages[rec["stage"]] = {"seconds": rec["elapsed_s"], "done": rec["done"], "unit": rec["unit"],
                                **{k: rec[k] for k in ("val_iou", "best_iou", "kept", "step") if k in rec}}
gate = json.loads((prof / "models" / "gate.json").read_text()) if (prof / "models" / "gate.json").is_file() else {}
train = json.loads((prof / "models" / "train.json").read_text()) if (prof / "models" / "train.json").is_file() else {}
summary = {"rc": rc, "wall_s": round(end - start, 1), "stages": stages, "gate": gate.get("last_check"), "train": train}
(out / "stages.json").write_text(json.dumps(stages, indent=2))
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PYEOF
echo "results in $OUT"
exit $rc
