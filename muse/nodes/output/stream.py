"""`output.stream`: a live stream through PyAV with low-latency H.264: MPEG-TS
over UDP, TCP or SRT, or FLV over RTMP (to a streaming server or a local
receiver). A dropped connection is retried with backoff; frames meanwhile are
dropped and counted, never queued (a live stream must not fall behind)."""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from pydantic import Field

from muse.graph import network
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams
from muse.graph.payloads import Frame, Mask
from muse.graph.transfer import Downloader
from muse.nodes.capture.live import apply_live
from muse.nodes.output.picture import as_rgb, fit, one_picture

SCHEMES = {"udp": "mpegts", "tcp": "mpegts", "srt": "mpegts", "rtp": "rtp_mpegts", "rtmp": "flv", "rtmps": "flv"}


def protocol_available(scheme: str) -> bool:
    """Whether this FFmpeg build can open `scheme://` for writing (PyAV wheels ship without libsrt)."""
    global _PROTOCOLS
    if _PROTOCOLS is None:
        _PROTOCOLS = _probe_protocols()
    return scheme in _PROTOCOLS


_PROTOCOLS: set[str] | None = None


def _probe_protocols() -> set[str]:
    """Names of FFmpeg's output protocols, asked from libavformat through ctypes (avio_enum_protocols)."""
    import ctypes
    import glob
    import os

    import av

    libs = glob.glob(os.path.join(os.path.dirname(av.__file__), "..", "av.libs", "*avformat*")) + glob.glob(
        os.path.join(os.path.dirname(av.__file__), ".dylibs", "*avformat*")
    )
    names: set[str] = set()
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        fn = lib.avio_enum_protocols
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        opaque = ctypes.c_void_p(None)
        while True:
            name = fn(ctypes.byref(opaque), 1)  # 1 = output protocols
            if not name:
                break
            names.add(name.decode())
        break
    if not names:  # unknown build layout: assume the common ones and let FFmpeg's error speak
        names = {"udp", "tcp", "rtmp", "rtp", "file", "srt"}
    return names


