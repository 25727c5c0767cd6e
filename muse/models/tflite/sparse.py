"""Expand TFLite sparse tensors (DENSIFY inputs) to dense numpy arrays.

Follows the TFLite sparsity format: a traversal order over the original and
block dimensions, each level DENSE (a size) or SPARSE_CSR (segments + indices).
Vectorised level by level so multi-megabyte weights expand in milliseconds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def densify(values: np.ndarray, shape: Sequence[int], sparsity: dict[str, Any]) -> np.ndarray:
    """Place the stored `values` at their positions in a dense array of `shape`."""
    rank = len(shape)
    order = list(sparsity["traversal_order"]) or list(range(rank))
    block_map = list(sparsity.get("block_map") or [])
    levels = sparsity["dim_metadata"]
    if len(levels) != len(order):
        raise ValueError(f"sparse tensor: {len(levels)} dim_metadata entries for a traversal order of {len(order)}")

    # Block sizes: the dense size of the traversal level that walks each block dimension.
    block_size = []
    for b in range(len(block_map)):
        level = order.index(rank + b)
        block_size.append(levels[level]["dense_size"])

    # Walk the levels in traversal order; each path is one (prefix of a) stored element.
    prev = np.zeros(1, dtype=np.int64)  # position of each path at the previous level
    coords: list[np.ndarray] = []  # per level, the index of each path in that level
    for level in levels:
        if level["format"] == "DENSE":
            size = int(level["dense_size"])
            coords = [np.repeat(c, size) for c in coords]
            here = np.tile(np.arange(size, dtype=np.int64), len(prev))
            prev = np.repeat(prev, size) * size + here
        else:
            seg = np.asarray(level["segments"], dtype=np.int64)
            idx = np.asarray(level["indices"], dtype=np.int64)
            starts, ends = seg[prev], seg[prev + 1]
            counts = ends - starts
            coords = [np.repeat(c, counts) for c in coords]
            # Positions starts[k] .. ends[k]-1 for every path k, flattened in order.
            offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = np.repeat(starts, counts) + offsets
            here = idx[pos]
            prev = pos
        coords.append(here)

    if len(prev) != values.size:
        raise ValueError(f"sparse tensor: format describes {len(prev)} values, buffer holds {values.size}")

    orig = [np.zeros(len(prev), dtype=np.int64) for _ in range(rank)]
    for level, dim in enumerate(order):
        if dim < rank:
            orig[dim] = coords[level]
    for level, dim in enumerate(order):
        if dim >= rank:  # a block dimension refines its original dimension
            b = dim - rank
            d = block_map[b]
            orig[d] = orig[d] * block_size[b] + coords[level]

    dense = np.zeros(tuple(shape), dtype=values.dtype)
    dense[tuple(orig)] = values.reshape(-1)
    return dense
