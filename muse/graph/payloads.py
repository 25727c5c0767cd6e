"""The closed set of payload types that travel on graph edges.

Every port is typed with one of these classes. They carry torch tensors that
stay on the graph's device (GPU frames never bounce through the host), plus the
metadata a consumer needs: size, timestamp, layout, skeleton or region names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Iterator, Literal

import torch

Layout = Literal["hwc", "chw"]


class Payload:
    """Base of every payload type. Not a wildcard: a port typed `Payload`
    is generic and binds to exactly one concrete type when connected."""

    type_name: ClassVar[str] = "Payload"
    colour: ClassVar[tuple[int, int, int]] = (200, 200, 200)  # editor pin colour

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor this payload holds (the runtime tags them for stream safety)."""
        for value in vars(self).values():
            if isinstance(value, torch.Tensor):
                yield value

    @property
    def device(self) -> torch.device:
        for t in self.tensors():
            return t.device
        return torch.device("cpu")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Payload":
        changes = {
            k: v.to(device, non_blocking=non_blocking)
            for k, v in vars(self).items()
            if isinstance(v, torch.Tensor)
        }
        return replace(self, **changes)

    def clone(self) -> "Payload":
        """The same payload with its own copy of every tensor (metadata shared)."""
        return replace(self, **{k: v.clone() for k, v in vars(self).items() if isinstance(v, torch.Tensor)})

    def sink_copy(self) -> "Payload":
        """A copy made for one sink alone (`is_sink_copy()` is True on it): the runtime hands sinks these when
        a frame was replayed, whose outputs are buffers the next replay overwrites."""
        out = self.clone()
        out.__dict__["_sink_copy"] = True  # not a field: replace() and to() make unmarked payloads
        return out

    def is_sink_copy(self) -> bool:
        """Whether nothing else holds this payload's tensors: a sink may keep them past its call uncopied."""
        return bool(self.__dict__.get("_sink_copy", False))


