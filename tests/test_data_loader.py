from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab import Preprocessing
from vitlab.data import AugmentConfig, BatchLoader, ImageDataset, load_dataset, make_stream_loader

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
FULL = AugmentConfig(crop_padding=3, auto_augment="trivial", random_erasing=0.5, mixup_alpha=0.8, cutmix_alpha=1.0,
                     mix_prob=0.8, label_smoothing=0.1)


def _indexed(n=50, size=12, classes=4) -> ImageDataset:
    """Images whose pixel (0, 0, 0) is their index, so order can be read back from a batch."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n) % classes, [f"c{i}" for i in range(classes)])


def _loader(ds, b, **kw):
    kw = {"train": True, "augment": None, "mean": MEAN, "std": STD, "num_classes": 4, **kw}
    return BatchLoader(ds, b, **kw)


def _index_of(x):  # undo the normalisation of pixel (0, 0, 0)
    return (x[:, 0, 0, 0] * STD[0] + MEAN[0]).mul(255).round().long()


def test_eval_loader_yields_the_data_set_in_order_once_without_augmentation():
    ds = _indexed(50)
    loader = _loader(ds, 16, train=False, augment=FULL)
    batches = list(loader.epoch(0))
    assert len(loader) == len(batches) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    expected = (ds.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6) and torch.equal(y, ds.labels) and y.dtype == torch.int64


def test_train_order_is_a_seeded_permutation_per_epoch():
    ds = _indexed(50)
    loader = _loader(ds, 10, drop_last=False)
    order0 = torch.cat([_index_of(x) for x, _ in loader.epoch(0)])
    assert sorted(order0.tolist()) == list(range(50)) and order0.tolist() != list(range(50))
    assert torch.equal(order0, torch.cat([_index_of(x) for x, _ in _loader(ds, 10, drop_last=False).epoch(0)]))
    assert not torch.equal(order0, torch.cat([_index_of(x) for x, _ in loader.epoch(1)]))
    assert not torch.equal(order0, torch.cat([_index_of(x) for x, _ in _loader(ds, 10, seed=1).epoch(0)]))
    assert len(_loader(ds, 16)) == 3  # drop_last by default when training


def test_resume_mid_epoch_gives_the_same_batches():
    ds = _indexed(64)
    loader = _loader(ds, 8, augment=FULL)
    full = list(loader.epoch(2))
    resumed = list(_loader(ds, 8, augment=FULL).epoch(2, start_step=5))
    assert len(resumed) == len(full) - 5
    for (xa, ya), (xb, yb) in zip(full[5:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("train", [True, False])
def test_ranks_split_the_single_process_batch_exactly(world, train):
    ds, b = _indexed(60), 4
    single = list(_loader(ds, b * world, train=train, augment=FULL).epoch(1))
    for rank in range(world):
        mine = list(_loader(ds, b, train=train, augment=FULL, rank=rank, world_size=world).epoch(1))
        assert len(mine) == len(single)
        for (x, y), (xs, ys) in zip(mine, single, strict=True):
            assert torch.equal(x, xs[rank * b:(rank + 1) * b]) and torch.equal(y, ys[rank * b:(rank + 1) * b])


def test_targets_are_soft_whenever_mixing_or_smoothing_is_configured():
    ds = _indexed(64)
    x, y = next(_loader(ds, 16, augment=AugmentConfig()).epoch(0))
    assert x.shape == (16, 3, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    for cfg in (FULL, AugmentConfig(mixup_alpha=0.2, mix_prob=0.0), AugmentConfig(label_smoothing=0.1)):
        for _, y in _loader(ds, 16, augment=cfg).epoch(0):
            assert y.shape == (16, 4) and y.dtype == torch.float32 and torch.allclose(y.sum(1), torch.ones(16))
    unmixed = next(_loader(ds, 16, augment=AugmentConfig(mixup_alpha=0.2, mix_prob=0.0)).epoch(0))[1]
    assert torch.equal(unmixed.max(1).values, torch.ones(16))  # one-hot: mix_prob=0 never mixes


def test_augmentation_changes_images_but_keeps_label_pairing():
    ds = _indexed(32)
    loader = _loader(ds, 32, augment=AugmentConfig(crop_padding=0, hflip=False, auto_augment="trivial"))
    x, y = next(loader.epoch(0))
    plain = next(_loader(ds, 32).epoch(0))[0]  # same order, no augmentation
    assert not torch.equal(x, plain) and (x == plain).all((1, 2, 3)).sum() >= 1  # some draw Identity
    assert torch.equal(y, ds.labels[_index_of(plain)])


def test_loader_errors():
    ds = _indexed(10)
    with pytest.raises(ValueError, match="smaller than one global batch of 8 x 2"):
        _loader(ds, 8, world_size=2)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        _loader(ds, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_classes=3 but the data set has label 3"):
        _loader(ds, 2, num_classes=3)
    with pytest.raises(ValueError, match="mean and std need 3 values each, one per image channel"):
        _loader(ds, 2, mean=(0.5,), std=(0.5,))
    eval_loader = _loader(ds, 4, train=False, rank=2, world_size=3)  # 10 images, global batch 12
    assert [len(y) for _, y in eval_loader.epoch(0)] == [2]  # rows 8..9 are rank 2's; an empty batch otherwise
    assert [len(y) for _, y in _loader(ds, 8, train=False, rank=1, world_size=3).epoch(0)] == [2]


def _folder(tmp_path: Path, size=96) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for split, n in (("train", 6), ("val", 3)):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return tmp_path


def test_stream_loader_train_and_eval(tmp_path):
    root = _folder(tmp_path)
    train, val = load_dataset(f"folder:{root}", "train"), load_dataset(f"folder:{root}", "val")
    pre = Preprocessing(img_size=(64, 64), mean=MEAN, std=STD, crop_pct=0.875)
    cfg = AugmentConfig(auto_augment="trivial", random_erasing=0.25, mixup_alpha=0.4, label_smoothing=0.1)
    batches = list(make_stream_loader(train, 4, train=True, preprocessing=pre, augment=cfg, seed=1, epoch=0))
    assert len(batches) == 3 and batches[0][0].shape == (4, 3, 64, 64)
    assert batches[0][1].shape == (4, 2) and torch.allclose(batches[0][1].sum(1), torch.ones(4))
    again = list(make_stream_loader(train, 4, train=True, preprocessing=pre, augment=cfg, seed=1, epoch=0,
                                    num_workers=2))  # the same batches from worker processes
    resumed = list(make_stream_loader(train, 4, train=True, preprocessing=pre, augment=cfg, seed=1, epoch=0,
                                      start_step=1))
    for (xa, ya), (xb, yb) in zip(batches, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(resumed[0][0], batches[1][0]) and torch.equal(resumed[1][1], batches[2][1])
    other_epoch = next(iter(make_stream_loader(train, 4, train=True, preprocessing=pre, augment=cfg, seed=1, epoch=1)))
    assert not torch.equal(other_epoch[0], batches[0][0])

    evals = list(make_stream_loader(val, 4, train=False, preprocessing=pre, augment=cfg))
    x = torch.cat([b[0] for b in evals])
    y = torch.cat([b[1] for b in evals])
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and x.shape == (6, 3, 64, 64)
    ref = pre.transform()(val.load(4)[0])
    assert torch.allclose(x[4], ref)
    rank1 = list(make_stream_loader(val, 2, train=False, preprocessing=pre, rank=1, world_size=2))
    assert [b[1].tolist() for b in rank1] == [[0, 1]]  # rows 2-3 of [0, 1, 2, 3]; none of the last batch [4, 5]
    with pytest.raises(TypeError, match="needs a StreamingDataset"):
        make_stream_loader(_indexed(), 4, train=True, preprocessing=pre)


def test_eval_batches_are_resized_to_the_models_input_as_its_transform_does():
    from vitlab.data.loader import make_loader

    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    data = ImageDataset(images, torch.tensor([0, 1, 0]), ["a", "b"])
    pre = Preprocessing(img_size=(56, 56), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875, interpolation="bilinear")
    x, _ = next(make_loader(data, 8, train=False, augment=None, preprocessing=pre, num_classes=2).epoch(0))
    assert x.shape == (3, 3, 56, 56)
    for i in range(3):  # the same geometry as the PIL path (resize 64, centre crop 56); the resampling filters differ
        ref = pre.transform()(Image.fromarray(images[i].permute(1, 2, 0).numpy()))
        assert (x[i] - ref).abs().mean() < 0.05
    train_x, _ = next(make_loader(data, 2, train=True, augment=None, preprocessing=pre, num_classes=2).epoch(0))
    assert train_x.shape[-2:] == (32, 32)  # training batches keep the data's size (the model is built for it)
