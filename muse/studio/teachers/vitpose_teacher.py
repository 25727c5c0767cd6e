"""ViTPose (Huge by default) as a keypoint teacher through `transformers`.

Top-down: person boxes come from the mask teachers; the model and its image
processor load from a local folder (`local_files_only`, never the hub). On GPU
it runs batched in fp16. `VitPoseTeacher.from_model` takes an already-built
model (tests build a tiny random one from a `VitPoseConfig`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from muse.studio.teachers.base import TeacherUnavailable


class VitPoseTeacher:
    name = "vitpose"
    skeleton = "coco17"

    def __init__(self, model: Any, processor: Any, device: str = "cpu", batch: int = 8) -> None:
        import torch

        self.device = device
        self.batch = max(1, batch)
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.processor = processor
        # ViTPose+ (mixture of experts) needs a dataset index; 0 = COCO body keypoints.
        self._moe = int(getattr(model.config.backbone_config, "num_experts", 1) or 1) > 1

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device: str = "cpu", batch: int = 8) -> "VitPoseTeacher":
        if not checkpoint:
            raise TeacherUnavailable(
                "ViTPose teacher: no checkpoint; set teachers.vitpose.checkpoint in profile.yaml to a local "
                "transformers folder (e.g. usyd-community/vitpose-plus-huge saved on your disk)"
            )
        path = Path(checkpoint)
        if not (path / "config.json").is_file():
            raise TeacherUnavailable(f"ViTPose teacher: {path} has no config.json; point teachers.vitpose.checkpoint at a saved transformers model folder")
        try:
            from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor
        except ImportError as exc:
            raise TeacherUnavailable(f"ViTPose teacher needs the `transformers` package (MUSE's `studio` extra: pip install -e \".[studio]\"): {exc}") from None

        model = VitPoseForPoseEstimation.from_pretrained(str(path), local_files_only=True)
        try:
            processor = VitPoseImageProcessor.from_pretrained(str(path), local_files_only=True)
        except OSError:  # folder without preprocessor_config.json: the defaults are ViTPose's own
            processor = VitPoseImageProcessor()
        return cls(model, processor, device, batch)

    @classmethod
    def from_model(cls, model: Any, device: str = "cpu", batch: int = 8) -> "VitPoseTeacher":
        from transformers import VitPoseImageProcessor

        size = list(model.config.backbone_config.image_size)
        return cls(model, VitPoseImageProcessor(size={"height": size[0], "width": size[1]}), device, batch)

    def keypoints(self, frames: Sequence[np.ndarray], boxes: Sequence[tuple[float, float, float, float] | None]) -> list[np.ndarray | None]:
        import torch

        out: list[np.ndarray | None] = [None] * len(frames)
        todo = [i for i, b in enumerate(boxes) if b is not None]
        for start in range(0, len(todo), self.batch):
            idx = todo[start : start + self.batch]
            coco_boxes = [[[b[0], b[1], b[2] - b[0], b[3] - b[1]]] for b in (boxes[i] for i in idx)]  # x, y, w, h
            inputs = self.processor([frames[i] for i in idx], boxes=coco_boxes, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            kwargs = {"dataset_index": torch.zeros(len(idx), dtype=torch.long, device=self.device)} if self._moe else {}
            with torch.inference_mode():
                outputs = self.model(pixel_values=pixels, **kwargs)
            outputs.heatmaps = outputs.heatmaps.float().cpu()  # post-processing runs on the host
            results = self.processor.post_process_pose_estimation(outputs, boxes=coco_boxes)
            for i, per_image in zip(idx, results):
                if not per_image:
                    continue
                person = per_image[0]
                pts = np.asarray(person["keypoints"], np.float32).reshape(-1, 2)
                conf = np.asarray(person["scores"], np.float32).reshape(-1, 1)
                out[i] = np.concatenate([pts, conf], 1)
        return out