@dataclass(eq=False)
class Frame(Payload):
    """An RGB picture.

    `image` is either `hwc` uint8 (as cameras and files deliver it) or `chw`
    float16/float32 in [0, 1] (as models and kernels like it). Use
    :meth:`chw` / :meth:`hwc_uint8` to get the layout you need; they return the
    tensor itself when it already has that layout.
    """

    image: torch.Tensor
    timestamp: float = 0.0  # seconds, source clock
    index: int = 0  # frame number at the source
    layout: Layout = "hwc"

    type_name: ClassVar[str] = "Frame"
    colour: ClassVar[tuple[int, int, int]] = (90, 170, 255)

    def __post_init__(self) -> None:
        expect_dim = 3
        if self.image.dim() != expect_dim:
            raise ValueError(f"Frame.image must be 3-D ({self.layout}), got shape {tuple(self.image.shape)}")
        channels = self.image.shape[2] if self.layout == "hwc" else self.image.shape[0]
        if channels != 3:
            raise ValueError(f"Frame.image must have 3 channels in layout {self.layout}, got shape {tuple(self.image.shape)}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0] if self.layout == "hwc" else self.image.shape[1])

    @property
    def width(self) -> int:
        return int(self.image.shape[1] if self.layout == "hwc" else self.image.shape[2])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the way streamers say it (1920x1080)."""
        return self.width, self.height

    @property
    def dtype(self) -> torch.dtype:
        return self.image.dtype

    def chw(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The picture as (3, H, W) floats in [0, 1]."""
        if self.layout == "chw":
            return self.image if self.image.dtype == dtype else self.image.to(dtype)
        img = self.image.permute(2, 0, 1)
        if img.dtype == torch.uint8:
            return img.to(dtype).div_(255.0)
        return img.to(dtype)

    def hwc_uint8(self) -> torch.Tensor:
        """The picture as (H, W, 3) uint8, the layout encoders and screens want."""
        if self.layout == "hwc" and self.image.dtype == torch.uint8:
            return self.image
        img = self.image.permute(1, 2, 0) if self.layout == "chw" else self.image
        if img.dtype == torch.uint8:
            return img.contiguous()
        return img.float().clamp(0, 1).mul(255.0).round_().to(torch.uint8).contiguous()

    def with_image(self, image: torch.Tensor, layout: Layout | None = None) -> "Frame":
        """A new frame with the same timing and another picture."""
        return Frame(image=image, timestamp=self.timestamp, index=self.index, layout=layout or self.layout)


@dataclass(eq=False)
class Mask(Payload):
    """A person alpha matte: (H, W) floats in [0, 1], 1 = person.

    `coverage` (optional, the alpha's shape, 0-1) says where the mask has an opinion at all: a mask made on a
    crop (the pose tracker's person) is 0 outside its crop, which there means "not looked at", not "room".
    None = the whole picture was looked at."""

    alpha: torch.Tensor
    timestamp: float = 0.0
    index: int = 0
    coverage: torch.Tensor | None = None

    type_name: ClassVar[str] = "Mask"
    colour: ClassVar[tuple[int, int, int]] = (240, 240, 240)

    def __post_init__(self) -> None:
        if self.alpha.dim() != 2:
            raise ValueError(f"Mask.alpha must be 2-D (H, W), got shape {tuple(self.alpha.shape)}")
        if self.coverage is not None and self.coverage.shape != self.alpha.shape:
            raise ValueError(f"Mask.coverage must have the alpha's shape {tuple(self.alpha.shape)}, got {tuple(self.coverage.shape)}")

    @property
    def height(self) -> int:
        return int(self.alpha.shape[0])

    @property
    def width(self) -> int:
        return int(self.alpha.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(eq=False)
class Keypoints(Payload):
    """Body pose: `points` (N, 2) in pixels of an image of `image_size`
    (width, height), or (N, 3) with a relative depth z in the same pixel
    scale (`pose.blazepose`'s `keypoints3d`), `confidence` (N,) in [0, 1],
    named by `skeleton` ("coco17" or "blazepose33")."""

    points: torch.Tensor
    confidence: torch.Tensor
    skeleton: str
    image_size: tuple[int, int]
    timestamp: float = 0.0
    index: int = 0

    type_name: ClassVar[str] = "Keypoints"
    colour: ClassVar[tuple[int, int, int]] = (120, 220, 120)

    @property
    def present(self) -> bool:
        return bool(self.confidence.numel() and float(self.confidence.max()) > 0)


@dataclass(eq=False)
class FaceLandmarks(Payload):
    """Face mesh: `points` (N, 3) in pixels (z relative, same scale as x),
    `regions` names index lists ("left_eye", "jaw", ...) so warps never
    hard-code mesh indices; `box` is (x0, y0, x1, y1) in pixels."""

    points: torch.Tensor
    confidence: "float | torch.Tensor"  # a 0-d device tensor keeps trackers free of host syncs
    regions: dict[str, list[int]]
    image_size: tuple[int, int]
    box: "tuple[float, float, float, float] | torch.Tensor" = (0.0, 0.0, 0.0, 0.0)  # (4,) on the device from trackers
    timestamp: float = 0.0
    index: int = 0

    type_name: ClassVar[str] = "FaceLandmarks"
    colour: ClassVar[tuple[int, int, int]] = (255, 170, 90)

    def region(self, name: str) -> torch.Tensor:
        return self.points[self.regions[name]]


@dataclass(eq=False)
class Displacement(Payload):
    """A warp field on a coarse grid: `field` (2, h, w) holds offsets (dx, dy)
    measured in pixels of the full picture of `image_size` (width, height), not
    in grid cells; the grid is upsampled to the picture when applied. A pixel at
    p samples the source at p + field(p)."""

    field: torch.Tensor
    image_size: tuple[int, int]
    timestamp: float = 0.0
    index: int = 0

    type_name: ClassVar[str] = "Displacement"
    colour: ClassVar[tuple[int, int, int]] = (200, 120, 255)


@dataclass(eq=False)
class Control(Payload):
    """Scalars, flags and strings (a switch selection, a live mode, a score)."""

    values: dict[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0
    index: int = 0

    type_name: ClassVar[str] = "Control"
    colour: ClassVar[tuple[int, int, int]] = (255, 220, 80)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


PAYLOAD_TYPES: dict[str, type[Payload]] = {
    cls.type_name: cls for cls in (Frame, Mask, Keypoints, FaceLandmarks, Displacement, Control)
}


def payload_type(name: str) -> type[Payload]:
    try:
        return PAYLOAD_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown payload type {name!r}; known: {', '.join(PAYLOAD_TYPES)}") from None
