import numpy as np
import pytest
import torch
from PIL import Image

from vitlab import Preprocessing, load_image


def _photo(size=(300, 240), mode="RGB"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


@pytest.mark.parametrize("crop_pct,interp", [(0.9, "bicubic"), (0.875, "bilinear"), (1.0, "bicubic")])
def test_eval_transform_matches_timm(crop_pct, interp):
    import timm
    pre = Preprocessing(input_size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                        interpolation=interp, crop_pct=crop_pct)
    ref = timm.data.create_transform(input_size=(3, 224, 224), interpolation=interp, mean=pre.mean, std=pre.std,
                                     crop_pct=crop_pct, crop_mode="center")
    img = _photo()
    ours, theirs = pre.transform()(img), ref(img)
    assert ours.shape == theirs.shape == (3, 224, 224)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_images_in_any_mode_become_rgb(tmp_path, mode):
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    _photo(mode=mode).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (300, 240)


def test_a_file_that_is_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is text")
    with pytest.raises(ValueError, match="notes.jpg is not an image that can be decoded"):
        load_image(tmp_path / "notes.jpg")
    _photo().save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:200])
    with pytest.raises(ValueError, match="cut.jpg is not an image"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "absent.png")


def test_preprocessing_round_trip_and_validation():
    pre = Preprocessing(input_size=(32, 48), crop_pct=1.0, interpolation="bilinear")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.transform()(_photo()).shape == (3, 32, 48)
    with pytest.raises(ValueError, match="interpolation='lanczos'"):
        Preprocessing(interpolation="lanczos")
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing(crop_pct=1.5)
