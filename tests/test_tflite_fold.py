"""The load-time folds of the bundled models (muse/models/tflite/fold.py): fewer steps a call, the same
outputs as the graph TFLite wrote (float rounding aside), on real pictures, batched, and called again; the
convolution epilogues (muse/models/tflite/epilogue.py): the plain form bitwise the unfused steps on the CPU, and
on the GPU machine the CuPy kernel against its torch twin, in the bundled models and inside a CUDA graph."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from muse.models import bundled
from muse.models.conv_engine import conv_flags
from muse.models.tflite import epilogue as epi
from muse.models.tflite.builder import load_artifact
from muse.models.tflite.epilogue import ConvEpilogue, epilogue, step_errors
from muse.models.tflite.fold import ChannelPadAdd, fold_for_inference
from muse.models.tflite.ops import Binary, Conv, Pad, PRelu, Unary

TRACKED = ["selfie_segmentation", "selfie_segmentation_landscape", "pose_landmark_full", "face_landmark", "iris_landmark"]


@pytest.fixture(scope="module")
def imported() -> None:
    bundled.import_models(None, os.environ.get(bundled.MODELS_FROM_ENV) or None, onnx=False)


def _steps(model: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(s, kind) for s in model.steps)


def _inside(model: torch.nn.Module, kind: type) -> int:
    """Modules of `kind` anywhere in the model, also inside fused steps."""
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", bundled.list_models())
def test_folded_model_matches_the_graph_as_written(name: str, imported: None, astronaut, messi) -> None:
    written = bundled.load_model(name, fold=False)
    folded = bundled.load_model(name)
    x = torch.cat([bundled.reference_input(name, astronaut), bundled.reference_input(name, messi)])
    before = x.clone()
    with torch.no_grad():
        ref = written(x)
        got = folded(x)
        again = folded(x)  # in-place adds write only the step's own fresh tensors
    assert torch.equal(x, before)
    for i, (r, g, a) in enumerate(zip(ref, got, again)):
        assert g.shape == r.shape
        scale = max(1.0, float(r.abs().max()))
        assert float((g - r).abs().max()) <= 1e-5 * scale, f"{name} output {i}"
        assert torch.equal(g, a)
    # every uneven padding went into its convolution, and no spatial zero PAD is left before one
    assert not any(isinstance(s, Conv) and s.pre_pad is not None for s in folded.modules())
    assert len(folded.steps) < len(written.steps)
    assert _steps(folded, ConvEpilogue) > 0
    assert bundled.parity_report(name, folded, None)["status"] == "ok"
    # the step check the cuda test uses: every fused step once, named, and on the CPU its plain steps exactly
    steps = step_errors(folded, x)
    assert len(steps) == _steps(folded, ConvEpilogue) and all(err == 0.0 for err, _ in steps)
    assert all(": act1=" in where for _, where in steps)


def test_what_each_model_loses(imported: None) -> None:
    """The pads the tracked models carried: pose landmarks 5 PADs, face mesh 3 channel PADs, face detector 11."""
    pose = bundled.load_model("pose_landmark_full")
    assert _steps(bundled.load_model("pose_landmark_full", fold=False), Pad) == 5 and _steps(pose, Pad) == 0
    mesh = bundled.load_model("face_landmark")
    assert _steps(mesh, Pad) == 0 and _inside(mesh, ChannelPadAdd) == 3
    detector = bundled.load_model("face_detection_short_range")
    assert _steps(detector, Pad) == 0 and _inside(detector, ChannelPadAdd) == 11


def _epilogue_kinds(model: torch.nn.Module) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for s in model.steps:
        if isinstance(s, ConvEpilogue):
            add = "" if s.add is None else (" + pad add" if s.channel_pad else " + add")
            key = f"{'dw ' if s.conv.groups > 1 else ''}{s.act1}{add} {s.act2}".replace(" NONE", "").strip()
            kinds[key] = kinds.get(key, 0) + 1
    return kinds


# Per model: (fused steps by kind, steps a call before and after the epilogue fold). Kinds read "act1 [+ add] act2".
EPILOGUES = {
    "selfie_segmentation": ({"RELU": 16, "LOGISTIC": 10, "HARD_SWISH": 6, "NONE + add": 5, "dw RELU + add": 3}, 136, 93),
    "selfie_segmentation_landscape": ({"RELU": 16, "LOGISTIC": 10, "HARD_SWISH": 6, "NONE + add": 5, "dw RELU + add": 3}, 136, 93),
    "pose_landmark_full": ({"RELU6": 19, "NONE + add RELU6": 15, "NONE + add": 9, "RELU6 + add": 4, "LOGISTIC": 1}, 135, 106),
    "face_landmark": ({"NONE + add PRELU": 17, "NONE + pad add PRELU": 3, "PRELU": 3}, 94, 51),
    "iris_landmark": ({"NONE + add PRELU": 25, "NONE + pad add PRELU": 1, "PRELU": 27}, 168, 89),
    "pose_detection": ({"RELU6": 18, "NONE + add": 9, "NONE + add RELU6": 4, "RELU6 + add": 2}, 101, 86),
    "face_detection_short_range": ({"NONE + pad add RELU": 11, "NONE + add RELU": 5, "RELU": 1}, 79, 46),
}


@pytest.mark.parametrize("name", bundled.list_models())
def test_convolution_epilogues_each_model_gets(name: str, imported: None) -> None:
    """Every convolution followed by its activation, PReLU or residual ADD is one step (face mesh: 23 fused
    steps replace 66, iris 53 replace 132), counted in what the fold returns."""
    kinds, before, after = EPILOGUES[name]
    module, _ = load_artifact(bundled.torch_path(name))
    plain = fold_for_inference(module, epilogue=False)
    assert "conv_epilogue" not in plain and len(module.steps) == before
    again, _ = load_artifact(bundled.torch_path(name))
    done = fold_for_inference(again)
    assert done["conv_epilogue"] == sum(kinds.values())
    assert len(again.steps) == after and _epilogue_kinds(again) == kinds
    assert _epilogue_kinds(bundled.load_model(name)) == kinds


# -- the epilogue variants, on features of a real picture (no random numbers) ----------------------------------
def _from_picture(astronaut, shape: tuple[int, ...], offset: int, scale: float) -> torch.Tensor:
    """Deterministic weights: the picture's bytes, centred and scaled."""
    n = 1
    for v in shape:
        n *= v
    flat = torch.from_numpy(astronaut.reshape(-1)[offset : offset + n].astype("float32").copy())
    return ((flat / 255.0 - 0.5) * scale).view(shape)


