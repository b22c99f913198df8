import math

import pytest
import torch

from vitlab.data import ImageDataset, load_dataset
from vitlab.data.shapes import CLASS_NAMES, SPLIT_SIZES, _sdf, make_shapes


def test_deterministic_from_seed_and_split():
    a, b = make_shapes("val", seed=3, size=120), make_shapes("val", seed=3, size=120)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, make_shapes("val", seed=4, size=120).images)
    assert not torch.equal(a.images, make_shapes("test", seed=3, size=120).images)


def test_classes_are_balanced_and_masks_cover_one_object():
    ds = make_shapes("train", size=600)
    assert isinstance(ds, ImageDataset) and len(CLASS_NAMES) >= 6 and ds.class_names == CLASS_NAMES
    assert ds.images.shape == (600, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.masks.shape == (600, 32, 32) and ds.masks.dtype == torch.bool
    assert ds.labels.bincount().tolist() == [100] * 6
    area = ds.masks.float().mean((1, 2))
    assert area.min() > 0.03 and area.max() < 0.6  # every image has an object, none fills the frame
    # The mask is where the drawn object is: the object is lighter than its background.
    lum = ds.images.float().mean(1)  # (N, H, W)
    inside = (lum * ds.masks).sum((1, 2)) / ds.masks.sum((1, 2))
    outside = (lum * ~ds.masks).sum((1, 2)) / (~ds.masks).sum((1, 2))
    assert (inside > outside + 40).float().mean() > 0.97
    # Random position: the objects' centres spread over the image.
    ys = (ds.masks.float() * torch.arange(32.0)[:, None]).sum((1, 2)) / ds.masks.sum((1, 2))
    assert ys.min() < 13 and ys.max() > 19


def test_shape_signed_distances_on_known_points():
    def inside(name, u, v):
        return bool(_sdf(CLASS_NAMES.index(name), torch.tensor([u]), torch.tensor([v]))[0] < 0)

    assert inside("circle", 0, 0) and not inside("circle", 0.6, 0.6)
    assert inside("square", 0.7, 0.7) and not inside("square", 0.8, 0)
    assert inside("triangle", 0.9, 0) and not inside("triangle", -0.6, 0)  # a vertex on +u, an edge at -0.5
    assert inside("star", 0.9, 0) and not inside("star", 0.6 * math.cos(math.pi / 5), 0.6 * math.sin(math.pi / 5))
    assert inside("cross", 0.9, 0) and inside("cross", 0, -0.9) and not inside("cross", 0.5, 0.5)
    assert not inside("ring", 0, 0) and inside("ring", 0.7, 0) and not inside("ring", 0.95, 0)


def test_image_size_and_load_dataset():
    ds = make_shapes("test", size=12, img_size=48)
    assert ds.images.shape == (12, 3, 48, 48) and ds.masks.shape == (12, 48, 48)
    val = load_dataset("shapes", "val")
    assert len(val) == SPLIT_SIZES["val"] and torch.equal(val.images, make_shapes("val").images)
    assert load_dataset("shapes", "val", img_size=16).images.shape == (2000, 3, 16, 16)


def test_unknown_names_and_splits():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'; valid names: cifar10, cifar100, shapes"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="split='validation' is not one of"):
        load_dataset("shapes", "validation")
    with pytest.raises(ValueError, match="folder: needs a path"):
        load_dataset("folder:", "train")
