"""Output nodes: where frames leave a graph (virtual camera, recording,
network stream, preview, null). The registry reads the classes imported here."""

from muse.nodes.output.file import FileOutput
from muse.nodes.output.null import NullOutput
from muse.nodes.output.preview import Preview
from muse.nodes.output.stream import StreamOutput
from muse.nodes.output.virtualcam import VirtualCamera

__all__ = ["FileOutput", "NullOutput", "Preview", "StreamOutput", "VirtualCamera"]
