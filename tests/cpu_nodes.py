"""Shared by the CPU path's parity tests (test_cpu_path.py, test_cpu_kernels.py): a real room picture, a 720p
frame of a photo, and a node opened on its CPU implementation or its torch path (MUSE_CPU_PATH)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from muse.graph.node import Node
from muse.graph.payloads import Frame
from muse.graph.testing import build_node, make_context

ROOM = Path(__file__).parent.parent / "muse" / "assets" / "room.jpg"


def frame720(rgb: np.ndarray) -> Frame:
    return Frame(torch.from_numpy(np.ascontiguousarray(cv2.resize(rgb, (1280, 720), interpolation=cv2.INTER_AREA))))


def opened(monkeypatch: pytest.MonkeyPatch, cls: type[Node], params: dict, path: str) -> Node:
    monkeypatch.setenv("MUSE_CPU_PATH", path)
    node = build_node(cls, params)
    node.open(make_context(node.name))
    return node
