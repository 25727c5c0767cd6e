"""Face node family: the bundled face mesh with iris refinement and named regions."""

from muse.nodes.face.landmarks import *  # noqa: F401,F403
