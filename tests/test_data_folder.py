from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR_ZIP, cifar_subset
from PIL import Image

from vitlab.data import ImageDataset, StreamingDataset, load_dataset


def _pixels(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _write(folder: Path, counts: dict[str, int], size: int = 16, seed: int = 0) -> None:
    for c, (name, n) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(_pixels(seed + 100 * c + i, size)).save(folder / name / f"{i:03d}.png")


def test_train_and_val_folders(tmp_path):
    _write(tmp_path / "train", {"cat": 3, "dog": 2})
    _write(tmp_path / "val", {"cat": 1, "dog": 1}, seed=7)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image, not counted")
    train = load_dataset(f"folder:{tmp_path}", "train")
    assert isinstance(train, ImageDataset) and train.class_names == ["cat", "dog"]
    assert train.images.shape == (5, 3, 16, 16) and train.labels.tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(train.images[3], torch.from_numpy(_pixels(100, 16)).permute(2, 0, 1))  # dog/000.png
    val, test = load_dataset(f"folder:{tmp_path}", "val"), load_dataset(f"folder:{tmp_path}", "test")
    assert val.labels.tolist() == [0, 1] and torch.equal(val.images, test.images)  # no test/: val serves both
    resized = load_dataset(f"folder:{tmp_path}", "train", img_size=8)
    assert resized.images.shape == (5, 3, 8, 8)


def test_any_image_mode_becomes_rgb(tmp_path):
    rgb = Image.fromarray(_pixels(0, 16))
    for name in ("a", "b"):  # two classes: a folder data set needs at least two
        d = tmp_path / "train" / name
        d.mkdir(parents=True)
        rgb.convert("L").save(d / "gray.png")
        rgb.convert("RGBA").save(d / "rgba.png")
        rgb.convert("CMYK").save(d / "cmyk.jpg")
        rgb.convert("P").save(d / "palette.png")
    ds = load_dataset(f"folder:{tmp_path}", "train", val_fraction=0.25)  # no val/: a 1-image hold-out
    full = torch.cat([ds.images, load_dataset(f"folder:{tmp_path}", "val", val_fraction=0.25).images])
    assert full.shape == (8, 3, 16, 16)
    gray = torch.from_numpy(np.array(rgb.convert("L")))
    assert any(torch.equal(img, gray.expand(3, 16, 16)) for img in full)  # grayscale -> R = G = B
    assert any(torch.equal(img, torch.from_numpy(_pixels(0, 16)).permute(2, 0, 1)) for img in full)  # RGBA: RGB kept


def test_bad_files_are_skipped_with_one_warning_or_an_error_with_strict(tmp_path):
    _write(tmp_path / "train", {"a": 3, "b": 2})
    _write(tmp_path / "val", {"a": 1, "b": 1})
    (tmp_path / "train" / "a" / "text.jpg").write_text("this is text")
    good = (tmp_path / "train" / "b" / "000.png").read_bytes()
    (tmp_path / "train" / "b" / "cut.png").write_bytes(good[:len(good) // 2])
    with pytest.warns(UserWarning, match=r"skipped 2 of 7 files that do not decode: a/text.jpg, b/cut.png"):
        ds = load_dataset(f"folder:{tmp_path}", "train")
    assert len(ds) == 5 and ds.labels.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"text\.jpg is not an image that can be decoded"):
        load_dataset(f"folder:{tmp_path}", "train", strict=True)


def test_empty_class_folder_or_split_is_a_clear_error(tmp_path):
    _write(tmp_path / "train", {"a": 2, "c": 2})
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*train/b holds no image files"):
        load_dataset(f"folder:{tmp_path}", "train")
    (tmp_path / "train" / "b").rmdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match=r"val has no class sub-folders"):
        load_dataset(f"folder:{tmp_path}", "val")
    _write(tmp_path / "val", {"zebra": 1})
    with pytest.raises(ValueError, match="class folders the training folder lacks: zebra"):
        load_dataset(f"folder:{tmp_path}", "val")
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        load_dataset(f"folder:{tmp_path / 'absent'}", "train")


def test_held_out_split_is_seeded_stratified_and_disjoint(tmp_path):
    _write(tmp_path, {"a": 20, "b": 10})
    name = f"folder:{tmp_path}"

    def ids(ds):  # identify images by their pixels
        return {bytes(img.flatten()[:24].tolist()) for img in ds.images}

    train, val = load_dataset(name, "train", val_fraction=0.2), load_dataset(name, "val", val_fraction=0.2)
    assert val.labels.bincount().tolist() == [4, 2] and train.labels.bincount().tolist() == [16, 8]
    assert not ids(train) & ids(val) and len(ids(train) | ids(val)) == 30
    assert ids(load_dataset(name, "val", val_fraction=0.2)) == ids(val)
    assert ids(load_dataset(name, "val", val_fraction=0.2, seed=1)) != ids(val)
    assert ids(load_dataset(name, "test", val_fraction=0.2)) == ids(val)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        load_dataset(name, "train", val_fraction=0)


def test_large_images_stream(tmp_path):
    _write(tmp_path / "train", {"a": 2, "b": 2}, size=96)
    _write(tmp_path / "test", {"a": 1, "b": 1}, size=96)
    (tmp_path / "train" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="skipped 1 of 5 files"):
        ds = load_dataset(f"folder:{tmp_path}", "train")
    assert isinstance(ds, StreamingDataset) and len(ds) == 4 and ds.class_names == ["a", "b"]
    img, label = ds[2]
    assert img.dtype == torch.uint8 and img.shape == (3, 96, 96) and label == 1
    assert torch.equal(img, torch.from_numpy(_pixels(100, 96)).permute(2, 0, 1))
    assert isinstance(load_dataset(f"folder:{tmp_path}", "val", img_size=32), ImageDataset)  # forced in memory
    assert isinstance(load_dataset(f"folder:{tmp_path}", "val", img_size=96), StreamingDataset)


def test_small_images_upsampled_for_a_pretrained_model_stay_in_memory(tmp_path, monkeypatch):
    from vitlab.data import folder

    _write(tmp_path / "train", {"a": 2, "b": 2}, size=16)
    ds = load_dataset(f"folder:{tmp_path}", "train", img_size=84)  # CIFAR-like 32 px sources at 84 px
    assert isinstance(ds, ImageDataset) and ds.images.shape[1:] == (3, 84, 84)
    monkeypatch.setattr(folder, "IN_MEMORY_MAX_BYTES", len(ds) * 3 * 84 * 84 - 1)  # one byte short: streamed
    assert isinstance(load_dataset(f"folder:{tmp_path}", "train", img_size=84), StreamingDataset)


@pytest.mark.skipif(not CIFAR_ZIP.is_file(), reason="the shared CIFAR-10 JPEG zip is not present")
def test_shared_cifar10_jpeg_subset(tmp_path):
    cifar_subset(tmp_path, per_class_train=50, per_class_test=10, classes=("airplane", "automobile"))
    train = load_dataset(f"folder:{tmp_path}", "train")
    val = load_dataset(f"folder:{tmp_path}", "val")
    assert train.class_names == ["airplane", "automobile"] and train.images.shape == (100, 3, 32, 32)
    assert val.labels.tolist() == [0] * 10 + [1] * 10
    assert 0.3 < train.images.float().mean() / 255 < 0.7
