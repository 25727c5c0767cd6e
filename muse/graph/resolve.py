"""What a run resolves before it starts: the device, the compute dtype and, on the CPU, a
smaller capture size (`settings.cpu_resolution`).

`resolved_graph` returns the runner's own copy of the validated graph with those settings
applied, so the graph a caller (CLI, editor, tests) passed in is never changed.
"""

from __future__ import annotations

import logging
from dataclasses import replace as dc_replace

import torch

from muse.graph.slots import GraphRunError
from muse.graph.stand_ins import add_stand_ins
from muse.graph.validate import ValidatedGraph

log = logging.getLogger("muse.runtime")


def resolve_device(setting: str, override: str | None = None) -> tuple[torch.device, str]:
    """The device to run on and a sentence saying why (shown to the user)."""
    want = override or setting
    has_cuda = torch.cuda.is_available()
    if want == "cuda":
        if not has_cuda:
            raise GraphRunError("device 'cuda' was asked for, but no CUDA GPU is available; use --device cpu or device: auto")
        return torch.device("cuda"), f"running on CUDA ({torch.cuda.get_device_name(0)})"
    if want == "cpu":
        return torch.device("cpu"), "running on the CPU (asked for)"
    if has_cuda:
        return torch.device("cuda"), f"running on CUDA ({torch.cuda.get_device_name(0)})"
    return torch.device("cpu"), "no CUDA GPU found: falling back to the CPU path"


def run_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp16 on CUDA unless fp32 was asked for; always fp32 on the CPU."""
    if device.type == "cuda" and precision in ("fp16", "auto"):
        return torch.float16
    return torch.float32


def _even_fit(w: int, h: int, lw: int, lh: int, least: int = 0) -> tuple[int, int]:
    scale = min(lw / w, lh / h)
    return max(least, int(w * scale) // 2 * 2), max(least, int(h * scale) // 2 * 2)


def resolved_graph(graph: ValidatedGraph, device: torch.device) -> tuple[ValidatedGraph, tuple[int, int], list[str]]:
    """(the runner's copy of `graph`, the working resolution, notes for the user).

    4K on two CPU cores is a slide show: on the CPU, sources bigger than `settings.cpu_resolution`
    capture smaller and the working resolution shrinks to match; each change is a note."""
    graph = add_stand_ins(graph)  # shorthand fallbacks become visible stand-in nodes
    nodes = {name: dc_replace(rn) for name, rn in graph.nodes.items()}  # own objects: live changes stay here
    own = dc_replace(graph, nodes=nodes)
    resolution = tuple(graph.settings.resolution)
    notes: list[str] = []
    limit = graph.settings.cpu_resolution
    if device.type != "cpu" or limit is None:
        return own, (int(resolution[0]), int(resolution[1])), notes
    lw, lh = limit
    for rn in nodes.values():
        if not rn.cls.is_source() or rn.params is None:
            continue
        w, h = getattr(rn.params, "width", None), getattr(rn.params, "height", None)
        if not isinstance(w, int) or not isinstance(h, int) or (w <= lw and h <= lh):
            continue
        new_w, new_h = _even_fit(w, h, lw, lh, least=16)
        rn.params = rn.params.model_copy(update={"width": new_w, "height": new_h})
        note = f"{rn.name}: {w}x{h} is too much for the CPU path; capturing at {new_w}x{new_h} (settings.cpu_resolution)"
        log.warning(note)
        notes.append(note)
    rw, rh = int(resolution[0]), int(resolution[1])
    if rw > lw or rh > lh:
        rw, rh = _even_fit(rw, rh, lw, lh)
    return own, (rw, rh), notes
