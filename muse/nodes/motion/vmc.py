"""`output.vmc`: the avatar link. Body keypoints and the face mesh drive a VRM
avatar in VSeeFace, VMagicMirror, Warudo, VNyan or XR Animator through the VMC
protocol (OSC over UDP): root, humanoid bones, eye gaze and blendshapes.

The frame never waits: `process` only starts a copy of the tracking numbers to
the host and hands it to the sender thread (newest wins); solving, smoothing
and sending happen there, at most `rate` times a second.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Literal

from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams
from muse.graph.payloads import FaceLandmarks, Keypoints
from muse.nodes.motion.hostcopy import HostRing, Newest, Snapshot, capture_tracking
from muse.nodes.motion.solve import ARKIT_SHAPES, BONES, REST_OFFSET, VRM_SHAPES, AvatarSolver, SolveSettings, Smoother, Solved

log = logging.getLogger("muse.vmc")


def vmc_messages(solved: Solved, *, t: float, blendshapes: str = "vrm", tracking: bool = True,
                 root: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)) -> list[tuple[str, list[Any]]]:
    """One frame of VMC protocol messages (address, arguments), in the order Performer apps send them."""
    msgs: list[tuple[str, list[Any]]] = [
        # loaded, calibration state (3 = calibrated), calibration mode (0 = normal), tracking status
        ("/VMC/Ext/OK", [1, 3, 0, 1 if tracking else 0]),
        ("/VMC/Ext/T", [float(t)]),
        ("/VMC/Ext/Root/Pos", ["root", *[float(v) for v in root]]),
    ]
    for bone in BONES:
        q = solved.rotations[bone]
        pos = solved.hips_position if bone == "Hips" else REST_OFFSET[bone]
        msgs.append(("/VMC/Ext/Bone/Pos", [bone, *[float(v) for v in pos], *[float(v) for v in q]]))
    names: list[str] = []
    if blendshapes in ("vrm", "both"):
        names += VRM_SHAPES
    if blendshapes in ("arkit", "both"):
        names += ARKIT_SHAPES
    for name in names:
        msgs.append(("/VMC/Ext/Blend/Val", [name, float(solved.blend.get(name, 0.0))]))
    msgs.append(("/VMC/Ext/Blend/Apply", []))
    return msgs


def solve_snapshot(solver: AvatarSolver, snap: Snapshot) -> Solved:
    """Run the shared solve on one host snapshot (the caller has waited for it)."""
    face_conf = snap.array("face_conf")
    return solver.solve(snap.array("body"), snap.array("body_conf"), snap.array("face"),
                        float(face_conf[0]) if face_conf is not None else 0.0)


class VMCOutput(Node):
    node_type = "output.vmc"
    display_name = "VMC avatar link"
    description = (
        "Sends body, head, eye gaze and face blendshapes to VRM avatar apps (VSeeFace, VMagicMirror, Warudo, VNyan) "
        "over the VMC protocol (OSC/UDP); smoothed, rate-limited, never holds up the frame."
    )
    capturable = True  # process only starts a device->host copy; no host reads

    keypoints: In[Keypoints] = In(optional=True, description="Body keypoints, BlazePose-33; with depth (pose.blazepose keypoints3d) for 3D arms")
    face: In[FaceLandmarks] = In(optional=True, description="Face mesh with irises (face.landmarks): head rotation, gaze, blinks, mouth")

    class Params(NodeParams):
        host: str = Field("127.0.0.1", description="Receiver address (the PC running VSeeFace / VMagicMirror / Warudo)")
        port: int = Field(39539, ge=1, le=65535, description="Receiver's VMC port (39539 is the protocol's default)")
        rate: float = Field(60.0, gt=0, le=240, description="Most messages per second; faster frames are skipped")
        blendshapes: Literal["vrm", "arkit", "both", "none"] = Field(
            "vrm", description="Blendshape names: VRM presets (Blink_L, A, Joy...), ARKit (perfect-sync avatars), both, or none"
        )
        mirror: bool = Field(False, description="Swap sides: the avatar raises its left hand when you raise your right")
        smoothing: float = Field(0.5, ge=0.0, le=0.98, description="0 = raw; higher = steadier and slower (share kept per 1/30 s)")
        blink_smoothing: float = Field(0.2, ge=0.0, le=0.98, description="Smoothing of blinks (kept light so blinks stay snappy)")
        min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="Keypoints below this count as unseen (the limb relaxes)")
        blink_open: float = Field(0.30, ge=0.05, le=1.0, description="Eye opening (lid gap / eye width) counted as fully open")
        blink_closed: float = Field(0.20, ge=0.0, le=1.0, description="Eye opening counted as fully closed (the face mesh seldom reaches 0)")
        gaze_gain: float = Field(1.0, ge=0.0, le=3.0, description="Scales the eye movement sent (0 = eyes follow the head)")
        bundle: bool = Field(True, description="Send each frame as one OSC bundle (one UDP packet), as VMC apps do")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        from pythonosc.udp_client import SimpleUDPClient

        p = self.params
        try:
            socket.getaddrinfo(p.host, p.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise NodeError(f"node {self.name!r}: cannot resolve host {p.host!r} (field `host`): {exc}") from exc
        self._client = SimpleUDPClient(p.host, p.port, allow_broadcast=p.host.endswith(".255"))
        self._ring = HostRing(ctx.device, slots=4)
        self._mail = Newest()
        self._solver = AvatarSolver(self._settings())
        self._smoother = Smoother(p.smoothing, p.blink_smoothing)
        self._stop = threading.Event()
        self._last_sent = -1e9
        self._t0 = time.perf_counter()
        self.sent = 0
        self.skipped = 0
        self.errors = 0
        self.solve_ms = 0.0
        ctx.report("target", f"{p.host}:{p.port}")
        self._thread = threading.Thread(target=self._loop, name=f"muse-vmc-{self.name}", daemon=True)
        self._thread.start()

    def _settings(self) -> SolveSettings:
        p = self.params
        return SolveSettings(mirror=p.mirror, min_confidence=p.min_confidence, blink_open=p.blink_open,
                             blink_closed=p.blink_closed, gaze_gain=p.gaze_gain)

    def update_params(self, params: Params) -> bool:
        if (params.host, params.port) != (self.params.host, self.params.port):
            return False  # another socket: rebuild
        self.params = params
        if getattr(self, "_solver", None) is not None:
            self._solver.s = self._settings()
            self._smoother.amount, self._smoother.blink_amount = params.smoothing, params.blink_smoothing
        return True

    def process(self, keypoints: Keypoints | None = None, face: FaceLandmarks | None = None) -> None:
        now = time.perf_counter()
        if now - self._last_sent < 1.0 / self.params.rate:
            self.skipped += 1  # rate limit: this frame is not sent
            return None
        if keypoints is not None and keypoints.skeleton != "blazepose33":
            raise NodeError(f"node {self.name!r}: input `keypoints` has skeleton {keypoints.skeleton!r}; "
                            "the avatar solve needs blazepose33 (connect pose.blazepose keypoints3d, or pose.hybrid with output: blazepose33)")
        snap = capture_tracking(self._ring, keypoints, face)
        if snap is None:
            return None
        self._last_sent = now
        self._mail.put(snap)
        return None

    def _loop(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        while not self._stop.is_set():
            snap = self._mail.take(timeout=0.2)
            if snap is None:
                continue
            try:
                snap.ready()
                t0 = time.perf_counter()
                solved = self._smoother(solve_snapshot(self._solver, snap), snap.timestamp)
                self.solve_ms = (time.perf_counter() - t0) * 1000.0
                self._send(solved, t=time.perf_counter() - self._t0)
                self.sent += 1
                if self.sent % 30 == 1:
                    ctx.report("sent", self.sent)
                    ctx.report("solve_ms", round(self.solve_ms, 3))
                    ctx.report("dropped", self._ring.dropped + self._mail.replaced)
            except OSError as exc:  # no network, receiver host unreachable: keep trying, say it once in a while
                self.errors += 1
                if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                    log.warning("%s: could not send to %s:%s (%d times): %s", self.name, self.params.host, self.params.port, self.errors, exc)
                ctx.report("send_errors", self.errors)
            except Exception:  # a bad frame must not end the link
                self.errors += 1
                log.exception("%s: solve failed for frame %d", self.name, snap.index)
            finally:
                snap.release()

    def _send(self, solved: Solved, t: float) -> None:
        from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
        from pythonosc.osc_message_builder import OscMessageBuilder

        msgs = vmc_messages(solved, t=t, blendshapes=self.params.blendshapes, tracking=solved.body_seen or solved.face_seen)
        if not self.params.bundle:
            for address, args in msgs:
                self._client.send_message(address, args)
            return
        bundle = OscBundleBuilder(IMMEDIATELY)
        for address, args in msgs:
            m = OscMessageBuilder(address=address)
            for a in args:
                m.add_arg(a, OscMessageBuilder.ARG_TYPE_FLOAT if isinstance(a, float) else None)
            bundle.add_content(m.build())
        self._client.send(bundle.build())

    def close(self) -> None:
        if getattr(self, "_thread", None) is not None:
            self._stop.set()
            self._mail.wake()
            self._thread.join(timeout=5)
            self._thread = None
            assert self.ctx is not None
            self.report("sent", self.sent)  # the final counts (live values are reported every 30 frames)
            self.report("skipped", self.skipped)
            self.report("dropped", self._ring.dropped + self._mail.replaced)
