#!/usr/bin/env bash
# Issue 13's CPU figures in one go: both shipped graphs through `muse bench` on the CPU path and the
# MediaPipe comparison, each with the load average before and after; logs and JSON into $1.
#   bash bench/run_cpu.sh [OUTDIR] [--mediapipe-path DIR]
# Best on a quiet machine: wall-time figures (fps, latency) follow whatever else runs; the per-node
# "thread CPU p50 ms" column and "host CPU ms/frame" mostly do not.
set -uo pipefail
out=${1:-bench/results/cpu}; shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime; }
run() {
  local name=$1; shift
  { echo "== $name: $*"; echo "load before: $(load)  ($(date -u +%H:%M:%S) UTC, $(nproc) cores)"; } | tee -a "$out/cpu.log"
  timeout 600 "$@" 2>&1 | grep -v -e "GetPrototype" -e "^Traceback" -e "^  File" -e "^    " | tee -a "$out/cpu.log"
  echo "load after: $(load)" | tee -a "$out/cpu.log"
}
run stream_4k python3 -m muse.cli bench graphs/stream_4k.yaml --device cpu --frames 300 --json "$out/stream_4k.json" --force
run webcam_720p python3 -m muse.cli bench graphs/webcam_720p.yaml --device cpu --frames 600 --json "$out/webcam_720p.json" --force
run cpu_vs_mediapipe python3 bench/cpu_vs_mediapipe.py --frames 300 --json "$out/cpu_vs_mediapipe.json" "$@"
