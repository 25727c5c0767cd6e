"""Pose node family: bundled BlazePose, ViTPose, the profile's student, the
hybrid switch over them, keypoint format conversion and a debug overlay."""

from muse.nodes.pose.blazepose import *  # noqa: F401,F403
from muse.nodes.pose.formats import *  # noqa: F401,F403
from muse.nodes.pose.hybrid import *  # noqa: F401,F403
from muse.nodes.pose.overlay import *  # noqa: F401,F403
from muse.nodes.pose.student import *  # noqa: F401,F403
from muse.nodes.pose.vitpose import *  # noqa: F401,F403
