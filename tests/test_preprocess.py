import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab import Preprocessing, load_image


def _photo(size=(300, 240), mode="RGB"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


@pytest.mark.parametrize("crop_pct,interp", [(0.9, "bicubic"), (0.875, "bilinear"), (1.0, "bicubic")])
def test_eval_transform_matches_timm(crop_pct, interp):
    import timm
    pre = Preprocessing(img_size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
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
    pre = Preprocessing(img_size=(32, 48), crop_pct=1.0, interpolation="bilinear")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.transform()(_photo()).shape == (3, 32, 48)
    with pytest.raises(ValueError, match="interpolation='lanczos'"):
        Preprocessing(interpolation="lanczos")
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing(crop_pct=1.5)


@pytest.mark.parametrize("mean,std", [((0.5,), (0.25,)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
                         ids=["1-channel", "3-channel"])
def test_normalize_and_denormalize_are_inverses_for_any_channel_count(mean, std):
    pre = Preprocessing(mean=mean, std=std)
    x = torch.rand(2, len(mean), 5, 7)
    y = pre.normalize(x)
    for c in range(len(mean)):  # per channel: (x - mean) / std
        torch.testing.assert_close(y[:, c], (x[:, c] - mean[c]) / std[c])
    torch.testing.assert_close(pre.denormalize(y), x)
    torch.testing.assert_close(pre.normalize(x[0]), y[0])  # one image (C, H, W) too
    wide = pre.normalize(x.double())
    assert wide.dtype == torch.float64 and wide.device == x.device  # follows x


def test_normalize_checks_the_channels_and_the_dtype():
    pre = Preprocessing()  # 3 channels
    with pytest.raises(ValueError, match=r"expected images \(\.\.\., 3, H, W\) for the 3 channel\(s\).*got shape "
                                         r"\(2, 1, 4, 4\)"):
        pre.normalize(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="got shape"):
        pre.denormalize(torch.rand(4, 4))
    with pytest.raises(TypeError, match="convert uint8 images with x.float"):
        pre.normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one value per channel"):
        Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5,))
    one = Preprocessing.default_for(vitlab.ViTConfig(in_chans=1, img_size=32, patch_size=4))
    assert one.mean == one.std == (0.5,) and one.crop_pct == 1.0


def test_transform_whole_keeps_the_whole_image_at_a_multiple_of_the_patch():
    from torchvision.transforms.v2 import functional as TF

    pre = Preprocessing(img_size=(224, 224), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bilinear")
    img = _photo(size=(300, 240))  # W x H: the shorter side 240 -> 224, so 300 -> 280 -> 288 (18 patches)
    x = pre.transform_whole(16)(img)
    assert type(x) is torch.Tensor and x.shape == (3, 224, 288)
    resized = TF.resize(TF.pil_to_tensor(img), [224, 288], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    torch.testing.assert_close(x, pre.normalize(resized.float() / 255))
    assert pre.transform_whole(32)(_photo(size=(40, 20))).shape == (3, 224, 448)  # small images grow
