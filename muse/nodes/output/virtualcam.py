"""`output.virtualcam`: sends frames to a virtual camera (OBS Virtual Camera or
Unity Capture on Windows, OBS on macOS, v4l2loopback on Linux) through
pyvirtualcam, resized and converted (RGB or NV12) on the GPU, paced to fps.
Without a driver the error says what to install; `fallback:` asks the runtime for
a visible stand-in output node (`<name>/preview`, `/file` or `/null`, see
muse.graph.stand_ins) that takes over, and says so loudly."""

from __future__ import annotations

import platform
from typing import Any, Literal

from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams
from muse.graph.payloads import Frame, Mask
from muse.graph.transfer import Downloader
from muse.nodes.capture.live import apply_live
from muse.nodes.capture.yuv import rgb_to_nv12
from muse.nodes.output.picture import Fit, as_rgb, fit, one_picture


def install_hint(system: str | None = None) -> str:
    """What a streamer installs to get a virtual camera on this OS."""
    system = system or platform.system()
    if system == "Windows":
        return ("install OBS Studio 26 or newer and start its Virtual Camera once (Tools > Start Virtual Camera), "
                "or install Unity Capture")
    if system == "Darwin":
        return ("install OBS Studio 26 or newer (macOS 13+: OBS 30+) and start its Virtual Camera once, "
                "allowing the system extension when asked")
    return ("install the v4l2loopback kernel module (Debian/Ubuntu: `sudo apt install v4l2loopback-dkms`, "
            "Fedora: `v4l2loopback` from RPM Fusion) and load it with "
            "`sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=\"MUSE\"`")


def open_camera(width: int, height: int, fps: float, fmt: str, device: str, backend: str) -> Any:
    import pyvirtualcam

    return pyvirtualcam.Camera(
        width, height, fps,
        fmt=pyvirtualcam.PixelFormat.NV12 if fmt == "nv12" else pyvirtualcam.PixelFormat.RGB,
        device=device or None,
        backend=backend or None,
    )


class VirtualCamera(Node):
    node_type = "output.virtualcam"
    display_name = "Virtual camera"
    description = (
        "Sends a frame (or mask) to OBS / Zoom / Discord as a webcam through pyvirtualcam; 1080p by default, "
        "RGB or NV12 made on the GPU; `fallback:` preview/file/null when no driver is installed."
    )

    @classmethod
    def output_paths(cls, params: NodeParams) -> dict[str, bool]:
        """Checked at validation (allowed folders, one writer per file), only when the fallback records."""
        return {"fallback_path": True} if getattr(params, "fallback", None) == "file" else {}


    frame: In[Frame] = In(optional=True, description="Connect this or `mask`")
    mask: In[Mask] = In(optional=True, description="Connect this or `frame`")

    class Params(NodeParams):
        width: int = Field(1920, ge=16, le=7680, description="Virtual camera width")
        height: int = Field(1080, ge=16, le=4320, description="Virtual camera height")
        fps: float = Field(0.0, ge=0, le=240, description="Frame rate apps see; 0 = the graph's fps")
        format: Literal["rgb", "nv12"] = Field("nv12", description="Pixel format sent to the driver; nv12 is native for OBS (converted on the GPU)")
        fit: Fit = Field("letterbox", description="How other sizes are fitted: letterbox, crop or stretch")
        device: str = Field("", description="Device to use (Linux: /dev/videoN; Windows: 'OBS Virtual Camera'); empty = first free")
        backend: str = Field("", description="pyvirtualcam backend (obs, unitycapture, v4l2loopback); empty = first that works")
        pace: bool = Field(True, description="Send at a steady `fps` (apps expect a camera's cadence)")
        fallback: Literal["none", "preview", "file", "null"] = Field(
            "none", description="Where frames go when no virtual camera can be opened: the runtime adds that output as a "
            "stand-in node (NAME/preview, NAME/file, NAME/null)"
        )
        fallback_port: int = Field(8090, ge=0, le=65535, description="fallback preview: HTTP port (0 = any free)")
        fallback_path: str = Field("", description="fallback file: recording path; empty = virtualcam_DATE_TIME.mkv in your recordings folder")

    params: Params

    @classmethod
    def stand_in(cls, params: Any) -> tuple[type[Node], dict[str, Any]] | None:
        """`fallback:` preview, file or null, as the output that stands in when no virtual camera opens."""
        kind = getattr(params, "fallback", "none")
        if kind == "preview":
            from muse.nodes.output.preview import Preview

            return Preview, {"port": params.fallback_port, "max_width": min(params.width, 1280)}
        if kind == "file":
            from muse.nodes.output.file import FileOutput, expand_path

            path = params.fallback_path or str(expand_path("", default_name="virtualcam_%Y%m%d_%H%M%S.mkv"))
            return FileOutput, {"path": path, "codec": "h264"}
        if kind == "null":
            from muse.nodes.output.null import NullOutput

            return NullOutput, {}
        return None

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        self._cam: Any = None
        self._download = Downloader()
        self.count = 0
        self._fps = p.fps or ctx.fps or 30.0
        if p.format == "nv12" and (p.width % 2 or p.height % 2):
            raise NodeError(f"node {self.name!r}: NV12 needs an even width and height, got {p.width}x{p.height} (fields `width`, `height`)")
        try:
            self._cam = open_camera(p.width, p.height, self._fps, p.format, p.device, p.backend)
        except Exception as exc:  # pyvirtualcam raises RuntimeError listing each backend's reason
            reason = " ".join(str(exc).split())
            message = (f"node {self.name!r}: no virtual camera could be opened ({reason}). To stream into OBS, Zoom or "
                       f"Discord, {install_hint()}.")
            if ctx.stand_ins:  # the graph already wires a stand-in: say so instead of suggesting one
                message += f" The graph's stand-in ({', '.join(ctx.stand_ins)}) takes over."
            elif p.fallback == "none":
                message += " Or set `fallback: preview` (or file/null) to run without one."
            raise NodeError(message) from exc
        ctx.report("device", f"{self._cam.device} ({self._cam.backend}, {p.width}x{p.height} {p.format} @ {self._fps:g} fps)")
        ctx.logger.info("%s: sending to virtual camera %s via %s", self.name, self._cam.device, self._cam.backend)

    def process(self, frame: Frame | None = None, mask: Mask | None = None) -> None:
        p = self.params
        img, _ = one_picture(self.name, frame, mask)
        img = fit(as_rgb(img), p.width, p.height, p.fit)  # on the frame's device
        if p.format == "nv12":
            img = rgb_to_nv12(img)  # a GPU kernel where the frame lives; half the bytes to download
        pixels = self._download(img)
        try:
            self._cam.send(pixels)
        except Exception as exc:
            raise NodeError(f"node {self.name!r}: the virtual camera {self._cam.device} stopped taking frames: {exc}") from exc
        self.count += 1
        self.report("frames", self.count)
        if p.pace:
            self._cam.sleep_until_next_frame()
        return None

    def close(self) -> None:
        if getattr(self, "_cam", None) is not None:
            self._cam.close()
            self._cam = None

    def update_params(self, params: Params) -> bool:
        return apply_live(self, params, {"fit", "pace"})
