"""MODNet: official checkpoint layout (with and without DataParallel's `module.`), clear errors
for corrupt or mismatched files, and the `segment.modnet` node on a real photo."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from muse.graph.node import NodeError
from muse.graph.payloads import Frame
from muse.graph.testing import make_context, run_node, run_node_frames
from muse.models.modnet import (
    MODNet, MODNetMatte, ModnetCheckpointError, load_modnet, load_modnet_state, save_modnet_official, working_size,
)
from muse.nodes.segment.modnet import ModnetSegment


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = MODNet().eval()
    # Non-trivial BatchNorm statistics, so a load that ignored them would show.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("modnet") / "modnet_webcam_portrait_matting.ckpt"
    save_modnet_official(reference, path, data_parallel=True)
    return path


def test_official_layout_keys(official_ckpt, reference):
    raw = torch.load(official_ckpt, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    # The official model registers the backbone twice (MODNet.backbone and LRBranch.backbone).
    assert "module.backbone.model.features.0.0.weight" in raw
    assert "module.lr_branch.backbone.model.features.18.1.running_var" in raw
    assert "module.hr_branch.conv_hr4x.0.layers.1.bnorm.weight" in raw
    assert "module.f_branch.conv_f.1.layers.0.bias" in raw
    assert "module.lr_branch.se_block.fc.2.weight" in raw
    assert len(raw) == len(reference.state_dict()) == 751


def test_loads_with_module_prefix_and_matches(official_ckpt, reference, astronaut):
    model = load_modnet(official_ckpt)
    x = torch.from_numpy(astronaut).permute(2, 0, 1)[None].float().div(255)
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", antialias=True)
    with torch.no_grad():
        want = MODNetMatte(reference)(x)
        got = MODNetMatte(model)(x)
    assert got.shape == (1, 1, 128, 128)
    assert torch.equal(got, want)
    assert 0.0 <= float(got.min()) and float(got.max()) <= 1.0


def test_loads_without_prefix(tmp_path, reference):
    path = save_modnet_official(reference, tmp_path / "plain.ckpt", data_parallel=False)
    state = load_modnet_state(path)
    assert "backbone.model.features.0.0.weight" in state
    model = load_modnet(path)
    assert torch.equal(model.state_dict()["f_branch.conv_f.1.layers.0.weight"], reference.state_dict()["f_branch.conv_f.1.layers.0.weight"])


def test_old_checkpoint_without_num_batches_tracked(tmp_path, reference):
    state = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.ckpt")
    load_modnet(tmp_path / "old.ckpt")  # torch < 0.4.1 saves lack the counter; it must still load


def test_corrupt_file_names_the_file(tmp_path, official_ckpt):
    bad = tmp_path / "modnet_truncated.ckpt"
    bad.write_bytes(official_ckpt.read_bytes()[:5000])
    with pytest.raises(ModnetCheckpointError, match="modnet_truncated.ckpt.*cannot be read"):
        load_modnet(bad)


def test_missing_and_renamed_keys_are_listed(tmp_path, reference):
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    del state["module.f_branch.conv_f.1.layers.0.bias"]
    state["module.f_branch.extra.weight"] = torch.zeros(3)
    state["module.hr_branch.tohr_enc2x.layers.0.weight"] = torch.zeros(5, 5, 1, 1)
    torch.save(state, tmp_path / "mismatch.ckpt")
    with pytest.raises(ModnetCheckpointError) as err:
        load_modnet(tmp_path / "mismatch.ckpt")
    msg = str(err.value)
    assert "mismatch.ckpt" in msg
    assert "missing keys: f_branch.conv_f.1.layers.0.bias" in msg
    assert "unexpected keys: f_branch.extra.weight" in msg
    assert "hr_branch.tohr_enc2x.layers.0.weight (5, 5, 1, 1) != (32, 16, 1, 1)" in msg


def test_wrong_model_file_is_rejected(tmp_path):
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ModnetCheckpointError, match="missing keys: backbone.model.features.0.0.weight"):
        load_modnet(tmp_path / "resnet.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(ModnetCheckpointError, match="evil.ckpt"):
        load_modnet(path)


def test_working_size_is_a_multiple_of_32():
    assert working_size((3840, 2160), 544) == (960, 544)
    assert working_size((1280, 720), 288) == (512, 288)
    assert working_size((640, 480), 100, 150) == (160, 96)


def test_node_on_real_photo(official_ckpt, astronaut):
    out = run_node(ModnetSegment, {"checkpoint": str(official_ckpt), "height": 128}, frame=Frame(torch.from_numpy(astronaut)))
    mask = out["mask"]
    # ctx resolution 1280x720 decides the aspect at open; the 512x512 frame then re-plans to square.
    assert mask.size == (128, 128)
    a = mask.alpha
    assert torch.isfinite(a).all() and 0.0 <= float(a.min()) <= float(a.max()) <= 1.0
    assert float(a.std()) > 1e-3  # a real matte varies over a real picture


def test_node_without_checkpoint_says_what_to_set():
    with pytest.raises(NodeError, match="'seg'.*field 'checkpoint'"):
        node = ModnetSegment("seg", ModnetSegment.Params())
        from muse.graph.testing import make_context

        node.open(make_context("seg"))


def test_node_with_missing_file_names_it(tmp_path):
    from muse.graph.testing import make_context

    node = ModnetSegment("seg", ModnetSegment.Params(checkpoint=str(tmp_path / "nope.ckpt")))
    with pytest.raises(NodeError, match="nope.ckpt not found"):
        node.open(make_context("seg"))


@pytest.mark.cuda
def test_cuda_node_graph_matches_cpu(official_ckpt, astronaut):
    """The GPU path (channels_last, CUDA graph replay) in fp32 matches the CPU; fp16 stays close.

    With random weights fp16 drifts more than trained weights would (measured on an H100:
    mean 0.049 of alpha), so the fp16 bound is on agreement of the person/background call."""
    params = {"checkpoint": str(official_ckpt), "height": 256, "backend": "torch"}
    # Float input: the CPU shrinks uint8 pictures before converting (cheaper), which a random-weight
    # network amplifies; with floats both devices resize the same values.
    frame = Frame(torch.from_numpy(astronaut).permute(2, 0, 1).float().div(255), layout="chw")
    cpu = run_node(ModnetSegment, params, frame=frame)["mask"]
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions round like fp16; this check is about the code path
    try:
        gpu32 = run_node_frames(ModnetSegment, params, [{"frame": frame.to("cuda")}] * 2,
                                ctx=make_context("modnet", "cuda", dtype=torch.float32))[-1]["mask"]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert gpu32.alpha.is_cuda and gpu32.size == cpu.size
    diff32 = (gpu32.alpha.float().cpu() - cpu.alpha).abs()
    assert float(diff32.mean()) < 0.01 and float(np.percentile(diff32.numpy(), 99)) < 0.05
    gpu16 = run_node(ModnetSegment, params, device="cuda", frame=frame.to("cuda"))["mask"]
    same_call = ((gpu16.alpha.float().cpu() > 0.5) == (cpu.alpha > 0.5)).float().mean()
    assert float(same_call) > 0.9
