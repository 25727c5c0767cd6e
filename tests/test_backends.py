"""Inference backends: ONNX export + onnxruntime parity with torch on MODNet, export caching,
backend choice and its errors; CUDA-graph replay and TensorRT on the GPU machine."""

from __future__ import annotations

import os

import pytest
import torch

from muse.models.backends import (
    BackendError, OnnxRuntimeBackend, TorchBackend, cached_onnx, create_backend, model_hash, resolve_backend,
    tensorrt_available,
)
from muse.models.modnet import MODNet, MODNetMatte


@pytest.fixture(scope="module")
def matte():
    torch.manual_seed(1)
    return MODNetMatte(MODNet()).eval()


@pytest.fixture(scope="module")
def photo_batch(astronaut):
    x = torch.from_numpy(astronaut).permute(2, 0, 1)[None].float().div(255)
    return torch.nn.functional.interpolate(x, size=(96, 128), mode="bilinear", antialias=True)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def exported(matte, photo_batch, export_dir):
    return cached_onnx(matte, photo_batch, export_dir, "modnet")


def test_onnxruntime_matches_torch(matte, photo_batch, exported, export_dir):
    stamp = exported.stat().st_mtime_ns
    t = create_backend(backend="torch", model=matte, example=photo_batch)
    # Same weights and shape: the cached export is reused, not written again.
    o = create_backend(backend="onnxruntime", model=matte, example=photo_batch, cache_dir=export_dir, stem="modnet")
    assert exported.stat().st_mtime_ns == stamp
    assert isinstance(t, TorchBackend) and isinstance(o, OnnxRuntimeBackend) and o.path == exported
    want, got = t(photo_batch), o(photo_batch)
    assert got.shape == want.shape == (1, 1, 96, 128)
    assert float((got - want).abs().max()) < 1e-4  # fp32 both sides; stated tolerance 1e-4
    assert o.describe()["providers"] == ["CPUExecutionProvider"]


def test_onnx_export_is_keyed_by_weights_and_shape(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1)).eval()
    x = torch.rand(1, 3, 32, 48)
    a = cached_onnx(net, x, tmp_path, "tiny")
    b = cached_onnx(net, x[..., :32], tmp_path, "tiny")
    assert a != b and "1x3x32x48" in a.name and "1x3x32x32" in b.name
    with torch.no_grad():
        net[0].bias.add_(1.0)
    assert cached_onnx(net, x, tmp_path, "tiny") != a  # new weights, new file
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp") or p.startswith(".")]  # no temp files left
    with torch.no_grad():
        assert float((OnnxRuntimeBackend(a, "cpu")(x) - (net(x) - 0)).abs().max()) > 0.1  # old file = old weights


def test_model_hash_follows_weights(matte):
    twin = MODNetMatte(MODNet())
    twin.load_state_dict(matte.state_dict())
    assert model_hash(twin) == model_hash(matte)
    with torch.no_grad():
        twin.modnet.f_branch.conv_f[1].layers[0].bias.add_(0.1)
    assert model_hash(twin) != model_hash(matte)


def test_onnx_file_backend_runs_without_torch_model(matte, photo_batch, exported):
    b = create_backend(backend="auto", onnx_path=exported, example=photo_batch)
    assert b.name == "onnxruntime"
    with torch.no_grad():
        assert float((b(photo_batch) - matte(photo_batch)).abs().max()) < 1e-4


def test_choice_and_errors():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, has_torch_model=True) == "torch"
    assert resolve_backend("auto", cpu, has_torch_model=False) == "onnxruntime"
    with pytest.raises(BackendError, match="unknown backend 'trt'"):
        resolve_backend("trt", cpu, has_torch_model=True)
    with pytest.raises(BackendError, match="needs a torch model"):
        resolve_backend("torch", cpu, has_torch_model=False)
    if not tensorrt_available():
        with pytest.raises(BackendError, match="import tensorrt"):
            resolve_backend("tensorrt", cpu, has_torch_model=True)


def test_corrupt_onnx_names_the_file(tmp_path):
    bad = tmp_path / "student.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(BackendError, match="student.onnx"):
        OnnxRuntimeBackend(bad, "cpu")


@pytest.mark.cuda
def test_cuda_graph_replay_matches_eager(matte, photo_batch):
    x = photo_batch.cuda().half()
    eager = TorchBackend(matte, "cuda", torch.float16, cuda_graph=False)
    graphed = TorchBackend(matte, "cuda", torch.float16, cuda_graph=True)
    graphed.prepare(x)
    assert graphed.describe()["cuda_graph"] and graphed.describe()["graphs"] == 1
    a = graphed(x)
    first = a.clone()
    b = graphed(torch.flip(x, dims=[3]))  # a second replay must not overwrite the first result
    assert torch.equal(a, first) and not torch.equal(a, b)
    ref = eager(x)
    torch.cuda.synchronize()
    assert float((a.float() - ref.float()).abs().max()) < 2e-2


