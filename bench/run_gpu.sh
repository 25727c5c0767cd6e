#!/usr/bin/env bash
# Runs every `cuda` test and the GPU benchmarks; writes logs and JSON into $1 (default bench/results/gpu).
#   bash bench/run_gpu.sh OUTDIR [tests|bench|studio|capture|fused|fuse|fusewarm|ab|host|host2|shipped|s9|s9b|s9e|s9f|s10|s10b|s10c|s10d|s10e|s11|s11b|s11c|s12|s12b|s12c|s12d|s12e|s13a|s13b|s13c|s13d|s13e|s13f|s13g|s14a|s14b|s14c|s15a|s16a|s16b|s17a|s17b|s17c|s17d|s17e|s18a|s19a|s20a|s20b|s21a|s21b|s21c|s21d|s22a|s22b|profile|all]
# Needs torch with CUDA, CuPy and the project importable (pip install -e . or PYTHONPATH=.).
set -uo pipefail
out=${1:-bench/results/gpu}; what=${2:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" >> "$out/gpu.txt"
run() { local name=$1; shift; echo "== $name: $*" >> "$out/bench.log"; timeout 240 "$@" >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"; }
# stream_4k as shipped, captured: bench_4k TIMEOUT JSON [more muse bench flags] (faulthandler: the exit crash shows)
bench_4k() { local limit=$1 json=$2; shift 2; echo "== stream_4k shipped" >> "$out/bench.log"
  timeout "$limit" python3 -X faulthandler -m muse.cli bench graphs/stream_4k.yaml --device cuda --capture on "$@" \
    --json "$json" >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"; }
# py-spy (carried as a wheel) over the steady frames of a long captured stream_4k: pyspy_steady WAIT_S SECONDS [record flags]
pyspy_steady() { local wait=$1 secs=$2; shift 2
  python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 20000 --capture on --latency-frames 0 > "$out/pyspy_bench.log" 2>&1 &
  local pid=$!
  sleep "$wait"
  timeout $((secs + 30)) py-spy record --pid "$pid" --threads --format raw "$@" --duration "$secs" -o "$out/host_cpu.txt" >> "$out/bench.log" 2>&1
  echo "py-spy exit $?" >> "$out/bench.log"
  kill "$pid" 2> /dev/null; wait "$pid" 2> /dev/null; }
# every cuda test but the soak, into cuda_tests.log: cuda_suite TIMEOUT
cuda_suite() { timeout "$1" python3 -m pytest -m "cuda and not soak" -n 8 -q -p no:cacheprovider --continue-on-collection-errors \
    -rfEs tests/ > "$out/cuda_tests.log" 2>&1; echo "cuda tests exit $?" >> "$out/cuda_tests.log"; }
# the compiled matte (MUSE_FUSE=auto) in fresh processes, cold then warm Inductor cache: fuse_passes FRAMES [flags]
fuse_passes() { local frames=$1; shift; for pass in cold warm; do
    echo "== stream_4k MUSE_FUSE=auto, $pass compile cache" >> "$out/bench.log"
    MUSE_FUSE=auto timeout 240 python3 -X faulthandler -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames "$frames" \
      --capture on --latency-frames 0 "$@" --json "$out/stream_4k_fuse_$pass.json" >> "$out/bench.log" 2>&1
    echo "exit $?" >> "$out/bench.log"
  done; }
if [[ $what == capture ]]; then
  # Whole-frame capture: its cuda tests, then stream_4k eager vs captured (fps, frame GPU ms, host CPU ms, latency, kernels).
  timeout 240 python3 -m pytest -m cuda -q -p no:cacheprovider -rs -s tests/test_frame_capture.py tests/test_runtime_cuda.py > "$out/cuda_capture_tests.log" 2>&1
  echo "capture cuda tests exit $?" >> "$out/cuda_capture_tests.log"
  run stream_4k_eager python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 300 --capture off --latency-frames 0 --json "$out/stream_4k_eager.json"
  run stream_4k_captured python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 900 --capture on --latency-frames 300 --kernel-frames 30 --json "$out/stream_4k_captured.json"
fi
if [[ $what == fused ]]; then
  # The fused matte on CUDA (issue 14): its cuda tests, whole-frame capture with it, its 4K cost with and without a plate.
  timeout 240 python3 -m pytest -m cuda -q -p no:cacheprovider -rs tests/test_segment_fused.py tests/test_frame_capture.py > "$out/cuda_fused_tests.log" 2>&1
  echo "fused cuda tests exit $?" >> "$out/cuda_fused_tests.log"
  run fused_plate python3 bench/bench_fused.py --device cuda --frames 300
  run fused_no_plate python3 bench/bench_fused.py --device cuda --frames 300 --no-plate
fi
if [[ $what == fuse ]]; then
  # Compiled code (issue 12): the fused matte's working-resolution maths (MUSE_FUSE) and the models (MUSE_COMPILE),
  # compiled by Inductor in the background on a cold cache, kernels of the recorded call; the whole 4K frame
  # captured (muse bench waits for the compiles); the cuda tests that compile on purpose.
  run fused_cold env MUSE_FUSE=on python3 bench/bench_fused.py --device cuda --frames 200 --kernels
  echo "== stream_4k_compiled" >> "$out/bench.log"
  timeout 330 python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 900 --capture on --latency-frames 300 --kernel-frames 30 --json "$out/stream_4k_captured.json" >> "$out/bench.log" 2>&1
  echo "exit $?" >> "$out/bench.log"
  timeout 200 python3 -m pytest -m cuda -q -p no:cacheprovider -rs tests/test_segment_fused.py tests/test_backends.py tests/test_frame_capture.py > "$out/cuda_fuse_tests.log" 2>&1
  echo "fuse cuda tests exit $?" >> "$out/cuda_fuse_tests.log"
fi
if [[ $what == ab ]]; then
  # Issue 12 after the sixth session: stream_4k as shipped (fused matte, models uncompiled), then without the fused
  # matte and with the models compiled too; each run prints host CPU a frame by thread and GPU memory growth.
  for v in default MUSE_FUSE=off MUSE_COMPILE=on; do
    echo "== stream_4k $v" >> "$out/bench.log"
    env ${v/default/MUSE_FUSE=auto} timeout 280 python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 600 \
      --capture on --latency-frames 200 --kernel-frames 20 --json "$out/stream_4k_${v//=/_}.json" >> "$out/bench.log" 2>&1
    echo "exit $?" >> "$out/bench.log"
  done
fi
if [[ $what == host ]]; then
  # Issue 12, seventh session: where the captured 4K frame's host CPU goes. stream_4k as shipped (by thread, GC,
  # memory), then py-spy over every thread of a steady shipped stream (warm compile cache by then), then without
  # the fused matte, then with the models compiled too.
  echo "== stream_4k default" >> "$out/bench.log"
  timeout 200 python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 600 --capture on \
    --latency-frames 200 --kernel-frames 20 --json "$out/stream_4k_default.json" >> "$out/bench.log" 2>&1
  echo "exit $?" >> "$out/bench.log"
  if command -v py-spy > /dev/null; then
    python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 20000 --capture on --latency-frames 0 > "$out/pyspy_bench.log" 2>&1 &
    bench_pid=$!
    sleep 45
    timeout 40 py-spy record --pid "$bench_pid" --threads --native --nonblocking --format raw --rate 200 --duration 15 -o "$out/host_cpu.txt" >> "$out/bench.log" 2>&1
    echo "py-spy exit $?" >> "$out/bench.log"
    timeout 20 py-spy dump --pid "$bench_pid" --native > "$out/pyspy_dump.txt" 2>&1
    kill "$bench_pid" 2> /dev/null; wait "$bench_pid" 2> /dev/null
  fi
  for v in MUSE_FUSE=off MUSE_COMPILE=on; do
    echo "== stream_4k $v" >> "$out/bench.log"
    env $v timeout 170 python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 400 \
      --capture on --latency-frames 120 --kernel-frames 0 --json "$out/stream_4k_${v//=/_}.json" >> "$out/bench.log" 2>&1
    echo "exit $?" >> "$out/bench.log"
  done
fi
if [[ $what == host2 ]]; then
  # Issue 12: the compiled matte's replayed frames cost 18 ms of executor CPU (2 ms without it). The CUDA runtime
  # calls by host time and a timeline (Chrome trace) of profiled frames, with and without the fused matte, and
  # py-spy's Python stacks of a steady shipped stream.
  for v in MUSE_FUSE=auto MUSE_FUSE=off; do
    echo "== stream_4k $v" >> "$out/bench.log"
    env $v MUSE_BENCH_TRACE="$out/trace_${v//=/_}.json" timeout 230 python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda \
      --frames 300 --capture on --latency-frames 0 --kernel-frames 12 --json "$out/stream_4k_${v//=/_}.json" >> "$out/bench.log" 2>&1
    echo "exit $?" >> "$out/bench.log"
    gzip -f "$out/trace_${v//=/_}.json" 2> /dev/null
  done
  if command -v py-spy > /dev/null; then
    pyspy_steady 40 12 --nonblocking --rate 250
  fi
fi
if [[ $what == shipped ]]; then
  # stream_4k as shipped (faulthandler on: the process has ended with a segmentation fault at exit), then the
  # cuda suite in the time left.
  bench_4k 150 "$out/stream_4k_shipped.json" --frames 600 --latency-frames 200 --kernel-frames 12
  timeout 330 python3 -m pytest -m cuda -v -p no:cacheprovider --continue-on-collection-errors -rs tests/ > "$out/cuda_tests.log" 2>&1
  echo "cuda tests exit $?" >> "$out/cuda_tests.log"
fi
if [[ $what == fusewarm ]]; then
  # Eighth session (issues 12, 14): stream_4k as shipped (exit status: the segmentation fault at exit is meant to be
  # gone), then the compiled matte (MUSE_FUSE=auto) twice in fresh processes, cold then warm Inductor cache (muse
  # bench now names why frames ran eagerly and which compiles overlapped the measured frames), then the fused
  # matte's own 4K cost with and without a plate.
  bench_4k 130 "$out/stream_4k_shipped.json" --frames 600 --latency-frames 200 --kernel-frames 12
  fuse_passes 600
  echo "== fused matte alone, 4K" >> "$out/bench.log"
  timeout 60 python3 bench/bench_fused.py --device cuda --frames 200 >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"
  timeout 60 python3 bench/bench_fused.py --device cuda --frames 200 --no-plate >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"
fi
if [[ $what == s9 ]]; then
  # Ninth session (issue 12): stream_4k as shipped after the eighth session's kernel cuts (exit status: the
  # segmentation fault at exit), kernels and GPU ms per node (eager), then every cuda test, six at a time
  # (pytest-xdist; correctness only, nothing timed).
  bench_4k 120 "$out/stream_4k_shipped.json" --frames 600 --latency-frames 200 --kernel-frames 12
  run kernels_per_node python3 bench/profile_nodes.py graphs/stream_4k.yaml --frames 20 --top 8 --json "$out/profile_nodes.json"
  timeout ${MUSE_TESTS_TIMEOUT:-300} python3 -m pytest -m cuda -n 6 -v -p no:cacheprovider --continue-on-collection-errors -rfEs \
    --durations=30 tests/ > "$out/cuda_tests.log" 2>&1
  echo "cuda tests exit $?" >> "$out/cuda_tests.log"
fi
if [[ $what == s9b ]]; then
  # Ninth session: kernels and GPU ms per node (eager), the cuda tests that failed in s9 (the soak alone, not
  # beside five other test processes), then the fused matte's own 4K cost with and without a plate (issue 14).
  run kernels_per_node python3 bench/profile_nodes.py graphs/stream_4k.yaml --frames 20 --top 8 --json "$out/profile_nodes.json"
  timeout 150 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_runtime_cuda.py tests/test_segment_clean_plate.py \
    tests/test_segment_fused.py tests/test_segment_refine.py tests/test_pose_blazepose.py > "$out/cuda_retests.log" 2>&1
  echo "cuda retests exit $?" >> "$out/cuda_retests.log"
  timeout 200 python3 -m pytest -m cuda -q -s -p no:cacheprovider -rfEs tests/soak/test_soak.py > "$out/cuda_soak.log" 2>&1
  echo "cuda soak exit $?" >> "$out/cuda_soak.log"
  run fused_plate python3 bench/bench_fused.py --device cuda --frames 200
  run fused_no_plate python3 bench/bench_fused.py --device cuda --frames 200 --no-plate
fi
if [[ $what == s9e ]]; then
  # Ninth session, the one run left (650 s of device time): stream_4k as shipped with the session's kernel
  # changes (its exit status tells whether the crash at exit is gone), every cuda test but the soak (the soak
  # passed alone in s9b), the models' convolution variants.
  bench_4k 110 "$out/stream_4k_shipped.json" --frames 500 --latency-frames 200 --kernel-frames 12
  cuda_suite 140
  echo "== model_variants" >> "$out/bench.log"
  timeout 70 python3 bench/bench_model_variants.py --models face_landmark selfie_segmentation_landscape pose_landmark_full iris_landmark --only fp16 fp16-asis fp16-even fp16-nocudnn fp16-nocudnn-asis fp16-benchmark fp32-exact-asis fp32-exact-even fp32-exact-nocudnn fp32-exact-benchmark \
    --json "$out/model_variants.json" >> "$out/bench.log" 2>&1
  echo "exit $?" >> "$out/bench.log"
fi
if [[ $what == s10 ]]; then
  # Tenth session: s9e (stream_4k shipped, cuda tests, model variants), then kernels and GPU ms per node, eager.
  bash "$0" "$out" s9e
  run kernels_per_node python3 bench/profile_nodes.py graphs/stream_4k.yaml --frames 20 --top 12 --json "$out/profile_nodes.json"
fi
if [[ $what == s10b ]]; then
  # Tenth session: the convolution engine chosen by timing (muse.models.conv_engine) in stream_4k against cuDNN
  # throughout; its cuda tests and the backends' (the exit crash's probes ran from scratch scripts, not kept).
  bench_4k 110 "$out/stream_4k_auto.json" --frames 500 --latency-frames 200 --kernel-frames 12
  echo "== MUSE_CONV=cudnn" >> "$out/bench.log"
  MUSE_CONV=cudnn bench_4k 90 "$out/stream_4k_cudnn.json" --frames 400 --latency-frames 0 --kernel-frames 12
  timeout 120 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_conv_engine.py tests/test_backends.py \
    tests/test_pose_blazepose.py tests/test_face_landmarks.py > "$out/cuda_tests.log" 2>&1
  echo "cuda tests exit $?" >> "$out/cuda_tests.log"
fi
if [[ $what == s10c ]]; then
  # Tenth session: the streams' hand-back fixed (no weak reference to torch's stream objects): stream_4k as
  # shipped (exit status 0 expected), every cuda test but the soak (the run without MUSE's exit hook and the
  # stream probe ran from scratch scripts, not kept).
  bench_4k 110 "$out/stream_4k_shipped.json" --frames 500 --latency-frames 200 --kernel-frames 12
  cuda_suite 240
fi
if [[ $what == s10d ]]; then
  # Tenth session: the compiled matte (MUSE_FUSE=auto) in stream_4k on a cold then a warm compile cache (the JSON's
  # measured_capture and compiles say which frames recorded again and why), then the cuda soak alone; first
  # stream_4k as shipped without MUSE's old exit hook (exit status 0 expected).
  bench_4k 100 "$out/stream_4k_shipped.json" --frames 400 --latency-frames 200 --kernel-frames 12
  fuse_passes 500 --kernel-frames 12
  timeout 200 python3 -m pytest -m cuda -q -s -p no:cacheprovider -rfEs tests/soak/test_soak.py > "$out/cuda_soak.log" 2>&1
  echo "cuda soak exit $?" >> "$out/cuda_soak.log"
fi
if [[ $what == s10e ]]; then
  # Tenth session: segment.fused's independent chains on side streams (SideStreams): its cuda tests, its own 4K
  # cost with and without a plate, stream_4k as shipped, then with the compiled matte (MUSE_FUSE=auto, cold cache).
  timeout 150 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_segment_fused.py tests/test_frame_capture.py \
    tests/test_stream_4k_matte.py tests/test_runtime_cuda.py > "$out/cuda_tests.log" 2>&1
  echo "cuda tests exit $?" >> "$out/cuda_tests.log"
  run fused_plate python3 bench/bench_fused.py --device cuda --frames 200
  run fused_no_plate python3 bench/bench_fused.py --device cuda --frames 200 --no-plate
  bench_4k 100 "$out/stream_4k_shipped.json" --frames 400 --latency-frames 200 --kernel-frames 12
  echo "== stream_4k MUSE_FUSE=auto, cold compile cache" >> "$out/bench.log"
  MUSE_FUSE=auto bench_4k 150 "$out/stream_4k_fuse.json" --frames 400 --latency-frames 200 --kernel-frames 12
fi
if [[ $what == s11 ]]; then
  # Next session, first (issue 12): the compiled matte after 786c542 (traced code reads no side streams): its cuda
  # parity tests, then stream_4k with it on a cold and a warm cache, then as shipped (unfused, side streams).
  timeout 200 python3 -m pytest -m cuda -q -p no:cacheprovider -rfEs tests/test_segment_fused.py tests/test_side_streams.py \
    > "$out/cuda_fused_tests.log" 2>&1
  echo "fused cuda tests exit $?" >> "$out/cuda_fused_tests.log"
  fuse_passes 400 --kernel-frames 12
  bench_4k 90 "$out/stream_4k_shipped.json" --frames 400 --latency-frames 200 --kernel-frames 12
fi
if [[ $what == s11b ]]; then
  # Eleventh session (issue 12): the bundled models' convolutions folded with their activations (one CuPy epilogue
  # kernel: its cuda tests), stream_4k as shipped with it, then the compiled matte whose first compile runs in a
  # process of its own (cold, then warm cache: the JSON's node stalls say whether the stream still stutters).
  timeout 200 python3 -m pytest -m cuda -q -p no:cacheprovider -rfEs tests/test_tflite_fold.py tests/test_conv_engine.py \
    tests/test_backends.py > "$out/cuda_fold_tests.log" 2>&1
  echo "fold cuda tests exit $?" >> "$out/cuda_fold_tests.log"
  bench_4k 90 "$out/stream_4k_shipped.json" --frames 400 --latency-frames 200 --kernel-frames 12
  fuse_passes 400 --kernel-frames 12
fi
if [[ $what == s11c ]]; then
  # Eleventh session: every cuda test but the soak.
  cuda_suite 400
fi
if [[ $what == s12 ]]; then
  # Twelfth session (issue 12): how far the folded models are from float64 beside the models as written (the s11b
  # fold test failures: rounding the model amplifies, or a bug), then the compiled matte cold and warm (the warm
  # start now skips the compiling process: a marker in the cache).
  timeout 200 python3 bench/fold_accuracy.py --json "$out/fold_accuracy.json" > "$out/fold_accuracy.log" 2>&1
  echo "fold accuracy exit $?" >> "$out/fold_accuracy.log"
  fuse_passes 400 --kernel-frames 12
fi
if [[ $what == s12b ]]; then
  # Twelfth session: every cuda test but the soak (the fold's new parity test, the quantile kernel's).
  cuda_suite 450
fi
if [[ $what == s12c ]]; then
  # Twelfth session: the compiled matte with the quantile kernel, cold then warm cache; stream_4k unfused (the
  # shipped default before); kernels per node (eager, the matte unfused: where the full-frame copies come from).
  fuse_passes 400 --kernel-frames 12
  MUSE_FUSE=off bench_4k 90 "$out/stream_4k_unfused.json" --frames 400 --latency-frames 200 --kernel-frames 12
  MUSE_FUSE=off timeout 110 python3 bench/profile_nodes.py graphs/stream_4k.yaml --frames 10 --top 10 \
    --json "$out/profile_nodes.json" > "$out/profile_nodes.log" 2>&1
  echo "profile exit $?" >> "$out/profile_nodes.log"
fi
if [[ $what == s12d ]]; then
  # Twelfth session: the quantile kernels in two passes (the first, one block a row, cost 0.5 ms a frame), their
  # cuda tests and the ones that failed in s12b, then the compiled matte cold and warm.
  timeout 150 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_segment_quantile.py \
    tests/test_bundled_models.py tests/test_tflite_fold.py tests/test_segment_fused.py > "$out/cuda_tests.log" 2>&1
  echo "cuda tests exit $?" >> "$out/cuda_tests.log"
  fuse_passes 400 --kernel-frames 12
fi
if [[ $what == s12e ]]; then
  # Twelfth session, last: every cuda test but the soak on the final code, then stream_4k as shipped now (the
  # compiled matte on by default) on a cold and then a warm compile cache, paced latency included.
  cuda_suite 200
  bench_4k 170 "$out/stream_4k_shipped_cold.json" --frames 400 --latency-frames 200 --kernel-frames 12
  bench_4k 100 "$out/stream_4k_shipped_warm.json" --frames 400 --latency-frames 200 --kernel-frames 12
fi
if [[ $what == s13a ]]; then
  # Thirteenth session: the host cost of a graph launch against its shape (bench/graph_launch.py), then stream_4k
  # as shipped on a cold and a warm compile cache (the settled bench: paced drops), then warm with every recorded
  # frame rewired into one chain (MUSE_FRAME_ORDER=linear).
  run graph_launch python3 bench/graph_launch.py --json "$out/graph_launch.json"
  bench_4k 170 "$out/stream_4k_shipped_cold.json" --frames 400 --latency-frames 200 --kernel-frames 12
  bench_4k 100 "$out/stream_4k_shipped_warm.json" --frames 400 --latency-frames 200 --kernel-frames 12
  MUSE_FRAME_ORDER=linear bench_4k 100 "$out/stream_4k_linear_warm.json" --frames 400 --latency-frames 200 --kernel-frames 12
fi
if [[ $what == s13b ]]; then
  # Thirteenth session, second: s13a with edges' data read (cuBLAS's programmatic edges) and the frame graph's
  # shape printed; the cuda tests of frame capture first (every frame graph is now kept until instantiated).
  timeout 150 python3 -m pytest -m cuda -q -p no:cacheprovider -rfEs tests/test_frame_order.py tests/test_frame_capture.py \
    tests/test_runtime_cuda.py > "$out/cuda_capture_tests.log" 2>&1; echo "capture cuda tests exit $?" >> "$out/cuda_capture_tests.log"
  run graph_launch python3 bench/graph_launch.py --json "$out/graph_launch.json"
  bench_4k 170 "$out/stream_4k_shipped_cold.json" --frames 400 --latency-frames 200 --kernel-frames 12
  MUSE_FRAME_ORDER=linear bench_4k 100 "$out/stream_4k_linear_warm.json" --frames 400 --latency-frames 200 --kernel-frames 12
fi
if [[ $what == s13c ]]; then
  # Thirteenth session, third: where the executor's CPU goes on a steady captured stream without a profiler
  # attached (CUPTI's kernel tracing makes a graph launch cost ~1 us a kernel node, so the profiled phase's
  # cudaGraphLaunch figure is not the unprofiled one): the frame program's own split (thread CPU of the launches),
  # then py-spy (native frames, on-CPU samples only) over a warm, steady stream_4k; graph_launch.py with cuBLAS warm.
  run graph_launch python3 bench/graph_launch.py --json "$out/graph_launch.json"
  bench_4k 170 "$out/stream_4k_shipped_cold.json" --frames 400 --latency-frames 200 --kernel-frames 12
  python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --capture on --frames 20000 --latency-frames 0 \
    --kernel-frames 0 > "$out/pyspy_bench.log" 2>&1 &
  bench_pid=$!
  sleep 40
  timeout 40 py-spy record --pid "$bench_pid" --threads --native --nonblocking --format raw --rate 250 --duration 15 \
    -o "$out/host_cpu.txt" >> "$out/bench.log" 2>&1
  echo "py-spy exit $?" >> "$out/bench.log"
  kill "$bench_pid" 2> /dev/null; wait "$bench_pid" 2> /dev/null
fi
if [[ $what == s13d ]]; then
  # Thirteenth session, fourth: py-spy (Python frames, on-CPU samples of every thread; blocking mode: --native and
  # --nonblocking do not go together) over a steady captured stream_4k, the matte uncompiled (no compile to wait
  # for); then the frame-order cuda tests.
  MUSE_FUSE=off python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --capture on --frames 20000 --latency-frames 0 \
    --kernel-frames 0 > "$out/pyspy_bench.log" 2>&1 &
  bench_pid=$!
  sleep 35
  timeout 40 py-spy record --pid "$bench_pid" --threads --format raw --rate 200 --duration 20 -o "$out/host_cpu.txt" >> "$out/bench.log" 2>&1
  echo "py-spy exit $?" >> "$out/bench.log"
  timeout 20 py-spy dump --pid "$bench_pid" > "$out/pyspy_dump.txt" 2>&1
  kill -INT "$bench_pid" 2> /dev/null; sleep 5; kill "$bench_pid" 2> /dev/null; wait "$bench_pid" 2> /dev/null
  timeout 60 python3 -m pytest -m cuda -q -p no:cacheprovider -rfEs tests/test_frame_order.py > "$out/cuda_order_tests.log" 2>&1
  echo "order cuda tests exit $?" >> "$out/cuda_order_tests.log"
fi
if [[ $what == s13e ]]; then
  # Thirteenth session, fifth: the executor's CPU a frame by step (muse bench's new line), the matte uncompiled
  # (no compile to wait for), the in-flight bound waiting by event.synchronize (as shipped) and by polling
  # (MUSE_IN_FLIGHT_WAIT, removed after this run: polling cost 0.27 ms CPU a frame, the blocking wait 0.06).
  for wait in sync poll; do
    MUSE_FUSE=off MUSE_IN_FLIGHT_WAIT=$wait bench_4k 120 "$out/stream_4k_nofuse_$wait.json" --frames 600 --latency-frames 0
  done
fi
if [[ $what == s13f ]]; then
  # Thirteenth session, last: the cuda tests of frame capture, the runtime and faults (every frame graph now kept
  # until instantiated and its shape read), then stream_4k as shipped on a cold and a warm compile cache.
  timeout 110 python3 -m pytest -m cuda -q -p no:cacheprovider -rfEs tests/test_frame_order.py tests/test_frame_capture.py \
    tests/test_runtime_cuda.py tests/test_faults.py tests/test_faults_stream.py > "$out/cuda_capture_tests.log" 2>&1
  echo "capture cuda tests exit $?" >> "$out/cuda_capture_tests.log"
  bench_4k 170 "$out/stream_4k_shipped_cold.json" --frames 400 --latency-frames 200 --kernel-frames 12
  bench_4k 100 "$out/stream_4k_shipped_warm.json" --frames 400 --latency-frames 200 --kernel-frames 12
fi
if [[ $what == s13g ]]; then
  # Thirteenth session, after the last (not run: no device time left). Every cuda test but the soak (the further
  # variant's one warm-up frame, the frame graph's shape read on the first ask, the module splits all ran on the CPU
  # only), then stream_4k as shipped over 2,000 measured frames, cold and warm: the pose tracker's check variant is
  # recorded once at frame 60, so a long window shows the steady rate the 370-frame windows could not.
  cuda_suite 200
  bench_4k 200 "$out/stream_4k_shipped_cold.json" --frames 2000 --latency-frames 600 --kernel-frames 12
  bench_4k 120 "$out/stream_4k_shipped_warm.json" --frames 2000 --latency-frames 600 --kernel-frames 12
fi
if [[ $what == s14a ]]; then
  # Fourteenth session: where the frame's GPU time goes. The demo's one-pass render kernel's cuda tests, stream_4k
  # as shipped with the profiled phase's timeline written and read (bench/frame_timeline.py: busy / idle a frame,
  # the kernels beside the frame), then every node recorded alone and timed (per_node) and the kernels per node.
  timeout 120 python3 -m pytest -m cuda -q -p no:cacheprovider -rfEs tests/test_capture.py > "$out/cuda_demo_tests.log" 2>&1
  echo "demo cuda tests exit $?" >> "$out/cuda_demo_tests.log"
  MUSE_BENCH_TRACE="$out/trace.json" bench_4k 240 "$out/stream_4k_shipped.json" --frames 600 --latency-frames 0 --kernel-frames 6
  run timeline python3 bench/frame_timeline.py "$out/trace.json" --json "$out/timeline.json"
  gzip -9 "$out/trace.json"
  run per_node python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 200 --capture per_node --latency-frames 0 --json "$out/stream_4k_per_node.json"
  run kernels_per_node python3 bench/profile_nodes.py graphs/stream_4k.yaml --frames 20 --top 10 --json "$out/profile_nodes.json"
fi
if [[ $what == s14b ]]; then
  # Fourteenth session, the critical path's kernels: the models' input straight from the uint8 frame (shrink.py),
  # the matte's edge anti-aliasing in two passes (edge_kernel.py); their cuda tests and the ones of the nodes using
  # them, then stream_4k as shipped with the timeline again.
  timeout 200 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_shrink.py tests/test_capture.py \
    tests/test_segment_fused.py tests/test_segment_selfie.py tests/test_frame_capture.py tests/test_segment_refine.py tests/test_runtime_cuda.py > "$out/cuda_tests.log" 2>&1
  echo "cuda tests exit $?" >> "$out/cuda_tests.log"
  MUSE_BENCH_TRACE="$out/trace.json" bench_4k 240 "$out/stream_4k_shipped.json" --frames 600 --latency-frames 0 --kernel-frames 6
  run timeline python3 bench/frame_timeline.py "$out/trace.json" --json "$out/timeline.json"
  gzip -9 "$out/trace.json"
fi
if [[ $what == s14c ]]; then
  # Fourteenth session's last: stream_4k as shipped over 2,000 measured frames (a fresh machine: cold compile cache),
  # then the cuda tests of what changed after s14b (late flags read through numpy, one event query a replay) and of
  # frame_batch's other callers. Two refused starts cost 180 s of the session's device time: no profiled phase
  # (s14b counted the kernels) and not the whole cuda suite.
  bench_4k 185 "$out/stream_4k_shipped.json" --frames 2000 --latency-frames 600
  timeout 45 python3 -m pytest -m "cuda and not soak" -n 8 -q -p no:cacheprovider -rfEs tests/test_faults.py tests/test_faults_stream.py \
    tests/test_runtime_cuda.py tests/test_pose_blazepose.py tests/test_segment_hybrid.py tests/test_segment_clean_plate.py > "$out/cuda_tests.log" 2>&1
  echo "cuda tests exit $?" >> "$out/cuda_tests.log"
fi
if [[ $what == s15a ]]; then
  # For the session after the fifteenth (which had no device time): every cuda test but the soak on the code since
  # s14c (frames recorded with the garbage collector off, the node markers, the matte's model-gated hole closing in
  # the compiled maths), then stream_4k as shipped over 2,000 measured frames with the profiled phase's trace and node
  # markers (frame_timeline.py prints each node's window: the pose and face lane's 0.5-0.8 ms wait), then
  # segment.fused's 4K cost alone (issue 14's budget).
  cuda_suite 260
  MUSE_BENCH_TRACE="$out/trace.json" bench_4k 240 "$out/stream_4k_shipped.json" --frames 2000 --latency-frames 600 --kernel-frames 6
  run timeline python3 bench/frame_timeline.py "$out/trace.json" --json "$out/timeline.json"
  gzip -9 "$out/trace.json"
  run fused_4k python3 bench/bench_fused.py --device cuda --frames 200
fi
if [[ $what == s16a ]]; then
  # Sixteenth session: the capture tests with the fix for s15a's abort (a failed recording's pool released twice,
  # once by hand and once by its destructor) and the fault-injection stream, then where the host CPU goes over
  # steady replayed frames of stream_4k: py-spy (carried as a wheel), every thread, idle stacks left out.
  timeout 200 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_frame_capture.py tests/test_faults_stream.py \
    > "$out/cuda_capture_tests.log" 2>&1; echo "capture cuda tests exit $?" >> "$out/cuda_capture_tests.log"
  pyspy_steady 50 20 --nonblocking --rate 250
fi
if [[ $what == s16b ]]; then
  # Sixteenth session: every cuda test but the soak (the test media and python-osc carried this time: s15a's 11
  # media failures and 1 import failure were the carry's), then stream_4k as shipped over 2,000 frames (the preview
  # server woken only with a viewer connected, no event a frame in the unwatched preview).
  cuda_suite 300
  bench_4k 240 "$out/stream_4k_shipped.json" --frames 2000 --latency-frames 600
fi
if [[ $what == s17a ]]; then
  # Seventeenth session (issue 12's host CPU): stream_4k as shipped over 2,000 frames with the cheaper stream switches,
  # the graph launched without torch's wrapper, fewer events and payloads a frame and the source thread's steps;
  # what each CUDA call costs the host (bench/host_ops.py); the capture and runtime cuda tests.
  bench_4k 240 "$out/stream_4k_shipped.json" --frames 2000 --latency-frames 600
  run host_ops python3 bench/host_ops.py --json "$out/host_ops.json"
  timeout 240 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_frame_capture.py tests/test_runtime_cuda.py \
    tests/test_faults_stream.py tests/test_capture.py tests/test_faults.py > "$out/cuda_capture_tests.log" 2>&1
  echo "capture cuda tests exit $?" >> "$out/cuda_capture_tests.log"
fi
if [[ $what == s17c ]]; then
  # Seventeenth session: stream_4k as shipped over 2,000 frames, then the same with one frame in flight instead of two
  # (settings.max_frames_in_flight: does a shorter GPU queue make each CUDA call cheaper for the host?).
  bench_4k 240 "$out/stream_4k_shipped.json" --frames 2000 --latency-frames 600
  sed 's/^  fps: 60$/  fps: 60\n  max_frames_in_flight: 1/' graphs/stream_4k.yaml > graphs/_inflight1.yaml
  echo "== stream_4k, one frame in flight" >> "$out/bench.log"
  timeout 240 python3 -X faulthandler -m muse.cli bench graphs/_inflight1.yaml --device cuda --capture on --frames 2000 \
    --latency-frames 600 --json "$out/stream_4k_inflight1.json" >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"
  rm -f graphs/_inflight1.yaml
fi
if [[ $what == s17d ]]; then
  # Seventeenth session, final code: the frame clock written inside the recording; stream_4k as shipped over 2,000
  # frames first, then every cuda test but the soak.
  bench_4k 200 "$out/stream_4k_shipped.json" --frames 2000 --latency-frames 600
  cuda_suite 200
fi
if [[ $what == s22b ]]; then
  # Twenty-second session, second call: the merge as its own node (segment.person), so the selfie model runs beside
  # the pose model. Its cuda tests and the capture tests; stream_4k as shipped against the graph without the person
  # wire, alternating on one machine after a warm-up that compiles.
  timeout 120 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_segment_person.py tests/test_frame_capture.py \
    > "$out/cuda_tests.log" 2>&1; echo "cuda tests exit $?" >> "$out/cuda_tests.log"
  sed -e '/person.person: pose\/bundled.mask}/d' -e 's/bundled.frame: camera.selected,$/bundled.frame: camera.selected}/' \
    graphs/stream_4k.yaml > graphs/stream_4k_noperson.yaml
  mkdir -p "$out/j"
  bench_4k 200 "$out/j/stream_4k_warm.json" --frames 300 --latency-frames 0
  for pass in 1; do
    bench_4k 90 "$out/j/stream_4k_person_$pass.json" --frames 2000 --latency-frames 600
    echo "== stream_4k without the person wire, pass $pass" >> "$out/bench.log"
    timeout 90 python3 -X faulthandler -m muse.cli bench graphs/stream_4k_noperson.yaml --device cuda --capture on --frames 2000 \
      --latency-frames 600 --json "$out/j/stream_4k_noperson_$pass.json" >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"
  done
  tar -czf "$out/json.tgz" -C "$out/j" . && rm -rf "$out/j"
fi
if [[ $what == s22a ]]; then
  # Twenty-second session: the bundled selfie model given the pose tracker's person mask (graphs/stream_4k.yaml's
  # `person.person`). Its cuda tests; stream_4k as shipped against the same graph without that wire, alternating
  # on one machine after a warm-up that compiles; the quality benches on the GPU path (the matte uncompiled).
  timeout 200 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_segment_person.py tests/test_segment_selfie.py \
    tests/test_segment_hybrid.py tests/test_pose_blazepose.py tests/test_segment_fused.py tests/test_frame_capture.py \
    > "$out/cuda_tests.log" 2>&1; echo "cuda tests exit $?" >> "$out/cuda_tests.log"
  sed -e '/person.person: pose\/bundled.mask}/d' -e 's/bundled.frame: camera.selected,$/bundled.frame: camera.selected}/' \
    graphs/stream_4k.yaml > graphs/stream_4k_noperson.yaml
  mkdir -p "$out/j"
  bench_4k 240 "$out/j/stream_4k_warm.json" --frames 300 --latency-frames 0
  for pass in 1 2; do
    bench_4k 90 "$out/j/stream_4k_person_$pass.json" --frames 2000 --latency-frames 600
    echo "== stream_4k without the person wire, pass $pass" >> "$out/bench.log"
    timeout 90 python3 -X faulthandler -m muse.cli bench graphs/stream_4k_noperson.yaml --device cuda --capture on --frames 2000 \
      --latency-frames 600 --json "$out/j/stream_4k_noperson_$pass.json" >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"
  done
  MUSE_FUSE=off timeout 150 python3 bench/quality_extra.py --device cuda --json "$out/j/quality_extra_cuda.json" > "$out/quality_cuda.log" 2>&1
  echo "quality_extra exit $?" >> "$out/quality_cuda.log"
  tar -czf "$out/json.tgz" -C "$out/j" . && rm -rf "$out/j"
fi
if [[ $what == s21d ]]; then
  # Twenty-first session, last call (little device time left): the selfie crop's and the frame capture's cuda tests,
  # then stream_4k with the matte's maths uncompiled (no compile wait), against the same run before the crop.
  timeout 170 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_segment_selfie_crop.py tests/test_segment_selfie.py \
    tests/test_frame_capture.py tests/test_segment_fused.py > "$out/cuda_tests.log" 2>&1; echo "cuda tests exit $?" >> "$out/cuda_tests.log"
  echo "== stream_4k MUSE_FUSE=off" >> "$out/bench.log"
  MUSE_FUSE=off timeout 100 python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --capture on --frames 2000 \
    --latency-frames 0 --json "$out/stream_4k_unfused.json" >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"
fi
if [[ $what == s21c ]]; then
  # Twenty-first session: the runtime's threads on one core or two (MUSE_RUNTIME_CORES) against wherever the OS puts
  # them, alternating on one machine, unpaced and paced (a warm-up run first compiles and caches).
  bench_4k 240 "$out/stream_4k_warm.json" --frames 300 --latency-frames 0
  for pass in 1 2; do for cores in none 2 2-3; do
    echo "== pass $pass MUSE_RUNTIME_CORES=$cores" >> "$out/bench.log"
    if [[ $cores == none ]]; then bench_4k 100 "$out/stream_4k_${cores}_$pass.json" --frames 2000 --latency-frames 600
    else MUSE_RUNTIME_CORES=$cores bench_4k 100 "$out/stream_4k_${cores}_$pass.json" --frames 2000 --latency-frames 600; fi
  done; done
  mkdir -p "$out/j" && mv "$out"/stream_4k_*.json "$out/j/" && tar -czf "$out/json.tgz" -C "$out/j" . && rm -rf "$out/j"
fi
if [[ $what == s21b ]]; then
  # Twenty-first session, second call: the SAM 2.1 teacher's cuda test (sam2 and its pure-Python dependencies now
  # carried as wheels), then stream_4k unpaced and paced with the paced run's host CPU split by thread.
  timeout 150 python3 -m pytest -m cuda -q -p no:cacheprovider -rfEs tests/test_studio_teachers.py > "$out/cuda_teacher_tests.log" 2>&1
  echo "teacher cuda tests exit $?" >> "$out/cuda_teacher_tests.log"
  bench_4k 280 "$out/stream_4k.json" --frames 2000 --latency-frames 900
fi
if [[ $what == s21a ]]; then
  # Twenty-first session, first call: every cuda test but the soak (the smoothing kernel active and the matte's
  # hole closing limited to holes, neither run under capture yet), stream_4k unpaced and paced, the fused matte at 4K.
  mkdir -p "$out/j"
  cuda_suite 330
  bench_4k 150 "$out/j/stream_4k.json" --frames 2000 --latency-frames 600
  run fused_plate python3 bench/bench_fused.py --device cuda --frames 200
  tar -czf "$out/json.tgz" -C "$out/j" . && rm -rf "$out/j"
fi
if [[ $what == s20b ]]; then
  # Twentieth session, final code: each node recorded alone and timed, .ab/ (a655468, before warp.face's kernel)
  # then this tree; per-node kernel counts (eager, profiler); stream_4k unpaced and paced; the fused matte at 4K;
  # every cuda test. JSON goes into one archive (only eight files of a call come back).
  rm -rf .ab/muse/assets && ln -s "$PWD/muse/assets" .ab/muse/assets
  mkdir -p "$out/j"
  (cd .ab && run per_node_base python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 300 \
    --capture per_node --latency-frames 0 --json "$out/j/per_node_base.json")
  run per_node_new python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 300 --capture per_node \
    --latency-frames 0 --json "$out/j/per_node_new.json"
  run kernels_per_node python3 bench/profile_nodes.py graphs/stream_4k.yaml --frames 20 --top 8 --json "$out/j/profile_nodes.json"
  bench_4k 200 "$out/j/stream_4k.json" --frames 2000 --latency-frames 600
  run fused_plate python3 bench/bench_fused.py --device cuda --frames 200
  cuda_suite 270
  tar -czf "$out/json.tgz" -C "$out/j" . && rm -rf "$out/j"
fi
if [[ $what == s20a ]]; then
  # Twentieth session: this tree against the one in .ab/ (HEAD a655468), and this tree with MUSE_CUDA_WAITS=blocking,
  # MUSE_DRIVER_GIL=hold and both, on one machine, the order reversed in the second pass; then the new cuda tests.
  # (Those two variables and tests/test_host_waits.py were prototypes in the working tree, measured and not kept:
  # bench/RESULTS.md, twentieth session. Run now, those variants run the plain tree.)
  rm -rf .ab/muse/assets && ln -s "$PWD/muse/assets" .ab/muse/assets
  bench_4k 200 "$out/stream_4k_warm.json" --frames 300 --latency-frames 0   # compiles and caches: not compared
  one() { local name=$1 pass=$2; echo "== pass $pass $name" >> "$out/bench.log"
    case $name in
      base) (cd .ab && bench_4k 150 "$out/stream_4k_${name}_$pass.json" --frames 2000 --latency-frames 0) ;;
      new) bench_4k 150 "$out/stream_4k_${name}_$pass.json" --frames 2000 --latency-frames 0 ;;
      blocking) MUSE_CUDA_WAITS=blocking bench_4k 150 "$out/stream_4k_${name}_$pass.json" --frames 2000 --latency-frames 0 ;;
      hold) MUSE_DRIVER_GIL=hold bench_4k 150 "$out/stream_4k_${name}_$pass.json" --frames 2000 --latency-frames 0 ;;
      both) MUSE_CUDA_WAITS=blocking MUSE_DRIVER_GIL=hold bench_4k 150 "$out/stream_4k_${name}_$pass.json" --frames 2000 --latency-frames 0 ;;
    esac; }
  for name in base new blocking hold both; do one $name 1; done
  for name in both hold blocking new base; do one $name 2; done
  timeout 150 python3 -m pytest -m cuda -q -p no:cacheprovider -rs tests/test_frame_capture.py \
    tests/test_switch_graph.py > "$out/cuda_capture_tests.log" 2>&1; echo "cuda tests exit $?" >> "$out/cuda_capture_tests.log"
