"""Capture nodes: where frames enter a graph (camera, video file or URL,
picture folder, built-in demo). The registry reads the classes imported here."""

from muse.nodes.capture.camera import Camera
from muse.nodes.capture.demo import Demo
from muse.nodes.capture.file import VideoFile
from muse.nodes.capture.images import Images

__all__ = ["Camera", "Demo", "Images", "VideoFile"]
