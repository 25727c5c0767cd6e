"""relight.light on the astronaut photo with a person mask: the lit side brightens, the room stays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.graph.payloads import Frame, Mask
from muse.graph.testing import run_node
from muse.nodes.relight import Relight


@pytest.fixture(scope="module")
def person(astronaut):
    """Astronaut at 256x256 and a mask of her head and shoulders (ellipses placed by hand)."""
    import cv2

    img = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[0:256, 0:256]
    head = ((xs - 113) / 30.0) ** 2 + ((ys - 62) / 40.0) ** 2 <= 1
    body = ((xs - 110) / 95.0) ** 2 + ((ys - 230) / 95.0) ** 2 <= 1
    mask = cv2.GaussianBlur((head | body).astype(np.float32), (5, 5), 1.0)
    return img, mask


def _relight(img, mask, **params):
    return run_node(Relight, params, frame=Frame(torch.from_numpy(img)), mask=Mask(torch.from_numpy(mask)))["out"].image.numpy()


def _luma(img):
    return img.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def _side_gains(img, out, mask):
    """Mean linear-light gain out/in on the left and right half of the person, over mid-tone pixels
    (clipped highlights and near-black pixels cannot show a gain, whatever the light)."""
    lin = lambda x: np.where(x / 255.0 <= 0.04045, x / 255.0 / 12.92, ((x / 255.0 + 0.055) / 1.055) ** 2.4)
    a, b = lin(img.astype(np.float64)).max(-1), lin(out.astype(np.float64)).max(-1)
    ok = (mask > 0.99) & (a > 0.05) & (a < 0.6)
    cols = np.nonzero((mask > 0.99).any(0))[0]
    mid = (cols[0] + cols[-1]) // 2
    ratio = b / np.maximum(a, 1e-6)
    return ratio[:, :mid][ok[:, :mid]].mean(), ratio[:, mid:][ok[:, mid:]].mean()


def test_lit_side_brightens_and_room_is_untouched(person):
    img, mask = person
    out = _relight(img, mask, angle=0.0, elevation=20.0, intensity=1.0, colour=(255, 255, 255), softness=0.0)
    room = mask == 0
    assert np.array_equal(out[room], img[room])
    left, right = _side_gains(img, out, mask)
    assert left > 1.2 and left > right + 0.1, (left, right)
    assert _luma(out)[mask > 0.99].mean() > _luma(img)[mask > 0.99].mean() + 3


def test_light_from_the_right_mirrors_it(person):
    img, mask = person
    l1, r1 = _side_gains(img, _relight(img, mask, angle=0.0, intensity=1.0), mask)
    l2, r2 = _side_gains(img, _relight(img, mask, angle=180.0, intensity=1.0), mask)
    assert l1 > r1 + 0.05 and r2 > l2 + 0.05, (l1, r1, l2, r2)


def test_light_colour_tints_the_person(person):
    img, mask = person
    warm = _relight(img, mask, colour=(255, 120, 40), intensity=1.0, shadow=0.0).astype(np.float32)
    face = mask > 0.99
    d = warm[face] - img[face].astype(np.float32)
    assert d[:, 0].mean() > d[:, 2].mean() + 3  # more red added than blue


def test_intensity_zero_is_identity(person):
    img, mask = person
    assert np.array_equal(_relight(img, mask, intensity=0.0), img)