class StreamOutput(Node):
    node_type = "output.stream"
    display_name = "Network stream"
    description = ("Streams a frame (or mask) live: MPEG-TS over UDP/TCP/SRT or FLV over RTMP, H.264 zerolatency. "
                   "Only to this machine unless network output is allowed (--allow-network).")
    network_outputs = ("url",)  # checked at validation and at open (muse.graph.network)

    frame: In[Frame] = In(optional=True, description="Connect this or `mask`")
    mask: In[Mask] = In(optional=True, description="Connect this or `frame`")

    class Params(NodeParams):
        url: str = Field("udp://127.0.0.1:5000", description="udp://host:port, tcp://host:port, srt://host:port, rtmp://server/app/key")
        format: Literal["auto", "mpegts", "flv"] = Field("auto", description="Container; auto = FLV for rtmp, MPEG-TS otherwise")
        width: int = Field(0, ge=0, le=7680, description="Stream width; 0 = the frame's")
        height: int = Field(0, ge=0, le=4320, description="Stream height; 0 = the frame's")
        fps: float = Field(0.0, ge=0, le=240, description="Stream frame rate; 0 = the graph's fps")
        bitrate_kbps: int = Field(6000, ge=100, le=200_000, description="Target video bitrate")
        preset: str = Field("ultrafast", description="x264 preset; ultrafast keeps latency and CPU low")
        keyframe_s: float = Field(1.0, ge=0.1, le=10, description="Seconds between keyframes (how soon a new viewer sees a picture)")
        retry_max_s: float = Field(5.0, ge=0.1, le=60, description="Longest wait between reconnect attempts")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        scheme = urlparse(p.url).scheme.lower()
        if scheme not in SCHEMES:
            raise NodeError(
                f"node {self.name!r}: unsupported stream URL {p.url!r} (field `url`); use one of "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        if not network.network_allowed(bool(ctx.settings.get("allow_network"))) and not network.is_loopback_url(p.url):
            raise NodeError(f"node {self.name!r}: field `url`: {network.refusal(p.url)}; {network.HINT}")
        if not protocol_available(scheme):
            raise NodeError(
                f"node {self.name!r}: this FFmpeg build (PyAV's wheel) has no {scheme}:// protocol (field `url`); "
                "use udp:// or tcp:// MPEG-TS, or install PyAV built against an FFmpeg with "
                f"{'libsrt' if scheme == 'srt' else scheme} (e.g. `pip install av --no-binary av` with your system FFmpeg)"
            )
        self._scheme = scheme
        self._format = p.format if p.format != "auto" else SCHEMES[scheme]
        self._fps = p.fps or ctx.fps or 30.0
        self._download = Downloader()
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self._pts = 0
        self.sent = 0
        self.dropped = 0

    def _connect(self, width: int, height: int) -> None:
        import av

        p = self.params
        options = {"flush_packets": "1"}
        if self._scheme == "udp":
            options["pkt_size"] = "1316"  # 7 TS packets: fits one Ethernet frame
        if self._format == "mpegts":
            options["muxdelay"] = "0"
        container = av.open(p.url, mode="w", format=self._format, options=options, timeout=5.0)
        rate = Fraction(self._fps).limit_denominator(1001)
        s = container.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.time_base = 1 / rate
        s.bit_rate = p.bitrate_kbps * 1000
        gop = max(1, round(self._fps * p.keyframe_s))
        s.options = {
            "preset": p.preset,
            "tune": "zerolatency",  # no B-frames, no lookahead: frames leave as soon as they are encoded
            "g": str(gop),
            "x264-params": f"vbv-maxrate={p.bitrate_kbps}:vbv-bufsize={p.bitrate_kbps}:repeat-headers=1",
        }
        self._container, self._stream = container, s
        self._pts = 0

    def _disconnect(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
        self._container = self._stream = None

    def process(self, frame: Frame | None = None, mask: Mask | None = None) -> None:
        import av

        p = self.params
        img, _ = one_picture(self.name, frame, mask)
        img = as_rgb(img)
        w = p.width or int(img.shape[1])
        h = p.height or int(img.shape[0])
        w, h = w - w % 2, h - h % 2
        if self._size is None:
            self._size = (w, h)
        img = fit(img, *self._size, "letterbox")
        if self._container is None:
            if time.perf_counter() < self._retry_at:
                self._drop()
                return None
            try:
                self._connect(*self._size)
                self._backoff = 0.5
                self.logger.info("%s: streaming to %s (%s)", self.name, p.url, self._format)
                self.report("status", "streaming")
            except Exception as exc:
                if self.sent == 0 and self.dropped == 0:
                    # The first attempt: a wrong URL or no receiver is something to fix, not to wait out.
                    raise NodeError(f"node {self.name!r}: cannot open stream {p.url!r} (field `url`): {exc}") from exc
                self._schedule_retry(exc)
                self._drop()
                return None
        pixels: np.ndarray = self._download(img)
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        vf.pts = self._pts
        self._pts += 1
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)  # PyAV connects here, at the first packet
        except Exception as exc:
            if self.sent == 0 and self.dropped == 0:
                self._disconnect()
                raise NodeError(f"node {self.name!r}: cannot open stream {p.url!r} (field `url`): {exc}; "
                                "is the receiver or server running?") from exc
            self._schedule_retry(exc)
            self._disconnect()
            self._drop()
            return None
        self.sent += 1
        self.report("sent", self.sent)
        return None

    def _drop(self) -> None:
        self.dropped += 1
        self.report("dropped", self.dropped)

    def _schedule_retry(self, exc: Exception) -> None:
        self.logger.warning("%s: stream to %s failed (%s); retrying in %.1f s", self.name, self.params.url, exc, self._backoff)
        self.report("status", f"reconnecting: {exc}")
        self._retry_at = time.perf_counter() + self._backoff
        self._backoff = min(self._backoff * 2, self.params.retry_max_s)

    def close(self) -> None:
        if self._container is not None:
            try:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
            except Exception:
                pass  # the receiver may be gone already
            self._disconnect()

    def update_params(self, params: Params) -> bool:
        return apply_live(self, params, {"retry_max_s"})
