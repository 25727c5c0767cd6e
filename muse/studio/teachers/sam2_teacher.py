"""SAM 2.1 as a mask teacher through the `sam2` package (image and video predictors).

Prompts are automatic: a box around the bundled segmenter's (or clean plate's)
mask plus positive points at confident body keypoints inside it. The video
predictor is prompted on the first frame (and re-prompted every `reprompt`
frames) and propagates the person through the clip. Checkpoints come from the
user's disk; with `checkpoint=None` the weights are random (tests only).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from muse.studio.teachers.base import TeacherUnavailable, mask_box


def _import_sam2() -> Any:
    try:
        import sam2.build_sam as build_sam  # noqa: F401
    except ImportError as exc:
        raise TeacherUnavailable(
            "SAM 2.1 teacher needs the `sam2` package (MUSE's `studio` extra): "
            "`SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0` "
            f"({exc})"
        ) from None
    return build_sam


def prompts_from_hints(hint: dict | None, shape: tuple[int, int], max_points: int = 6) -> dict[str, np.ndarray | None]:
    """A box from the prior mask and positive points from keypoints inside it (or the mask's interior)."""
    h, w = shape
    hint = hint or {}
    prior = hint.get("mask")
    box = mask_box(prior) if prior is not None else None
    points: list[tuple[float, float]] = []
    kps = hint.get("keypoints")
    if kps is not None:
        for x, y, c in np.asarray(kps, np.float32):
            if c < 0.5 or not (0 <= x < w and 0 <= y < h):
                continue
            if prior is not None and prior[int(y), int(x)] < 0.5:
                continue  # a keypoint outside the person mask is a bad prompt
            points.append((float(x), float(y)))
    if not points and prior is not None and box is not None:
        # Deepest interior point of the mask: a safe positive click.
        import cv2

        dist = cv2.distanceTransform((prior > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        points.append((float(x), float(y)))
    if box is None and not points:
        box = (w * 0.25, h * 0.1, w * 0.75, float(h))  # nothing known: the middle of the picture
    pts = np.array(points[:max_points], np.float32) if points else None
    return {"box": None if box is None else np.array(box, np.float32), "points": pts, "labels": None if pts is None else np.ones(len(pts), np.int32)}


class Sam2Teacher:
    """SAM 2.1 mask teacher. `video=True` uses the video predictor over a clip."""

    name = "sam2"

    def __init__(
        self,
        config: str = "configs/sam2.1/sam2.1_hiera_l.yaml",
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        *,
        video: bool = True,
        reprompt: int = 30,
        image_size: int | None = None,
        allow_random_weights: bool = False,
    ) -> None:
        if checkpoint is None and not allow_random_weights:
            raise TeacherUnavailable(
                "SAM 2.1 teacher: no checkpoint; set teachers.sam2.checkpoint in profile.yaml to the path of "
                "sam2.1_hiera_large.pt on your disk (MUSE never downloads it)"
            )
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise TeacherUnavailable(f"SAM 2.1 teacher: checkpoint {checkpoint} not found; fix teachers.sam2.checkpoint in profile.yaml")
        self.config = config
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.device = device
        self.video = video
        self.reprompt = max(1, reprompt)
        # Smaller internal resolution than the trained 1024 only makes sense for tests (random weights).
        self._overrides = [f"++model.image_size={image_size}"] if image_size else []
        self._image_predictor: Any = None
        self._video_predictor: Any = None

    def _autocast(self) -> Any:
        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def image_predictor(self) -> Any:
        if self._image_predictor is None:
            build_sam = _import_sam2()
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            model = build_sam.build_sam2(self.config, ckpt_path=self.checkpoint, device=self.device, hydra_overrides_extra=self._overrides)
            self._image_predictor = SAM2ImagePredictor(model)
            size = model.image_size  # the predictor hard-codes 1024's feature sizes
            self._image_predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        return self._image_predictor

    def video_predictor(self) -> Any:
        if self._video_predictor is None:
            build_sam = _import_sam2()
            self._video_predictor = build_sam.build_sam2_video_predictor(
                self.config, ckpt_path=self.checkpoint, device=self.device, hydra_overrides_extra=self._overrides
            )
        return self._video_predictor

    def masks(self, frames: Sequence[np.ndarray], hints: Sequence[dict] | None = None) -> list[np.ndarray]:
        hints = list(hints) if hints is not None else [{} for _ in frames]
        if self.video and len(frames) > 1:
            return self._video_masks(frames, hints)
        return self._image_masks(frames, hints)

    def _image_masks(self, frames: Sequence[np.ndarray], hints: Sequence[dict]) -> list[np.ndarray]:
        import torch

        pred = self.image_predictor()
        out = []
        with torch.inference_mode(), self._autocast():
            pred.set_image_batch([np.ascontiguousarray(f) for f in frames])
            prompts = [prompts_from_hints(h, f.shape[:2]) for f, h in zip(frames, hints)]
            masks, scores, _ = pred.predict_batch(
                point_coords_batch=[p["points"] for p in prompts],
                point_labels_batch=[p["labels"] for p in prompts],
                box_batch=[p["box"] for p in prompts],
                multimask_output=False,
                return_logits=True,
            )
        for m in masks:
            logits = np.asarray(m, np.float32).reshape(-1, *m.shape[-2:])[0]
            out.append(1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30))))
        return out

    def _video_masks(self, frames: Sequence[np.ndarray], hints: Sequence[dict]) -> list[np.ndarray]:
        import cv2
        import torch

        pred = self.video_predictor()
        n = len(frames)
        result: list[np.ndarray | None] = [None] * n
        with tempfile.TemporaryDirectory(prefix="muse-sam2-") as tmp, torch.inference_mode(), self._autocast():
            for i, f in enumerate(frames):  # the predictor reads a folder of JPEGs named by frame number
                cv2.imwrite(str(Path(tmp) / f"{i:06d}.jpg"), f[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            state = pred.init_state(video_path=tmp, offload_video_to_cpu=True, offload_state_to_cpu=not self.device.startswith("cuda"))
            for i in range(0, n, self.reprompt):
                p = prompts_from_hints(hints[i], frames[i].shape[:2])
                pred.add_new_points_or_box(state, frame_idx=i, obj_id=1, points=p["points"], labels=p["labels"], box=p["box"])
            for idx, _obj_ids, logits in pred.propagate_in_video(state):
                lg = logits[0, 0].float().cpu().numpy()  # offline labeling: host copy is the point
                result[idx] = 1.0 / (1.0 + np.exp(-np.clip(lg, -30, 30)))
            pred.reset_state(state)
        return [r if r is not None else np.zeros(f.shape[:2], np.float32) for r, f in zip(result, frames)]