fi
if [[ $what == s19a ]]; then
  # Nineteenth session: this tree against the one in .ab/ (HEAD before the session's executor changes, with the
  # recording's own copies on, as this tree has them by default), alternating on one machine; then every cuda test.
  rm -rf .ab/muse/assets && ln -s "$PWD/muse/assets" .ab/muse/assets
  bench_4k 200 "$out/stream_4k_warm.json" --frames 300 --latency-frames 0   # compiles and caches: not compared
  for pass in 1 2; do
    echo "== pass $pass base (.ab)" >> "$out/bench.log"
    (cd .ab && MUSE_INPUT_COPIES=graph MUSE_OUTPUT_COPIES=graph \
      bench_4k 150 "$out/stream_4k_base_$pass.json" --frames 2000 --latency-frames 0)  # (-m imports from the cwd)
    echo "== pass $pass new" >> "$out/bench.log"
    bench_4k 150 "$out/stream_4k_new_$pass.json" --frames 2000 --latency-frames 0
  done
  cuda_suite 280
fi
if [[ $what == s18a ]]; then
  # Eighteenth session: the copies made by the recording itself (muse.graph.frame_copies: its inputs in, the sink's
  # output out) against the runtime's, on one machine, alternating (fresh machines differ by ~15 % in host CPU);
  # then the capture and runtime cuda tests (among them the copies' own).
  bench_4k 200 "$out/stream_4k_warm.json" --frames 300 --latency-frames 0   # compiles and caches: not compared
  for pass in 1 2; do for mode in eager graph; do
    echo "== pass $pass MUSE_INPUT_COPIES=$mode MUSE_OUTPUT_COPIES=$mode" >> "$out/bench.log"
    MUSE_INPUT_COPIES=$mode MUSE_OUTPUT_COPIES=$mode bench_4k 150 "$out/stream_4k_${mode}_$pass.json" --frames 2000 --latency-frames 0
  done; done
  timeout 150 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_frame_capture.py tests/test_runtime_cuda.py \
    tests/test_switch_graph.py > "$out/cuda_capture_tests.log" 2>&1
  echo "capture cuda tests exit $?" >> "$out/cuda_capture_tests.log"
