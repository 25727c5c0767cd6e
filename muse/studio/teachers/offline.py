"""Teachers that run offline on any machine: the clean-plate difference and
the bundled MediaPipe models reached through the node registry
(`segment.selfie`, a `pose.*` node) once those nodes are installed."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from muse.studio.teachers.base import TeacherUnavailable


class CleanPlateTeacher:
    """Person = what differs from the empty room. Exact on a static camera and
    static room; robust to a global exposure drift (gain is matched first)."""

    name = "clean_plate"

    def __init__(self, plate: np.ndarray, threshold: float = 15.0, softness: float = 5.0) -> None:
        import cv2

        self.plate = plate
        self.threshold = threshold
        self.softness = softness
        self._plate_lab = cv2.cvtColor(cv2.GaussianBlur(plate, (3, 3), 0), cv2.COLOR_RGB2LAB).astype(np.float32)

    def mask(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        if frame.shape != self.plate.shape:
            from muse.studio.files import StudioError

            raise StudioError(f"clean plate is {self.plate.shape[1]}x{self.plate.shape[0]} but the frame is {frame.shape[1]}x{frame.shape[0]}; re-record the plate at the camera's resolution")
        lab = cv2.cvtColor(cv2.GaussianBlur(frame, (3, 3), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
        # Match lightness with the median ratio so auto-exposure is not read as a person.
        ratio = np.median((lab[..., 0] + 1) / (self._plate_lab[..., 0] + 1))
        lab[..., 0] /= ratio
        diff = np.linalg.norm((lab - self._plate_lab) * np.array([0.6, 1.0, 1.0], np.float32), axis=-1)
        prob = 1.0 / (1.0 + np.exp(-(diff - self.threshold) / self.softness))
        hard = (prob > 0.5).astype(np.uint8)
        hard = cv2.morphologyEx(hard, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        hard = cv2.morphologyEx(hard, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(hard)
        if n > 1:  # drop specks smaller than 0.2% of the picture; fill holes of what remains
            keep = np.zeros(n, bool)
            keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= 0.002 * hard.size
            hard = keep[labels].astype(np.uint8)
            inv = (1 - hard).astype(np.uint8)
            m, lab_inv, st, _ = cv2.connectedComponentsWithStats(inv)
            h, w = hard.shape
            for j in range(1, m):  # holes: background regions that do not touch the border
                x, y, bw, bh = st[j, :4]
                if x > 0 and y > 0 and x + bw < w and y + bh < h:
                    hard[lab_inv == j] = 1
        soft = cv2.GaussianBlur(hard.astype(np.float32), (3, 3), 0)
        return soft

    def masks(self, frames: Sequence[np.ndarray], hints: Sequence[dict] | None = None) -> list[np.ndarray]:
        return [self.mask(f) for f in frames]


def open_node(cls: Any, params: dict, name: str, device: str = "cpu", fps: float = 30.0, resolution: tuple[int, int] = (1280, 720)) -> Any:
    """Build and open a node outside a graph (the studio drives capture and teacher nodes by hand)."""
    import torch

    from muse.graph.node import NodeContext

    node = cls(name, cls.Params(**params))
    dev = torch.device(device)
    node.open(NodeContext(name=name, device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32,
                          fps=fps, resolution=resolution))
    return node


def _registry_node(node_type: str) -> Any:
    try:
        from muse.graph.registry import load_registry

        return load_registry().get(node_type)
    except Exception as exc:  # not installed yet, or the registry refused it
        raise TeacherUnavailable(f"node {node_type!r} is not available ({exc}); it is the bundled model's node") from None


class NodeMaskTeacher:
    """A segmentation node used as a teacher (default `segment.selfie`, the bundled MediaPipe model)."""

    def __init__(self, node_type: str = "segment.selfie", name: str = "selfie", params: dict | None = None, device: str = "cpu") -> None:
        self.name = name
        self.node_type = node_type
        self._cls = _registry_node(node_type)
        self._params = params or {}
        self._device = device
        self._node = None

    def _open(self) -> Any:
        if self._node is None:
            self._node = open_node(self._cls, self._params, f"teacher.{self.name}", self._device)
        return self._node

    def masks(self, frames: Sequence[np.ndarray], hints: Sequence[dict] | None = None) -> list[np.ndarray]:
        import torch

        from muse.graph.payloads import Frame, Mask

        node = self._open()
        out = []
        for i, f in enumerate(frames):
            res = node.process(frame=Frame(torch.from_numpy(np.ascontiguousarray(f)).to(self._device), index=i)) or {}
            mask = next((v for v in res.values() if isinstance(v, Mask)), None)
            if mask is None:
                raise TeacherUnavailable(f"node {self.node_type!r} returned no Mask (outputs {list(res)})")
            alpha = mask.alpha.float().cpu().numpy()
            if alpha.shape != f.shape[:2]:  # some nodes answer at their own working size
                import cv2

                alpha = cv2.resize(alpha, (f.shape[1], f.shape[0]), interpolation=cv2.INTER_LINEAR)
            out.append(np.clip(alpha, 0, 1))
        return out

    def close(self) -> None:
        if self._node is not None:
            self._node.close()
            self._node = None


class NodePoseTeacher:
    """A pose node used as a keypoint teacher (the bundled MediaPipe pose model when installed)."""

    def __init__(self, node_type: str = "pose.blazepose", name: str = "bundled_pose", device: str = "cpu") -> None:
        self.name = name
        self.node_type = node_type
        self.skeleton = "blazepose33"
        self._cls = _registry_node(node_type)
        self._device = device
        self._node = None

    def keypoints(self, frames: Sequence[np.ndarray], boxes: Sequence[Any]) -> list[np.ndarray | None]:
        import torch

        from muse.graph.payloads import Frame, Keypoints

        if self._node is None:
            self._node = open_node(self._cls, {}, f"teacher.{self.name}", self._device)
        out: list[np.ndarray | None] = []
        for i, f in enumerate(frames):
            res = self._node.process(frame=Frame(torch.from_numpy(np.ascontiguousarray(f)).to(self._device), index=i)) or {}
            kp = next((v for v in res.values() if isinstance(v, Keypoints)), None)
            if kp is None or not kp.present:
                out.append(None)
                continue
            self.skeleton = kp.skeleton
            pts = kp.points.float().cpu().numpy()
            if tuple(kp.image_size) != (f.shape[1], f.shape[0]):  # keypoints are in pixels of kp.image_size
                pts = pts * np.array([f.shape[1] / kp.image_size[0], f.shape[0] / kp.image_size[1]], np.float32)
            out.append(np.concatenate([pts, kp.confidence.float().cpu().numpy()[:, None]], 1))
        return out
