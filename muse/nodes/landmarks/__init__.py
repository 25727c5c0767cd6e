"""Landmark helpers shared by pose and face (ROI crops, SSD decoding, tracking)
and the `landmarks.smooth` One-Euro filter node."""

from muse.nodes.landmarks.smooth import *  # noqa: F401,F403
