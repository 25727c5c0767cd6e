"""Segmentation family: person masks from models (selfie, MODNet, student), a clean plate,
refinement to full resolution, and the hybrid priority switch."""

from importlib.util import find_spec

# find_spec, not a file check: in the packaged app modules live in an archive, not as .py files.
if find_spec("muse.nodes.segment.selfie") is not None:  # issue 4 part A lands it separately
    from muse.nodes.segment.selfie import *  # noqa: F401,F403
from muse.nodes.segment.clean_plate import *  # noqa: F401,F403
from muse.nodes.segment.hybrid import *  # noqa: F401,F403
from muse.nodes.segment.modnet import *  # noqa: F401,F403
from muse.nodes.segment.refine import *  # noqa: F401,F403
from muse.nodes.segment.student import *  # noqa: F401,F403
