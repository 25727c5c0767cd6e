"""TFLite -> torch converter: read a .tflite flatbuffer (no TensorFlow) and
rebuild it op by op as a torch module whose outputs match the TFLite interpreter.
"""

from muse.models.tflite.builder import (
    TFLiteModule,
    convert_tflite,
    load_artifact,
    save_artifact,
)
from muse.models.tflite.reader import Graph, TFLiteError, read_tflite

__all__ = ["Graph", "TFLiteError", "TFLiteModule", "convert_tflite", "load_artifact", "read_tflite", "save_artifact"]
