"""Read a .tflite flatbuffer into a plain graph (tensors, operators, options).

Only the `tflite` schema package is used (no TensorFlow). Constant-only
DEQUANTIZE (fp16 weights) and DENSIFY (sparse weights) are folded here, so the
torch builder only sees dense float32 constants.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from muse.models.tflite.sparse import densify


class TFLiteError(ValueError):
    """The .tflite file cannot be read or uses something this converter does not support."""


# TFLite TensorType -> numpy dtype (only the types these models use; others are refused by name).
_NP_TYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    6: np.bool_,
    7: np.int16,
    9: np.int8,
}

PADDING = {0: "SAME", 1: "VALID"}
ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name ("float32", "float16", "int32", ...)
    data: np.ndarray | None = None  # constant value, in TFLite layout

    @property
    def constant(self) -> bool:
        return self.data is not None


@dataclass
class Operator:
    kind: str  # builtin name ("CONV_2D") or "CUSTOM:<code>"
    inputs: list[int]  # -1 = optional input left out
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """One TFLite subgraph with constants resolved, operators in execution order."""

    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]
    description: str = ""

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]

    def op_kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operators:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        return counts


def read_tflite(source: str | Path | bytes) -> Graph:
    """Parse a .tflite file (path or bytes) into a :class:`Graph`, folding constant DEQUANTIZE/DENSIFY."""
    import tflite  # the schema package; kept local so importing muse.models stays light

    name = str(source) if not isinstance(source, bytes) else "<bytes>"
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteError(f"{name} is not a TFLite flatbuffer (no 'TFL3' identifier); pass a .tflite model file")
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() != 1:
        raise TFLiteError(f"{name}: {model.SubgraphsLength()} subgraphs; only single-subgraph models are supported")
    sub = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    tensors: list[Tensor] = []
    sparsity: dict[int, Any] = {}
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        if t.Type() not in _NP_TYPES:
            raise TFLiteError(f"{name}: tensor {t.Name().decode()!r} has unsupported TFLite type {t.Type()}")
        np_type = _NP_TYPES[t.Type()]
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        q = t.Quantization()
        if q is not None and q.ScaleLength() and np_type in (np.int8, np.uint8, np.int16):
            raise TFLiteError(f"{name}: tensor {t.Name().decode()!r} is integer-quantized; only float/fp16 models are supported")
        buf = model.Buffers(t.Buffer())
        value = None
        raw = _buffer_bytes(buf, data)
        if raw is not None and len(raw):
            value = np.frombuffer(raw, dtype=np_type).copy()
            if t.Sparsity() is not None:
                sparsity[i] = t.Sparsity()
            else:
                value = value.reshape(shape)
        tensors.append(Tensor(i, t.Name().decode(), shape, np.dtype(np_type).name, value))

    for i, sp in sparsity.items():
        t = tensors[i]
        assert t.data is not None
        t.data = densify(t.data, t.shape, _sparsity_dict(sp))

    operators: list[Operator] = []
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == tflite.BuiltinOperator.CUSTOM:
            kind = "CUSTOM:" + code.CustomCode().decode()
            options = _custom_options(kind, op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else b"")
        else:
            kind = op_names.get(builtin, f"BUILTIN_{builtin}")
            options = _builtin_options(kind, op)
        ins = [int(op.Inputs(j)) for j in range(op.InputsLength())]
        outs = [int(op.Outputs(j)) for j in range(op.OutputsLength())]
        operators.append(Operator(kind, ins, outs, options))

    graph = Graph(
        tensors=tensors,
        operators=operators,
        inputs=[int(sub.Inputs(i)) for i in range(sub.InputsLength())],
        outputs=[int(sub.Outputs(i)) for i in range(sub.OutputsLength())],
        description=(model.Description() or b"").decode(errors="replace"),
    )
    _fold_constants(graph, name)
    return graph


def _buffer_bytes(buf: Any, whole: bytes) -> bytes | None:
    if buf.DataLength():
        return buf.DataAsNumpy().tobytes()
    # Large models keep buffers after the flatbuffer, addressed by offset/size.
    offset = buf.Offset() if hasattr(buf, "Offset") else 0
    size = buf.Size() if hasattr(buf, "Size") else 0
    if offset > 1 and size:
        return whole[offset : offset + size]
    return None


def _fold_constants(graph: Graph, name: str) -> None:
    """Evaluate DEQUANTIZE and DENSIFY on constants once, and drop those operators."""
    kept: list[Operator] = []
    for op in graph.operators:
        if op.kind in ("DEQUANTIZE", "DENSIFY"):
            src = graph.tensors[op.inputs[0]]
            dst = graph.tensors[op.outputs[0]]
            if src.data is None:
                raise TFLiteError(f"{name}: {op.kind} of the activation {src.name!r} is not supported (only of constant weights)")
            if op.kind == "DEQUANTIZE" and src.dtype not in ("float16", "float32"):
                raise TFLiteError(f"{name}: DEQUANTIZE from {src.dtype} ({src.name!r}) is not supported; only fp16 weights")
            dst.data = src.data.astype(np.dtype(dst.dtype)).reshape(dst.shape)
            continue
        kept.append(op)
    graph.operators = kept


def _sparsity_dict(sp: Any) -> dict[str, Any]:
    import tflite

    dims = []
    for d in range(sp.DimMetadataLength()):
        dm = sp.DimMetadata(d)
        entry: dict[str, Any] = {"format": "DENSE" if dm.Format() == 0 else "SPARSE_CSR", "dense_size": int(dm.DenseSize())}
        if dm.Format() != 0:
            entry["segments"] = _index_vector(tflite, dm.ArraySegmentsType(), dm.ArraySegments())
            entry["indices"] = _index_vector(tflite, dm.ArrayIndicesType(), dm.ArrayIndices())
        dims.append(entry)
    return {
        "traversal_order": [int(v) for v in sp.TraversalOrderAsNumpy()] if sp.TraversalOrderLength() else [],
        "block_map": [int(v) for v in sp.BlockMapAsNumpy()] if sp.BlockMapLength() else [],
        "dim_metadata": dims,
    }


def _index_vector(tflite: Any, kind: int, table: Any) -> np.ndarray:
    cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}.get(kind)
    if cls is None or table is None:
        raise TFLiteError(f"sparse tensor uses an unknown index vector type {kind}")
    vec = cls()
    vec.Init(table.Bytes, table.Pos)
    return np.asarray(vec.ValuesAsNumpy(), dtype=np.int64)


def _table(op: Any, cls: Any) -> Any:
    raw = op.BuiltinOptions()
    if raw is None:
        return None
    obj = cls()
    obj.Init(raw.Bytes, raw.Pos)
    return obj


def _builtin_options(kind: str, op: Any) -> dict[str, Any]:
    """The options each supported operator needs, as plain Python values."""
    import tflite

    if kind == "CONV_2D":
        o = _table(op, tflite.Conv2DOptions)
        return {
            "padding": PADDING[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "activation": ACTIVATION[o.FusedActivationFunction()],
        }
    if kind == "DEPTHWISE_CONV_2D":
        o = _table(op, tflite.DepthwiseConv2DOptions)
        return {
            "padding": PADDING[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "activation": ACTIVATION[o.FusedActivationFunction()],
            "depth_multiplier": o.DepthMultiplier(),
        }
    if kind == "TRANSPOSE_CONV":
        o = _table(op, tflite.TransposeConvOptions)
        return {
            "padding": PADDING[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "activation": ACTIVATION[o.FusedActivationFunction()] if hasattr(o, "FusedActivationFunction") else "NONE",
        }
    if kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        o = _table(op, tflite.Pool2DOptions)
        return {
            "padding": PADDING[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "kernel": (o.FilterHeight(), o.FilterWidth()),
            "activation": ACTIVATION[o.FusedActivationFunction()],
        }
    if kind in ("ADD", "MUL", "SUB", "DIV"):
        cls = {"ADD": tflite.AddOptions, "MUL": tflite.MulOptions, "SUB": tflite.SubOptions, "DIV": tflite.DivOptions}[kind]
        o = _table(op, cls)
        return {"activation": ACTIVATION[o.FusedActivationFunction()] if o is not None else "NONE"}
    if kind == "CONCATENATION":
        o = _table(op, tflite.ConcatenationOptions)
        return {"axis": o.Axis(), "activation": ACTIVATION[o.FusedActivationFunction()]}
    if kind in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        cls = tflite.ResizeBilinearOptions if kind == "RESIZE_BILINEAR" else tflite.ResizeNearestNeighborOptions
        o = _table(op, cls)
        return {
            "align_corners": bool(o.AlignCorners()) if o is not None else False,
            "half_pixel_centers": bool(o.HalfPixelCenters()) if o is not None else False,
        }
    if kind == "RESHAPE":
        o = _table(op, tflite.ReshapeOptions)
        if o is not None and o.NewShapeLength():
            return {"new_shape": [int(v) for v in o.NewShapeAsNumpy()]}
        return {}
    if kind in ("MEAN", "SUM", "REDUCE_MAX"):
        o = _table(op, tflite.ReducerOptions)
        return {"keep_dims": bool(o.KeepDims()) if o is not None else False}
    if kind == "DEPTH_TO_SPACE":
        o = _table(op, tflite.DepthToSpaceOptions)
        return {"block_size": o.BlockSize()}
    if kind == "SPACE_TO_DEPTH":
        o = _table(op, tflite.SpaceToDepthOptions)
        return {"block_size": o.BlockSize()}
    if kind == "FULLY_CONNECTED":
        o = _table(op, tflite.FullyConnectedOptions)
        return {"activation": ACTIVATION[o.FusedActivationFunction()], "keep_num_dims": bool(o.KeepNumDims())}
    if kind == "SOFTMAX":
        o = _table(op, tflite.SoftmaxOptions)
        return {"beta": float(o.Beta())}
    return {}


def _custom_options(kind: str, raw: bytes) -> dict[str, Any]:
    if kind == "CUSTOM:Convolution2DTransposeBias":
        # MediaPipe stores a raw TfLiteTransposeConvParams: padding (1 SAME, 2 VALID), stride_w, stride_h.
        if len(raw) < 12:
            raise TFLiteError(f"{kind}: options are {len(raw)} bytes, expected 12")
        padding, stride_w, stride_h = struct.unpack("<3i", raw[:12])
        return {"padding": {1: "SAME", 2: "VALID"}.get(padding, "SAME"), "stride": (stride_h, stride_w)}
    return {}
