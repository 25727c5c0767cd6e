"""Pose node family: bundled BlazePose, ViTPose, the profile's student, the
hybrid switch over them, keypoint format conversion and a debug overlay."""

from muse.nodes.pose.blazepose import *  # noqa: F401,F403