fi
if [[ $what == s17e ]]; then
  # s17d with less device time left: stream_4k as shipped, then the capture and runtime cuda tests only.
  bench_4k 170 "$out/stream_4k_shipped.json" --frames 2000 --latency-frames 600
  timeout 120 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_frame_capture.py tests/test_runtime_cuda.py \
    tests/test_switch_graph.py > "$out/cuda_capture_tests.log" 2>&1
  echo "capture cuda tests exit $?" >> "$out/cuda_capture_tests.log"
fi
if [[ $what == s17b ]]; then
  # Seventeenth session, final code: every cuda test but the soak, then stream_4k as shipped over 2,000 frames.
  cuda_suite 300
  bench_4k 240 "$out/stream_4k_shipped.json" --frames 2000 --latency-frames 600
fi
if [[ $what == s9f ]]; then
  # Ninth session, with ~5 minutes of device time left: the cuda tests of the kernels changed this session, stream_4k
  # as shipped (the exit crash's teardown steps ran from a scratch script after it, not kept).
  timeout 70 python3 -m pytest -m cuda -n 4 -q -p no:cacheprovider -rfEs tests/test_composite_kernel.py tests/test_plate_kernels.py \
    tests/test_warp_apply.py tests/test_background_adaptive.py tests/test_runtime_cuda.py tests/test_pose_blazepose.py > "$out/cuda_kernel_tests.log" 2>&1
  echo "cuda kernel tests exit $?" >> "$out/cuda_kernel_tests.log"
  bench_4k 100 "$out/stream_4k_shipped.json" --frames 400 --latency-frames 0 --kernel-frames 12
