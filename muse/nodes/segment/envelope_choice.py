"""Whether `segment.fused` compares the frame with the plate itself or with the plate's envelope (issue 14).

The envelope (the plate's local min / max over `envelope` working pixels) forgives a fraction of a pixel of
misalignment between the frame and the plate, and with it eats thin, faint limbs in front of a textured room.
While the camera sits exactly where the plate was taken the envelope buys nothing, but the phase correlation
finds the camera's shift in whole pixels only, so "the shift is (0, 0)" does not say the plate sits exactly: a
camera that settled a fraction of a pixel off still reads (0, 0), and without the envelope every sharp edge of
the room would become a thin line of person (which would stick: the plate learns only sure background).

The room says which it is. Over what the model surely calls room (its probability grown by the matte's margin under
0.2, as the plate's learning asks; not the fused matte: a line of person that the exact comparison made would hide
its own evidence; without a model, the last matte's room), a high quantile of the frame's difference from the plate itself
and of its difference from the envelope: while the plate sits exactly both are the camera's noise (their gap a
fraction of the threshold); a fraction of a pixel off, the room's edges differ from the plate itself by a good
part of their contrast and not from the envelope (the gap beyond the threshold). The choice `tight` (1 = the
plate itself, 0 = the envelope; the difference used is their blend) rises slowly while the gap stays small, holds
in a band between, and falls to 0 at once, on the same frame, when the gap is large or too little room is seen
to tell: the safe side at once, the other only once earned, so the choice does not flicker. A thin limb the
model misses altogether is evidence against the exact comparison too (it differs from the plate, not from the
envelope): then the envelope stays, as before this choice.

Both paths use these numbers: `tight_update` on the device (no host read: a blend of device scalars), and
`tight_update_host` with the CPU path's floats.
"""

from __future__ import annotations

import torch

__all__ = ["TIGHT_LEVELS", "TIGHT_ALIGNED", "TIGHT_OFF", "TIGHT_RISE", "TIGHT_ROOM", "tight_update", "tight_update_host"]

# The sort's levels, in order: the noise (the lower third, as the threshold always used) of the difference from the
# envelope and from the plate over the known plate; the high quantile of the difference from the plate and from
# the envelope over the model's room.
TIGHT_QUANTILE = 0.99
TIGHT_LEVELS = (0.3, 0.3, TIGHT_QUANTILE, TIGHT_QUANTILE)
# The gap (high quantile from the plate minus from the envelope, over the envelope's threshold) below which the
# plate counts as sitting exactly, and above which it does not (between: the choice holds).
TIGHT_ALIGNED = 0.5
TIGHT_OFF = 1.0
# How fast the exact comparison is taken up while the room backs it (a share a frame: fully after 4 frames).
TIGHT_RISE = 0.25
# Too little room to tell (under this share of the picture is known and the model's room): the envelope.
TIGHT_ROOM = 0.1


def tight_update(tight: torch.Tensor, levels: torch.Tensor, threshold: torch.Tensor, noise_factor: torch.Tensor,
                 model_room: torch.Tensor) -> torch.Tensor:
    """The next `tight` (a device scalar) from this frame's `levels` (TIGHT_LEVELS' quantiles, (4,)), the
    threshold's settings and the model's known room (1, 1, h, w), read on every 7th pixel as the quantiles are."""
    tau = torch.maximum(threshold, noise_factor * levels[0])  # the envelope's threshold
    gap = (levels[2] - levels[3]) / tau
    enough = ((model_room.reshape(-1)[::7] > 0.5).float().mean() >= TIGHT_ROOM).float()  # as the quantiles sample
    off = torch.maximum((gap > TIGHT_OFF).float(), 1.0 - enough)
    aligned = (gap < TIGHT_ALIGNED).float()
    return (tight + TIGHT_RISE * aligned).clamp(0.0, 1.0) * (1.0 - off)


def tight_update_host(tight: float, levels: tuple[float, float, float, float], threshold: float, noise_factor: float,
                      room_share: float) -> float:
    """`tight_update` in floats (the CPU path): room_share is the share of every 7th pixel known and the model's room."""
    tau = max(threshold, noise_factor * levels[0])
    gap = (levels[2] - levels[3]) / tau
    if gap > TIGHT_OFF or room_share < TIGHT_ROOM:
        return 0.0
    return min(1.0, tight + TIGHT_RISE) if gap < TIGHT_ALIGNED else tight
