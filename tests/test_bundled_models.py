"""The bundled model catalogue, cache import (wheel / folder / file), sha256 refusal,
verify, load_model's offline error, ONNX export and the `muse models` CLI."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from muse.models import bundled
from muse.models import cli as models_cli


@pytest.fixture(scope="module")
def tflite_dir(tmp_path_factory) -> Path:
    """The 7 original .tflite files in a plain folder (what an offline user would copy over)."""
    bundled.import_models(None, os.environ.get(bundled.MODELS_FROM_ENV) or None, onnx=False)
    folder = tmp_path_factory.mktemp("tflite")
    for name in bundled.list_models():
        shutil.copy(bundled.model_dir(name) / bundled.CATALOGUE[name].file_name, folder)
    return folder


@pytest.fixture(scope="module")
def imported() -> None:
    """The bundled models in the cache (their .pt weights are all the GPU tests need; no .tflite originals)."""
    bundled.import_models(None, os.environ.get(bundled.MODELS_FROM_ENV) or None, onnx=False)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(bundled.MODELS_FROM_ENV, raising=False)
    bundled._loaded.clear()
    yield tmp_path / "cache"
    bundled._loaded.clear()


def _no_network(*_a, **_k):
    raise bundled.ModelImportError("could not download mediapipe==0.10.14 with pip (no network in this test)")


def test_catalogue_describes_every_model_the_nodes_use() -> None:
    assert bundled.list_models() == [
        "selfie_segmentation", "selfie_segmentation_landscape", "pose_detection", "pose_landmark_full",
        "face_detection_short_range", "face_landmark", "iris_landmark",
    ]
    info = bundled.model_info("pose_detection")
    assert info["input_shape"] == (1, 3, 224, 224) and info["input_range"] == (-1.0, 1.0)
    assert [o["name"] for o in info["outputs"]] == ["Identity", "Identity_1"]
    assert bundled.model_info("selfie_segmentation_landscape")["input_size"] == (256, 144)
    with pytest.raises(bundled.ModelImportError, match="Did you mean 'face_landmark'"):
        bundled.model_info("face_landmarks")


def test_cached_files_have_the_catalogue_sha256(tflite_dir: Path) -> None:
    import hashlib

    for name, m in bundled.CATALOGUE.items():
        assert hashlib.sha256((tflite_dir / m.file_name).read_bytes()).hexdigest() == m.sha256, name


def test_import_from_a_wheel_then_verify_and_load(empty_cache: Path, tflite_dir: Path, tmp_path: Path, messi) -> None:
    # A wheel-shaped zip holding the models at their wheel paths (the real wheel is 35 MB).
    wheel = tmp_path / f"mediapipe-{bundled.WHEEL_VERSION}-cp311-cp311-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for m in bundled.CATALOGUE.values():
            z.write(tflite_dir / m.file_name, m.wheel_path)
    done = bundled.import_models(["selfie_segmentation", "face_landmark"], wheel, onnx=False, progress=None)
    assert [d["name"] for d in done] == ["selfie_segmentation", "face_landmark"]
    assert all(d["parity"]["status"] == "ok" for d in done)
    folder = empty_cache / "models" / "selfie_segmentation"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "selfie_segmentation.pt", "selfie_segmentation.tflite"]
    assert [r["ok"] for r in bundled.verify_models(["selfie_segmentation", "face_landmark"], parity=False)] == [True, True]

    model = bundled.load_model("face_landmark")
    x = bundled.reference_input("face_landmark", messi)
    with torch.no_grad():
        mesh, flag = model(x)
    assert mesh.shape == (1, 1, 1, 1404) and flag.shape == (1, 1, 1, 1)
    pts = mesh.reshape(468, 3)[:, :2]
    assert float(pts.min()) > -50 and float(pts.max()) < 250  # points land around the 192 px input


def test_import_refuses_a_file_with_the_wrong_sha256(empty_cache: Path, tflite_dir: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    # The right name, the wrong model: must be refused and leave nothing behind.
    shutil.copy(tflite_dir / "face_landmark.tflite", fake / "iris_landmark.tflite")
    with pytest.raises(bundled.ModelImportError, match="sha256 .* expected d1744d2a"):
        bundled.import_models(["iris_landmark"], fake, progress=None)
    assert not (empty_cache / "models" / "iris_landmark" / "manifest.json").exists()
    assert not bundled.is_imported("iris_landmark")


def test_verify_reports_a_tampered_model(empty_cache: Path, tflite_dir: Path) -> None:
    bundled.import_models(["iris_landmark"], tflite_dir / "iris_landmark.tflite", onnx=False, progress=None)
    pt = bundled.torch_path("iris_landmark")
    data = bytearray(pt.read_bytes())
    data[-100] ^= 0xFF
    pt.write_bytes(bytes(data))
    (row,) = bundled.verify_models(["iris_landmark"])
    assert not row["ok"] and "changed since import" in row["problems"][0]
    bundled.import_models(["iris_landmark"], tflite_dir, onnx=False, force=True, progress=None)
    assert bundled.verify_models(["iris_landmark"])[0]["ok"]


def test_load_model_offline_says_the_exact_command(empty_cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(bundled, "_pip_download", _no_network)
    with pytest.raises(bundled.ModelNotImportedError) as err:
        bundled.load_model("pose_detection")
    assert "muse models import pose_detection --from" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)  # nodes catching FileNotFoundError see it too


def test_load_model_imports_on_first_use_from_env_folder(empty_cache: Path, tflite_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bundled, "_pip_download", _no_network)
    monkeypatch.setenv(bundled.MODELS_FROM_ENV, str(tflite_dir))
    model = bundled.load_model("selfie_segmentation", dtype=torch.float32)
    assert "importing it once" in capsys.readouterr().err
    assert bundled.is_imported("selfie_segmentation")
    assert not next(model.parameters()).requires_grad
    other = bundled.load_model("selfie_segmentation", dtype=torch.float64)  # each caller owns its copy
    assert next(model.parameters()).dtype == torch.float32 and next(other.parameters()).dtype == torch.float64


def test_onnx_export_runs_in_onnxruntime_like_torch(empty_cache: Path, tflite_dir: Path, basketball) -> None:
    ort = pytest.importorskip("onnxruntime")
    name = "face_detection_short_range"
    bundled.import_models([name], tflite_dir, onnx=False, progress=None)
    path = bundled.onnx_model_path(name)
    assert bundled.read_manifest(name)["onnx_sha256"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = bundled.reference_input(name, basketball)
    x2 = torch.cat([x, x.flip(3)])  # the batch axis is dynamic
    outs = sess.run(None, {"input": x2.numpy()})
    with torch.no_grad():
        ref = bundled.load_model(name)(x2)
    assert [o.shape for o in outs] == [(2, 896, 16), (2, 896, 1)]
    for o, r in zip(outs, ref):
        assert np.abs(o - r.numpy()).max() <= bundled.PARITY_RTOL * max(1.0, float(r.abs().max()))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="muse")
    sub = parser.add_subparsers(dest="command")
    models_cli.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_cli_list_import_verify(empty_cache: Path, tflite_dir: Path, capsys) -> None:
    assert _cli(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 7 and not any(r["imported"] for r in rows)

    assert _cli(["models", "import", "selfie_segmentation_landscape", "--from", str(tflite_dir), "--no-onnx"]) == 0
    assert "parity ok" in capsys.readouterr().out

    assert _cli(["models", "verify", "selfie_segmentation_landscape"]) == 0
    assert "ok" in capsys.readouterr().out
    assert _cli(["models", "verify", "pose_detection"]) == 1  # not imported
    assert "not imported" in capsys.readouterr().out

    assert _cli(["models", "import", "iris_landmark", "--from", str(empty_cache / "nowhere")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_cli_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, muse.models.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@pytest.mark.cuda
def test_fp16_on_the_gpu_matches_the_reference(imported: None, astronaut) -> None:
    for name in bundled.list_models():
        model = bundled.load_model(name, device="cuda", dtype=torch.float16)
        report = bundled.parity_report(name, model, None)
        assert report["status"] == "ok", f"{name}: {report['detail']}"


@pytest.mark.cuda
def test_every_model_replays_as_a_cuda_graph(imported: None) -> None:
    for name in bundled.list_models():
        model = bundled.load_model(name, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
        x = bundled.reference_input(name).to("cuda", torch.float16).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            eager = model(x)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                model(x)  # warm-up outside the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static = model(x)
            graph.replay()
            torch.cuda.synchronize()
        for e, s in zip(eager, static):
            assert torch.allclose(e.float(), s.float(), atol=1e-2, rtol=1e-2), name