fi
if [[ $what == profile ]]; then
  # Where the 4K frame's time goes (issue 12): each node recorded alone and timed, kernels per node (eager),
  # the whole frame captured, and where the host CPU goes (py-spy, when installed: `pip install py-spy`).
  run per_node python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 300 --capture per_node --latency-frames 0 --json "$out/stream_4k_per_node.json"
  run kernels_per_node python3 bench/profile_nodes.py graphs/stream_4k.yaml --frames 20 --top 8 --json "$out/profile_nodes.json"
  run captured python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 900 --capture on --latency-frames 300 --kernel-frames 30 --json "$out/stream_4k_captured.json"
  if command -v py-spy > /dev/null; then
    # Steady frames only: start the run, let it load and record (~30 s), then sample every thread for 20 s.
    pyspy_steady 40 20 --nonblocking --rate 250
  fi
fi
if [[ $what == all || $what == tests ]]; then
  timeout ${MUSE_TESTS_TIMEOUT:-420} python3 -m pytest -m cuda -v -p no:cacheprovider --continue-on-collection-errors -rfEs \
    --durations=40 tests/ > "$out/cuda_tests.log" 2>&1
  echo "cuda tests exit $?" >> "$out/cuda_tests.log"
fi
if [[ $what == graph ]]; then
  run pose_face python3 bench/bench_pose_face.py
  run graph_eager python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 300 --json "$out/stream_4k_eager.json"
  run graph_cudagraphs python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 300 --cuda-graphs --json "$out/stream_4k_cudagraphs.json"
fi
if [[ $what == all || $what == bench ]]; then
  run() { local name=$1; shift; echo "== $name: $*" >> "$out/bench.log"; timeout 240 "$@" >> "$out/bench.log" 2>&1; echo "exit $?" >> "$out/bench.log"; }
  run bundled python3 bench/bench_bundled.py --frames 200 --cpu-frames 30
  run segment python3 bench/bench_segment.py --frames 200 --onnxruntime
  run visual python3 bench/bench_visual.py --size 3840x2160 --iters 200
  run capture python3 bench/bench_capture.py --json "$out/capture_4k.json"
  [[ -f bench/bench_pose_face.py ]] && run pose_face python3 bench/bench_pose_face.py
  run editor_preview python3 bench/editor_preview.py
  run graph_eager python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 300 --json "$out/stream_4k_eager.json"
  run graph_cudagraphs python3 -m muse.cli bench graphs/stream_4k.yaml --device cuda --frames 300 --cuda-graphs --json "$out/stream_4k_cudagraphs.json"
fi
if [[ $what == studio ]]; then
  timeout 560 python3 bench/bench_studio.py > "$out/studio.log" 2>&1; echo "exit $?" >> "$out/studio.log"
fi
exit 0
