"""Issue 13: the bundled models as the CPU path runs them under ONNX Runtime (muse/nodes/cpu/onnx_graph.py).

- PReLUs rewritten as a*x + (1-a)*relu(x): the same outputs as the imported graph (float rounding) on
  real crops, for both forms an export may hold (`PRelu`, and `Where(x >= 0, x, x * a)`).
- Outputs nobody reads left out of the graph: the others unchanged; pose.blazepose on the CPU path gives
  the same keypoints without its person mask while nothing reads `mask`, and the mask again once tapped.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from muse.graph.payloads import Frame
from muse.graph.testing import build_node, make_context


def _model(name: str) -> str:
    from muse.models import bundled

    try:
        return str(bundled.onnx_model_path(name))
    except Exception as exc:  # pragma: no cover - a machine without `muse models import`
        pytest.skip(f"bundled model {name} not imported: {exc}")


def _session(model) -> "object":
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def _crop(photo: np.ndarray, size: int) -> np.ndarray:
    """A real picture as the model's NCHW float input in [0, 1]."""
    img = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None])


def _prelus_as_where(model) -> int:
    """Turn every `PRelu` back into the older export's Where(x >= 0, x, x * a) form (in place)."""
    from onnx import helper, numpy_helper

    nodes, n = [], 0
    for node in model.graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, a = node.input
        y = node.output[0]
        zero = f"{y}/zero"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
        nodes += [
            helper.make_node("GreaterOrEqual", [x, zero], [f"{y}/ge"]),
            helper.make_node("Mul", [x, a], [f"{y}/ax"]),
            helper.make_node("Where", [f"{y}/ge", x, f"{y}/ax"], [y]),
        ]
        n += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return n


@pytest.fixture(scope="module")
def prelu_exports(tmp_path_factory):
    """The face mesh and iris models exported afresh from their torch modules (`PRelu` ops), whatever
    form the user's imported ONNX files hold."""
    import onnx

    from muse.models.bundled import _export_onnx, torch_path
    from muse.models.tflite.builder import load_artifact

    out = {}
    for name in ("face_landmark", "iris_landmark"):
        _model(name)
        module, _ = load_artifact(torch_path(name))
        path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
        _export_onnx(module, path)
        out[name] = onnx.load(str(path))
    return out


@pytest.mark.parametrize("name,size", [("face_landmark", 192), ("iris_landmark", 64)])
@pytest.mark.parametrize("form", ["prelu", "where"])
def test_prelu_rewrite_keeps_the_outputs(prelu_exports, astronaut, messi, name, size, form):
    import onnx

    from muse.nodes.cpu.onnx_graph import rewrite_prelu

    model = onnx.load_from_string(prelu_exports[name].SerializeToString())
    assert any(n.op_type == "PRelu" for n in model.graph.node)
    if form == "where":  # the form older MUSE exports wrote
        assert _prelus_as_where(model) > 0
    original = _session(model.SerializeToString())
    rewritten = onnx.load_from_string(model.SerializeToString())
    assert rewrite_prelu(rewritten) >= 20  # face mesh 23, iris 53
    ops = {n.op_type for n in rewritten.graph.node}
    assert "PRelu" not in ops and "Where" not in ops and "GreaterOrEqual" not in ops
    fast = _session(rewritten.SerializeToString())
    for photo in (astronaut, messi):
        x = _crop(photo, size)
        for a, b in zip(original.run(None, {"input": x}), fast.run(None, {"input": x})):
            scale = float(np.abs(a).max()) + 1e-6
            assert float(np.abs(a - b).max()) <= 1e-5 * scale


def test_dropped_outputs_leave_the_others_unchanged(astronaut):
    from muse.nodes.landmarks.tracking import OrtModel

    path = _model("pose_landmark_full")
    full = OrtModel(path, threads=1)
    lean = OrtModel(path, threads=1, drop_outputs=(2, 4))
    x = torch.from_numpy(_crop(astronaut, 256))
    a, b = full(x), lean(x)
    assert len(a) == len(b) == 5 and b[2] is None and b[4] is None
    for i in (0, 1, 3):
        assert torch.allclose(a[i], b[i], rtol=1e-5, atol=1e-5)
    assert len(lean.session.get_outputs()) == 3  # the mask decoder and world head are not in the graph


def test_pose_on_the_cpu_path_skips_its_mask_while_nothing_reads_it(monkeypatch, astronaut):
    from muse.nodes.pose.blazepose import BlazePose

    monkeypatch.setenv("MUSE_CPU_PATH", "fast")
    _model("pose_landmark_full")
    frame = Frame(torch.from_numpy(np.ascontiguousarray(cv2.resize(astronaut, (1280, 720), interpolation=cv2.INTER_AREA))))
    nodes = {}
    for wanted in (None, frozenset({"keypoints"})):
        node = build_node(BlazePose, {})
        ctx = make_context("pose")
        ctx.wanted_outputs = wanted
        node.open(ctx)
        nodes[wanted] = node
    everything, lean = nodes[None], nodes[frozenset({"keypoints"})]
    for k in range(3):
        f = Frame(torch.roll(frame.image, shifts=3 * k, dims=1), index=k)
        a, b = everything.process(f), lean.process(f)
        assert "mask" in a and "mask" not in b
        assert bool(a["keypoints"].confidence.gt(0.5).sum() >= 8)  # a person is tracked
        assert torch.allclose(a["keypoints"].points, b["keypoints"].points, atol=1e-3)
    # the editor taps `mask`: the next frame has it again, the same as the node that always made it
    lean.ctx.wanted_outputs = frozenset({"keypoints", "mask"})
    f = Frame(torch.roll(frame.image, shifts=9, dims=1), index=3)
    a, b = everything.process(f), lean.process(f)
    assert "mask" in b and float((a["mask"].alpha - b["mask"].alpha).abs().max()) < 1e-4
