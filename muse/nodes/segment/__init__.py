"""Segmentation family: person masks from models (selfie, MODNet, student), a clean plate,
refinement to full resolution, and the hybrid priority switch."""

from muse.nodes.segment.clean_plate import *  # noqa: F401,F403
from muse.nodes.segment.fused import *  # noqa: F401,F403
from muse.nodes.segment.hybrid import *  # noqa: F401,F403
from muse.nodes.segment.modnet import *  # noqa: F401,F403
from muse.nodes.segment.person import *  # noqa: F401,F403
from muse.nodes.segment.refine import *  # noqa: F401,F403
from muse.nodes.segment.selfie import *  # noqa: F401,F403
from muse.nodes.segment.student import *  # noqa: F401,F403
