"""The convolution engine of the bundled models on CUDA (muse.models.conv_engine): `MUSE_CONV`, the margin
that keeps cuDNN on near-ties, the flags restored after a call; on the GPU machine, the timed choice made once
before anything is captured and both engines giving the same landmarks on a real face."""

from __future__ import annotations

import pytest
import torch

from muse.models import conv_engine
from muse.models.backends import TorchBackend


def test_conv_mode_reads_muse_conv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSE_CONV", raising=False)
    assert conv_engine.conv_mode() == "auto"
    assert conv_engine.conv_mode("cudnn") == "cudnn"
    monkeypatch.setenv("MUSE_CONV", "Native")
    assert conv_engine.conv_mode("cudnn") == "native"  # the variable wins over the code's default
    monkeypatch.setenv("MUSE_CONV", "fastest")
    with pytest.raises(ValueError, match="MUSE_CONV='fastest'.*auto, cudnn, native"):
        conv_engine.conv_mode()


def test_near_ties_keep_cudnn() -> None:
    assert conv_engine.faster_engine(1.00, 0.97)  # 3 % is noise: cuDNN
    assert not conv_engine.faster_engine(0.40, 0.28)  # the H200's face mesh: torch's own
    assert conv_engine.faster_engine(0.30, 0.40)


def test_flags_come_back_after_a_call() -> None:
    b = torch.backends
    before = b.cudnn.enabled, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32
    with conv_engine.conv_flags(False, tf32=False):
        assert not b.cudnn.enabled and not b.cudnn.allow_tf32 and not b.cuda.matmul.allow_tf32
    assert (b.cudnn.enabled, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == before
    with pytest.raises(RuntimeError), conv_engine.conv_flags(False, tf32=True):
        raise RuntimeError("a model that fails mid-call")
    assert (b.cudnn.enabled, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == before


def test_cpu_backend_makes_no_choice() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    backend = TorchBackend(model, "cpu")
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(backend(x), model(x))
    assert backend.describe()["conv"] == "cudnn" and "conv_ms" not in backend.describe()


def _face(astronaut) -> torch.Tensor:
    """The astronaut's face, 192x192, as the face mesh wants it."""
    import torch.nn.functional as F

    img = torch.from_numpy(astronaut).permute(2, 0, 1)[None].float().div(255)
    return F.interpolate(img[:, :, 20:240, 120:340], size=(192, 192), mode="bilinear", antialias=True)


@pytest.mark.cuda
def test_cuda_choice_is_timed_once_and_both_engines_agree(astronaut, monkeypatch: pytest.MonkeyPatch) -> None:
    from muse.models.bundled import load_model

    monkeypatch.delenv("MUSE_CONV", raising=False)
    x = _face(astronaut).cuda()
    points = {}
    for mode in ("cudnn", "native"):
        model = load_model("face_landmark", device=torch.device("cuda"), dtype=torch.float16)
        backend = TorchBackend(model, "cuda", torch.float16, channels_last=True, conv=mode)
        points[mode] = backend(x)[0].float().view(-1, 3)[:, :2]
        assert backend.describe()["conv"] == mode
        assert backend.channels_last is (mode == "cudnn")  # torch's own depthwise kernels want NCHW weights
    # fp16 either way: the 468 points in input pixels land within half a pixel of each other
    assert float((points["cudnn"] - points["native"]).abs().max()) < 0.5
    assert 40 < float(points["cudnn"][:, 0].mean()) < 150  # a face was found in the crop, not noise

    conv_engine._CHOICE.clear()
    auto = TorchBackend(load_model("face_landmark", device=torch.device("cuda"), dtype=torch.float16), "cuda", torch.float16)
    first = auto(x)[0]
    d = auto.describe()
    assert d["conv"] in ("cudnn", "native") and set(d["conv_ms"]) == {"cudnn", "native"}
    assert d["conv"] == ("native" if not conv_engine.faster_engine(d["conv_ms"]["cudnn"], d["conv_ms"]["native"]) else "cudnn")
    twin = TorchBackend(load_model("face_landmark", device=torch.device("cuda"), dtype=torch.float16), "cuda", torch.float16)
    torch.testing.assert_close(twin(x)[0], first)  # the same choice, remembered: not timed again
    assert "conv_ms" not in twin.describe() and twin.describe()["conv"] == d["conv"]
    torch.testing.assert_close(auto(x)[0], first)  # replayed with the engine it was captured with
    assert torch.backends.cudnn.enabled


@pytest.mark.cuda
def test_cuda_exact_fp32_pose_is_exact_with_either_engine(astronaut) -> None:
    """The body landmark model runs in exact fp32 (TF32 moved its arms 50-80 px): torch's own kernels must
    keep it exact too."""
    import torch.nn.functional as F

    from muse.models.bundled import load_model

    img = torch.from_numpy(astronaut).permute(2, 0, 1)[None].float().div(255)
    x = F.interpolate(img, size=(256, 256), mode="bilinear", antialias=True).cuda()
    outs = {}
    for mode in ("cudnn", "native"):
        model = load_model("pose_landmark_full", device=torch.device("cuda"), dtype=torch.float32)
        backend = TorchBackend(model, "cuda", torch.float32, channels_last=False, tf32=False, conv=mode)
        outs[mode] = backend(x)[0].view(-1, 5)[:, :2]
    assert float((outs["cudnn"] - outs["native"]).abs().max()) < 0.01  # pixels of the 256 px input
