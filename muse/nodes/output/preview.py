"""`output.preview`: watch the graph's output. An MJPEG stream over HTTP on
127.0.0.1 (open the URL in a browser or OBS's browser source; works on headless
machines) and, where there is a desktop, a DearPyGui window. The HTTP side
(preview_http.py) checks Host, needs a printed token when other machines can
reach it, and serves a bounded number of viewers from one thread."""

from __future__ import annotations

import errno
import os
import platform
import threading
import time
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams
from muse.graph.payloads import Frame, Mask
from muse.graph.streams import raw_stream
from muse.graph.transfer import Downloader
from muse.nodes.capture.live import apply_live
from muse.nodes.output.picture import as_rgb, fit, one_picture
from muse.nodes.output.preview_http import BOUNDARY, PreviewServer  # noqa: F401  (BOUNDARY: re-exported)

def has_display() -> bool:
    """Whether a desktop window can open (DearPyGui aborts the process without one)."""
    if platform.system() in ("Windows", "Darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _Latest:
    """The newest JPEG, handed from the node to every HTTP client."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.pixels: np.ndarray | None = None  # kept un-encoded while nobody watches
        self.pending: Callable[[], np.ndarray] | None = None  # kept on the GPU while nobody watches
        self.serial = 0
        self.clients = 0
        self.closed = False
        self.quality = 80
        self.on_publish: Callable[[], None] | None = None  # wakes the HTTP server

    def publish(self, pixels: np.ndarray) -> None:
        with self.cond:
            watched = self.clients > 0
        jpeg = encode_jpeg(pixels, self.quality) if watched else None
        self._set(jpeg=jpeg, pixels=None if watched else pixels.copy())

    def watched(self) -> bool:
        with self.cond:
            return self.clients > 0

    def publish_pending(self, fetch: Callable[[], np.ndarray]) -> None:
        """A picture left on the GPU while nobody watches: `fetch` brings it to the host only if someone asks
        for a still (a 1280x720 download and copy every frame cost the sink thread ~1-2 ms of CPU at 4K60)."""
        self._set(pending=fetch)

    def publish_jpeg(self, jpeg: bytes) -> None:
        """A picture already encoded (on the GPU)."""
        self._set(jpeg=jpeg)

    def _set(self, *, jpeg: bytes | None = None, pixels: np.ndarray | None = None,
             pending: Callable[[], np.ndarray] | None = None) -> None:
        """The newest picture, in one of its three forms; wakes every waiting viewer."""
        with self.cond:
            self.jpeg, self.pixels, self.pending = jpeg, pixels, pending
            self.serial += 1
            self.cond.notify_all()
        if self.on_publish is not None:
            self.on_publish()

    def still(self) -> bytes | None:
        with self.cond:
            if self.jpeg is None and self.pixels is None and self.pending is not None:
                self.pixels, self.pending = self.pending(), None
            if self.jpeg is None and self.pixels is not None:
                self.jpeg = encode_jpeg(self.pixels, self.quality)
            return self.jpeg


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    import cv2

    bgr = pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class Preview(Node):
    node_type = "output.preview"
    display_name = "Preview"
    description = "Shows a frame or a mask: MJPEG over HTTP on 127.0.0.1 (browser, OBS browser source; a token when reachable from other machines) and a desktop window where there is a display."

    frame: In[Frame] = In(optional=True, description="Connect this or `mask`")
    mask: In[Mask] = In(optional=True, description="Connect this or `frame`")

    class Params(NodeParams):
        port: int = Field(8090, ge=0, le=65535, description="HTTP port; 0 = any free port (the URL is reported)")
        busy_port: Literal["any", "error"] = Field("any", description="When `port` is taken (another MUSE?): use any free port and report it, or fail")
        host: str = Field("127.0.0.1", description="Address to listen on; 127.0.0.1 keeps it on this machine")
        http: bool = Field(True, description="Serve the MJPEG preview over HTTP")
        window: Literal["auto", "on", "off"] = Field("auto", description="Desktop window: auto = when a display exists")
        max_width: int = Field(1280, ge=0, le=7680, description="Shrink wider frames to this width before encoding; 0 = full size")
        quality: int = Field(80, ge=10, le=100, description="JPEG quality")
        title: str = Field("MUSE preview", description="Window and page title")
        max_clients: int = Field(16, ge=1, le=256, description="Viewers served at once; more are told to retry (503)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        self._latest = _Latest()
        self._latest.quality = p.quality
        self._download = Downloader()
        self._streams: dict[int, Any] = {}  # raw stream handle -> its torch Stream (_keep_on_gpu)
        self._server: PreviewServer | None = None
        self._window: _Window | None = None
        self.url: str | None = None
        self.count = 0
        if p.http:
            self._start_http(ctx)
        if p.window == "on" or (p.window == "auto" and has_display()):
            if has_display():
                if _Window.available(ctx, self.name):
                    self._window = _Window(p.title, ctx)
                    ctx.report("window", "open")
            else:
                ctx.logger.warning("%s: no display (DISPLAY is unset), so no preview window; %s", self.name,
                                   f"open {self.url} in a browser" if self.url else "enable http to watch in a browser")
                ctx.report("window", "none (no display)")

    def _start_http(self, ctx: NodeContext) -> None:
        p = self.params

        def serve(port: int) -> PreviewServer:
            return PreviewServer(self._latest, p.title, p.host, port, max_clients=p.max_clients)

        try:
            try:
                server = serve(p.port)
            except OSError as exc:
                if p.port == 0 or p.busy_port != "any" or exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                server = serve(0)
                ctx.logger.warning("%s: port %d is taken (another preview running?); using port %d instead",
                                   self.name, p.port, server.address[1])
        except OSError as exc:
            raise NodeError(
                f"node {self.name!r}: cannot listen on {p.host}:{p.port} (fields `host`, `port`): {exc}; "
                "pick another port or `port: 0` for any free one"
            ) from exc
        self._server = server
        host, port = server.address
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
        self.url = f"http://{shown}:{port}/" + (f"?token={server.token}" if server.token else "")
        self._latest.on_publish = server.wake
        server.start(f"muse-preview-{self.name}")
        if server.token:
            ctx.logger.warning("%s: the preview listens on %s, reachable from other machines; it answers only requests "
                               "carrying its token: %s (anyone with this link can watch)", self.name, p.host, self.url)
        else:
            ctx.logger.warning("%s: preview at %s (MJPEG stream at %sstream.mjpg)", self.name, self.url, self.url)
        ctx.report("url", self.url)

    def process(self, frame: Frame | None = None, mask: Mask | None = None) -> None:
        img, _ = one_picture(self.name, frame, mask)
        if img.is_cuda and self._window is None and not self._latest.watched():
            # Nobody watches: no resize a frame (a float copy of the whole 4K frame and an antialiased resize);
            # a new viewer's first still is made from the newest picture when asked for.
            given = frame if frame is not None else mask
            assert given is not None
            ptr = img.untyped_storage().data_ptr()
            own = given.is_sink_copy() or all(t.untyped_storage().data_ptr() != ptr for t in given.tensors())
            self._latest.publish_pending(self._keep_on_gpu(img, own))
            self.count += 1
            self.report("frames", self.count)
            return None
        img = self._small(img)
        if img.is_cuda and self._window is None and self._gpu_jpeg and self._latest.watched():
            jpeg = self._encode_on_gpu(img)
            if jpeg is not None:  # only the compressed bytes cross to the host (nvJPEG)
                self._latest.publish_jpeg(jpeg)
                self.count += 1
                self.report("frames", self.count)
                return None
        pixels = self._download(img)
        self._latest.publish(pixels)
        if self._window is not None:
            self._window.show(as_rgb(torch.from_numpy(pixels)).numpy())
        self.count += 1
        self.report("frames", self.count)
        return None

    _gpu_jpeg = True  # cleared for good if nvJPEG is missing or fails once

    def _small(self, img: torch.Tensor) -> torch.Tensor:
        """The picture at most `max_width` wide."""
        h, w = int(img.shape[0]), int(img.shape[1])
        mw = self.params.max_width
        return fit(img, mw, max(2, round(h * mw / w)), "stretch") if mw and w > mw else img

    def _keep_on_gpu(self, img: torch.Tensor, own: bool) -> Callable[[], np.ndarray]:
        """The picture stays on the GPU: as it is when it is this sink's own (`own`: the runtime's copy of a
        replayed frame, or made by this call), else a plain copy (the graph may reuse its output buffers). The
        returned call, made by whichever thread wants a still (rare: a new viewer), waits for this picture
        alone, then resizes and downloads it."""
        kept = img if own else img.clone()
        # No event a frame: the rare fetch waits for the sink's stream as a whole (the picture and whatever
        # was queued on it since), not worth an event made, recorded and freed ~240 times a second.
        handle = raw_stream(img.device)
        stream = self._streams.get(handle)
        if stream is None:  # the sink's stream, wrapped once (a Stream object a frame cost ~3 us of host time)
            stream = self._streams[handle] = torch.cuda.current_stream(img.device)

        def fetch() -> np.ndarray:  # a plain copy, not the sink's pinned ring
            stream.synchronize()
            with torch.cuda.device(kept.device):
                return self._small(kept).cpu().numpy()

        return fetch

    def _encode_on_gpu(self, img: torch.Tensor) -> bytes | None:
        try:
            from torchvision.io import encode_jpeg as nv_encode

            chw = img.permute(2, 0, 1).contiguous() if img.dim() == 3 else img[None].contiguous()
            data = nv_encode(chw, quality=int(self._latest.quality))
            return bytes(data.cpu().numpy().tobytes())  # sink thread: waits for this picture only
        except Exception as exc:
            self._gpu_jpeg = False
            if self.ctx is not None:
                self.logger.warning("node %r: JPEG on the GPU is not available (%s); encoding on the CPU", self.name, exc)
            return None

    def close(self) -> None:
        with self._latest.cond:
            self._latest.closed = True
            self._latest.cond.notify_all()
        if self._server is not None:
            self._latest.on_publish = None
            self._server.close()
            self._server = None
        if self._window is not None:
            self._window.close()
            self._window = None

    def update_params(self, params: Params) -> bool:
        if apply_live(self, params, {"quality", "max_width"}):
            self._latest.quality = params.quality
            return True
        return False


# DearPyGui allows one context per process (a second one crashes it), and the
# editor owns it when a graph runs inside the editor.
_window_taken = threading.Lock()


class _Window:
    """A DearPyGui viewport on its own thread (DearPyGui wants one thread for its context and loop)."""

    def __init__(self, title: str, ctx: NodeContext) -> None:
        self.title = title
        self.ctx = ctx
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snap_wanted = threading.Event()
        self._snap_done = threading.Event()
        self._snap: np.ndarray | None = None
        self.rendered = 0
        self.failed: str | None = None

    @staticmethod
    def available(ctx: NodeContext, name: str) -> bool:
        import sys

        if "muse.editor.app" in sys.modules:
            ctx.logger.warning("%s: running inside the editor, so no separate preview window; use the HTTP preview", name)
            return False
        if not _window_taken.acquire(blocking=False):
            ctx.logger.warning("%s: a preview window was already opened in this process (DearPyGui allows one); "
                               "use the HTTP preview", name)
            return False
        return True

    def show(self, rgb: np.ndarray) -> None:
        with self._lock:
            self._pending = rgb.copy()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, args=(rgb.shape[1], rgb.shape[0]), name="muse-preview-window", daemon=True)
            self._thread.start()

    def snapshot(self, timeout: float = 10.0) -> np.ndarray | None:
        """What the window shows, as (H, W, 4) uint8 RGBA (tests and bug reports)."""
        self._snap_done.clear()
        self._snap_wanted.set()
        return self._snap if self._snap_done.wait(timeout) else None

    def _loop(self, width: int, height: int) -> None:
        try:
            import dearpygui.dearpygui as dpg
        except ImportError as exc:
            self.failed = str(exc)
            self.logger.warning("preview window unavailable (%s); use the HTTP preview", exc)
            return
        from muse.gl_preload import preload

        preload()  # Triton's LLVM before Mesa's (muse/gl_preload.py: loaded after, it crashed the process)
        dpg.create_context()
        try:
            # Callbacks run on this thread (DearPyGui's own callback thread is unsafe for buffer work).
            dpg.configure_app(manual_callback_management=True)
            blank = np.zeros(width * height * 3, np.float32)
            with dpg.texture_registry():
                tex = dpg.add_raw_texture(width, height, default_value=blank, format=dpg.mvFormat_Float_rgb)
            with dpg.window(tag="muse_preview", no_scrollbar=True):
                dpg.add_image(tex)
            dpg.create_viewport(title=self.title, width=width + 16, height=height + 16)
            dpg.setup_dearpygui()
            dpg.show_viewport()
            dpg.set_primary_window("muse_preview", True)
            box: dict[str, Any] = {}
            while dpg.is_dearpygui_running() and not self._stop.is_set():
                with self._lock:
                    rgb, self._pending = self._pending, None
                if rgb is not None and rgb.shape[:2] == (height, width):
                    dpg.set_value(tex, (rgb.astype(np.float32) / 255.0).reshape(-1))
                elif not self._snap_wanted.is_set():
                    time.sleep(0.004)  # nothing new to show: do not spin a core redrawing the same picture
                if self._snap_wanted.is_set() and self.rendered > 2 and "asked" not in box:
                    box["asked"] = True
                    dpg.output_frame_buffer(callback=lambda s, a: box.setdefault("buffer", a))
                dpg.render_dearpygui_frame()
                dpg.run_callbacks(dpg.get_callback_queue())
                self.rendered += 1
                if "buffer" in box:
                    buf = box.pop("buffer")
                    box.pop("asked", None)
                    w, h = buf.get_width(), buf.get_height()
                    img = np.frombuffer(memoryview(buf), dtype=np.float32, count=w * h * 4).reshape(h, w, 4)
                    self._snap = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
                    self._snap_wanted.clear()
                    self._snap_done.set()
        except Exception as exc:  # a broken GL driver must not stop the stream
            self.failed = str(exc)
            self.logger.warning("preview window failed: %s; use the HTTP preview", exc)
        finally:
            dpg.destroy_context()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
