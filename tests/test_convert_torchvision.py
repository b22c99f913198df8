"""torchvision VisionTransformer -> torch.save(state_dict) -> vitlab.load -> the same logits."""

import pytest
import torch
import torchvision.models as tv_models  # noqa: E402
from conftest import randomize_

import vitlab
from vitlab.preprocess import IMAGENET_MEAN, IMAGENET_STD

TOL = 1e-4


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """torchvision initialises LayerNorms to 1/0 and the head to 0: move them (and the rest) off their init."""
    randomize_(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
        model.heads.head.weight.normal_(0.0, 0.05)
    return model.eval()


def test_vit_b_16_loads_to_identical_logits(tmp_path):
    # vit_b_16's architecture (torchvision's vit_b_16 builder) with 2 of its 12 layers: every tensor name it has.
    ref = _perturbed(tv_models.VisionTransformer(image_size=224, patch_size=16, num_layers=2, num_heads=12,
                                                 hidden_dim=768, mlp_dim=3072))
    path = tmp_path / "vit_b_16.pth"
    torch.save(ref.state_dict(), path)
    model = vitlab.load(path).eval()
    assert model.source_format == "torchvision"
    assert (model.config.num_heads, model.config.img_size, model.config.num_classes) == (12, (224, 224), 1000)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ref(x) - model(x)).abs().max().item()
    print(f"torchvision vit_b_16: max |logit diff| {diff:.2e}")
    assert diff <= TOL

    pre = model.preprocessing
    assert (pre.mean, pre.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (pre.img_size, pre.interpolation, pre.crop_pct) == ((224, 224), "bilinear", 224 / 256)


def _small(**kwargs):
    return _perturbed(tv_models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                                  hidden_dim=64, mlp_dim=100, representation_size=32, num_classes=5))


def test_pre_logits_and_legacy_mlp_names(tmp_path):
    ref = _small()
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "new.pth")
    # torchvision < 0.13 named the MLP layers linear_1 / linear_2 (mlp.0 / mlp.3 since)
    legacy = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in sd.items()}
    assert any("linear_1" in k for k in legacy)
    torch.save(legacy, tmp_path / "legacy.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        for name in ("new.pth", "legacy.pth"):
            # The head count is not in the weights: a width of 64 would be read as one head of 64.
            model = vitlab.load(tmp_path / name, num_heads=2).eval()
            assert (model.config.representation_size, model.config.mlp_dim) == (32, 100)
            diff = (expected - model(x)).abs().max().item()
            print(f"torchvision small + pre_logits ({name}): max |logit diff| {diff:.2e}")
            assert diff <= TOL
        wrong_heads = vitlab.load(tmp_path / "new.pth").eval()
        assert wrong_heads.config.num_heads == 1
        assert (expected - wrong_heads(x)).abs().max() > 10 * TOL  # so the head count above is what made it match


def test_conv_stem_is_rejected(tmp_path):
    from torchvision.models.vision_transformer import ConvStemConfig

    ref = tv_models.VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=2, hidden_dim=64,
                                      mlp_dim=100, conv_stem_configs=[ConvStemConfig(16, 3, 2)])
    torch.save(ref.state_dict(), tmp_path / "stem.pth")
    with pytest.raises(vitlab.CheckpointError, match="conv stem"):
        vitlab.load(tmp_path / "stem.pth")