def _features(astronaut, channels: int = 8, offset: int = 0) -> torch.Tensor:
    """(2, channels, 24, 40): a 3x3 convolution of two crops of the astronaut (face, and the flag behind)."""
    img = torch.from_numpy(astronaut.copy()).permute(2, 0, 1)[None].float() / 255
    crops = torch.cat([F.interpolate(img[:, :, 30:230, 150:480], size=(24, 40), mode="area"),
                       F.interpolate(img[:, :, 0:120, 0:200], size=(24, 40), mode="area")])
    w = _from_picture(astronaut, (channels, 3, 3, 3), 1000 + offset, 1.5)
    return F.conv2d(crops, w, None, 1, 1)


def _act(name: str, y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """The unfused maths, written out."""
    return {"NONE": lambda v: v, "RELU": F.relu, "RELU6": lambda v: v.clamp(0, 6), "RELU_N1_TO_1": lambda v: v.clamp(-1, 1),
            "TANH": torch.tanh, "LOGISTIC": torch.sigmoid, "HARD_SWISH": F.hardswish,
            "PRELU": lambda v: F.prelu(v, slope)}[name](y)


# (conv's fused activation, step after it, residual: None | "add" | "add first" | "pad add", add's activation,
#  step after the add, depthwise)
VARIANTS = [
    ("RELU6", None, None, "NONE", None, False),
    ("RELU", None, None, "NONE", None, False),
    ("RELU_N1_TO_1", None, None, "NONE", None, False),
    ("TANH", None, None, "NONE", None, False),
    ("NONE", "PRELU", None, "NONE", None, False),
    ("NONE", "LOGISTIC", None, "NONE", None, False),
    ("NONE", "HARD_SWISH", None, "NONE", None, False),
    ("NONE", None, "add", "NONE", None, False),
    ("NONE", None, "add first", "RELU6", None, False),
    ("RELU6", None, "add", "NONE", None, False),
    ("NONE", None, "add", "NONE", "PRELU", False),
    ("NONE", None, "add first", "NONE", "RELU", False),
    ("NONE", None, "pad add", "NONE", "PRELU", False),
    ("NONE", None, "pad add", "NONE", "RELU", False),
    ("NONE", "RELU", "add", "NONE", None, True),
    ("RELU6", None, "add", "RELU6", None, True),
]


def _variant(astronaut, v: tuple, channels: int = 8) -> tuple[ConvEpilogue, dict]:
    conv_act, first, res, add_act, second, dw = v
    c = channels
    wshape = (c, 1, 3, 3) if dw else (c, c, 1, 1)
    weight = _from_picture(astronaut, wshape, 5000, 1.2)
    bias = _from_picture(astronaut, (c,), 9000, 2.0)
    slope = _from_picture(astronaut, (c,), 12000, 0.8)
    conv = Conv(weight.clone(), bias.clone(), (1, 1), (1, 1), ((1, 1), (1, 1)) if dw else ((0, 0), (0, 0)), c if dw else 1, conv_act)

    def step(kind: str | None) -> torch.nn.Module | None:
        if kind is None:
            return None
        return PRelu(slope.clone()) if kind == "PRELU" else Unary(kind)

    add = None if res is None else (ChannelPadAdd(add_act) if res == "pad add" else Binary("ADD", None, False, add_act))
    fused = ConvEpilogue(conv, step(first), add, step(second), residual_first=res == "add first", channel_pad=res == "pad add")
    return fused, {"weight": weight, "bias": bias, "slope": slope, "dw": dw}


def _unfused(v: tuple, p: dict, x: torch.Tensor, r: torch.Tensor | None, bias: bool = True) -> torch.Tensor:
    conv_act, first, res, add_act, second, dw = v
    y = F.conv2d(x, p["weight"], p["bias"] if bias else None, 1, 1 if dw else 0, 1, x.shape[1] if dw else 1)
    if not bias:
        y = y + p["bias"].view(1, -1, 1, 1)
    y = _act(first or conv_act, y, p["slope"])
    if res is not None:
        y = (r + y if res == "add first" else y + F.pad(r, (0, 0, 0, 0, 0, y.shape[1] - r.shape[1])))
        y = _act(add_act, y, p["slope"])
    return _act(second or "NONE", y, p["slope"])


def _residual(astronaut, v: tuple, channels: int = 8) -> torch.Tensor | None:
    if v[2] is None:
        return None
    return _features(astronaut, channels // 2 if v[2] == "pad add" else channels, offset=333)


@pytest.mark.parametrize("v", VARIANTS, ids=lambda v: "-".join(str(p) for p in v))
def test_epilogue_fallback_is_the_unfused_steps(v: tuple, astronaut) -> None:
    """On the CPU a fused step runs the original steps: bitwise what they gave; the torch twin of the kernel
    (bias added after a convolution without it) is the same maths."""
    fused, p = _variant(astronaut, v)
    x = _features(astronaut)
    r = _residual(astronaut, v)
    r_before = None if r is None else r.clone()
    with torch.no_grad():
        ref = _unfused(v, p, x, r)
        got = fused(x, r) if r is not None else fused(x)
        assert torch.equal(got, ref)
        assert r is None or torch.equal(r, r_before)  # the residual is only read
        y = F.conv2d(x, p["weight"], None, 1, 1 if v[5] else 0, 1, x.shape[1] if v[5] else 1)
        s1 = p["slope"] if v[1] == "PRELU" else None
        s2 = p["slope"] if v[4] == "PRELU" else None
        twin = epilogue(y.clone(), p["bias"], fused.act1, s1, r, fused.act2, s2, backend="torch")
        assert torch.equal(twin, _unfused(v, p, x, r, bias=False))
        torch.testing.assert_close(twin, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,pad", [(1, 1, 0), (3, 2, 1), (2, 2, 0), (4, 2, 1)])
@pytest.mark.parametrize("batch", [1, 2])
def test_convolution_as_a_gemm(kernel: int, stride: int, pad: int, batch: int, astronaut) -> None:
    """With cuDNN off the fused step runs its convolution as one GEMM (no bias fill before it): the same values."""
    x = _features(astronaut)[:batch]
    w = _from_picture(astronaut, (6, 8, kernel, kernel), 2000, 1.0)
    conv = Conv(w.clone(), torch.zeros(6), (stride, stride), (1, 1), ((pad, pad), (pad, pad)), 1, "NONE")
    fused = ConvEpilogue(conv, Unary("RELU"))
    with torch.no_grad(), conv_flags(False, tf32=False):
        got = fused._conv(x)
    torch.testing.assert_close(got, F.conv2d(x, w, None, stride, pad), rtol=1e-5, atol=1e-5)
    assert got.is_contiguous()


def test_epilogue_fold_can_be_left_out(imported: None) -> None:
    module, _ = load_artifact(bundled.torch_path("face_landmark"))
    fold_for_inference(module, epilogue=False)
    assert _steps(module, ConvEpilogue) == 0 and _steps(module, PRelu) == 23


@pytest.mark.parametrize("pads", [(0, 1, 0, 1), (1, 2, 1, 2), (2, 0, 1, 0), (1, 1, 0, 2)])
@pytest.mark.parametrize("groups", [1, 3])
def test_uneven_padding_inside_the_convolution(pads: tuple[int, int, int, int], groups: int, astronaut) -> None:
    img = torch.from_numpy(astronaut[100:164, 180:250].copy()).permute(2, 0, 1)[None].float() / 255  # 64x70, odd/even
    torch.manual_seed(0)
    weight = torch.randn(6, 3 // groups, 3, 5)
    bias = torch.randn(6)
    conv = Conv(weight.clone(), bias, (2, 2), (1, 1), ((pads[2], pads[3]), (pads[0], pads[1])), groups, "NONE")
    expected = F.conv2d(F.pad(img, pads), weight, bias, 2, 0, 1, groups)
    assert conv.pre_pad is not None or pads[0] == pads[1] and pads[2] == pads[3]
    assert conv.set_pads(*pads) and conv.pre_pad is None
    assert torch.allclose(conv(img), expected, atol=1e-5)


def test_folded_model_exports_to_onnx(imported: None, basketball, tmp_path) -> None:
    """The in-place channel add exports in its plain form: ONNX Runtime gives what the folded torch module gives."""
    ort = pytest.importorskip("onnxruntime")
    from muse.models.backends import export_onnx

    name = "face_detection_short_range"  # 11 channel PAD + ADD folds
    model = bundled.load_model(name)
    x = bundled.reference_input(name, basketball)
    path = export_onnx(model, x, tmp_path / "folded.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    for o, r in zip(outs, ref):
        assert abs(o - r.numpy()).max() <= bundled.PARITY_RTOL * max(1.0, float(r.abs().max()))


# -- on the GPU machine: the CuPy kernel ------------------------------------------------------------------------
def _count_launches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the fused steps that ran the CuPy kernel (not their plain form)."""
    count = [0]
    real = epi.epilogue_cupy

    def spy(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(epi, "epilogue_cupy", spy)
    return count


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_epilogue_kernel_matches_its_torch_twin(dtype: torch.dtype, channels_last: bool, astronaut) -> None:
    pytest.importorskip("cupy")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = _features(astronaut, 16).cuda()
    assert epi.usable(x.to(dtype))
    for v in VARIANTS:
        _, p = _variant(astronaut, v, 16)
        dw = v[5]
        y = F.conv2d(x, p["weight"].cuda(), None, 1, 1 if dw else 0, 1, 16 if dw else 1).to(dtype)
        y = y.contiguous(memory_format=fmt)
        r = _residual(astronaut, v, 16)
        r = None if r is None else r.cuda().to(dtype).contiguous(memory_format=fmt)
        act1 = v[1] or v[0]
        act2 = v[4] or v[3]
        slope = p["slope"].cuda().to(dtype)
        args = (p["bias"].cuda().to(dtype), act1, slope if act1 == "PRELU" else None, r, act2, slope if act2 == "PRELU" else None)
        r_before = None if r is None else r.clone()
        ref = epilogue(y.clone(memory_format=fmt), *args, backend="torch")
        out = y.clone(memory_format=fmt)
        got = epilogue(out, *args, backend="cupy")
        assert got.data_ptr() == out.data_ptr()  # in place
        assert r is None or torch.equal(r, r_before)
        tol = 1e-5 if dtype == torch.float32 else 4e-3  # fp16: the twin rounds after every op, the kernel once
        scale = max(1.0, float(ref.float().abs().max()))
        assert float((got.float() - ref.float()).abs().max()) <= tol * scale, v


@pytest.mark.cuda
@pytest.mark.parametrize("name", TRACKED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_cuda_folded_model_with_the_kernel_matches_the_graph_as_written(
        name: str, dtype: torch.dtype, imported: None, astronaut, messi, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both engines (cuDNN on with channels_last as the nodes run it, and off: the GEMMs), one picture and two.

    Each fused step matches its plain steps on the same inputs to the dtype's rounding (a wrong kernel shows here,
    step by step). The whole model is measured against the truth, the model as written in float64: the folded one
    is no farther from it than the model as written is at the same precision, on any engine. (Not against each
    other: a deep model amplifies its rounding, and the two round differently. H200, 2026-12-03, bench/fold_accuracy.py:
    fp16 selfie's mask is up to 0.11 off as written and 0.22 folded, fp32 pose's heatmap 2.6e-4 of its scale both;
    every fused step within 2.2e-6 (fp32) and 3.7e-3 (fp16) of its plain steps.)"""
    pytest.importorskip("cupy")
    launches = _count_launches(monkeypatch)
    dev = torch.device("cuda")
    x64 = torch.cat([bundled.reference_input(name, astronaut), bundled.reference_input(name, messi)]).to(dev, torch.float64)
    with torch.no_grad(), conv_flags(False, tf32=False):
        truth = bundled.load_model(name, device=dev, dtype=torch.float64, fold=False)(x64)
    written = bundled.load_model(name, device=dev, dtype=dtype, fold=False)
    folded = bundled.load_model(name, device=dev, dtype=dtype)
    fused = _steps(folded, ConvEpilogue)
    step_tol, floor = (1e-5, 1e-5) if dtype == torch.float32 else (8e-3, 2e-3)
    worst_written = [0.0] * len(truth)
    worst_folded = [0.0] * len(truth)
    for cudnn, channels_last in ((False, False), (True, True), (True, False)):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        written.to(memory_format=fmt)
        folded.to(memory_format=fmt)
        inp = x64.to(dtype).contiguous(memory_format=fmt)
        for batch in (inp[:1], inp):
            launches[0] = 0
            with torch.no_grad(), conv_flags(cudnn, tf32=False):
                ref = written(batch)
                got = folded(batch)
                assert launches[0] == fused, (cudnn, channels_last)
                steps = [err for err, _ in step_errors(folded, batch)]
            where = f"{name} (cuDNN {cudnn}, channels_last {channels_last}, batch {len(batch)})"
            assert len(steps) == fused and max(steps) <= step_tol, f"{where}: a fused step off by {max(steps):.3g}"
            for i, (r, g, t) in enumerate(zip(ref, got, truth)):
                t = t[:len(batch)]
                scale = max(1.0, float(t.abs().max()))
                worst_written[i] = max(worst_written[i], float((r.double() - t).abs().max()) / scale)
                worst_folded[i] = max(worst_folded[i], float((g.double() - t).abs().max()) / scale)
    for i, (w, f) in enumerate(zip(worst_written, worst_folded)):
        assert f <= 3 * w + floor, f"{name} output {i}: folded {f:.3g} from float64, as written {w:.3g}"


@pytest.mark.cuda
@pytest.mark.parametrize("cudnn", [False, True], ids=["native", "cudnn"])
def test_cuda_epilogue_inside_a_cuda_graph(cudnn: bool, imported: None, astronaut, messi, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded once (the kernel, not the plain steps), replayed on another picture: what the eager model gives."""
    pytest.importorskip("cupy")
    launches = _count_launches(monkeypatch)
    name = "face_landmark"
    dev = torch.device("cuda")
    model = bundled.load_model(name, device=dev, dtype=torch.float16)
    static = bundled.reference_input(name, astronaut).to(dev, torch.float16)
    with torch.no_grad(), conv_flags(cudnn, tf32=True):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                eager = model(static)  # builds the kernel before the capture
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        launches[0] = 0
        with torch.cuda.graph(graph):
            out = model(static)
        assert launches[0] == _steps(model, ConvEpilogue)
        graph.replay()
        torch.cuda.synchronize()
        for o, e in zip(out, eager):
            torch.testing.assert_close(o, e, rtol=1e-3, atol=1e-3)
        static.copy_(bundled.reference_input(name, messi).to(dev, torch.float16))
        graph.replay()
        torch.cuda.synchronize()
        again = model(static)
    for o, e in zip(out, again):
        torch.testing.assert_close(o, e, rtol=1e-3, atol=1e-3)
    assert not torch.equal(out[0], eager[0])  # the replay read the new picture
