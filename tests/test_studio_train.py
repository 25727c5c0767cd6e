"""Training pieces: OHEM + boundary loss, streaming-like augmentation keeps the
mask on the person, held-out split in contiguous blocks, progress stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muse.studio.dataset import augment, split_ids
from muse.studio.losses import batch_iou, boundary_band, ohem_loss
from muse.studio.synthetic import SyntheticScene


@pytest.fixture(scope="module")
def person():
    scene = SyntheticScene(96, 64)
    rgb, alpha = scene.frame(5)
    return scene, rgb, alpha


def test_boundary_band_hugs_the_silhouette(person):
    _, _, alpha = person
    t = torch.from_numpy(alpha)[None, None]
    band = boundary_band(t, radius=2)
    assert band.sum() > 0
    inner = 1 - F.max_pool2d(1 - (t > 0.5).float(), 11, 1, 5)  # deep inside the person
    assert (band * inner).sum() == 0
    assert band.mean() < 0.25


def test_ohem_keeps_the_hardest_pixels(person):
    _, _, alpha = person
    target = torch.from_numpy((alpha > 0.5).astype(np.float32))[None, None]
    logits = (target * 2 - 1) * 4.0  # confident and right everywhere...
    logits[..., :8, :] = -logits[..., :8, :]  # ...except a wrong strip on top
    plain = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(ohem_loss(logits, target, keep_ratio=1.0, boundary_weight=0.0, min_kept=1), plain)
    hard = ohem_loss(logits, target, keep_ratio=0.1, boundary_weight=0.0, min_kept=1)
    assert hard > 3 * plain  # mining focuses on the wrong pixels
    assert ohem_loss(logits, target, keep_ratio=1.0, boundary_weight=4.0, min_kept=1) > plain
    assert float(batch_iou(target * 8 - 4, target)) == 1.0


def test_augment_moves_image_and_mask_together(person):
    scene, rgb, alpha = person
    # A picture whose red channel *is* the mask, so alignment can be read back after augmenting.
    img = rgb.copy()
    img[..., 0] = np.where(alpha > 0.5, 255, 0)
    imgs = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(6, 1, 1, 1).contiguous()
    masks = torch.from_numpy((alpha * 255).astype(np.uint8))[None, None].repeat(6, 1, 1, 1)
    x, m = augment(imgs, masks, None, torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 64, 96) and m.shape == (6, 1, 64, 96)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert not torch.allclose(x[0], x[1])  # each sample varies
    for i in range(6):
        red = x[i, 0] > x[i, 0].mean()
        mk = m[i, 0] > 0.5
        assert (red & mk).sum() / (red | mk).sum() > 0.85
    plate = torch.from_numpy(scene.clean_plate()).permute(2, 0, 1).contiguous()
    x2, m2 = augment(imgs, masks, plate, torch.Generator().manual_seed(0))
    area = float((masks > 127).float().mean())
    for i in range(6):  # background variation keeps the person's label (only shifted/zoomed a little)
        assert 0.7 * area < float((m2[i] > 0.5).float().mean()) < 1.3 * area
    assert not torch.allclose(x2, x)


def test_split_holds_out_contiguous_blocks():
    recs = [{"id": f"a_{i}", "recording": "a", "index": i} for i in range(100)]
    train, val = split_ids(recs, 0.2)
    assert len(val) == 20 and not set(train) & set(val)
    idx = sorted(int(v.split("_")[1]) for v in val)
    runs = sum(1 for a, b in zip(idx, idx[1:]) if b != a + 1) + 1
    assert runs <= 5  # whole blocks, spread through the recording
    assert idx[0] < 50 < idx[-1]


def test_progress_stream_is_json_lines(tmp_path):
    from muse.studio.train import ProgressStream

    s = ProgressStream(tmp_path / "logs" / "p.jsonl")
    s.emit("step", step=1, steps=10, loss=0.5, eta_s=9.0)
    s.emit("done", step=10, steps=10)
    lines = [json.loads(x) for x in (tmp_path / "logs" / "p.jsonl").read_text().splitlines()]
    assert [r["event"] for r in lines] == ["step", "done"] and lines[0]["stage"] == "train"
    # the editor's reader understands it
    try:
        from muse.editor.studio import parse_record
    except ImportError:
        return
    prog = parse_record(lines[0])
    assert prog.fraction == pytest.approx(0.1) and "ETA" in prog.text
