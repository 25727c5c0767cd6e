"""Unit checks of the TFLite converter's tricky parts against TFLite's documented rules:
sparse densify, SAME padding, DEPTH_TO_SPACE order, legacy bilinear resize, artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.models.tflite.ops import DepthToSpace, ResizeBilinear, same_padding
from muse.models.tflite.reader import TFLiteError, read_tflite
from muse.models.tflite.sparse import densify


def test_densify_csr_rows() -> None:
    dense = np.array([[0, 1.5, 0, 0, 2.0, 0], [0, 0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0, 4.0], [0, 0, 5.0, 0, 0, 0]], np.float32)
    values = dense[dense != 0]
    rows = [np.nonzero(r)[0] for r in dense]
    segments = np.cumsum([0] + [len(r) for r in rows])
    sparsity = {
        "traversal_order": [0, 1],
        "block_map": [],
        "dim_metadata": [
            {"format": "DENSE", "dense_size": 4},
            {"format": "SPARSE_CSR", "dense_size": 0, "segments": segments, "indices": np.concatenate(rows)},
        ],
    }
    np.testing.assert_array_equal(densify(values, dense.shape, sparsity), dense)


def test_densify_block_sparse() -> None:
    # 4x4 matrix in 1x2 blocks along columns: dims (row, block column, in-block column).
    dense = np.array([[1, 2, 0, 0], [0, 0, 3, 4], [0, 0, 0, 0], [5, 6, 7, 8]], np.float32)
    # Stored blocks per row: row0 block0; row1 block1; row2 none; row3 blocks 0 and 1.
    sparsity = {
        "traversal_order": [0, 1, 2],
        "block_map": [1],
        "dim_metadata": [
            {"format": "DENSE", "dense_size": 4},
            {"format": "SPARSE_CSR", "dense_size": 0, "segments": np.array([0, 1, 2, 2, 4]), "indices": np.array([0, 1, 0, 1])},
            {"format": "DENSE", "dense_size": 2},
        ],
    }
    values = np.array([1, 2, 3, 4, 5, 6, 7, 8], np.float32)
    np.testing.assert_array_equal(densify(values, dense.shape, sparsity), dense)


def test_densify_rejects_wrong_value_count() -> None:
    sparsity = {"traversal_order": [0], "block_map": [], "dim_metadata": [{"format": "DENSE", "dense_size": 4}]}
    with pytest.raises(ValueError, match="holds 3"):
        densify(np.ones(3, np.float32), (4,), sparsity)


@pytest.mark.parametrize(
    "size,kernel,stride,expected",
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (256, 3, 1, (1, 1)), (64, 2, 2, (0, 0)), (7, 5, 1, (2, 2)), (8, 4, 1, (1, 2))],
)
def test_same_padding_puts_the_odd_pixel_after(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    # TensorFlow: out = ceil(in / stride); total = max((out - 1) * stride + k - in, 0); before = total // 2.
    assert same_padding(size, kernel, stride) == expected


def test_depth_to_space_uses_tflite_dcr_order() -> None:
    n, h, w, b, c = 1, 2, 3, 2, 3
    nhwc = np.arange(n * h * w * b * b * c, dtype=np.float32).reshape(n, h, w, b * b * c)
    # TFLite: out[n, y*b + i, x*b + j, ch] = in[n, y, x, (i*b + j)*C + ch]
    want = np.zeros((n, h * b, w * b, c), np.float32)
    for y in range(h):
        for x in range(w):
            for i in range(b):
                for j in range(b):
                    want[0, y * b + i, x * b + j] = nhwc[0, y, x, (i * b + j) * c : (i * b + j + 1) * c]
    got = DepthToSpace(b)(torch.from_numpy(nhwc).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, want)
    # ...which is not torch's pixel_shuffle order: the converter must not use it.
    shuffled = torch.nn.functional.pixel_shuffle(torch.from_numpy(nhwc).permute(0, 3, 1, 2), b).permute(0, 2, 3, 1).numpy()
    assert not np.array_equal(shuffled, want)


def _tf_resize_reference(x: np.ndarray, out_h: int, out_w: int, half_pixel: bool) -> np.ndarray:
    """TensorFlow's resize_bilinear (align_corners=False) on (H, W) arrays, written from its definition."""
    in_h, in_w = x.shape

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = n_in / n_out
        src = (np.arange(n_out) + 0.5) * scale - 0.5 if half_pixel else np.arange(n_out) * scale
        lo = np.floor(src)
        frac = src - lo
        lo_i = np.clip(lo, 0, n_in - 1).astype(int)
        hi_i = np.clip(np.ceil(src), 0, n_in - 1).astype(int) if half_pixel else np.minimum(lo.astype(int) + 1, n_in - 1)
        return lo_i, hi_i, frac

    yl, yh, fy = taps(out_h, in_h)
    xl, xh, fx = taps(out_w, in_w)
    top = x[yl][:, xl] * (1 - fx) + x[yl][:, xh] * fx
    bottom = x[yh][:, xl] * (1 - fx) + x[yh][:, xh] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


@pytest.mark.parametrize("half_pixel", [True, False])
def test_resize_bilinear_matches_tensorflow_rule(half_pixel: bool, astronaut: np.ndarray) -> None:
    x = astronaut[100:108, 200:212, 1].astype(np.float32)  # a real 8x12 patch
    want = _tf_resize_reference(x, 16, 24, half_pixel)
    mod = ResizeBilinear((16, 24), align_corners=False, half_pixel_centers=half_pixel, in_hw=(8, 12))
    got = mod(torch.from_numpy(x)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_read_tflite_refuses_other_files(tmp_path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"PK\x03\x04 not a flatbuffer at all")
    with pytest.raises(TFLiteError, match="not a TFLite flatbuffer"):
        read_tflite(bad)
