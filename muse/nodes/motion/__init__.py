"""Motion data: the avatar solve (body, head, gaze, blendshapes) shared by
`output.vmc` (the VMC avatar link) and `output.tracking` (tracking recorded to
JSON lines / CSV), and `capture.tracking` (a recording played back). The
registry reads the classes imported here."""

from muse.nodes.motion.record import TrackingOutput
from muse.nodes.motion.replay import TrackingReplay
from muse.nodes.motion.vmc import VMCOutput

__all__ = ["TrackingOutput", "TrackingReplay", "VMCOutput"]
