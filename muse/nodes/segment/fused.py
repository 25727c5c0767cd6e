"""`segment.fused`: one matte from the model, the clean plate and time, with a per-pixel confidence.

Per frame, at a low working resolution:
1. the model's person probability (the `prior` input, e.g. `segment.hybrid`'s bundled selfie mask);
2. a lighting-invariant clean-plate difference: the plate is aligned to the frame (global shift by phase
   correlation, for camera shake), its gain is fitted per tile and channel on what was background last
   frame (a lighting ramp, auto exposure or flicker is a gain, not a person), and the frame is compared
   with the plate's local min/max envelope (a pixel of residual shake is no difference either), or with the
   plate itself while the room shows that it sits exactly (`envelope_choice`: thin, faint limbs survive); the
   threshold follows the measured background noise (low light);
3. both as log-odds, summed where the plate is known; holes closed (small ones always, larger ones where the
   model calls them person and, in a bay open to the room rather than a hole, the plate sees a faint
   difference: `holes`);
4. motion-aware blending with the previous matte: still pixels keep most of the past (no flicker),
   pixels whose picture changed follow at once (no lag);
5. edge-aware upsampling to full resolution (fast guided filter on the frame).

Outputs the full-resolution `mask`, its `confidence` (0 at uncertain pixels) and `keep_out`
(1 = not surely background), which is what `background.adaptive` should learn around.

Capturable: all state lives in buffers allocated on the first frame of a size and updated in place;
nothing is read back to the host in `process` (the shift search and every choice run on the device).
"""

from __future__ import annotations

import math
from typing import Callable, Hashable

import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.graph.streams import ONE_STREAM, SideStreams
from muse.models.backends import FusedChain, warm_like
from muse.models.compile_ahead import AheadJob, tensor_like, tensor_spec, torch_state, torch_state_applied
from muse.models.matte_refine import box_filter, guided_apply, guided_coefficients
from muse.nodes.cpu import wanted
from muse.nodes.segment._prep import frame_batch, user_path
from muse.nodes.segment.edge_kernel import antialias_cuda
from muse.nodes.segment.envelope_choice import TIGHT_LEVELS, tight_update
from muse.nodes.segment.holes import BAY_EVIDENCE, enclosed

__all__ = ["FusedSegment", "FusedMatte", "FusedSettings"]

LUMA = (0.299, 0.587, 0.114)
# The smooth light field (6 numbers a channel) is fitted on every FIT_STEP-th pixel of every FIT_STEP-th row,
# the per-tile gains (8 x 14 tiles) on every GAIN_STEP-th: both fields are far smoother than that sampling
# (fitting on every 2nd / every pixel changed the mattes by less than a level and cost 4x / 4x on the CPU).
FIT_STEP = 4
GAIN_STEP = 2
# The camera counts as still (the plate's shift stays the last frame's, no new search) while the 99th
# percentile of the room's change against the last frame, judged against the local contrast, is below this:
# 0.012 at most on still clips with noise, exposure jumps and low light; a whole pixel of shake is ~0.5-1 on texture.
CAMERA_STILL = 0.05
# The phase correlation's weighting of the room (`_shift`) is softened over this fraction of the height: the same
# weight multiplies the frame and the plate, so a hard step in it at the person's outline is a pattern both share,
# and a crisp matte made its peak at no shift outweigh the camera's (issue 14, 22nd session: coffee_shake_ramp's
# plate found at (0, 0) on two shaken frames, IoU 0.98 -> 0.88, once the pose's person mask sharpened the model's)
SHIFT_SOFTEN = 0.05
# Where no plate is known the picture's colours vote (`colour_vote`): colour histograms of 16 levels a channel
# (4096 bins) of the person and of the room as the last matte labels them, counted and looked up on every
# COLOUR_STEP-th pixel of every COLOUR_STEP-th row (the histograms are global; the vote is upsampled).
COLOUR_BINS = 16
COLOUR_STEP = 2
# Where no plate is known the picture's motion votes too (`motion_vote`): a pixel moving as the person moves is
# person, one moving as the room moves is room, once the two motions differ by more than MOTION_VOTE_MIN working
# pixels a frame (fully from 1 px more). Worked out on every 4th pixel of every 4th row (the block matching's
# motion is one per 12-pixel block: finer would only show the blocks' edges), averaged over a (2 MOTION_VOTE_RADIUS
# + 1)^2 window of those and upsampled bilinearly (the guided filter places the edge).
MOTION_VOTE_MIN = 0.5
MOTION_VOTE_RADIUS = 3
# Without a recorded plate, room a moving person uncovered within the last UNCOVERED_SECONDS (the picture changed
# where the last matte was person) is learned into the own plate after `own_plate_uncovered_seconds` of stillness
# instead of `own_plate_seconds` (issue 14, eighth session).
UNCOVERED_SECONDS = 1.0 / 3.0
# A hole in the plate's person wider than `small_hole_radius` is filled where the model's probability is above
# MODEL_HOLE[1], not below MODEL_HOLE[0] (smooth between).
MODEL_HOLE = (0.3, 0.7)


def _logit(p: torch.Tensor, lo: float = 0.02) -> torch.Tensor:
    p = p.clamp(lo, 1.0 - lo)
    return torch.log(p) - torch.log1p(-p)


def _dilate(x: torch.Tensor, r: int) -> torch.Tensor:
    """Square max filter as two 1-D passes (a 19x19 window costs 38 taps, not 361)."""
    if r <= 0:
        return x
    x = F.max_pool2d(x, (1, 2 * r + 1), stride=1, padding=(0, r))
    return F.max_pool2d(x, (2 * r + 1, 1), stride=1, padding=(r, 0))


def _erode(x: torch.Tensor, r: int) -> torch.Tensor:
    return -_dilate(-x, r)


