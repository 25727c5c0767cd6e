"""Build a torch module from a TFLite graph, and save/load it without pickled code.

The saved artifact is a plain dict (graph description + constant tensors) that
`torch.load(weights_only=True)` accepts; loading rebuilds the module from it.
`forward(x)` takes NCHW input and returns TFLite's outputs in TFLite's shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from muse.files import atomic_path
from muse.models.tflite.ops import build_op
from muse.models.tflite.reader import Graph, Operator, Tensor, TFLiteError, read_tflite

ARTIFACT_FORMAT = "muse-tflite-torch/1"  # constants: float32, or float16 where that is lossless


class TFLiteModule(nn.Module):
    """A TFLite graph as torch ops, run in the file's operator order.

    Rank-4 activations stay NCHW inside; outputs of rank 4 are returned NHWC
    like TFLite's. `input_shape` is the TFLite (NHWC) input shape.
    """

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        if len(graph.inputs) != 1:
            raise TFLiteError(f"model has {len(graph.inputs)} inputs; only single-input models are supported")
        T = graph.tensors
        self.input_index = graph.inputs[0]
        self.input_name = T[self.input_index].name
        self.input_shape = tuple(T[self.input_index].shape)  # NHWC
        self.output_names = [T[i].name for i in graph.outputs]
        self.output_shapes = [tuple(T[i].shape) for i in graph.outputs]
        self.description = graph.description

        nchw: dict[int, bool] = {self.input_index: len(self.input_shape) == 4}
        steps: list[nn.Module] = []
        wiring: list[tuple[list[int], int]] = []
        consts: dict[int, torch.Tensor] = {}
        for op in graph.operators:
            module, dyn = build_op(op, graph, nchw)
            for i in dyn:
                if i not in nchw and T[i].constant:  # a constant fed as data (rare): keep it as a buffer
                    consts[i] = torch.from_numpy(np.ascontiguousarray(T[i].data))
                    if consts[i].dim() == 4:
                        consts[i] = consts[i].permute(0, 3, 1, 2).contiguous()
                    nchw[i] = consts[i].dim() == 4
                elif i not in nchw:
                    raise TFLiteError(f"{op.kind}: input {T[i].name!r} is used before it is computed")
            if len(op.outputs) != 1:
                raise TFLiteError(f"{op.kind}: {len(op.outputs)} outputs; only single-output operators are supported")
            out = op.outputs[0]
            nchw[out] = len(T[out].shape) == 4
            steps.append(module)
            wiring.append((dyn, out))
        self.steps = nn.ModuleList(steps)
        self._wiring = wiring
        self._const_names: dict[int, str] = {}
        for i, value in consts.items():
            name = f"const_{i}"
            self.register_buffer(name, value)
            self._const_names[i] = name
        self.output_indices = list(graph.outputs)
        self._output_nchw = [nchw.get(i, False) for i in graph.outputs]
        self.plan_release()

    def plan_release(self) -> None:
        """Free each intermediate after its last reader so big graphs keep a small footprint
        (again after `muse.models.tflite.fold` rewires the steps)."""
        last_use: dict[int, int] = {}
        for s, (dyn, _) in enumerate(self._wiring):
            for i in dyn:
                last_use[i] = s
        # dict.fromkeys: a step may read one tensor twice (a fused convolution whose residual is its own input)
        self._release = [[i for i in dict.fromkeys(dyn) if last_use.get(i) == s and i not in self.output_indices]
                         for s, (dyn, _) in enumerate(self._wiring)]

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the model was trained at."""
        return int(self.input_shape[2]), int(self.input_shape[1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[int, torch.Tensor] = {self.input_index: x}
        for i, name in self._const_names.items():
            env[i] = getattr(self, name)
        for step, (dyn, out), release in zip(self.steps, self._wiring, self._release):
            env[out] = step(*[env[i] for i in dyn])
            for i in release:
                if i != self.input_index:
                    del env[i]
        outs = []
        for i, is_nchw in zip(self.output_indices, self._output_nchw):
            y = env[i]
            outs.append(y.permute(0, 2, 3, 1).contiguous() if is_nchw else y)
        return tuple(outs)


def convert_tflite(source: str | Path | bytes) -> TFLiteModule:
    """Read a .tflite file and build the equivalent torch module (eval mode, float32, CPU)."""
    return TFLiteModule(read_tflite(source)).eval()


# -- artifact: graph description + constants, loadable with weights_only=True ----------
def graph_to_artifact(graph: Graph, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    tensors = []
    constants: dict[str, torch.Tensor] = {}
    used = {i for op in graph.operators for i in op.inputs} | set(graph.outputs)
    for t in graph.tensors:
        tensors.append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype})
        if t.data is not None and t.index in used:  # folded sources (fp16/sparse originals) are not needed
            data = np.ascontiguousarray(t.data)
            if data.dtype == np.float32 and data.size and np.array_equal(data.astype(np.float16).astype(np.float32), data):
                data = data.astype(np.float16)  # fp16 weights dequantized by the reader: store them losslessly at half size
            constants[str(t.index)] = torch.from_numpy(data)
    ops = [
        {"kind": op.kind, "inputs": list(op.inputs), "outputs": list(op.outputs), "options": _plain(op.options)}
        for op in graph.operators
    ]
    return {
        "format": ARTIFACT_FORMAT,
        "meta": _plain(meta or {}),
        "graph": {
            "tensors": tensors,
            "operators": ops,
            "inputs": list(graph.inputs),
            "outputs": list(graph.outputs),
            "description": graph.description,
        },
        "constants": constants,
    }


def artifact_to_graph(artifact: dict[str, Any], source: str = "artifact") -> Graph:
    if not isinstance(artifact, dict) or artifact.get("format") != ARTIFACT_FORMAT:
        found = artifact.get("format") if isinstance(artifact, dict) else type(artifact).__name__
        raise TFLiteError(f"{source}: not a muse converted model (format {found!r}, expected {ARTIFACT_FORMAT!r})")
    g = artifact["graph"]
    consts = artifact["constants"]
    tensors = []
    for i, t in enumerate(g["tensors"]):
        c = consts.get(str(i))
        value = c.numpy().astype(np.dtype(t["dtype"]), copy=False) if c is not None else None
        tensors.append(Tensor(i, t["name"], tuple(t["shape"]), t["dtype"], value))
    ops = [Operator(o["kind"], list(o["inputs"]), list(o["outputs"]), dict(o["options"])) for o in g["operators"]]
    return Graph(tensors, ops, list(g["inputs"]), list(g["outputs"]), g.get("description", ""))


def save_artifact(graph: Graph, path: str | Path, meta: dict[str, Any] | None = None, *, overwrite: bool = True) -> Path:
    """Write the converted model atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    with atomic_path(path) as tmp:
        torch.save(graph_to_artifact(graph, meta), tmp)
    return path


def load_artifact(path: str | Path) -> tuple[TFLiteModule, dict[str, Any]]:
    """Rebuild a module saved by :func:`save_artifact`; returns (module, meta)."""
    path = Path(path)
    try:
        artifact = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TFLiteError(f"{path}: cannot read the converted model ({exc}); delete it and import the model again") from exc
    graph = artifact_to_graph(artifact, str(path))
    return TFLiteModule(graph).eval(), dict(artifact.get("meta") or {})


def _plain(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python: what weights_only loading accepts everywhere."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
