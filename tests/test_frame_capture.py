"""Whole-frame capture: recorded frames replay exactly what eager execution computes.

On the CPU the frame program records into `EmulatedFrameGraph`, which follows a CUDA
graph's rules (ops replayed on the recorded tensors; host values frozen; host reads
refused), so a node that reassigns its state or bakes a per-frame host value shows
up here as a difference from eager execution. The `cuda` tests run the same checks
on real CUDA graphs on the GPU machine.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from muse.graph.capture import CaptureError, EmulatedFrameGraph, LateValue
from muse.graph.node import In, Node
from muse.graph.payloads import Frame
from muse.graph.registry import load_registry
from muse.graph.runtime import GraphRunner
from muse.graph.validate import validate_text
from tests.stream_graph import GRAPHS, TORCH_NODES, stream_text

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(autouse=True)
def _frames_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CPU path's two-frames-in-flight pipeline reads the trackers' late flags at other moments,
    # so its eager results may differ from one whole frame at a time; compare like with like.
    monkeypatch.setenv("MUSE_CPU_PIPELINE", "0")
    # The emulation stands in for the GPU path: the nodes' torch code, not their OpenCV CPU implementations.
    monkeypatch.setenv("MUSE_CPU_PATH", "torch")


TAPS = ["segment/switch.selected", "matte.mask", "matte.confidence", "pose/switch.selected", "face.face",
        "steady.smoothed_keypoints", "face_shape.field", "body_shape.field", "room.plate", "reshape.out", "composite.out"]


def stream_graph(device: str, capture: str, width: int, height: int, frames: int) -> str:
    """graphs/stream_4k.yaml (its switches and included sub-graphs) on the demo source with lossless links."""
    return stream_text(width, height, frames, device=device, capture=capture)


def run_tapped(text: str, taps: list[str], edit: tuple[int, str, dict] | None = None) -> tuple[dict[str, dict[int, torch.Tensor]], GraphRunner]:
    stream = "include:" in text  # stream_4k: its bundled pose and face models on torch, as a recording needs
    runner = GraphRunner(validate_text(text, "stream.yaml", load_registry(), TORCH_NODES if stream else None, base_dir=GRAPHS))
    seen: dict[str, dict[int, torch.Tensor]] = {t: {} for t in taps}
    runner.start()
    edited = threading.Event()
    for t in taps:
        node, port = t.rsplit(".", 1)

        def cb(v: Any, t: str = t) -> None:
            first = next(iter(v.tensors()))
            seen[t][v.index] = first.detach().float().cpu().clone()
            if edit is not None and t == taps[-1] and v.index == edit[0] and not edited.is_set():
                edited.set()
                runner.update_params(edit[1], edit[2])

        runner.tap(node, port, cb)
    while not runner.wait(0.1):
        pass
    runner.stop()
    return seen, runner


@pytest.mark.slow
def test_stream_graph_replayed_matches_eager(monkeypatch) -> None:
    frames = 14
    # The emulated capture checks the GPU (torch) path, which nodes take under `capture: emulate`;
    # the eager run takes it too (on a CPU device it would otherwise run the issue-13 CPU path), on the
    # plain executor (the CPU pipeline runs torch on one thread: other float sums, 2e-4 px apart).
    monkeypatch.setenv("MUSE_CPU_PATH", "torch")
    monkeypatch.setenv("MUSE_CPU_PIPELINE", "0")
    eager, _ = run_tapped(stream_graph("cpu", "off", 256, 144, frames), TAPS)
    replayed, runner = run_tapped(stream_graph("cpu", "emulate", 256, 144, frames), TAPS)
    info = runner.stats.info["capture"]
    assert runner.program is not None
    desc = runner.program.describe()
    assert desc["eager_nodes"] == {}, f"every node of stream_4k is capturable: {desc['eager_nodes']}"
    captured = [seg for seg in desc["segments"] if seg["captured"]]
    assert len(desc["segments"]) == len(captured) == 1, f"the whole frame is one recorded segment: {desc['segments']}"
    assert {"camera", "segment/switch", "pose/switch", "segment/bundled", "pose/bundled"} <= set(desc["captured_nodes"])
    absent = {"segment/student", "segment/modnet", "pose/student", "pose/vitpose"}
    assert not absent & set(desc["captured_nodes"]), "absent branches are not part of the frame"
    for name in absent:
        assert runner.stats.nodes[name].frames == 0 and runner.stats.nodes[name].info["state"].startswith("absent: ")
    assert runner.stats.nodes["segment/switch"].info["branches"]["bundled"] == "live"
    assert desc["replays"] >= frames // 2, desc
    assert info is not None
    for tap in TAPS:
        assert len(eager[tap]) == len(replayed[tap]) == frames, tap
        for i, a in eager[tap].items():
            assert_replayed_close(tap, i, replayed[tap][i], a)


PICTURES = {"room.plate", "reshape.out", "composite.out"}  # 8-bit outputs (the taps hold them as floats)


def assert_replayed_close(tap: str, i: int, got: torch.Tensor, want: torch.Tensor) -> None:
    """Float taps within 1e-4; 8-bit pictures within 1 LSB (issue 12's bar for a replayed frame) on at most
    0.1 % of the pixels: the same float ops on other buffers may round a value sitting on .5 the other way
    (seen: 1 pixel of 110,592 on stream_4k's composite at 256 x 144, every input tap identical)."""
    if tap not in PICTURES:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=lambda m: f"{tap} frame {i}: {m}")
        return
    diff = (got - want).abs()
    assert float(diff.max()) <= 1.0 and float((diff > 0).float().mean()) <= 1e-3, (
        f"{tap} frame {i}: max {float(diff.max())}, {int((diff > 0).sum())} of {diff.numel()} values differ")


@pytest.mark.slow
def test_live_edit_reaches_a_replayed_frame_without_losing_one() -> None:
    frames = 16
    # A warp strength edited live: its recording is rebuilt at the next frame boundary.
    text = stream_graph("cpu", "emulate", 256, 144, frames)
    base, _ = run_tapped(text, ["face_shape.field", "composite.out"])
    edited, runner = run_tapped(text, ["face_shape.field", "composite.out"], edit=(9, "face_shape", {"eyes": 0.8}))
    assert sorted(edited["composite.out"]) == sorted(base["composite.out"]) == list(range(frames)), "no frame lost"
    changed = [i for i in range(frames) if not torch.equal(edited["face_shape.field"][i], base["face_shape.field"][i])]
    assert changed and changed[0] <= 9 + 2, f"edit at frame 9 shows from frame {changed[:1]} on"
    assert all(i in changed for i in range(changed[0], frames)), "the edit stays"
    assert runner.stats.info["capture_programs"] >= 2 and runner.program is not None and runner.program.captures >= 1, \
        "recorded again after the edit"
    # Stopping lets go of the recordings (not left to finalizers at the interpreter's exit) and keeps their account.
    assert all(not seg.variants for seg in runner.program.segments), "recordings kept after stop"
    assert runner.program.describe()["segments"][0]["variants"] >= 1 and runner.program.describe()["replays"] > 0


@pytest.mark.slow
def test_live_setting_of_the_matte_reaches_the_replayed_frame_without_recording_again() -> None:
    """segment.fused's tunable numbers are device scalars (`live_params`): an edit shows in the replayed frames
    at once and the frame program is neither rebuilt nor recorded again."""
    frames = 14
    text = stream_graph("cpu", "emulate", 256, 144, frames)
    base, base_runner = run_tapped(text, ["matte.mask", "composite.out"])
    edited, runner = run_tapped(text, ["matte.mask", "composite.out"], edit=(7, "matte", {"model_weight": 0.1, "stability": 0.2}))
    assert sorted(edited["composite.out"]) == list(range(frames)), "no frame lost"
    changed = [i for i in range(frames) if not torch.equal(edited["matte.mask"][i], base["matte.mask"][i])]
    assert changed and 7 < changed[0] <= 7 + 2, f"edit after frame 7 shows from frame {changed[:1]} on"
    assert runner.stats.info["capture_programs"] == base_runner.stats.info["capture_programs"], "the program was rebuilt"
    assert runner.program is not None and base_runner.program is not None
    assert runner.program.captures == base_runner.program.captures, "recorded again for a live setting"


@pytest.mark.slow
def test_new_code_from_a_background_compile_is_recorded_again_without_losing_a_frame(monkeypatch) -> None:
    """When a background compile finishes (`code_changed`), the recorded frames hold the old kernels: the frame
    program records the next frame again (same outputs here, as the code is the same)."""
    from muse.graph import compiled

    frames = 14
    text = stream_graph("cpu", "emulate", 256, 144, frames)
    base, base_runner = run_tapped(text, ["composite.out"])
    bumped = threading.Event()
    real = compiled.code_generation

    def generation() -> int:  # the compile finishes after frame 6
        return real() + (1 if bumped.is_set() else 0)

    monkeypatch.setattr("muse.graph.program.code_generation", generation)
    runner = GraphRunner(validate_text(text, "stream.yaml", load_registry(), TORCH_NODES, base_dir=GRAPHS))
    seen: dict[int, torch.Tensor] = {}

    def cb(v: Any) -> None:
        seen[v.index] = next(iter(v.tensors())).detach().float().cpu().clone()
        if v.index == 6:
            bumped.set()

    runner.start()
    runner.tap("composite", "out", cb)
    while not runner.wait(0.1):
        pass
    runner.stop()
    assert sorted(seen) == list(range(frames)), "no frame lost"
    assert runner.program is not None and base_runner.program is not None
    assert runner.program.captures > base_runner.program.captures, "not recorded again"
    why = runner.program.describe()["eager_reasons"]
    assert why.get("warm-up of a new variant", 0) >= 1 and why.get("warm-up after new compiled code", 0) >= 1, why
    for i in range(frames):
        diff = (seen[i] - base["composite.out"][i]).abs()
        assert float(diff.max()) <= 1.0 and int((diff > 0).sum()) <= max(1, diff.numel() // 1000), i


@pytest.mark.slow
def test_no_frame_is_recorded_while_a_compile_runs_and_none_is_lost() -> None:
    """A background compile holds GPU_CODE (its autotuning and synchronizes broke recordings on the H200): frames
    run eagerly meanwhile, and the program records once the compile is done."""
    from muse.graph.compiled import GPU_CODE

    frames = 14
    text = stream_graph("cpu", "emulate", 256, 144, frames)
    runner = GraphRunner(validate_text(text, "stream.yaml", load_registry(), TORCH_NODES, base_dir=GRAPHS))
    held, release, done = threading.Event(), threading.Event(), threading.Event()
    captures_while_held: list[int] = []

    def compiling() -> None:
        with GPU_CODE:
            held.set()
            release.wait(60)
        done.set()

    t = threading.Thread(target=compiling)
    t.start()
    assert held.wait(5)
    seen: list[int] = []

    def cb(v: Any) -> None:
        seen.append(v.index)
        if v.index == 7 and not release.is_set():
            assert runner.program is not None
            captures_while_held.append(runner.program.captures)
            release.set()

    try:
        runner.start()
        runner.tap("composite", "out", cb)
        while not runner.wait(0.1):
            pass
        runner.stop()
    finally:
        release.set()
        t.join()
    assert sorted(seen) == list(range(frames)), "no frame lost"
    assert captures_while_held == [0], "recorded while a compile ran"
    assert runner.program is not None and runner.program.captures >= 1, "not recorded once the compile was done"
    why = runner.program.describe()["eager_reasons"]  # what `muse bench` prints about the eager frames
    assert why.get("a compile was under way", 0) >= 1 and sum(why.values()) == runner.program.describe()["eager_frames"], why


def test_compiles_overlapping_a_moment_are_listed_with_how_they_ended() -> None:
    from muse.graph.compiled import compile_ended, compile_started, compiles_since

    old = compile_started("old")
    compile_ended(old, "done")
    t = old["end"] + 1e-6
    running = compile_started("matte (1280, 720)")
    failed = compile_started("face")
    compile_ended(failed, "failed: RuntimeError")
    seen = {c["what"]: c for c in compiles_since(t)}
    assert "old" not in seen
    assert seen["matte (1280, 720)"]["outcome"] == "running" and seen["matte (1280, 720)"]["end_s"] is None
    assert seen["face"]["outcome"] == "failed: RuntimeError" and seen["face"]["end_s"] >= seen["face"]["start_s"] >= 0
    compile_ended(running, "done")


def test_emulated_graph_refuses_host_reads() -> None:
    g = EmulatedFrameGraph()
    x = torch.arange(6.0)
    with pytest.raises(CaptureError, match="host"):
        g.record(lambda: float(x.sum()))
    with pytest.raises(CaptureError):
        EmulatedFrameGraph().record(lambda: x[x > 2])  # boolean-mask indexing sizes its output on the host


def test_emulated_graph_freezes_host_values_and_replays_in_place() -> None:
    state = torch.zeros(3)
    inp = torch.ones(3)
    scale = [2.0]

    def frame() -> torch.Tensor:
        out = state + inp * scale[0]  # scale[0] is a host value: frozen at recording
        state.copy_(out)
        return out

    g = EmulatedFrameGraph()
    out = g.record(frame)
    assert torch.equal(out, torch.full((3,), 2.0))
    scale[0] = 100.0
    inp.copy_(torch.tensor([1.0, 2.0, 3.0]))
    g.replay()
    assert torch.equal(state, torch.tensor([4.0, 6.0, 8.0])) and out is not state and torch.equal(out, state)


def test_late_value_published_inside_a_recording_is_read_after_replay() -> None:
    flag = LateValue("cpu", (1,), torch.float32)
    src = torch.tensor([1.0])
    g = EmulatedFrameGraph()
    g.record(lambda: flag.publish(src * 3))
    assert flag in g.late
    src.fill_(5.0)
    g.replay()
    for late in g.late:
        late.stamp(None)
    assert flag.read().item() == 15.0 and flag.ready()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_cuda_stream_graph_captured_matches_eager_8bit() -> None:
    """300 frames of the moving demo: the captured program's output equals eager within 1 LSB."""
    frames = 300
    eager, _ = run_tapped(stream_graph("cuda", "off", 1280, 720, frames), ["composite.out"])
    captured, runner = run_tapped(stream_graph("cuda", "on", 1280, 720, frames), ["composite.out"])
    desc = runner.program.describe() if runner.program else {}
    print("capture:", desc)
    assert desc.get("eager_nodes") == {}, desc
    assert len(desc["segments"]) == 1, "the whole frame, switches included, is one recorded segment"
    assert desc["replays"] >= frames - 20
    worst = 0.0
    for i, a in eager["composite.out"].items():
        worst = max(worst, (captured["composite.out"][i] - a).abs().max().item())
    print("worst 8-bit difference:", worst)
    assert worst <= 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_cuda_per_node_capture_times_every_node_and_matches_eager() -> None:
    """The per-node diagnostic records each node alone, times each replay and computes what eager does."""
    frames = 60
    eager, _ = run_tapped(stream_graph("cuda", "off", 1280, 720, frames), ["composite.out"])
    split, runner = run_tapped(stream_graph("cuda", "per_node", 1280, 720, frames), ["composite.out"])
    desc = runner.program.describe() if runner.program else {}
    assert desc.get("eager_nodes") == {}, desc
    assert all(len(s["nodes"]) == 1 for s in desc["segments"]), desc
    timed = {n: s.gpu_ms for n, s in runner.stats.nodes.items() if s.gpu_ms}
    print("per-node replay GPU ms:", {n: round(sorted(v)[len(v) // 2], 3) for n, v in timed.items()})
    assert set(timed) >= {"segment/bundled", "matte", "pose/bundled", "face", "composite"}, timed
    worst = max((split["composite.out"][i] - a).abs().max().item() for i, a in eager["composite.out"].items())
    assert worst <= 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_cuda_live_edit_within_two_frames_no_frame_lost() -> None:
    frames = 60
    text = stream_graph("cuda", "on", 1280, 720, frames)
    base, _ = run_tapped(text, ["face_shape.field", "composite.out"])
    edited, runner = run_tapped(text, ["face_shape.field", "composite.out"], edit=(30, "face_shape", {"eyes": 0.8}))
    assert sorted(edited["composite.out"]) == list(range(frames))
    changed = [i for i in range(frames) if not torch.equal(edited["face_shape.field"][i], base["face_shape.field"][i])]
    assert changed and changed[0] <= 32, changed[:3]
    assert runner.stats.info["capture_programs"] >= 2 and runner.program is not None and runner.program.captures >= 1


def test_tracker_detector_paths_record_without_host_reads() -> None:
    """The detector variants (tracking lost, confirm) record like the tracking one (real photos)."""
    from muse.nodes.face.tracker import FaceTracker
    from muse.nodes.pose.tracker import BlazePoseTracker
    from tests.media import astronaut

    image = torch.from_numpy(astronaut()).permute(2, 0, 1).float().div(255.0).contiguous()
    pose = BlazePoseTracker("pose", torch.device("cpu"), torch.float32, backend="torch")
    face = FaceTracker("face", torch.device("cpu"), torch.float32, backend="torch")
    eager_pose = pose(image, force_detect=True)  # first frame: state is made eagerly, as warm-up does
    face(image)
    for force, confirm in ((True, False), (False, True)):
        pose.plan(force_detect=force, confirm=confirm)
        out = EmulatedFrameGraph().record(lambda: pose(image))
        assert torch.isfinite(out["points"]).all()
    face.plan(force_detect=True)
    out = EmulatedFrameGraph().record(lambda: face(image))
    assert torch.isfinite(out["points"]).all() and eager_pose["present"]


def _chain_outputs(nodes: str, taps: list[str], capture: str, frames: int = 10) -> tuple[dict[str, dict[int, torch.Tensor]], GraphRunner]:
    text = (f"version: 1\nsettings: {{device: cpu, resolution: [256, 144], capture: {capture}}}\nnodes:\n"
            f"  camera: {{type: capture.demo, params: {{width: 256, height: 144, fps: 0, frames: {frames}}}}}\n" + nodes)
    return run_tapped(text, taps)


@pytest.mark.slow
def test_overlay_and_clean_plate_replayed_match_eager(tmp_path: Path) -> None:
    """The other shipped graphs' nodes: the vtuber preview's skeleton overlay, the Studio's clean-plate teacher."""
    import numpy as np
    from PIL import Image

    from muse.nodes.capture.demo import Demo

    plate = Demo("plate", Demo.Params(width=256, height=144, person=False))
    plate.open(type("Ctx", (), {"device": torch.device("cpu"), "dtype": torch.float32, "report": lambda *a: None,
                                "settings": {}, "logger": __import__("logging").getLogger("t")})())
    Image.fromarray(np.asarray(plate.process()["frame"].hwc_uint8())).save(tmp_path / "plate.png")
    nodes = (
        "  pose: {type: pose.blazepose, params: {backend: torch}, inputs: {frame: {from: camera.frame, queue: 100}}}\n"
        "  face: {type: face.landmarks, params: {backend: torch}, inputs: {frame: {from: camera.frame, queue: 100}, pose: pose.keypoints}}\n"
        "  overlay: {type: pose.overlay, inputs: {frame: {from: camera.frame, queue: 100}, keypoints: pose.keypoints, face: face.face}}\n"
        f"  plate: {{type: segment.clean_plate, params: {{plate_file: '{tmp_path / 'plate.png'}'}}, inputs: {{frame: {{from: camera.frame, queue: 100}}}}}}\n"
        "  sink: {type: output.null, inputs: {frame: {from: overlay.out, queue: 100}}}\n"
        "  sink2: {type: output.null, inputs: {mask: {from: plate.mask, queue: 100}}}\n"
    )
    taps = ["overlay.out", "plate.mask"]
    eager, _ = _chain_outputs(nodes, taps, "off")
    replayed, runner = _chain_outputs(nodes, taps, "emulate")
    assert runner.program is not None and runner.program.describe()["eager_nodes"] == {}
    for tap in taps:
        assert len(eager[tap]) == len(replayed[tap]) == 10, tap
        for i, a in eager[tap].items():
            torch.testing.assert_close(replayed[tap][i], a, rtol=0, atol=1e-4, msg=lambda m: f"{tap} frame {i}: {m}")


def test_sinks_of_a_replayed_frame_get_their_own_marked_copies(astronaut) -> None:
    """A replayed frame's outputs are overwritten by the next replay: each sink gets a copy marked as its own
    (`is_sink_copy`), which it may keep uncopied (the preview does while nobody watches); payloads derived from it
    are not marked."""
    from dataclasses import replace

    from muse.graph.payloads import Frame, Mask
    from muse.graph.streams import copy_payload

    frame = Frame(torch.from_numpy(astronaut), timestamp=1.5, index=7)
    mask = Mask(torch.rand(8, 8), 1.5, 7)
    out = copy_payload({"f": frame, "m": [mask]}["f"]), copy_payload([mask])
    f, (m,) = out
    assert f.is_sink_copy() and m.is_sink_copy() and not frame.is_sink_copy()
    assert f.image.data_ptr() != frame.image.data_ptr() and torch.equal(f.image, frame.image)
    assert (f.timestamp, f.index) == (1.5, 7)
    assert not replace(f, index=8).is_sink_copy() and not f.to("cpu").is_sink_copy() and not f.clone().is_sink_copy()
    assert [t.data_ptr() for t in f.tensors()] == [f.image.data_ptr()], "the mark is not a tensor of the payload"


def test_a_further_variant_warms_up_one_frame_and_new_code_the_full_count() -> None:
    """The first recording of a segment and new compiled code wait `warmup` eager frames; a further variant of the
    same code one (its nodes are warm): the pose tracker's check every 30 frames was recorded at its 4th
    occurrence, 2 s into the stream, every earlier one an eager 4K frame."""
    from types import SimpleNamespace

    from muse.graph.program import FrameProgram

    program = SimpleNamespace(warmup=3)
    first = SimpleNamespace(variants={})
    later = SimpleNamespace(variants={"recorded": object()})
    assert FrameProgram._warmup_for(program, first, new_code=False) == 3
    assert FrameProgram._warmup_for(program, later, new_code=False) == 1
    assert FrameProgram._warmup_for(program, later, new_code=True) == 3
    assert FrameProgram._warmup_for(SimpleNamespace(warmup=0), later, new_code=False) == 0


def test_the_pose_trackers_check_is_recorded_at_its_second_occurrence() -> None:
    """stream_4k emulated, the pose tracker checking with its detector every 5 frames: the first recorded variant
    warmed up three frames, the check's variant one, then each is recorded."""
    frames = 26
    text = stream_graph("cpu", "emulate", 256, 144, frames)
    sets = {**TORCH_NODES, "pose/bundled": {"backend": "torch", "confirm_every": 5}}
    runner = GraphRunner(validate_text(text, "stream.yaml", load_registry(), sets, base_dir=GRAPHS))
    seen: list[list[int]] = []

    def cb(v: Any) -> None:
        if v.index == frames - 1:  # the recordings are let go when the runner stops: look before
            assert runner.program is not None
            seg = next(s for s in runner.program.segments if s.variants)
            seen.append([seg.warm[k] for k in seg.variants])  # occurrences of each recorded variant, in order

    runner.start()
    runner.tap("composite", "out", cb)
    while not runner.wait(0.1):
        pass
    runner.stop()
    assert seen and len(seen[0]) >= 2, seen  # the tracking variant and the check's
    assert seen[0][0] == 4 and all(n == 2 for n in seen[0][1:]), seen  # 3 eager + recorded; 1 eager + recorded


@pytest.mark.cuda
def test_cuda_recording_runs_no_garbage_collection() -> None:
    """No collection may run destructors inside a capture (an old CUDA graph reset there breaks the recording):
    the recording runs with the collector off, and it is on again after, also when the frame raises."""
    import gc

    from muse.graph.capture import CudaFrameGraph
    from muse.graph.streams import new_stream

    stream = new_stream(torch.device("cuda"))
    seen: list[bool] = []

    def frame() -> torch.Tensor:
        seen.append(gc.isenabled())
        return torch.ones(4, device="cuda") * 2

    assert gc.isenabled()
    graph = CudaFrameGraph(stream)
    out = graph.record(frame)
    graph.replay()
    torch.cuda.synchronize()
    assert seen == [False] and gc.isenabled() and out.tolist() == [2.0] * 4

    def broken() -> None:
        seen.append(gc.isenabled())
        raise ValueError("a node failed while recording")

    with pytest.raises(ValueError):
        CudaFrameGraph(stream).record(broken)
    assert seen[-1] is False and gc.isenabled()


@pytest.mark.cuda
def test_cuda_frame_graph_is_launched_directly_unless_it_draws_random_numbers() -> None:
    """A replay launches the recorded graph with cudaGraphLaunch (less host time than torch's replay) and computes
    the same; a graph that draws random numbers keeps torch's replay, which moves the generator: each replay
    draws new numbers."""
    pytest.importorskip("cupy")
    from muse.graph.capture import CudaFrameGraph
    from muse.graph.streams import new_stream, on_stream

    stream = new_stream(torch.device("cuda"))
    count = torch.zeros(4, device="cuda")
    plain = CudaFrameGraph(stream)
    assert plain.launched_by == "not yet"
    plain.record(lambda: count.add_(1.0))
    with on_stream(stream):
        for _ in range(5):
            plain.replay()
    stream.synchronize()
    assert plain.launched_by == "cudaGraphLaunch" and count.tolist() == [5.0] * 4

    drawn = torch.zeros(64, device="cuda")
    noisy = CudaFrameGraph(stream)
    noisy.record(lambda: drawn.copy_(torch.rand(64, device="cuda")))
    seen = []
    with on_stream(stream):
        for _ in range(3):
            noisy.replay()
            seen.append(drawn.clone())
    stream.synchronize()
    assert noisy.launched_by == "torch"
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    plain.release()
    noisy.release()


def test_on_stream_without_cuda_is_a_no_op() -> None:
    """`on_stream(None)` (a CPU runner's streams) changes nothing and lets exceptions through."""
    from muse.graph.streams import on_stream

    with on_stream(None):
        pass
    with pytest.raises(KeyError):
        with on_stream(None):
            raise KeyError("passed through")


@pytest.mark.cuda
def test_cuda_on_stream_sets_and_restores_the_current_stream() -> None:
    """`on_stream(s)` is `torch.cuda.stream(s)` for less host time: `s` is current inside, the one before after,
    nested too and when the block raises."""
    from muse.graph.streams import new_stream, on_stream

    before = torch.cuda.current_stream()
    a, b = new_stream(torch.device("cuda")), new_stream(torch.device("cuda"))
    with on_stream(a):
        assert torch.cuda.current_stream().cuda_stream == a.cuda_stream
        with on_stream(b):
            assert torch.cuda.current_stream().cuda_stream == b.cuda_stream
        assert torch.cuda.current_stream().cuda_stream == a.cuda_stream
    assert torch.cuda.current_stream().cuda_stream == before.cuda_stream
    with pytest.raises(RuntimeError):
        with on_stream(a):
            raise RuntimeError("left early")
    assert torch.cuda.current_stream().cuda_stream == before.cuda_stream


@pytest.mark.cuda
def test_cuda_recorded_frame_writes_the_clock_it_is_given_before_each_launch() -> None:
    """The frame clock written by the recording's own memset nodes: each launch's nodes read the time set just
    before it (queued launches keep theirs), for times whose high word changes too."""
    from muse.graph.capture import CudaFrameGraph
    from muse.graph.frame_clock import ClockNodes
    from muse.graph.streams import new_stream, on_stream

    clock = torch.zeros((), dtype=torch.float64, device="cuda")
    assert ClockNodes.available(clock)
    stream = new_stream(torch.device("cuda"))
    nodes = ClockNodes(clock)
    seen = torch.zeros(8, dtype=torch.float64, device="cuda")
    slot = torch.zeros((), dtype=torch.long, device="cuda")

    def frame() -> None:
        nodes.record(stream)
        seen.index_copy_(0, slot.view(1), (clock * 2.0).view(1))  # this launch's clock, into its own slot
        slot.add_(1)

    graph = CudaFrameGraph(stream)
    graph.record(frame)
    bound = nodes.bind(graph.graph.raw_cuda_graph(), graph.graph.raw_cuda_graph_exec())
    times = [0.0, 1 / 60, 2 / 60, 3600.5, 3600.5 + 1 / 60, 86400.25, 1e-9, 12345.678]
    with on_stream(stream):
        for t in times:  # all queued before any is read
            bound.set(t)
            graph.replay()
    stream.synchronize()
    assert seen.tolist() == [2.0 * t for t in times]
    assert clock.item() == times[-1]
    graph.release()


def test_frame_clock_halves_and_where_it_is_not_written_in_the_recording() -> None:
    """The clock's two 32-bit words put back together are the time; a CPU clock (or any but a CUDA float64
    scalar) is never written by a recording (the runner fills it eagerly, as before)."""
    import struct

    from muse.graph.frame_clock import ClockNodes, _halves

    for t in (0.0, 1 / 60, 3600.5, 86400.25, 1e-9, 123456.789):
        lo, hi = _halves(t)
        assert struct.unpack("<d", struct.pack("<II", lo, hi))[0] == t
    assert not ClockNodes.available(torch.zeros((), dtype=torch.float64))
    assert not ClockNodes.available(torch.zeros(2, dtype=torch.float64))


def test_replayed_outputs_only_read_inside_keep_the_recorded_timing_until_they_stand_in() -> None:
    """A replayed frame gives its timing only to outputs something outside the recording reads (stream_4k: the
    composite, which feeds the outputs); a held output of the others, standing in after a fault, gets the timing
    of the replayed frame that wrote it."""
    from muse.graph.guard import NodeGuard
    from muse.graph.payloads import Frame
    from muse.graph.registry import load_registry
    from muse.graph.replayed import seen_outside, timing_of
    from muse.graph.validate import load_graph

    class Runner:
        graph = load_graph(str(REPO / "graphs" / "stream_4k.yaml"), load_registry())

    nodes = ["camera", "pose/bundled", "segment/bundled", "segment/switch", "matte", "pose/switch", "face", "room",
             "steady", "body_shape", "face_shape", "reshape", "composite"]
    outside = seen_outside(Runner(), nodes)
    assert "composite" in outside
    assert not outside & {"matte", "face", "steady", "body_shape", "face_shape", "reshape", "room"}

    recorded = Frame(torch.zeros((4, 4, 3), dtype=torch.uint8), timestamp=0.5, index=30)
    now = Frame(torch.zeros((4, 4, 3), dtype=torch.uint8), timestamp=7.25, index=435)
    guard = NodeGuard("face")
    guard.last, guard.last_timing = {"frame": recorded}, (now, timing_of(now))
    held = guard.last_outputs()["frame"]
    assert (held.timestamp, held.index) == (7.25, 435) and held.image is recorded.image
    assert (recorded.timestamp, recorded.index) == (0.5, 30)  # the recording's own payload is not touched
    guard.last_timing = None
    assert guard.last_outputs()["frame"] is recorded


@pytest.mark.cuda
def test_cuda_recorded_frame_copies_each_launch_its_own_input_in() -> None:
    """A segment's input copied in by the recording's own memcpy node: each launch reads the buffer it was pointed
    at just before (three launches queued from three buffers, each result its own); a buffer that cannot be copied
    flat (a transposed view) switches the node off and is copied before the launch, and the next plain one switches
    it back on."""
    from muse.graph.capture import CudaFrameGraph
    from muse.graph.frame_copies import InputCopies, available
    from muse.graph.payloads import Frame
    from muse.graph.streams import new_stream, on_stream

    assert available()
    stream = new_stream(torch.device("cuda"))
    frames = [Frame(torch.full((48, 64, 3), 10 * (i + 1), dtype=torch.uint8, device="cuda"), timestamp=i / 60, index=i)
              for i in range(3)]
    static_in = {("demo", "frame"): Frame(torch.zeros(48, 64, 3, dtype=torch.uint8, device="cuda"), timestamp=0.0, index=0)}
    seen = torch.zeros(8, dtype=torch.float32, device="cuda")
    slot = torch.zeros((), dtype=torch.long, device="cuda")
    copies = InputCopies()

    def frame() -> None:
        copies.record(stream, static_in, {("demo", "frame"): frames[0]})
        seen.index_copy_(0, slot.view(1), static_in[("demo", "frame")].image.float().mean().view(1))
        slot.add_(1)

    graph = CudaFrameGraph(stream)
    graph.record(frame)
    bound = copies.bind(graph.graph.raw_cuda_graph(), graph.graph.raw_cuda_graph_exec(), static_in)
    assert bound.count == 1
    base = torch.arange(48 * 64 * 3, device="cuda").remainder(251).to(torch.uint8)
    odd = Frame(base.view(64, 48, 3).transpose(0, 1), timestamp=0.1, index=9)  # not contiguous: no flat copy
    order = [frames[2], frames[0], frames[1], odd, frames[2]]
    with on_stream(stream):
        for f in order:  # all queued before any is read
            bound.before_launch({("demo", "frame"): f}, stream)
            graph.replay()
    stream.synchronize()
    want = [30.0, 10.0, 20.0, float(odd.image.float().mean()), 30.0]
    assert seen[:5].tolist() == pytest.approx(want, abs=1e-3)
    graph.release()


def test_input_copies_are_recorded_only_for_tensors_one_flat_copy_fills() -> None:
    """Which inputs a recording may copy in itself: same device, dtype and shape, both contiguous, not the same
    memory; anything else (here CPU tensors) is copied by the runtime before the launch, as before."""
    from muse.graph.frame_copies import _copyable, _nth, _statics
    from muse.graph.payloads import Frame, Mask

    a, b = torch.zeros(4, 5, 3, dtype=torch.uint8), torch.ones(4, 5, 3, dtype=torch.uint8)
    assert not _copyable(a, b)  # not on a GPU
    f = Frame(a, timestamp=0.0, index=0)
    assert _nth(f, 0) is a and _nth(f, 1) is None and _nth("not a payload", 0) is None
    static = {("b", "mask"): Mask(torch.zeros(4, 5)), ("a", "frame"): f, ("c", "n"): 3}
    assert [(k, i) for k, i, _t in _statics(static)] == [(("a", "frame"), 0), (("b", "mask"), 0)]


class _KeepFrames(Node):
    """A sink that keeps every frame it is given (on the host) and whether it was its own copy."""

    node_type = "test.keep_frames"
    description = "test"
    frame: In[Frame]
    got: dict[int, tuple[torch.Tensor, bool]] = {}

    def process(self, frame: Frame) -> None:
        _KeepFrames.got[frame.index] = (frame.image.float().cpu(), frame.is_sink_copy())


def _run_kept(capture: str, frames: int) -> tuple[dict[int, tuple[torch.Tensor, bool]], GraphRunner]:
    import yaml

    from muse.graph.testing import registry_with
    from tests.stream_graph import stream_spec

    sinks = {"keep": {"type": "test.keep_frames", "inputs": {"frame": {"from": "composite.out", "queue": 1000}}}}
    text = yaml.safe_dump(stream_spec(640, 360, frames, device="cuda", capture=capture, sinks=sinks), sort_keys=False)
    registry = registry_with(_KeepFrames)
    _KeepFrames.got = {}
    runner = GraphRunner(validate_text(text, "stream.yaml", registry, TORCH_NODES, base_dir=GRAPHS))
    runner.start()
    while not runner.wait(0.1):
        pass
    runner.stop()
    return dict(_KeepFrames.got), runner


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_cuda_copies_inside_the_recording_give_the_sink_what_eager_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the inputs and the sink's output copied by the recording itself (MUSE_INPUT_COPIES / MUSE_OUTPUT_COPIES
    =graph), the sink gets every frame, each its own buffer (not the recording's, which the next replay
    overwrites) and within 1 LSB of eager execution; `describe()` says the recording made one copy of each."""
    frames = 120
    eager, _ = _run_kept("off", frames)
    monkeypatch.setenv("MUSE_INPUT_COPIES", "graph")
    monkeypatch.setenv("MUSE_OUTPUT_COPIES", "graph")
    captured, runner = _run_kept("on", frames)
    desc = runner.program.describe() if runner.program else {}
    print("capture:", desc)
    assert desc["inputs_copied_inside"] == [1] and desc["outputs_copied_inside"] == [1], desc
    assert desc["replays"] >= frames - 20
    assert sorted(captured) == sorted(eager) == list(range(frames))
    assert all(own for _img, own in captured.values())
    worst = max((captured[i][0] - eager[i][0]).abs().max().item() for i in eager)
    print("worst 8-bit difference:", worst)
    assert worst <= 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_cuda_recorded_frame_copies_its_output_into_a_new_buffer_each_launch() -> None:
    """The sinks' copy made by the recording's last memcpy node: three launches queued, each writes its result into
    the buffer set before it (each taken once); the recording's own buffer holds only the last."""
    from muse.graph.capture import CudaFrameGraph
    from muse.graph.frame_copies import OutputCopies
    from muse.graph.payloads import Frame
    from muse.graph.streams import new_stream, on_stream

    stream = new_stream(torch.device("cuda"))
    counter = torch.zeros((), dtype=torch.float32, device="cuda")
    copies = OutputCopies()
    out: dict[str, Frame] = {}

    def frame() -> None:
        counter.add_(1.0)
        out["f"] = Frame((counter * torch.ones(36, 64, 3, device="cuda")).to(torch.uint8), timestamp=0.0, index=0)
        copies.record(stream, [out["f"]])

    graph = CudaFrameGraph(stream)
    graph.record(frame)
    bound = copies.bind(graph.graph.raw_cuda_graph(), graph.graph.raw_cuda_graph_exec())
    assert bound.count == 1
    taken = []
    with on_stream(stream):
        for _ in range(3):
            bound.before_launch()
            graph.replay()
            got = bound.take(out["f"])
            assert got is not None and got.is_sink_copy() and bound.take(out["f"]) is None
            taken.append(got)
    stream.synchronize()
    assert [int(t.image.float().mean()) for t in taken] == [1, 2, 3]
    assert int(out["f"].image.float().mean()) == 3
    graph.release()


def test_output_copies_are_taken_once_and_only_whole() -> None:
    """`BoundOutputs.take`: a payload whose every tensor has this launch's copy comes back with the copies in
    place (timing kept, marked as the sink's own), once; one with a tensor that has none gives None."""
    from muse.graph.frame_copies import BoundOutputs
    from muse.graph.payloads import Frame, Mask

    static, other = torch.zeros(4, 5, 3, dtype=torch.uint8), torch.zeros(4, 5)
    outs = BoundOutputs.__new__(BoundOutputs)
    copy = torch.full((4, 5, 3), 7, dtype=torch.uint8)
    outs.ready = {static.data_ptr(): copy}
    assert outs.take(Mask(other)) is None and outs.take(None) is None
    got = outs.take(Frame(static, timestamp=1.5, index=42))
    assert got is not None and got.image is copy and got.is_sink_copy() and (got.timestamp, got.index) == (1.5, 42)
    assert outs.take(Frame(static, timestamp=1.5, index=42)) is None and not outs.ready


def test_the_recording_makes_its_edge_copies_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """`frame_copies.wanted`: on by default where the driver has the calls, off with `MUSE_INPUT_COPIES=eager` (or
    the output side's), off where the driver lacks them, and a misspelt value is an error naming the variable."""
    from muse.graph import frame_copies

    monkeypatch.setattr(frame_copies, "available", lambda: True)
    monkeypatch.delenv("MUSE_INPUT_COPIES", raising=False)
    monkeypatch.delenv("MUSE_OUTPUT_COPIES", raising=False)
    assert frame_copies.wanted("input") and frame_copies.wanted("output")
    monkeypatch.setenv("MUSE_OUTPUT_COPIES", "eager")
    assert frame_copies.wanted("input") and not frame_copies.wanted("output")
    monkeypatch.setenv("MUSE_INPUT_COPIES", "graf")
    with pytest.raises(ValueError, match="MUSE_INPUT_COPIES='graf'"):
        frame_copies.wanted("input")
    monkeypatch.setattr(frame_copies, "available", lambda: False)
    monkeypatch.setenv("MUSE_INPUT_COPIES", "graph")
    assert not frame_copies.wanted("input")
