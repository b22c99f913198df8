"""Hugging Face transformers ViT -> save_pretrained / torch.save -> vitlab.load -> the same outputs.

The configs are deliberately unusual: a head count the width does not imply (128 wide, 4 heads, where
the width alone says 2), an MLP that is not 4x, no qkv bias, LayerNorm eps 1e-12, 48 px inputs. The other
families transformers has (DeiT, DINOv2, CLIP, SigLIP, ViT-MAE) are in test_parity_hf_families.py.
"""

import json

import pytest
import torch
import transformers  # noqa: E402
from conftest import randomize_
from safetensors.torch import load_file

import vitlab
from vitlab.convert import hf as hf_convert
from vitlab.pos_embed import resample_pos_embed
from vitlab.preprocess import Preprocessing

TOL = 1e-4
LABELS = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
ARCH = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=200, image_size=48,
            patch_size=8, qkv_bias=False, layer_norm_eps=1e-12)


def _save_classifier(path, weights="safetensors"):
    cfg = transformers.ViTConfig(**ARCH, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                                 label2id={n: i for i, n in enumerate(LABELS)})
    ref = randomize_(transformers.ViTForImageClassification(cfg))
    ref.save_pretrained(path, max_shard_size="100KB" if weights == "sharded" else "50GB")
    if weights == "bin":  # the older transformers default: the same tensors in a weights-only pickle
        torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    transformers.ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6],
                                   size={"height": 48, "width": 48}, resample=3).save_pretrained(path)
    return ref


@pytest.mark.parametrize("weights", ["safetensors", "sharded", "bin"])
def test_classifier_folder_loads_to_identical_logits(tmp_path, weights):
    ref = _save_classifier(tmp_path, weights)
    assert (tmp_path / "model.safetensors.index.json").is_file() == (weights == "sharded")
    model = vitlab.load(tmp_path).eval()
    cfg = model.config
    assert model.source_format == "hf"
    assert (cfg.num_heads, cfg.mlp_dim, cfg.qkv_bias, cfg.norm_eps) == (4, 200, False, 1e-12)
    assert (cfg.img_size, cfg.patch_size, cfg.num_classes, cfg.pool) == ((48, 48), 8, 7, "token")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        diff = (ref(pixel_values=x).logits - model(x)).abs().max().item()
    print(f"HF classifier 48px ({weights}): max |logit diff| {diff:.2e}")
    assert diff <= TOL

    assert model.class_names == LABELS
    pre = model.preprocessing
    assert pre.mean == pytest.approx((0.1, 0.2, 0.3)) and pre.std == pytest.approx((0.4, 0.5, 0.6))
    assert (pre.img_size, pre.interpolation, pre.crop_pct) == ((48, 48), "bicubic", 1.0)


def test_classifier_at_another_size(tmp_path):
    """HF's interpolate_pos_encoding resizes the table with plain bicubic (no antialias); the reader says so
    (pos_resample="bicubic"), so at 64 px vitlab matches HF to 1e-4 both when it resamples at forward time and when
    vitlab.load(img_size=64) resamples once. pos_resample can still be overridden: timm's antialiased bicubic is
    another table (and other logits)."""
    ref = _save_classifier(tmp_path)
    model = vitlab.load(tmp_path).eval()
    model64 = vitlab.load(tmp_path, img_size=64).eval()
    assert model.config.pos_resample == "bicubic" and model64.config.img_size == (64, 64)
    assert model64.preprocessing.img_size == (64, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        theirs = ref(pixel_values=x, interpolate_pos_encoding=True).logits
        diff_forward = (theirs - model(x)).abs().max().item()
        diff_loaded = (theirs - model64(x)).abs().max().item()
    print(f"HF classifier 64px: max |logit diff| {diff_forward:.2e} resampled at forward time, "
          f"{diff_loaded:.2e} loaded at 64 px")
    assert diff_forward <= TOL and diff_loaded <= TOL

    antialiased = vitlab.load(tmp_path, img_size=64, pos_resample="bicubic_antialias").eval()
    assert antialiased.config.pos_resample == "bicubic_antialias"
    expected = resample_pos_embed(model.pos_embed, (8, 8), (6, 6), num_prefix=1, method="bicubic_antialias")
    assert (antialiased.pos_embed - expected).abs().max() <= 1e-6
    assert (antialiased.pos_embed - model64.pos_embed).abs().max() > 1e-3  # another kernel: another table


def test_vit_model_pooler_becomes_pre_logits(tmp_path):
    cfg = transformers.ViTConfig(**{**ARCH, "hidden_act": "gelu_pytorch_tanh"}, pooler_output_size=48)
    ref = randomize_(transformers.ViTModel(cfg, add_pooling_layer=True, use_mask_token=True))
    ref.save_pretrained(tmp_path)
    model = vitlab.load(tmp_path).eval()  # strict: the mask token must have been dropped, the pooler mapped
    assert (model.config.representation_size, model.config.num_classes, model.config.mlp_act) == (48, 0, "gelu_tanh")
    assert model.class_names is None  # a ViTModel has no classifier, whatever id2label says
    assert model.preprocessing == Preprocessing.for_family("vit", (48, 48))  # no preprocessor_config.json
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        out = ref(pixel_values=x)
        feats = model.forward_features(x)
        diff_tokens = (out.last_hidden_state - feats).abs().max().item()
        diff_pooled = (out.pooler_output - model.forward_head(feats, pre_logits=True)).abs().max().item()
        assert (model(x) - out.pooler_output).abs().max() <= TOL  # no head: forward returns the pooled features
    print(f"HF ViTModel: max |diff| tokens {diff_tokens:.2e}, pooler {diff_pooled:.2e}")
    assert diff_tokens <= TOL and diff_pooled <= TOL


def test_bare_state_dict_needs_heads_for_an_unusual_width(tmp_path):
    """A torch.save'd state dict (transformers 5's in-memory names) has no config: heads must be passed."""
    cfg = transformers.ViTConfig(**{**ARCH, "hidden_size": 96, "num_attention_heads": 3}, num_labels=5)
    ref = randomize_(transformers.ViTForImageClassification(cfg))
    path = tmp_path / "hf.pth"
    torch.save(ref.state_dict(), path)
    with pytest.raises(vitlab.CheckpointError, match="num_heads"), pytest.warns(UserWarning):
        vitlab.load(path)
    with pytest.warns(UserWarning, match="a bare transformers ViT state dict has no config.json: vitlab assumes "
                                         "LayerNorm eps 1e-12, the gelu MLP activation and vit's preprocessing"):
        model = vitlab.load(path, num_heads=3).eval()
    assert model.source_format == "hf" and model.config.norm_eps == 1e-12
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert (ref(pixel_values=x).logits - model(x)).abs().max() <= TOL


def test_default_labels_are_not_class_names(tmp_path):
    cfg = transformers.ViTConfig(**ARCH, num_labels=3)  # transformers names them LABEL_0, LABEL_1, LABEL_2
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path)
    model = vitlab.load(tmp_path)
    assert model.config.num_classes == 3 and model.class_names is None


