"""The test photos load, and their boxes and box masks are sound."""

import json

import pytest
import torch
from photos import PHOTOS_DIR, box_mask, load_photos


def test_photos_load_with_boxes_inside():
    photos = load_photos()
    meta = json.loads((PHOTOS_DIR / "boxes.json").read_text())
    assert [p.name for p in photos] == sorted(meta) and len(photos) >= 4
    for p in photos:
        assert p.image.mode == "RGB" and min(p.image.size) == 256
        assert p.path.stat().st_size < 60_000
        assert (PHOTOS_DIR / "README.md").read_text().count(p.name) >= 1, f"{p.name} has no credit"
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 < x1 <= p.image.width and 0 <= y0 < y1 <= p.image.height, p.name
        # One clear main object, neither a speck nor the whole frame (the astronaut's portrait is the largest, 65%).
        assert 0.10 <= p.share <= 0.70, (p.name, p.share)


@pytest.mark.parametrize("grid", [(14, 14), (16, 16), (7, 10)])
def test_box_mask_shares(grid):
    full = box_mask((0, 0, 384, 256), (256, 384), grid)
    assert full.shape == grid and full.dtype == torch.float32
    assert torch.equal(full, torch.ones(grid))
    left = box_mask((0, 0, 192, 256), (256, 384), grid)
    top = box_mask((0, 0, 384, 128), (256, 384), grid)
    assert left.mean().item() == pytest.approx(0.5) and top.mean().item() == pytest.approx(0.5)
    assert left.min().item() >= 0 and left.max().item() <= 1
    for p in load_photos():
        mask = p.mask(grid)
        assert mask.mean().item() == pytest.approx(p.share, abs=1e-6), p.name
        # The same box scaled to a 224 x 224 model input gives the same mask.
        H, W = p.size
        x0, y0, x1, y1 = p.box
        scaled = (x0 * 224 / W, y0 * 224 / H, x1 * 224 / W, y1 * 224 / H)
        torch.testing.assert_close(box_mask(scaled, (224, 224), grid), mask, atol=1e-6, rtol=0)


def test_box_mask_patch_values():
    # A 32 x 32 image in a 2 x 2 grid of 16-pixel patches; the box [8, 24) x [0, 16) covers half of the top-left
    # patch and half of the top-right one.
    mask = box_mask((8, 0, 24, 16), (32, 32), (2, 2))
    assert torch.equal(mask, torch.tensor([[0.5, 0.5], [0.0, 0.0]]))