def _close(x: torch.Tensor, r: int) -> torch.Tensor:
    """Closing of a half-size plane for a full-size radius r: holes and gaps up to about r pixels filled."""
    return _erode(_dilate(x, -(-r // 2)), -(-r // 2))


def _model_says_person(pm: torch.Tensor) -> torch.Tensor:
    """0 where the model's probability is below MODEL_HOLE[0], 1 above MODEL_HOLE[1], smooth between."""
    t = ((pm - MODEL_HOLE[0]) / (MODEL_HOLE[1] - MODEL_HOLE[0])).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smoothstep(lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _known_quantile(d: torch.Tensor, known: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of d over the pixels whose plate is known (a learned plate covers only part of the
    picture), by sorting with the unknown ones pushed to the end: no boolean indexing, no host read."""
    return _known_quantiles(d[None], known[None], q)[0]


def _known_quantiles(d: torch.Tensor, known: torch.Tensor, q: float | torch.Tensor) -> torch.Tensor:
    """`_known_quantile` of each d[i] over known[i], all in one set of kernels (B,): the same numbers as B calls,
    a quarter of the launches for four. q: one level for all, or a (B,) device tensor of levels (made once, not
    per frame: a recorded frame may not copy host values in)."""
    b = d.shape[0]
    dk = torch.where(known > 0.5, d, torch.full_like(d, 1e3)).reshape(b, -1)[:, ::7]
    v = dk.sort(dim=1).values
    n = v.shape[1]
    kf = (known > 0.5).float().reshape(b, -1)[:, ::7].mean(dim=1)
    pos = (q * kf * (n - 1)).clamp(0.0, n - 1.0)  # linear interpolation, as torch.quantile
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(n - 1)
    f = pos - lo.float()
    return torch.lerp(v.gather(1, lo[:, None]), v.gather(1, hi[:, None]), f[:, None])[:, 0]


# Settings the maths read as device scalars (FusedMatte.lv): editing one recompiles and re-records nothing. The
# others change buffer sizes or which operations run (a new compile in the background, a new recording).
LIVE_SETTINGS = ("model_weight", "plate_weight", "plate_background", "threshold", "noise_factor", "stability",
                 "model_stability", "trust_jumps", "motion_noise", "motion_threshold", "refine_eps", "edge_offset",
                 "model_edge_offset", "learn_seconds", "learn_rate", "own_plate_seconds", "colour_vote",
                 "motion_vote", "model_edge_contrast", "own_plate_uncovered_seconds", "own_plate_weight")


class FusedSettings(NodeParams):
    """The fusion's knobs; shared by `segment.fused` and `segment.hybrid`'s plate path."""

    working_height: int = Field(288, ge=64, le=1080, description="Height the fusion runs at (the full-size edge comes from the frame)")
    model_weight: float = Field(1.0, ge=0.0, le=4.0, description="Weight of the model's opinion against the clean plate's")
    plate_weight: float = Field(3.0, ge=0.0, le=4.0, description="Weight of a recorded clean plate's difference (1.5 until issue 14's eighth session: 3 gave lower flicker and the same or better IoU on every quality clip but one)")
    own_plate_weight: float = Field(1.5, ge=0.0, le=4.0, description="plate_weight for the plate the node learns itself when none is recorded (learned from the model's background, it is trusted less)")
    plate_background: float = Field(3.5, ge=0.5, le=8.0, description="Strongest 'this is the room' vote of the plate (log-odds); lower lets a sure model fill holes")
    threshold: float = Field(0.06, ge=0.005, le=1.0, description="Smallest plate difference (0-1 RGB) that can be a person")
    noise_factor: float = Field(5.0, ge=1.0, le=20.0, description="The threshold rises to this many times the background's measured noise")
    max_shift: float = Field(0.03, ge=0.0, le=0.2, description="Largest camera shake followed, as a fraction of the height")
    envelope: int = Field(1, ge=0, le=4, description="Pixels of residual misalignment tolerated (working resolution), only while the room shows the plate a fraction of a pixel off: where it sits exactly, the frame is compared with the plate itself, which keeps thin, faint limbs (issue 14, twentieth session: envelope_choice)")
    tiles: int = Field(8, ge=1, le=32, description="Rows of lighting tiles (gain fitted per tile and channel)")
    close_radius: float = Field(0.05, ge=0.0, le=0.1, description="Holes in the plate's person up to this size (fraction of height) are filled where the model calls them person (clothes the colour of the room); without a model, everywhere. A bay of room open to one side (between the legs, under an arm) only where the plate sees a faint difference in it (issue 14, twentieth session, second round: segment/holes.py)")
    small_hole_radius: float = Field(0.02, ge=0.0, le=0.1, description="Holes and gaps in the plate's person up to this size (fraction of height) are filled whatever the model says; between this and close_radius only where the model agrees (the room between an arm and the body, or between the legs, stays room: filled, it flickered as the limbs moved); close_radius 0 turns all hole closing off")
    stability: float = Field(0.75, ge=0.0, le=0.98, description="How much still pixels keep of the past matte (0 = no smoothing)")
    model_stability: float = Field(0.95, ge=0.0, le=0.98, description="stability where no plate is known: without a change in the picture, a change of the model's mind is noise")
    motion_reach: int = Field(0, ge=0, le=8, description="Pixels (working size) around a change that also follow it at once (the previous matte is already carried along the motion)")
    trust_jumps: bool = Field(False, description="Follow a large matte change on a pixel whose picture did not change at once, where a plate backs it (off: like any change of mind without motion, it is blended in over a few frames)")
    motion_noise: float = Field(2.0, ge=0.0, le=10.0, description="A picture change up to this many times the frame's median change is camera noise, not motion: for the own plate's stillness, and for the matte where no plate is known (0 = off)")
    motion_threshold: float = Field(0.03, ge=0.001, le=1.0, description="Picture change (0-1) that counts as full motion")
    refine_radius: int = Field(4, ge=0, le=8, description="Edge-aware upsampling window radius (working pixels)")
    refine_step: int = Field(0, ge=0, le=4, description="The edge-aware upsampling's coefficients are computed on blocks of refine_step x refine_step working pixels (window refine_radius / refine_step blocks): 1 = every working pixel, 2 = a quarter of the work; 0 = auto (2 on the CPU, 1 on a GPU)")
    refine_eps: float = Field(5e-4, ge=1e-6, le=1.0, description="Edge sensitivity of the upsampling (smaller follows weaker edges; 2e-3 until issue 14's eighteenth session: 5e-4 flickers less with a plate and the same without)")
    relative_edge: bool = Field(True, description="Place the plate's edge at half the nearby difference (alpha 0.5), not at the noise threshold")
    edge_offset: float = Field(0.05, ge=-0.45, le=0.45, description="Moves the final edge inwards (+) or outwards (-): alpha level that becomes 0.5 (0.15 until issue 14's eighteenth session: since the model-gated hole closing, 0.05 is better on every with-plate figure of both quality benches and leaves less room inside her, with the same rim)")
    denoise: int = Field(1, ge=0, le=4, description="Box-blur radius against camera noise before the plate comparison (working pixels)")
    model_edge_offset: float = Field(0.05, ge=-0.45, le=0.45, description="edge_offset where no plate is known: the model's own 0.5 is already its edge")
    model_edge_contrast: float = Field(1.5, ge=1.0, le=4.0, description="Where no plate is known the edge's contrast is this many times edge_sharpness: the matte's greys there are the model's uncertainty, not a pixel partly covered by the person, and shown as see-through they flicker with it (1 = as with a plate)")
    edge_sharpness: float = Field(1.6, ge=1.0, le=8.0, description="Contrast of the final edge (1 = as filtered; higher = crisper, less halo)")
    edge_softness: float = Field(1.0, ge=0.0, le=4.0, description="Anti-aliasing of the final edge, in output pixels (a Gaussian's sigma) after its contrast: a matte edge harder than the picture's crawls from pixel to pixel as the person moves (flicker); 1 = about a pixel's own footprint, 0 = off")
    learn_seconds: float = Field(2.0, ge=0.1, le=600.0, description="A pixel surely background this long is learned into the plate")
    learn_rate: float = Field(0.05, ge=0.0, le=1.0, description="Per-frame rate at which learned pixels follow the room")
    follow_motion: bool = Field(True, description="Carry the previous matte along the picture's motion before blending (a moving person is smoothed too)")
    motion_search: float = Field(0.045, ge=0.0, le=0.2, description="Largest motion between two frames followed, as a fraction of the height")
    own_plate: bool = Field(True, description="Without a recorded plate, learn one from the room the model calls background (a plate that grows as the person moves)")
    own_plate_seconds: float = Field(0.15, ge=0.03, le=10.0, description="Without a recorded plate: how long a pixel must be still and background for the model before it is learned")
    own_plate_uncovered_seconds: float = Field(0.03, ge=0.03, le=10.0, description="Without a recorded plate: the same for room a moving person uncovered in the last third of a second (the picture changed where the matte was person; a still person, or one who walks in and stops, uncovers nothing): 0.03 = the first still frame; as own_plate_seconds = no difference")
    colour_vote: float = Field(1.0, ge=0.0, le=4.0, description="Where no plate is known: the largest vote (log-odds) of the picture's colours, compared with the person's and the room's colours as the last matte shows them (0 = the model alone)")
    motion_vote: float = Field(2.0, ge=0.0, le=8.0, description="Where no plate is known: the largest vote (log-odds) of the picture's motion while the person moves differently from the room: moving as the person does is person, as the room does is room (0 = off; needs follow_motion)")


class FusedMatte:
    """The fusion maths with its state (working-resolution buffers owned and updated in place)."""

    def __init__(self, settings: FusedSettings, device: torch.device, fps: float = 30.0) -> None:
        self.s = settings
        self.device = device
        self.fps = fps
        self.size: tuple[int, int] | None = None  # (w, h) working size
        self._plate_key: object = None
        # The tunable numbers as device scalars (views of one buffer), read by the maths as tensors: an edit is
        # a copy into them, so compiled code and recorded frames need nothing new (LIVE_SETTINGS).
        self._live = torch.zeros(len(LIVE_SETTINGS), device=device)
        self.lv = {name: self._live[i] for i, name in enumerate(LIVE_SETTINGS)}
        self.set_live(settings)
        # Independent chains of the frame's maths (the colour vote; the plate's shift search; the motion search
        # and the motion vote) run on side streams beside the plate comparison: each is hundreds of small kernels
        # that wait on one another, so side by side they overlap (a GPU; the same numbers either way)
        self._side = SideStreams(device)

    # -- state ------------------------------------------------------------
    def _alloc(self, w: int, h: int) -> None:
        dev = self.device
        self.size = (w, h)
        self.plate = torch.zeros(1, 3, h, w, device=dev)
        self.known = torch.zeros(1, 1, h, w, device=dev)
        self.alpha = torch.zeros(1, 1, h, w, device=dev)  # last matte (working resolution)
        self.conf = torch.zeros(1, 1, h, w, device=dev)
        self.prev = torch.zeros(1, 3, h, w, device=dev)  # last frame (working resolution)
        self.clear_for = torch.zeros(1, 1, h, w, device=dev)  # frames surely background
        self.still_for = torch.zeros(1, 1, h, w, device=dev)  # frames still and background for the model (own plate, its coordinates)
        self.since_uncovered = torch.zeros(1, 1, h, w, device=dev)  # frames since a person moved off (own plate, its coordinates)
        self.anchor = torch.zeros(1, 1, h, w, device=dev)  # luma of the frame that set the own plate's coordinates
        self.last_shift = torch.zeros(2, device=dev)  # last frame's shift (dy, dx) from the plate's coordinates
        self.primed = torch.zeros((), device=dev)  # 0 until the first frame has set alpha/prev
        self.has_plate = torch.zeros((), device=dev)
        self.fit_ok = torch.ones(1, 1, h, w, device=dev)  # 0 where the last frame's plate difference found a person
        self.tight = torch.zeros((), device=dev)  # envelope_choice: 1 = the plate sits exactly (no envelope), 0 = envelope
        self._tight_q = torch.tensor(TIGHT_LEVELS, device=dev)  # the levels of its one sort
        yy, xx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        self._yy, self._xx = yy.float(), xx.float()
        self._yn, self._xn = self._yy / max(1, h - 1) * 2 - 1, self._xx / max(1, w - 1) * 2 - 1
        by, bx = self._yn[::FIT_STEP, ::FIT_STEP], self._xn[::FIT_STEP, ::FIT_STEP]
        # Quadratic light-field bases: sparse (fit) and full (apply), built once per size.
        self._basis = torch.stack((torch.ones_like(by), bx, by, bx * bx, bx * by, by * by)).reshape(6, -1)
        yn, xn = self._yn, self._xn
        self._basis_full = torch.stack((torch.ones_like(yn), xn, yn, xn * xn, xn * yn, yn * yn)).reshape(6, -1)
        wy = torch.hann_window(h, periodic=False, device=dev)
        wx = torch.hann_window(w, periodic=False, device=dev)
        self._window = (wy[:, None] * wx[None, :])[None, None]
        # Shifts beyond max_shift are not searched (a person walking is no camera shake).
        ms = max(1.0, self.s.max_shift * h)
        dy = torch.minimum(yy, h - yy).float()
        dx = torch.minimum(xx, w - xx).float()
        self._shift_ok = ((dy <= ms) & (dx <= ms)).float()[None, None] if self.s.max_shift > 0 else None
        # Motion search: candidate shifts at quarter size, and the sampling grid of the working size.
        q = 4
        r = max(1, round(self.s.motion_search * h / q))
        cy, cx = torch.meshgrid(torch.arange(-r, r + 1, device=dev), torch.arange(-r, r + 1, device=dev), indexing="ij")
        self._cands = (cy.flatten().float(), cx.flatten().float())
        # a small cost per pixel of motion: flat areas (a plain wall) keep still rather than pick a shift at random
        self._cand_cost = (1e-3 * (cy.float().square() + cx.float().square()).sqrt()).flatten().view(1, -1, 1, 1)
        gy = (2.0 * self._yy + 1.0) / h - 1.0
        gx = (2.0 * self._xx + 1.0) / w - 1.0
        self._base_grid = torch.stack((gx, gy), -1)[None]
        # constants as this engine's own tensors (not the shared device_constant table: the compiled maths
        # would depend on that table's other entries)
        self._flow_scale = torch.tensor([2.0 / w, 2.0 / h], device=dev).view(1, 2, 1, 1)
        self._luma = torch.tensor(LUMA, device=dev).view(1, 3, 1, 1)
        self._flow_r = r
        self._plate_key = None

    def reset(self) -> None:
        self.size = None

    def set_live(self, settings: FusedSettings) -> None:
        """New values of LIVE_SETTINGS, copied into the device scalars in place (between frames)."""
        self.s = settings
        values = [float(getattr(settings, name)) for name in LIVE_SETTINGS]
        self._live.copy_(torch.tensor(values, dtype=torch.float32))

    def set_plate(self, make: Callable[[], torch.Tensor], key: object) -> None:
        """A recorded plate: `make()` gives it as (1,3,h,w) float in [0,1] at working size, called only
        when `key` tells a new plate from the one already here (the resize is not redone every frame)."""
        if key is self._plate_key or (key is not None and key == self._plate_key):
            return
        self._plate_key = key
        self.plate.copy_(make())
        self.known.fill_(1.0)
        self.has_plate.fill_(1.0)

    # -- pieces -----------------------------------------------------------
    def _shift(self, a: torch.Tensor, b: torch.Tensor, bgw: torch.Tensor) -> torch.Tensor:
        """Translation (dy, dx) in pixels taking luma b (the plate's, or the own plate's anchor frame) onto
        the frame's luma a, by phase correlation on the background."""
        if self._shift_ok is None:
            return torch.zeros(2, device=a.device)
        soft = box_filter(bgw, max(1, round(SHIFT_SOFTEN * a.shape[-2])))  # no shared hard edge (SHIFT_SOFTEN)
        win = self._window * (0.2 + 0.8 * soft)  # the person moves: count the room more
        a = (a - a.mean()) * win
        b = (b - b.mean()) * win
        fa, fb = torch.fft.rfft2(a), torch.fft.rfft2(b)
        r = fa * fb.conj()
        corr = torch.fft.irfft2(r / r.abs().clamp_min(1e-8), s=a.shape[-2:])
        corr = corr * self._shift_ok - (1 - self._shift_ok)
        h, w = a.shape[-2:]
        idx = corr.flatten().argmax()
        iy, ix = (idx // w).float(), (idx % w).float()
        dy = torch.where(iy > h / 2, iy - h, iy)
        dx = torch.where(ix > w / 2, ix - w, ix)
        return torch.stack((dy, dx))

    def _follow(self, cur: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """grid_sample grid taking last frame's pixels to where they are now, and that motion (1, 2, h, w) (x, y in
        working pixels): for every pixel the shift v (block matching on a quarter-size picture, candidates within
        motion_search) with cur(p) ~ prev(p + v)."""
        q, r = 4, self._flow_r
        h, w = cur.shape[-2:]
        a = F.avg_pool2d(cur, q, ceil_mode=True)
        b = F.pad(F.avg_pool2d(prev, q, ceil_mode=True), (r, r, r, r), mode="replicate")
        hq, wq = a.shape[-2:]
        shifted = torch.cat([b[..., r + dy:r + dy + hq, r + dx:r + dx + wq]
                             for dy in range(-r, r + 1) for dx in range(-r, r + 1)], 1)
        cost = F.avg_pool2d((shifted - a).abs(), 3, stride=1, padding=1, count_include_pad=False) + self._cand_cost
        idx = cost.argmin(1, keepdim=True)
        k = shifted.shape[1]
        vy = self._cands[0].view(1, k, 1, 1).expand(1, k, hq, wq).gather(1, idx)
        vx = self._cands[1].view(1, k, 1, 1).expand(1, k, hq, wq).gather(1, idx)
        # sub-pixel: a parabola through the best cost and its neighbours along x and along y
        n = 2 * r + 1
        c0 = cost.gather(1, idx)

        def vertex(step: int, v: torch.Tensor) -> torch.Tensor:
            inside = ((v > -r) & (v < r)).float()
            lo = cost.gather(1, (idx - step).clamp(0, k - 1))
            hi = cost.gather(1, (idx + step).clamp(0, k - 1))
            curv = (lo - 2.0 * c0 + hi).clamp_min(1e-6)
            return ((lo - hi) / (2.0 * curv)).clamp(-0.5, 0.5) * inside

        vx = vx + vertex(1, vx)
        vy = vy + vertex(n, vy)
        flow = F.interpolate(torch.cat((vx, vy), 1) * q, size=(h, w), mode="bilinear", align_corners=False)
        scale = self._flow_scale
        return self._base_grid + (flow * scale).permute(0, 2, 3, 1), flow

    def _translate(self, img: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """img shifted by (dy, dx) pixels (content moves by +shift), edges replicated."""
        h, w = img.shape[-2:]
        # built on the device by stacking: `theta[i, j] = 1.0` copies a host scalar in (not allowed in a recorded frame)
        one, zero = torch.ones_like(shift[0]), torch.zeros_like(shift[0])
        theta = torch.stack((torch.stack((one, zero, -2.0 * shift[1] / w)),
                             torch.stack((zero, one, -2.0 * shift[0] / h))))[None].float()
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _light_field(self, x: torch.Tensor, plate: torch.Tensor, bgw: torch.Tensor) -> torch.Tensor:
        """A smooth per-channel gain over the picture (quadratic in x, y), fitted robustly (IRLS, Cauchy
        weights) to frame / plate on likely-background pixels: a ramp, a lamp or an exposure jump is this
        field; a person is an outlier to it, even one nobody told us about."""
        f = FIT_STEP
        xs, ps, ws = x[..., ::f, ::f], plate[..., ::f, ::f], bgw[..., ::f, ::f]
        basis = self._basis  # (6, N)
        ratio = (xs / ps.clamp_min(0.04)).reshape(3, -1)  # (3, N)
        base = (ws * (ps.amin(1, keepdim=True) > 0.04).float()).reshape(1, -1)
        flat = ratio.median(dim=1, keepdim=True).values  # robust start: the global median gain
        fit = flat.expand_as(ratio)
        eye = 1e-3 * torch.eye(6, device=x.device)
        for _ in range(3):
            res = ratio - fit
            wt = base / (1.0 + (res / 0.08).square())  # (3, N)
            wb = wt[:, None, :] * basis[None]  # (3, 6, N)
            norm = wt.sum(1).clamp_min(1.0)
            a = (wb @ basis.t()) / norm[:, None, None]
            b = (wb @ ratio[:, :, None])[..., 0] / norm[:, None]
            theta, _ = torch.linalg.solve_ex(a + eye, b)  # _ex: no error check, so no host sync
            fit = theta @ basis
        hh, ww = x.shape[-2:]
        return (theta @ self._basis_full).view(1, 3, hh, ww).clamp(0.2, 5.0)

    def _gain(self, x: torch.Tensor, plate: torch.Tensor, bgw: torch.Tensor) -> torch.Tensor:
        """Per-tile, per-channel gain mapping the plate's light onto the frame's, fitted on background pixels."""
        h, w = x.shape[-2:]
        rows = max(1, self.s.tiles)
        cols = max(1, round(rows * w / h))
        g = GAIN_STEP
        x, plate, bgw = x[..., ::g, ::g], plate[..., ::g, ::g], bgw[..., ::g, ::g]
        stack = torch.cat((x * plate * bgw, plate * plate * bgw, plate * plate), 1)
        t = F.adaptive_avg_pool2d(stack, (rows, cols))
        num, den, full = t[:, 0:3], t[:, 3:6], t[:, 6:9]
        g0 = torch.ones_like(num[:, :, :1, :1])  # the smooth light field is already applied
        beta = 0.3  # tiles the person covers keep the smooth field
        gain = (num + beta * g0 * full) / (den + beta * full).clamp_min(1e-6)
        gain = F.avg_pool2d(F.pad(gain, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return F.interpolate(gain.clamp(0.2, 5.0), size=(h, w), mode="bilinear", align_corners=False)

    def _colour_vote(self, x: torch.Tensor, last: torch.Tensor, bgw: torch.Tensor) -> torch.Tensor:
        """Each pixel's colour as evidence (log-odds, within +-colour_vote): half the log-likelihood ratio of its
        colour under the person's and the room's colour histograms, the person being where the last matte is
        above 0.8 and the room where it is below 0.2 with the 3 % margin (bgw > 0.8). Counted in this frame's
        own colours, so a change of light or exposure moves both histograms with the picture. A colour
        neither side shows (ten pixels' worth of either) votes nothing; half the ratio, as the labels come
        from the matte being decided. On every COLOUR_STEP-th pixel of every COLOUR_STEP-th row (counted and
        looked up), bilinearly to the working size: the same figures on the quality clips at a quarter of the
        look-ups (the guided filter places the edge)."""
        nb, g = COLOUR_BINS, COLOUR_STEP
        h, w = x.shape[-2:]
        q = (x[..., ::g, ::g] * nb).long().clamp_(0, nb - 1)
        idx = (q[:, 0] * nb + q[:, 1]) * nb + q[:, 2]  # (1, h / g, w / g)
        flat = idx.flatten()
        hist = torch.zeros(2, nb ** 3, device=x.device)
        hist[0].index_add_(0, flat, (last[:, 0, ::g, ::g] > 0.8).float().flatten())
        hist[1].index_add_(0, flat, (bgw[:, 0, ::g, ::g] > 0.8).float().flatten())
        hist = hist / hist.sum(1, keepdim=True).clamp_min(1.0)
        eps = 10.0 / flat.numel()
        llr = torch.log((hist[0] + eps) / (hist[1] + eps))
        vote = self.lv["colour_vote"]
        ev = torch.maximum(torch.minimum(0.5 * llr[idx], vote), -vote)[:, None]
        return F.interpolate(ev, size=(h, w), mode="bilinear", align_corners=False)

    def _motion_vote(self, flow: torch.Tensor, last: torch.Tensor, bgw: torch.Tensor) -> torch.Tensor:
        """Each pixel's motion as evidence (log-odds, within +-motion_vote): the person's motion and the room's are
        the medians of the block-matched motion where the last matte is above 0.8 and where it is surely room
        (bgw > 0.8), on every 4th pixel of every 4th row; a pixel nearer the person's motion than the room's votes
        person, in proportion to (distance to the room's - distance to the person's) / their separation. Nothing
        while they move alike (a still person, a camera that shakes them both): up to MOTION_VOTE_MIN px apart,
        fully from 1 px more; nor while either has fewer than 50 sampled pixels. On the same sampled grid, averaged
        over MOTION_VOTE_RADIUS of it and upsampled bilinearly (the motion is one per block)."""
        h, w = flow.shape[-2:]
        f = flow[..., ::4, ::4]
        sp = (last[..., ::4, ::4] > 0.8).float()
        sr = (bgw[..., ::4, ::4] > 0.8).float()
        vx, vy = f[:, 0:1], f[:, 1:2]
        # the four medians (person's and room's, x and y) in one sort
        px, py, rx, ry = _known_quantiles(torch.stack((vx, vy, vx, vy)), torch.stack((sp, sp, sr, sr)), 0.5).unbind(0)
        sep = torch.sqrt((px - rx).square() + (py - ry).square())
        gate = ((sep - MOTION_VOTE_MIN).clamp(0.0, 1.0) * (sp.sum() > 50).float() * (sr.sum() > 50).float())
        to_room = torch.sqrt((vx - rx).square() + (vy - ry).square())
        to_person = torch.sqrt((vx - px).square() + (vy - py).square())
        v = ((to_room - to_person) / sep.clamp_min(1e-3)).clamp(-1.0, 1.0) * gate
        v = F.interpolate(box_filter(v, MOTION_VOTE_RADIUS), size=(h, w), mode="bilinear", align_corners=False)
        return v * self.lv["motion_vote"]

    def _picture_change(self, x: torch.Tensor, lx: torch.Tensor, lw: torch.Tensor, bgw: torch.Tensor,
                        contrast: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The picture change since the last frame, that frame moved by delta (the camera's shake since then),
        exposure changes taken out (a global gain is no motion): (unclipped, ratio, change, still, cm, room)."""
        s = self.s
        prev = self._translate(self.prev, delta)
        # the gain is the median ratio over the room's unclipped, not-too-dark pixels: a person walking into
        # the room, or moving, is a minority that a mean would follow
        unclipped = (x.amax(1, keepdim=True) < 0.97).float() * (prev.amax(1, keepdim=True) < 0.97).float()
        lp = (prev * lw).sum(1, keepdim=True)
        wr = bgw * unclipped * (lx > 0.04).float() * (lp > 0.04).float()
        log_gain = _known_quantile(torch.log(lx.clamp_min(0.02)) - torch.log(lp.clamp_min(0.02)), wr, 0.5)
        ratio = torch.exp(log_gain.clamp(-1.5, 1.5)).view(1, 1, 1, 1)  # none measured (first frame): e^1.5, motion anyway
        change = ((x - prev * ratio).abs() * lw).sum(1, keepdim=True) * unclipped  # a clipped pixel says nothing
        cm = box_filter(change, 1)
        lv = self.lv
        # camera noise is no motion for the own plate's stillness gate (low light): see motion_noise (0 = off:
        # no floor, the same planes; computed either way so an edit of motion_noise compiles nothing new)
        floor = torch.minimum(lv["motion_noise"] * _known_quantile(cm, torch.ones_like(cm), 0.5), 0.5 * lv["motion_threshold"])
        cm = (cm - floor).clamp_min(0.0)
        still = (_dilate(cm, 2) / lv["motion_threshold"]).clamp(0.0, 1.0)
        room = (cm / contrast / lv["motion_threshold"]).clamp(0.0, 1.0)
        return unclipped, ratio, change, still, cm, room

    def _motion(self, x: torch.Tensor, lx: torch.Tensor, lw: torch.Tensor, last: torch.Tensor, bgw: torch.Tensor,
                ratio: torch.Tensor, unclipped: torch.Tensor, contrast: torch.Tensor,
                vote: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The picture's motion since the last frame and what follows from it: (the motion's vote, or None
        without `vote`; the last matte carried along the motion; the picture change the motion does not explain)."""
        grid, flow = self._follow(lx, (self.prev * ratio * lw).sum(1, keepdim=True))
        # where no plate is known the motion votes: while the person moves unlike the room, what moves with her
        # is her (the part of her the model is unsure of), what stays with the room is room (a lamp, a cat's
        # face the model takes for a person). Computed at motion_vote 0 too (it votes 0 then).
        moves = self._motion_vote(flow, last, bgw) if vote else None
        prev_w = F.grid_sample(self.prev * ratio, grid, mode="bilinear", padding_mode="border", align_corners=False)
        carried = F.grid_sample(self.alpha, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # the last frame in this frame's exposure clips as the camera does (an exposure jump up saturates
        # the bright parts of both); a clipped pixel says nothing about motion
        change = ((x - prev_w.clamp(0.0, 1.0)).abs() * lw).sum(1, keepdim=True) * unclipped
        # what is left after following the motion is judged against the local contrast: half a pixel of
        # misregistration on a sharp edge is a large difference, and no motion the matte has to follow
        return moves, carried, change / contrast

    # -- one frame --------------------------------------------------------
    def step(self, x: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """x (1,3,h,w) frame at working size in [0,1]; prior (1,1,h,w) model probability or None.
        Returns the new matte (1,1,h,w) (also kept in self.alpha); self.conf holds its confidence."""
        s = self.s
        h, w = x.shape[-2:]
        primed = self.primed
        pm = prior.clamp(0, 1) if prior is not None else self.alpha
        # Background weight from the last matte (first frame: from the model), with a margin.
        margin = max(1, round(0.03 * h))
        pm_grown = _dilate(pm, margin)  # the model's person with a margin (without a model: the last matte)
        last = torch.lerp(pm, self.alpha, primed)
        bgw = 1.0 - _dilate(last, margin)
        # traced by torch.compile: one stream, and no guard on this engine's own streams (see SideStreams)
        side = ONE_STREAM if torch.compiler.is_compiling() else self._side
        colour = None
        if prior is not None:
            with side.branch(0):
                colour = self._colour_vote(x, last, bgw)

        # Picture change since the last frame, exposure changes taken out (a global gain is no motion).
        lw = self._luma
        lx = (x * lw).sum(1, keepdim=True)
        # Where the plate sits in this frame (camera shake): a recorded plate is found in the frame by phase
        # correlation once most of it is known; an own plate is kept in the coordinates of the frame that
        # started it (its anchor), so it is found by correlating with that frame, which is all known.
        own = 1.0 - self.has_plate  # 1 while the plate is the node's own (learned), not a recorded one
        ref = torch.lerp((self.plate * lw).sum(1, keepdim=True), self.anchor, own)
        ok = torch.lerp(self.known.mean().gt(0.3).float(), primed, own)  # no plate (anchor) yet: no shift
        # local contrast: half a pixel of misregistration on a sharp edge (the shake is followed in whole
        # pixels, a person's motion by blocks) is a large difference, and no motion
        grad = (lx[..., :, 1:] - lx[..., :, :-1]).abs()
        grad = F.pad(grad, (0, 1, 0, 0)) + F.pad((lx[..., 1:, :] - lx[..., :-1, :]).abs(), (0, 0, 0, 1))
        lv = self.lv  # the params an edit changes in place (no new compile, no new recording)
        contrast = 1.0 + box_filter(grad, 1) / lv["motion_threshold"]
        # The room against the last frame as it sat: where it is unchanged (the camera did not move) the
        # shift stays the last frame's (the CPU path then skips the phase correlation: a still webcam, most frames)
        with side.branch(1):
            searched = self._shift(lx, ref, bgw)
        room0 = self._picture_change(x, lx, lw, bgw, contrast, torch.zeros_like(self.last_shift))[-1]
        cam_still = (_known_quantile(room0, bgw, 0.99) < CAMERA_STILL).float()
        side.join(1, searched)
        shift = torch.lerp(searched, self.last_shift, cam_still) * ok
        # the last frame moved by the camera's shake since then: the room's own change is what is left
        unclipped, ratio, change, still, cm, room = self._picture_change(x, lx, lw, bgw, contrast, shift - self.last_shift)
        # An own plate holds while the room moves only as the shake explains: the room moving as a whole
        # beyond that (a pan, the camera put elsewhere) drops it, and the frame becomes the new anchor.
        room_moved = ((room * bgw).sum() / bgw.sum().clamp_min(1.0) > 0.25).float() * primed
        self.known.mul_(1.0 - own * room_moved)
        restart = own * torch.maximum(room_moved, 1.0 - primed)
        self.anchor.lerp_(lx, restart)
        shift = shift * (1.0 - restart)

        # The motion since the last frame, beside the plate comparison below: the previous matte is carried
        # along the picture's motion (block matching at quarter size) in step 4, and where no plate is known
        # that motion votes as well (step 3).
        motion = None
        if s.follow_motion:
            with side.branch(1):
                motion = self._motion(x, lx, lw, last, bgw, ratio, unclipped, contrast, prior is not None)

        # 2. lighting-invariant, shake-tolerant plate difference
        plate = self._translate(self.plate, shift)
        known = self._translate(self.known, shift)
        # Unknown plate pixels (an own plate still growing) take the frame's value: no difference there,
        # and the filters below do not bleed the empty plate into the known room beside it.
        plate = torch.where(known > 0.5, plate, x)
        xs = box_filter(x, s.denoise)  # camera noise
        ps = box_filter(plate, s.denoise)
        wk = bgw * known
        light = self._light_field(xs, ps, wk)
        # Tiles are fitted only on what the smooth light already explains (Cauchy weight): not on a person.
        off = (xs - light * ps).abs().sum(1, keepdim=True)
        w_light = wk / (1.0 + (off / 0.06).square())
        # One tile fit a frame, leaving out what the last frame's comparison found different (a missed person).
        # (Until h14d a second fit in the same frame left out what the first found: the same mattes on the
        # quality clips, twice the work.)
        gain = light * self._gain(xs, light * ps, w_light * self.fit_ok)
        pc = (gain * ps).clamp(0.0, 1.0)  # a brighter exposure clips: so does the plate
        r = s.envelope
        e = F.relu(xs - _dilate(pc, r)) + F.relu(_erode(pc, r) - xs)
        loose = e.square().sum(1, keepdim=True).sqrt()  # against the envelope (a pixel of residual shake is nothing)
        exact = (xs - pc).square().sum(1, keepdim=True).sqrt()  # against the plate itself (thin, faint limbs survive)
        # Which of the two, from the room's own evidence (envelope_choice): over what the model calls room, the
        # exact difference's high quantile stays by the envelope's while the plate sits exactly, and jumps at the
        # room's edges when it sits a fraction of a pixel off. All the levels from one sort, the noise's with them.
        model_room = (pm_grown < 0.2).float() * known  # as sure as the learning's (a limb the model half sees is out)
        levels = _known_quantiles(torch.stack((loose, exact, exact, loose)), torch.stack((known, known, model_room, model_room)),
                                  self._tight_q)
        self.tight.copy_(tight_update(self.tight, levels, lv["threshold"], lv["noise_factor"], model_room))
        tight = self.tight
        # where the plate is unknown (a plate still being learned) there is no difference: the hole
        # filling and the edge placement below must not grow the person into what was never seen
        d = torch.lerp(loose, exact, tight) * (known > 0.5).float()
        # Noise-adaptive threshold from the typical (lower third) difference: low light, compression.
        # (robust while people cover < 70 % of the known room; the lower third of the difference used, as d)
        noise = torch.lerp(levels[0], levels[1], tight)
        tau = torch.maximum(lv["threshold"], lv["noise_factor"] * noise)
        self.fit_ok.copy_((d < 2.0 * tau).float())
        pp = _smoothstep(tau, 2.5 * tau, d)
        if s.relative_edge:
            # A mixed edge pixel differs by alpha x (person - room): its share of the nearby full difference
            # puts the edge at alpha 0.5, not where the difference first exceeds the noise (which dilates).
            # Only in the outer band of the person: inside, the person's own texture varies the difference.
            a_est = d / torch.maximum(_dilate(d, 2), 2.5 * tau)
            rel = _smoothstep(torch.full_like(tau, 0.25), torch.full_like(tau, 0.75), a_est)
            band = 1.0 - _erode(pp, 2)
            pp = pp * (1.0 - band * (1.0 - rel))
        rc = round(s.close_radius * h)
        if rc > 0:  # holes where clothes match the room; at quarter size (a wide radius needs no pixel precision)
            small = F.max_pool2d(pp, 2, ceil_mode=True)
            # The wide closing fills bays of room beside her as well as holes (between a walker's legs, under an
            # arm): kept in full only where enclosed, in a bay only as far as the plate sees a faint difference
            # there (clothes near the room's colour; room reads as noise). segment/holes.py, issue 14, 20th
            # session, 2nd round: quality_extra's flicker with a plate 7.3 -> 6.3.
            wide = _close(small, rc)
            holes = F.interpolate(torch.minimum(wide, enclosed(small, 2 * -(-rc // 2))), size=(h, w), mode="bilinear",
                                  align_corners=False)
            faint = _smoothstep(BAY_EVIDENCE[0] * tau, BAY_EVIDENCE[1] * tau, _erode(box_filter(d, 1), 1))
            closed = torch.lerp(holes, F.interpolate(wide, size=(h, w), mode="bilinear", align_corners=False), faint)
            if prior is not None:
                # A closing also fills the room between an arm and the body: beyond small_hole_radius only where
                # the model calls it person (issue 14, fifteenth session: two_shake's flicker 17.6 -> 14.6)
                rs = round(s.small_hole_radius * h)
                sure = F.interpolate(_close(small, rs), size=(h, w), mode="bilinear", align_corners=False) if rs > 0 else pp
                closed = torch.maximum(sure, closed * _model_says_person(pm))
            pp = torch.maximum(pp, closed)
        weight = torch.lerp(lv["plate_weight"], lv["own_plate_weight"], own)  # a recorded plate / the node's own
        plate_logit = torch.maximum(_logit(pp), -lv["plate_background"]).clamp_max(6.0) * known * weight

        # 3. fusion of the evidence.
        model_logit = _logit(pm) * lv["model_weight"] if prior is not None else torch.zeros_like(pm)
        if prior is not None:
            # Where no plate is known the model alone decides, and it is unsure where the person looks like the
            # room (clothes the colour of a cup, a face beside a cat's): the picture's colours vote there,
            # within +-colour_vote, against what the last matte says the person and the room look like (from the
            # second frame on: the first has no matte yet, and the raw model's labels mislead in low light).
            # Computed at colour_vote 0 as well (it votes 0 then), so an edit compiles nothing new.
            side.join(0, colour)
            model_logit = model_logit + colour * ((1.0 - known) * primed)
        if motion is not None:
            side.join(1, motion)
            if prior is not None:
                model_logit = model_logit + motion[0] * ((1.0 - known) * primed)
        fused = torch.sigmoid(model_logit + plate_logit)

        # 4. motion-aware blend with the previous matte (exposure changes are not motion). The previous
        # matte is first carried along the picture's motion (block matching at quarter size), so a
        # moving person is smoothed as well as a still one; what the motion does not explain follows at once.
        last_alpha = self.alpha
        if motion is not None:
            last_alpha, change = motion[1], motion[2]
        cb = box_filter(change, 1)
        # Where no plate is known the model alone decides, and it changes its mind with the picture's
        # noise: a change up to motion_noise x the frame's median change (most of a picture is still)
        # is no motion. Capped at half the motion threshold, so a pan beyond the search still counts.
        floor = torch.minimum(lv["motion_noise"] * _known_quantile(cb, torch.ones_like(cb), 0.5), 0.5 * lv["motion_threshold"])
        cb = (cb - floor * (1.0 - known)).clamp_min(0.0)
        moved = (_dilate(cb, s.motion_reach) / lv["motion_threshold"]).clamp(0.0, 1.0)
        # A big matte change is trusted at once where a plate backs it; a model alone flips on still
        # pixels (exposure, noise), so without a plate only motion makes the matte follow at once.
        jump = (((fused - last_alpha).abs() - 0.4) / 0.3).clamp(0.0, 1.0) * known * lv["trust_jumps"]
        stab = torch.lerp(lv["model_stability"].expand_as(known), lv["stability"].expand_as(known), known)
        k = (1.0 - stab) + stab * torch.maximum(moved, jump)
        k = torch.lerp(torch.ones_like(k), k, primed)
        self.alpha.copy_(torch.lerp(last_alpha, fused, k))
        self.prev.copy_(x)
        self.last_shift.copy_(shift)
        self.primed.fill_(1.0)
        self.conf.copy_((2.0 * self.alpha - 1.0).abs() * (1.0 - 0.5 * (fused - self.alpha).abs()))

        # Learning, in the plate's own light and alignment.
        # Recorded plate: a pixel surely background (with a margin) for learn_seconds follows the room.
        sure_bg = ((1.0 - _dilate(self.alpha, margin)) > 0.95).float() * (self.conf > 0.9).float()
        if prior is not None:
            sure_bg = sure_bg * (pm_grown < 0.2).float()
        self.clear_for.mul_(sure_bg).add_(sure_bg)
        settle = (lv["learn_seconds"] * self.fps).clamp_min(1.0)
        # (only while the camera sits where the plate was taken)
        learn = (self.clear_for >= settle).float() * self.has_plate * (shift.abs().sum() < 0.5).float()
        if prior is not None and s.own_plate:
            # No recorded plate: the node grows its own. A pixel still and background for the model (with a
            # margin) for own_plate_seconds is the room. The gate asks the model and the picture, not the
            # fused matte: a ghost (a person learned in, then gone) is still and model-background, so it heals.
            # Counted in the plate's coordinates: a shaking camera still learns its room.
            calm = (pm_grown < 0.2).float() * (still < 0.5).float() * (1.0 - room_moved)
            calm = (self._translate(calm, -shift) > 0.5).float()
            self.still_for.mul_(calm).add_(calm)
            own_settle = (lv["own_plate_seconds"] * self.fps).clamp_min(1.0)
            # Room a moving person has just uncovered (the picture changed where the last matte was person) is
            # learned sooner, after own_plate_uncovered_seconds: the plate's crisp edge then follows her trailing
            # edge and is there when she sways back. A still person uncovers nothing, nor does one who walks in
            # and stops (the room he covers was room); the first frame and a moved camera uncover everything.
            off = (still >= 0.5).float() * torch.maximum((last > 0.5).float(), restart)
            off = (self._translate(off, -shift) > 0.5).float()
            self.since_uncovered.add_(1.0).mul_(1.0 - off)
            uncovered = (self.since_uncovered <= UNCOVERED_SECONDS * self.fps).float()
            quick = (self.still_for >= (lv["own_plate_uncovered_seconds"] * self.fps).clamp_min(1.0)).float() * uncovered
            learn = learn + torch.maximum((self.still_for >= own_settle).float(), quick) * own
        # The first sighting is copied; what is known follows at learn_rate. Stored as frame / gain while
        # enough of the room is known for the gain to mean anything, else in the frame's own light.
        g_ok = (self.known.mean() > 0.1).float()
        back = self._translate(x / torch.lerp(torch.ones_like(gain), gain, g_ok).clamp_min(0.05), -shift)
        rate = torch.lerp(torch.ones_like(self.known), lv["learn_rate"].expand_as(self.known), self.known)
        # an own plate that a calm, model-background pixel contradicts was wrong (a person learned in, who has
        # gone; a moved chair): copied at once rather than blended away over seconds
        rate = torch.maximum(rate, self._translate(pp, -shift) * own)
        self.plate.lerp_(back.clamp(0, 1), learn * rate)
        torch.maximum(self.known, learn, out=self.known)
        return self.alpha

    def edge_alpha(self) -> torch.Tensor:
        """The matte handed to the full-size edge step: where no plate is known the edge sits at
        model_edge_offset instead of edge_offset (a constant added here moves the level the edge step cuts at),
        and the matte's greys, the model's uncertainty there rather than a pixel's coverage by the person, are
        stretched model_edge_contrast times around that level (the edge step is linear in the matte: this is its
        contrast, where no plate is known, times model_edge_contrast)."""
        lv = self.lv
        unknown = 1.0 - self.known
        level = 0.5 + lv["edge_offset"]
        a = self.alpha + (lv["edge_offset"] - lv["model_edge_offset"]) * unknown
        return (a - level) * (1.0 + (lv["model_edge_contrast"] - 1.0) * unknown) + level

    def keep_out(self) -> torch.Tensor:
        """1 where the room must not be learned by `background.adaptive`: person, or not surely background."""
        return torch.maximum(self.alpha, 1.0 - self.conf)

    def frame(self, x: torch.Tensor, prior: torch.Tensor | None, step: int,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All of a frame's working-resolution maths (the GPU node compiles this as one chain): the new matte,
        the edge step's A and b, and the confidence and keep-out planes in `dtype`."""
        self.step(x, prior)
        a, b = refine_coefficients(self.edge_alpha(), x, self.s, step, eps=self.lv["refine_eps"])
        return a, b, self.conf[0, 0].to(dtype), self.keep_out()[0, 0].to(dtype)


def warm_spare(compiled: Callable[..., object], settings: FusedSettings, fps: float, device: torch.device,
               size: tuple[int, int], inputs: list, step: int, dtype: torch.dtype) -> None:
    """The compile's warm-up: the compiled maths on a spare engine (the node's buffers are the stream's), for the
    first frame and the primed ones (the same code)."""
    spare = FusedMatte(settings, device, fps)
    spare._alloc(*size)
    for _ in range(2):
        compiled(spare, *inputs, step, dtype)


def compile_ahead(settings: dict, fps: float, device: str, x: dict, prior: dict | None, step: int, dtype: str,
                  state: dict) -> None:
    """Run in a child process (`muse.models.compile_ahead`): compile `FusedMatte.frame` as the node's
    `FusedChain` does and run `warm_spare` on it, so the node's own compile finds every graph in the cache."""
    dev = torch.device(device)
    params = FusedSegment.Params.model_validate(settings)
    with torch_state_applied(state):
        compiled = torch.compile(FusedMatte.frame, dynamic=False)
        inputs = [tensor_like(x), tensor_like(prior)]
        warm_spare(compiled, params, fps, dev, (int(x["shape"][-1]), int(x["shape"][-2])), inputs, step,
                   getattr(torch, dtype))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def refine_step(s: FusedSettings, device: torch.device | str) -> int:
    """The block size the guided filter's coefficients are computed on: `refine_step`, or for 0 (auto) 2 on a
    CPU device (a quarter of the work; on the quality clips the edge flickered 5.47 -> 5.58 x1e3 with a plate,
    IoU 0.9661 -> 0.9658) and 1 on a GPU (where it costs nothing)."""
    if s.refine_step:
        return s.refine_step
    return 2 if torch.device(device).type == "cpu" else 1


def refine_coefficients(alpha: torch.Tensor, small: torch.Tensor, s: FusedSettings, step: int = 1,
                        eps: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The edge step's low-resolution half: the guided filter's A and b for the working matte (1,1,h,w) and
    picture (1,3,h,w). step > 1: on step x step block means of both (radius / step blocks)."""
    radius = s.refine_radius
    if step > 1:
        alpha = F.avg_pool2d(alpha, step, ceil_mode=True)
        small = F.avg_pool2d(small, step, ceil_mode=True)
        radius = max(1, round(radius / step)) if radius > 0 else 0
    return guided_coefficients(alpha, small, radius, s.refine_eps if eps is None else eps)


def antialias_taps(sigma: float) -> list[float]:
    """The edge's anti-aliasing filter (`edge_softness`): a normalised Gaussian of `sigma` output pixels over
    2 ceil(2 sigma) + 1 taps (what is left beyond two sigma is under 5 %); none for 0. Both paths use these numbers."""
    if sigma <= 0.0:
        return []
    r = max(1, math.ceil(2.0 * sigma))
    w = [math.exp(-(i * i) / (2.0 * sigma * sigma)) for i in range(-r, r + 1)]
    total = sum(w)
    return [v / total for v in w]


def antialias_kernel(sigma: float, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor | None:
    """`antialias_taps` as a device tensor in the matte's dtype, made once (not per frame: a recorded frame may not
    copy host values in)."""
    taps = antialias_taps(sigma)
    return torch.tensor(taps, dtype=torch.float32).to(device=device, dtype=dtype) if taps else None


# What a pixel of the matte above 0.5 keeps at least after the anti-aliasing (0.5 + 2^-9, exact in float16)
KEEP_IN = 0.5 + 2.0 ** -9


def antialias(matte: torch.Tensor, taps: torch.Tensor | None) -> torch.Tensor:
    """The (1, 1, H, W) matte filtered by the separable taps along x, then y, every pixel kept on its side of 0.5:
    the edge's profile softens, its outline (what is person) does not move, so a thin arm or strand is not faded
    away and a narrow gap not closed. The border is replicated: a person cut by the frame's edge is not faded at it."""
    if taps is None:
        return matte
    fast = antialias_cuda(matte, taps, KEEP_IN) if matte.is_cuda else None  # CUDA: two passes (edge_kernel.py)
    if fast is not None:
        return fast
    r = (taps.numel() - 1) // 2
    x = F.conv2d(F.pad(matte, (r, r, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), taps.view(1, 1, -1, 1))
    return torch.where(matte > 0.5, x.clamp_min(KEEP_IN), x.clamp_max(0.5))


def refine_apply(a: torch.Tensor, b: torch.Tensor, frame: Frame, s: FusedSettings, dtype: torch.dtype,
                 taps: torch.Tensor | None = None) -> torch.Tensor:
    """The edge step's full-resolution half: the frame's (h, w) matte from A, b; crisp contrast against halos,
    then anti-aliased by `taps` (`antialias_kernel(s.edge_softness, ...)`, made by the caller once)."""
    raw = frame.layout == "hwc" and frame.image.dtype == torch.uint8 and frame.image.device.type == "cuda"
    if raw:  # GPU: read the uint8 picture as is (channels-last view), no full-size float copy
        image, scale = frame.image.permute(2, 0, 1).unsqueeze(0), 1.0 / 255.0
    else:
        image, scale = frame.chw(torch.float32).unsqueeze(0), 1.0
    out = guided_apply(a, b, image, colour=True, full_scale=scale, out_dtype=dtype,
                       sharpness=s.edge_sharpness, offset=s.edge_offset)
    return antialias(out, taps)[0, 0]


def working_size(frame: Frame, height: int) -> tuple[int, int]:
    h = min(height, frame.height)
    return max(1, round(frame.width * h / frame.height)), h


class FusedSegment(Node):
    node_type = "segment.fused"
    display_name = "Fused matte"
    description = (
        "Person matte from the model, the clean plate (lighting- and shake-tolerant) and the previous matte, "
        "with per-pixel confidence, motion-aware smoothing and full-resolution edges. Without a plate: model + time."
    )
    capturable = True
    # edge_offset is a device scalar for the maths but also a number the full-resolution kernel is launched with
    live_params = frozenset(LIVE_SETTINGS) - {"edge_offset"}

    frame: In[Frame]
    prior: In[Mask] = In(optional=True, description="The model's person probability (segment.hybrid / segment.selfie)")
    plate: In[Frame] = In(optional=True, description="The recorded clean plate (empty room); none = model and time only")
    mask: Out[Mask]
    confidence: Out[Mask] = Out(description="0 where the matte is uncertain, 1 where sure (working resolution)")
    keep_out: Out[Mask] = Out(description="1 where the room is not surely visible: feed background.adaptive's mask with it")

    class Params(FusedSettings):
        plate_file: str = Field("", description="Picture of the empty room (e.g. from `muse studio plate`), used when the plate input is not connected")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self.engine = FusedMatte(self.params, ctx.device, ctx.fps)
        self._file_plate: Frame | None = None
        if self.params.plate_file:
            from muse.nodes.background import load_image  # reads only; a bad path is a NodeError naming the field

            path = user_path(self.params.plate_file, ctx)
            self._file_plate = Frame(load_image(str(path), self.name, "plate_file").to(ctx.device))
        # GPU: the working-resolution maths (~960 small kernels a frame) compiled into ~300 (issue 12), in the
        # background: until that code is ready for this size and these settings the node runs them unfused
        self._chain = FusedChain(FusedMatte.frame, f"the fused maths of node '{self.name}' (segment.fused)", ctx.device)
        self._taps = antialias_kernel(self.params.edge_softness, ctx.device, ctx.dtype)  # the edge's anti-aliasing
        self._key: object = None  # the last frame's (size, settings) for the fused code
        self._settings_version = 0
        self._fused, self._latched = False, False
        self._cpu = None
        if wanted(ctx):  # issue 13: the CPU path (muse/nodes/cpu/fused.py)
            from muse.nodes.cpu.fused import FusedRunner

            self._cpu = FusedRunner(self)

    def step_down(self) -> dict[str, int] | None:
        """Out of GPU memory: fuse at three quarters of the working height (multiples of 16, down to 64)."""
        lower = max(64, int(self.params.working_height * 3 / 4) // 16 * 16)
        return {"working_height": lower} if lower < self.params.working_height else None

    def update_params(self, params: Params) -> bool:
        if (params.working_height, params.tiles, params.plate_file) != (
                self.params.working_height, self.params.tiles, self.params.plate_file):
            return False  # buffer sizes change: reopen
        changed = {k for k, v in params.model_dump().items() if getattr(self.params, k, None) != v}
        if params.edge_softness != self.params.edge_softness and self.ctx is not None:
            self._taps = antialias_kernel(params.edge_softness, self.ctx.device, self.ctx.dtype)
        self.params = params
        self.engine.set_live(params)  # in place: the compiled code and the recordings read them
        if changed - set(LIVE_SETTINGS):  # code for other values: unfused until it is compiled again
            self._settings_version += 1
        if self._cpu is not None:
            self._cpu.update(params)
        return True

    def frame_variant(self) -> Hashable:
        """Fused or not, from the last frame's size and settings (a new size or edit shows a frame late)."""
        self._fused, self._latched = self._chain.ready(self._key), True
        return self._fused

    def close(self) -> None:
        if getattr(self, "_chain", None) is not None:
            self._chain.close()
        super().close()

    def warming(self) -> str | None:
        return "compiling its fused maths in the background" if self._chain.busy() else None

    def _warm(self, x: torch.Tensor, pm: torch.Tensor | None, step: int, dtype: torch.dtype) -> Callable[[Callable[..., object]], None]:
        """What the compiling thread runs: the compiled maths on a spare engine with a copy of the settings (the
        node's buffers are in use by the stream meanwhile), on inputs like this frame's."""
        settings, fps, device, (w, h) = self.params.model_copy(), self.engine.fps, x.device, (x.shape[-1], x.shape[-2])

        def run(compiled: Callable[..., object], dummies: list) -> None:
            warm_spare(compiled, settings, fps, device, (w, h), dummies, step, dtype)

        return warm_like([x, pm], run)

    def _ahead(self, x: torch.Tensor, pm: torch.Tensor | None, step: int, dtype: torch.dtype) -> AheadJob:
        """`_warm` for a child process (`muse.models.compile_ahead`): the same spare engine, settings and inputs,
        in plain values."""
        return AheadJob("muse.nodes.segment.fused:compile_ahead", {
            "settings": self.params.model_dump(mode="json"), "fps": self.engine.fps, "device": str(x.device),
            "x": tensor_spec(x), "prior": tensor_spec(pm), "step": step,
            "dtype": str(dtype).removeprefix("torch."), "state": torch_state()})

    def process(self, frame: Frame, prior: Mask | None = None, plate: Frame | None = None) -> dict[str, Mask]:
        if self._cpu is not None:
            return self._cpu.process(frame, prior, plate)
        ctx = self.ctx
        assert ctx is not None
        w, h = working_size(frame, self.params.working_height)
        eng = self.engine
        if eng.size != (w, h):
            eng._alloc(w, h)
        x = frame_batch(frame, (w, h), torch.float32).to(ctx.device)
        plate = plate if plate is not None else self._file_plate
        if plate is not None:
            eng.set_plate(lambda: frame_batch(plate, (w, h), torch.float32).to(ctx.device), id(plate.image))
        pm = None
        if prior is not None:
            pm = prior.alpha.to(ctx.device).float()[None, None]
            if tuple(pm.shape[-2:]) != (h, w):
                pm = F.interpolate(pm, size=(h, w), mode="bilinear", align_corners=False)
        step = refine_step(self.params, ctx.device)
        key = (w, h, pm is not None, step, ctx.dtype, self._settings_version)
        fused = self._fused if self._latched else self._chain.ready(key)
        if key != self._key:
            fused, self._key = False, key
        self._latched = False
        self._chain.prepare(key, lambda: self._warm(x, pm, step, ctx.dtype),  # no-op once ready or under way
                            lambda: self._ahead(x, pm, step, ctx.dtype))
        a, b, conf, keep_out = self._chain.run(fused and self._chain.ready(key), eng, x, pm, step, ctx.dtype)
        full = refine_apply(a, b, frame, self.params, ctx.dtype, self._taps)
        ts, i = frame.timestamp, frame.index
        return {"mask": Mask(full, ts, i), "confidence": Mask(conf, ts, i), "keep_out": Mask(keep_out, ts, i)}
