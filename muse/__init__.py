"""MUSE: a real-time video engine for live streamers, built as a typed node graph."""

__version__ = "0.1.0"