def test_unsupported_configs_are_rejected(tmp_path):
    _save_classifier(tmp_path)
    cfg_path = tmp_path / "config.json"
    hub_cfg = json.loads(cfg_path.read_text())
    with pytest.raises(vitlab.CheckpointError, match="model_type='beit'; vitlab reads transformers' 'vit', 'deit'"):
        hf_convert.read_folder(tmp_path, {**hub_cfg, "model_type": "beit"})
    with pytest.raises(vitlab.CheckpointError, match=r"architecture\(s\) \['ViTForImageClassification'\]; of "
                                                     "model_type 'deit' vitlab reads DeiTModel"):
        hf_convert.read_folder(tmp_path, {**hub_cfg, "model_type": "deit"})
    cfg_path.write_text(json.dumps({**hub_cfg, "hidden_act": "mish"}))
    with pytest.raises(vitlab.CheckpointError, match="hidden_act='mish'"):
        vitlab.load(tmp_path)


def test_rescale_and_normalize_flags_fold_into_mean_std():
    pre = hf_convert.preprocessing_from_config(
        dict(do_rescale=False, image_mean=[127.5] * 3, image_std=[127.5] * 3, resample=2, size={"height": 32,
                                                                                                  "width": 32}),
        (224, 224))
    assert pre.mean == pytest.approx((0.5,) * 3) and pre.std == pytest.approx((0.5,) * 3)
    assert (pre.img_size, pre.interpolation) == ((32, 32), "bilinear")


def test_a_config_json_the_weights_contradict_is_a_one_line_error(tmp_path):
    """Issue 12, item 10: a config.json field the weights state too (width, depth, MLP, patch, channels, heads that
    divide the width) must agree with them; item 8: a config.json that is not JSON names its file."""
    _save_classifier(tmp_path)
    cfg_path = tmp_path / "config.json"
    hub_cfg = json.loads(cfg_path.read_text())
    for key, value, found in (("hidden_size", 256, 128), ("num_hidden_layers", 3, 2), ("intermediate_size", 512, 200),
                              ("patch_size", 16, 8), ("num_channels", 1, 3)):
        cfg_path.write_text(json.dumps({**hub_cfg, key: value}))
        with pytest.raises(vitlab.CheckpointError, match=rf"config.json says {key}={value} but the weights have "
                                                         rf"{key} {found}$") as e:
            vitlab.load(tmp_path)
        assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    cfg_path.write_text(json.dumps({**hub_cfg, "num_attention_heads": 3}))
    with pytest.raises(vitlab.CheckpointError, match="num_attention_heads=3, which does not divide .* hidden_size 128"):
        vitlab.load(tmp_path)
    cfg_path.write_text(json.dumps(hub_cfg)[:-1])
    with pytest.raises(vitlab.CheckpointError, match=r"config.json is not valid JSON \(Expecting ',' delimiter"):
        vitlab.load(tmp_path)
