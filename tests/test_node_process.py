"""Every registered node runs `process` on real inputs (the astronaut photo and what the
bundled models make of it), or refuses at `open` with a NodeError that names the node.

Outputs must be the node's declared ports, each None or the declared payload type."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pyvirtualcam
import torch

from muse.graph.node import Node, NodeError
from muse.graph.payloads import Control, Frame, Payload
from muse.graph.registry import load_registry
from muse.graph.testing import make_context, run_node
from muse.nodes.capture.camera import Camera

REGISTRY = load_registry()
IDS = REGISTRY.ids()

# Nodes that need something the user makes (a trained profile, a downloaded checkpoint): with
# their defaults they must refuse at open, naming the node and the field to set.
NEEDS_USER_FILES = {"segment.student", "pose.student", "studio.dataset_writer", "pose.vitpose", "segment.modnet"}
# Outputs that record either a frame or a mask (one per node): given the frame.
ONE_OF = {"output.file", "output.preview", "output.stream", "output.virtualcam", "output.null"}


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def payloads(astronaut) -> dict[str, Any]:
    """Real payloads of every type, made by the real nodes from the astronaut photo."""
    from muse.nodes.face.landmarks import FaceLandmarksNode
    from muse.nodes.pose.blazepose import BlazePose
    from muse.nodes.segment.selfie import SelfieSegment
    from muse.nodes.warp.face import FaceWarp

    frame = Frame(torch.from_numpy(astronaut.copy()), timestamp=0.0, index=0)
    mask = run_node(SelfieSegment, {}, frame=frame)["mask"]
    pose = run_node(BlazePose, {}, frame=frame)["keypoints"]
    face = run_node(FaceLandmarksNode, {}, frame=frame)["face"]
    field = run_node(FaceWarp, {"eyes": 0.5}, landmarks=face, frame=frame)["field"]
    return {"Frame": frame, "Mask": mask, "Keypoints": pose, "FaceLandmarks": face, "Displacement": field,
            "Control": Control({"index": 0}), "Payload": frame}


def _params(node_id: str, tmp: Path, payloads: dict[str, Any]) -> dict[str, Any]:
    """Params that point a node at real files in `tmp` (it never writes outside) or at nothing that blocks."""
    if node_id == "capture.camera":
        return {"device": "97", "width": 320, "height": 180, "open_timeout_s": 0.2}  # a fake camera (_build)
    if node_id == "capture.file":
        from tests.media import opencv_sample_path

        return {"path": str(opencv_sample_path("vtest.avi")), "realtime": False, "frames": 2}
    if node_id == "capture.images":
        import cv2

        (tmp / "shots").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp / "shots" / "a.png"), payloads["Frame"].image.numpy()[:, :, ::-1])
        return {"path": str(tmp / "shots"), "fps": 0}
    if node_id == "capture.tracking":
        from muse.nodes.motion.record import TrackingOutput

        path = tmp / "take.jsonl"
        if not path.exists():
            run_node(TrackingOutput, {"path": str(path)}, keypoints=payloads["Keypoints"], face=payloads["FaceLandmarks"])
        return {"path": str(path)}
    if node_id == "output.file":
        return {"path": str(tmp / "out.mkv")}
    if node_id == "output.tracking":
        return {"path": str(tmp / "motion.jsonl")}
    if node_id == "output.preview":
        return {"port": 0, "window": "off"}
    if node_id == "output.stream":
        return {"url": f"udp://127.0.0.1:{_free_udp_port()}"}
    if node_id == "output.virtualcam":
        return {"backend": "muse_probe", "width": 64, "height": 48, "pace": False}
    if node_id == "output.vmc":
        return {"port": _free_udp_port()}
    if node_id == "flow.switch":
        return {"mode": "first_available"}
    return {}


class _Camera:
    """A webcam as OpenCV shows it (isOpened/read/set/get/release), giving the astronaut: the contract
    test runs capture.camera's own frame path, where a real run has a device."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.bgr = np.ascontiguousarray(rgb[:, :, ::-1])

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        return True, self.bgr.copy()

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 0.0

    def release(self) -> None:
        pass


class _VirtualCamera:
    """A pyvirtualcam backend that takes frames (the contract test has no v4l2loopback device)."""

    def __init__(self, **kw: Any) -> None:
        pass

    def send(self, frame: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass

    def device(self) -> str:
        return "muse-probe"

    def native_fourcc(self) -> None:
        return None


pyvirtualcam.register_backend("muse_probe", _VirtualCamera)


def _build(cls: type[Node], params: Any, payloads: dict[str, Any]) -> Node:
    if cls is Camera:
        rgb = payloads["Frame"].image.numpy()
        return Camera("probe", params, capture_factory=lambda device, api: _Camera(rgb))
    return cls("probe", params)


def _inputs(node_id: str, cls: type[Node], payloads: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, port in cls.inputs_spec.items():
        if node_id in ONE_OF and name != "frame":
            continue
        value = payloads[port.type.__name__ if port.type is not Payload else "Payload"]
        values[name] = [value, value] if port.multiple else value
    if cls.lazy_inputs:
        values = {k: ([(lambda v=x: v) for x in v] if isinstance(v, list) else (lambda v=v: v)) for k, v in values.items()}
    return values


@pytest.mark.slow
@pytest.mark.parametrize("node_id", IDS)
def test_process_on_real_inputs(node_id: str, payloads: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSE_RECORDINGS_DIR", str(tmp_path / "recordings"))
    cls = REGISTRY.get(node_id)
    node = _build(cls, cls.Params(**_params(node_id, tmp_path, payloads)), payloads)
    ctx = make_context("probe", "cpu", resolution=(512, 512))
    given = _inputs(node_id, cls, payloads)
    ctx.connected = frozenset(given)
    if node_id in NEEDS_USER_FILES:
        with pytest.raises(NodeError, match="probe|" + node_id):
            node.open(ctx)
        node.close()
        return
    node.open(ctx)
    try:
        out = node.process(**given)
        if cls.is_source() and out is None:
            pytest.fail(f"{node_id}: a source ended before its first frame")
    finally:
        node.close()
    if not cls.outputs_spec:
        assert out is None or out == {}, f"{node_id}: a sink returns nothing"
        return
    assert isinstance(out, dict), f"{node_id}: process returned {type(out).__name__}, not a dict of outputs"
    assert set(out) <= set(cls.outputs_spec), f"{node_id}: undeclared outputs {set(out) - set(cls.outputs_spec)}"
    assert any(v is not None for v in out.values()), f"{node_id}: no output on a real input"
    for name, value in out.items():
        want = cls.outputs_spec[name].type
        if value is not None:
            assert isinstance(value, want), f"{node_id}.{name}: {type(value).__name__}, declared {want.__name__}"