@pytest.mark.cuda
def test_onnxruntime_on_cuda_tensors(matte, photo_batch, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    b = create_backend(backend="onnxruntime", model=matte, example=photo_batch.cuda(), cache_dir=tmp_path, device="cuda",
                       dtype=torch.float16)
    y = b(photo_batch.cuda())
    torch.cuda.synchronize()
    with torch.no_grad():
        assert float((y.float().cpu() - matte(photo_batch)).abs().max()) < 1e-2


@pytest.mark.cuda
def test_tensorrt_engine_cache(matte, photo_batch, tmp_path):
    pytest.importorskip("tensorrt")
    b = create_backend(backend="tensorrt", model=matte, example=photo_batch.cuda(), cache_dir=tmp_path, device="cuda")
    engine = b.engine_path  # type: ignore[attr-defined]
    assert engine.is_file() and engine.with_suffix(".json").is_file()
    stamp = engine.stat().st_mtime_ns
    again = create_backend(backend="tensorrt", model=matte, example=photo_batch.cuda(), cache_dir=tmp_path, device="cuda")
    assert again.engine_path.stat().st_mtime_ns == stamp  # type: ignore[attr-defined]  # reused, not rebuilt
    y = again(photo_batch.cuda())
    torch.cuda.synchronize()
    with torch.no_grad():
        assert float((y.float().cpu() - matte(photo_batch)).abs().mean()) < 1e-2


def test_compile_choice_follows_muse_compile(monkeypatch):
    from muse.models.backends import compile_wanted

    monkeypatch.delenv("MUSE_COMPILE", raising=False)
    assert compile_wanted() is False  # off unless asked for (see docs/models.md)
    monkeypatch.setenv("MUSE_COMPILE", "off")
    assert compile_wanted() is False
    monkeypatch.setenv("MUSE_COMPILE", "on")
    assert compile_wanted() is True
    assert TorchBackend(torch.nn.Identity(), "cpu").describe()["compiled"] is False  # only CUDA models compile


@pytest.mark.parametrize("where", ["compile", "first call"])
def test_a_failed_compile_leaves_the_model_running(matte, photo_batch, monkeypatch, caplog, where, tmp_path):
    """Inductor missing or broken (no compiler, an unsupported op): the model runs uncompiled, with a warning."""
    from muse.models import backends

    def broken(model, **kw):
        if where == "compile":
            raise RuntimeError("no C compiler")

        def call(*a, **k):
            raise RuntimeError("triton: unsupported op")

        return call

    monkeypatch.setattr(backends.torch, "compile", broken)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    with caplog.at_level("WARNING", logger="muse.backends"):
        backend = TorchBackend(matte, "cpu", compile=True)
        first = backend(photo_batch)  # asks for the compile (in the background)
        assert backend._chain.wait(10)
        later = backend(photo_batch)
    assert "runs uncompiled" in caplog.text and not backend.describe()["compiled"]
    with torch.no_grad():
        want = matte(photo_batch)
    torch.testing.assert_close(first, want)
    torch.testing.assert_close(later, want)


@pytest.mark.slow
def test_a_model_compiles_in_the_background_and_then_runs_compiled(photo_batch, monkeypatch, tmp_path):
    """MUSE_COMPILE's code path on the CPU (Inductor writes C++ there): the first calls run the model as it is
    while it compiles on another thread; then the calls run the compiled code, found without compiling again
    (grad mode, shapes and strides as the calls'), with the same output. ~20 s on two cores."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # not the user's cache
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 1, 3, padding=1), torch.nn.Sigmoid()).eval()
    backend = TorchBackend(net, "cpu", compile=True)
    first = backend(photo_batch)
    assert not backend.describe()["compiled"]  # the first call ran the model as it is (and asked for the compile)
    try:
        assert backend._chain.wait(600)
    finally:
        backend._chain.wait(600)  # never leave the compiling thread running into the interpreter's exit
    if backend._chain.compiled is None:
        pytest.skip("Inductor could not compile on this machine (no C++ toolchain?): the model runs uncompiled")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    later = backend(photo_batch)
    assert backend.describe()["compiled"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # nothing compiled on this thread
    torch.testing.assert_close(later, first, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_compiled_bundled_model_matches_uncompiled():
    pytest.importorskip("triton")
    from muse.models.bundled import load_model

    x = torch.rand(1, 3, 192, 192, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    outs = {}
    for comp in (False, True):
        model = load_model("face_landmark", device=torch.device("cuda"), dtype=torch.float16)
        backend = TorchBackend(model, "cuda", torch.float16, cuda_graph=True, channels_last=False, compile=comp)
        out = backend(x)  # compiling starts in the background; this call runs the model as it is
        assert backend._chain.wait(900)
        out = backend(x)
        outs[comp] = [t.float() for t in (out if isinstance(out, (tuple, list)) else [out])]
        assert backend.describe()["compiled"] is comp
    for a, b in zip(outs[False], outs[True]):
        assert float((a - b).abs().max()) < 0.5  # fp16 landmarks in input pixels: measured 0.11 px apart
