"""Output nodes: where frames leave a graph (virtual camera, recording,
network stream, preview, null). The registry reads the classes imported here."""

from muse.nodes.output.file import FileOutput
from muse.nodes.output.null import NullOutput

__all__ = ["FileOutput", "NullOutput"]
