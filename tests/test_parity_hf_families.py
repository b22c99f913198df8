"""transformers' ViT family -> save_pretrained -> vitlab.load -> the same outputs, family by family and form by form.

Each test builds a tiny transformers model (48 wide with 4 heads, a width whose head count the weights do not
give; 2 layers; patch 8 at 32 px, or 14 at 42 px), moves every weight off its init, saves it, loads the folder
with vitlab, and compares the peer's own output (logits, pooled output, image embeddings or tokens) at the native
size and at another (transformers with interpolate_pos_encoding=True; DINOv2 always interpolates). Every
comparison prints its max |difference| (``pytest -s`` collects the parity table).
"""

import json
import warnings

import pytest
import torch
import transformers
from conftest import randomize_

import vitlab
from vitlab.convert import AssumedSettingsNotice
from vitlab.convert import hf as hf_convert
from vitlab.preprocess import CLIP_MEAN, CLIP_STD, Preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
STD = 0.1  # randomize_'s noise: large enough that a resampling or layout error moves the outputs by far more than TOL
LAYERS = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80)
PATCH8 = dict(image_size=32, patch_size=8)  # 4x4 grid; the other size is 48 px, 6x6
TEXT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40,
            max_position_embeddings=16)
LABELS = ["ant", "bee", "cat", "dog", "eel"]


def _labels():
    return dict(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})


def _diff(a, b, what):
    d = (a - b).abs().max().item()
    print(f"{what}: max |diff| {d:.2e}")
    return d


def _save(ref, path, processor=None):
    ref.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notes on what vitlab leaves out are tested on their own
        return vitlab.load(path).eval()


def _output(call, field, interpolate=True):
    """x -> the ``field`` of ``call(pixel_values=x, interpolate_pos_encoding=True)``, a transformers output (DINOv2
    has no interpolate_pos_encoding argument: it always interpolates)."""
    kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
    return lambda x: getattr(call(pixel_values=x, **kwargs), field)


def _check_sizes(what, sizes, ours, theirs):
    """theirs(x) and ours(x) agree to TOL for a batch of images of each size."""
    for size in sizes:
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert _diff(theirs(x), ours(x), f"{what} {size}px") <= TOL


# ------------------------------------------------------------------------------------------------------- DeiT


@pytest.mark.parametrize("form", ["DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"])
def test_deit(tmp_path, form):
    if form == "DeiTModel":  # with its pooler (Linear + tanh on the class token) and a mask token
        cfg = transformers.DeiTConfig(**LAYERS, **PATCH8, pooler_output_size=24)
        ref = randomize_(transformers.DeiTModel(cfg, add_pooling_layer=True, use_mask_token=True), STD)
    else:
        ref = randomize_(getattr(transformers, form)(transformers.DeiTConfig(**LAYERS, **PATCH8, **_labels())), STD)
    processor = transformers.DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})
    model = _save(ref, tmp_path, processor if form == "DeiTForImageClassification" else None)
    cfg = model.config
    assert (cfg.distill_token, cfg.pos_resample, cfg.norm_eps, cfg.num_heads) == (True, "bicubic", 1e-12, 4)
    if form == "DeiTModel":
        assert (cfg.pool, cfg.representation_size, cfg.num_classes) == ("token", 24, 0)
        _check_sizes(form, (32, 48), model, _output(ref, "pooler_output"))
        _check_sizes(f"{form} tokens", (32, 48), model.forward_features, _output(ref, "last_hidden_state"))
        return
    assert cfg.pool == ("distill" if form.endswith("Teacher") else "token") and model.class_names == LABELS
    _check_sizes(form, (32, 48), model, _output(ref, "logits"))
    if form == "DeiTForImageClassification":
        pre = model.preprocessing
        assert (pre.img_size, pre.crop_pct, pre.interpolation) == ((32, 32), pytest.approx(32 / 36), "bicubic")


def test_deit_pooler_keeps_its_activation_or_is_left_out(tmp_path):
    """pooler_act relu (one of vitlab's representation_act): the pooled output is transformers'; gelu_new (not one
    of them): the pooler is left out, in a warning, and the tokens still match."""
    x = torch.randn(2, 3, 32, 32)
    ref = randomize_(transformers.DeiTModel(transformers.DeiTConfig(**LAYERS, **PATCH8, pooler_act="relu")), STD)
    ref.save_pretrained(tmp_path / "relu")
    model = vitlab.load(tmp_path / "relu").eval()
    assert model.config.representation_act == "relu"
    with torch.no_grad():
        assert _diff(ref(pixel_values=x).pooler_output, model(x), "DeiTModel relu pooler") <= TOL
    ref = randomize_(transformers.DeiTModel(transformers.DeiTConfig(**LAYERS, **PATCH8, pooler_act="gelu_new")), STD)
    ref.save_pretrained(tmp_path / "gelu_new")
    with pytest.warns(UserWarning, match="pooler_act='gelu_new'; the pooler is left out"):
        model = vitlab.load(tmp_path / "gelu_new").eval()
    assert model.config.representation_size is None
    with torch.no_grad():
        assert _diff(ref(pixel_values=x).last_hidden_state, model.forward_features(x), "DeiTModel gelu_new") <= TOL


# ----------------------------------------------------------------------------------------------------- DINOv2


DINO = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=42, patch_size=14,
            layerscale_value=0.5)  # 3x3 grid; the other size is 56 px, 4x4


@pytest.mark.parametrize("registers", [False, True], ids=["dinov2", "dinov2_with_registers"])
@pytest.mark.parametrize("head", [False, True], ids=["Model", "ForImageClassification"])
def test_dinov2(tmp_path, registers, head):
    name = "Dinov2WithRegisters" if registers else "Dinov2"
    cfg = getattr(transformers, f"{name}Config")(**DINO, **({"num_register_tokens": 2} if registers else {}),
                                                 **(_labels() if head else {}))
    ref = randomize_(getattr(transformers, f"{name}{'ForImageClassification' if head else 'Model'}")(cfg), STD)
    processor = transformers.BitImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 42, "width": 42},
                                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    model = _save(ref, tmp_path, processor if head else None)
    cfg = model.config
    assert (cfg.layer_scale_init is not None, cfg.num_register_tokens, cfg.mlp_dim) == (True, 2 * registers, 96)
    assert cfg.pos_resample == ("bicubic_antialias" if registers else "bicubic") and cfg.norm_eps == 1e-6
    what = f"{name}{'ForImageClassification' if head else 'Model'}"
    if head:
        assert (cfg.pool, model.class_names) == ("token_gap", LABELS)
        _check_sizes(what, (42, 56), model, _output(ref, "logits", interpolate=False))
        pre = model.preprocessing
        assert (pre.img_size, pre.crop_pct) == ((42, 42), pytest.approx(42 / 48))
        assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.std == pytest.approx((0.229, 0.224, 0.225))
    else:
        assert cfg.pool == "token"
        _check_sizes(what, (42, 56), model, _output(ref, "pooler_output", interpolate=False))
        _check_sizes(f"{what} tokens", (42, 56), model.forward_features, _output(ref, "last_hidden_state", False))
        assert model.preprocessing == Preprocessing.for_family("dinov2", (42, 42))  # no preprocessor_config.json


def test_dinov2_load_at_another_size_antialiases_with_registers(tmp_path):
    """vitlab.load(img_size=...) resamples the table once, as Dinov2WithRegisters does at every forward."""
    cfg = transformers.Dinov2WithRegistersConfig(**DINO, num_register_tokens=2)
    ref = randomize_(transformers.Dinov2WithRegistersModel(cfg), STD)
    ref.save_pretrained(tmp_path)
    model = vitlab.load(tmp_path, img_size=56).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        d = _diff(ref(pixel_values=x).last_hidden_state, model.forward_features(x), "Dinov2WithRegistersModel "
                  "loaded at 56px")
    assert d <= TOL


# ------------------------------------------------------------------------------------------------------- CLIP


@pytest.mark.parametrize("form", ["CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel"])
def test_clip(tmp_path, form):
    vision = dict(**LAYERS, **PATCH8, projection_dim=24)
    if form == "CLIPModel":
        cfg = transformers.CLIPConfig(vision_config=vision, text_config=TEXT, projection_dim=24)
        ref = randomize_(transformers.CLIPModel(cfg), STD)
        theirs = _output(ref.get_image_features, "pooler_output")  # projected, not yet normalised
    else:
        ref = randomize_(getattr(transformers, form)(transformers.CLIPVisionConfig(**vision)), STD)
        theirs = _output(ref, "image_embeds" if form.endswith("Projection") else "pooler_output")
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    model = _save(ref, tmp_path, processor if form == "CLIPVisionModelWithProjection" else None)
    cfg = model.config
    assert (cfg.norm_pre, cfg.patch_bias, cfg.mlp_act, cfg.norm_eps, cfg.pool) == (True, False, "quick_gelu", 1e-5,
                                                                                  "token")
    assert cfg.num_classes == (0 if form == "CLIPVisionModel" else 24) and model.class_names is None
    _check_sizes(form, (32, 48), model, theirs)
    if form == "CLIPVisionModel":  # transformers' last_hidden_state is before post_layernorm: vitlab's last block
        def last_block(x):
            return model.forward_intermediates(x, layers=1).tokens[1]

        _check_sizes(f"{form} last_hidden_state", (32, 48), last_block, _output(ref, "last_hidden_state"))
    if form == "CLIPVisionModelWithProjection":
        pre = model.preprocessing
        assert (pre.img_size, pre.crop_pct, pre.interpolation) == ((32, 32), pytest.approx(0.8), "bicubic")
        assert pre.mean == pytest.approx(CLIP_MEAN) and pre.std == pytest.approx(CLIP_STD)


def test_clip_model_text_tower_is_left_out_with_a_note(tmp_path):
    cfg = transformers.CLIPConfig(vision_config=dict(**LAYERS, **PATCH8), text_config=TEXT, projection_dim=24)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"CLIP: vitlab reads the vision tower; the text tower, text projection and "
                                         r"logit scale \(\d+ tensors\) are left out"):
        model = vitlab.load(tmp_path)
    assert model.preprocessing == Preprocessing.for_family("clip", (32, 32))  # no preprocessor_config.json


# ----------------------------------------------------------------------------------------------------- SigLIP


NO_HEAD = "SiglipVisionModel without head"  # vision_use_head=False


@pytest.mark.parametrize("form", ["SiglipVisionModel", "SiglipModel", "SiglipForImageClassification", NO_HEAD])
def test_siglip(tmp_path, form):
    vision = dict(**LAYERS, **PATCH8)
    if form == "SiglipModel":
        ref = randomize_(transformers.SiglipModel(transformers.SiglipConfig(vision_config=vision, text_config=TEXT)),
                         STD)
        theirs = _output(ref.get_image_features, "pooler_output")
    elif form == "SiglipForImageClassification":
        cfg = transformers.SiglipConfig(vision_config=vision, text_config=TEXT, **_labels())
        ref = randomize_(transformers.SiglipForImageClassification(cfg), STD)
        theirs = _output(ref, "logits")
    else:
        cfg = transformers.SiglipVisionConfig(**vision, vision_use_head=form != NO_HEAD)
        ref = randomize_(transformers.SiglipVisionModel(cfg), STD)
        if form == NO_HEAD:  # transformers pools nothing; vitlab averages the tokens, as its classifier does
            def theirs(x):
                return _output(ref, "last_hidden_state")(x).mean(dim=1)
        else:
            theirs = _output(ref, "pooler_output")
    processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    model = _save(ref, tmp_path, processor if form == "SiglipVisionModel" else None)
    cfg = model.config
    pool = "map" if form in ("SiglipVisionModel", "SiglipModel") else "gap"
    assert (cfg.class_token, cfg.pool, cfg.mlp_act, cfg.num_classes) == (False, pool, "gelu_tanh",
                                                                          5 if "Classification" in form else 0)
    _check_sizes(form, (32, 48), model, theirs)
    vision_model = getattr(ref, "vision_model", ref)  # post_layernorm acts on every token, as vitlab's norm
    _check_sizes(f"{form} tokens", (32, 48), model.forward_features, _output(vision_model, "last_hidden_state"))
    if form == "SiglipVisionModel":
        pre = model.preprocessing
        assert (pre.img_size, pre.crop_pct, pre.mean, pre.std) == ((32, 32), 1.0, (0.5,) * 3, (0.5,) * 3)


def test_siglip_classifier_leaves_its_map_head_out_with_a_warning(tmp_path):
    cfg = transformers.SiglipConfig(vision_config=dict(**LAYERS, **PATCH8), text_config=TEXT, num_labels=3)
    transformers.SiglipForImageClassification(cfg).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"attention-pooling head \(\d+ tensors\) is left out"):
        assert vitlab.load(tmp_path).config.pool == "gap"


# ---------------------------------------------------------------------------------------------------- ViT-MAE


@pytest.mark.parametrize("form", ["ViTMAEModel", "ViTMAEForPreTraining"])
def test_vit_mae(tmp_path, form):
    """No masking in vitlab: transformers' with mask_ratio=0 and noise in increasing order keeps every patch in
    its place (its random_masking keeps argsort(noise))."""
    cfg = transformers.ViTMAEConfig(**LAYERS, **PATCH8, mask_ratio=0.0, decoder_hidden_size=16,
                                    decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                    decoder_intermediate_size=32)
    ref = randomize_(getattr(transformers, form)(cfg), STD)
    ref.save_pretrained(tmp_path)
    encoder = ref.vit if form == "ViTMAEForPreTraining" else ref
    if form == "ViTMAEForPreTraining":
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                                       image_std=[0.229, 0.224, 0.225], resample=3).save_pretrained(tmp_path)
        with pytest.warns(UserWarning, match=r"pixel decoder of ViTMAEForPreTraining \(\d+ tensors\) is left out"):
            model = vitlab.load(tmp_path).eval()
        pre = model.preprocessing
        assert (pre.img_size, pre.crop_pct, pre.interpolation) == ((32, 32), 1.0, "bicubic")
        assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.std == pytest.approx((0.229, 0.224, 0.225))
    else:
        model = vitlab.load(tmp_path).eval()
        assert model.preprocessing == Preprocessing.for_family("mae", (32, 32))  # no preprocessor_config.json
    assert (model.config.pool, model.config.norm_eps, model.config.pos_resample) == ("token", 1e-12, "bicubic")

    def theirs(x):
        noise = torch.arange((x.shape[-2] // 8) * (x.shape[-1] // 8)).expand(x.shape[0], -1).float()
        return encoder(pixel_values=x, noise=noise, interpolate_pos_encoding=True).last_hidden_state

    _check_sizes(form, (32, 48), model.forward_features, theirs)
    if form == "ViTMAEForPreTraining":  # a bare one is told from a ViT by its decoder, which is left out
        torch.save(ref.state_dict(), tmp_path / "bare.pth")
        with pytest.warns(UserWarning) as record:
            bare = vitlab.load(tmp_path / "bare.pth", num_heads=4).eval()
        messages = " | ".join(str(w.message) for w in record)
        assert "pixel decoder" in messages and "a bare transformers ViT-MAE state dict" in messages
        assert bare.preprocessing == Preprocessing.for_family("mae", (32, 32))
        _check_sizes(f"bare {form}", (32,), bare.forward_features, theirs)


def test_a_config_json_the_weights_contradict_names_the_field(tmp_path):
    """One line with both values, also for CLIPModel's nested vision_config and DINOv2's mlp_ratio."""
    cases = [
        (transformers.CLIPModel(transformers.CLIPConfig(vision_config=dict(**LAYERS, **PATCH8), text_config=TEXT)),
         lambda c: {**c, "vision_config": {**c["vision_config"], "hidden_size": 64}},
         r"config.json says vision_config.hidden_size=64 but the weights have hidden_size 48$"),
        (transformers.Dinov2Model(transformers.Dinov2Config(**DINO)), lambda c: {**c, "mlp_ratio": 4},
         r"config.json says mlp_ratio=4 \(an MLP of 192\) but the weights have an MLP of 96$"),
        (transformers.DeiTModel(transformers.DeiTConfig(**LAYERS, **PATCH8)), lambda c: {**c, "image_size": 48},
         r"config.json says image_size=48 \(38 position rows at patch 8\) but the weights' position table has 18 "
         r"rows$"),
    ]
    for i, (ref, change, message) in enumerate(cases):
        path = tmp_path / str(i)
        ref.save_pretrained(path)
        (path / "config.json").write_text(json.dumps(change(json.loads((path / "config.json").read_text()))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(vitlab.CheckpointError, match=message):
                vitlab.load(path)


# ------------------------------------------------------------------------------------ bare state dicts, errors


@pytest.mark.parametrize("family, make, notice", [
    ("CLIP", lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        **LAYERS, **PATCH8, projection_dim=24)),
     r"CLIP .* LayerNorm eps 1e-05, the quick_gelu MLP activation and clip's preprocessing "
     r"\(mean \(0.481, 0.458, 0.408\)"),
    ("DeiT", lambda: transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(
        **LAYERS, **PATCH8, num_labels=5)), r"DeiT .* eps 1e-12, the gelu MLP activation and deit's preprocessing"),
    ("DINOv2", lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**DINO, num_labels=5)),
     r"DINOv2 .* eps 1e-06, the gelu MLP activation and dinov2's preprocessing .* crop_pct 0.875"),
    ("SigLIP", lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**LAYERS, **PATCH8)),
     r"SigLIP .* eps 1e-06, the gelu_tanh MLP activation and siglip's preprocessing"),
])
def test_bare_state_dict_takes_the_family_defaults_with_a_notice(tmp_path, family, make, notice):
    """A torch.save'd state dict (transformers 5's in-memory names) has no config: the family comes from its names,
    the rest from transformers' defaults, said in one line. Width 48 gives no head count: it is passed."""
    ref = randomize_(make(), STD)
    torch.save(ref.state_dict(), tmp_path / "bare.pth")
    with pytest.warns(UserWarning, match=f"a bare transformers {notice}") as record:
        model = vitlab.load(tmp_path / "bare.pth", num_heads=4).eval()
    notices = [w for w in record if issubclass(w.category, AssumedSettingsNotice)]
    assert len(notices) == 1 and "\n" not in str(notices[0].message)
    size = model.config.img_size[0]
    assert model.source_format == "hf" and model.preprocessing.img_size == (size, size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = ref(pixel_values=x)
        theirs = next(getattr(out, f) for f in ("logits", "image_embeds", "pooler_output") if getattr(out, f, None)
                      is not None)
        assert _diff(theirs, model(x), f"bare {family} state dict") <= TOL


def test_hf_format_does_not_claim_timm_or_torchvision_dicts():
    vit = vitlab.VisionTransformer(vitlab.ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                                    mlp_dim=32, num_classes=2))
    assert not hf_convert.is_format(vit.state_dict())
    assert not hf_convert.is_format({"conv_proj.weight": torch.zeros(1), "encoder.layers.encoder_layer_0.ln_1.weight":
                                     torch.zeros(1)})


def test_unknown_model_type_lists_the_readable_ones(tmp_path):
    transformers.DeiTModel(transformers.DeiTConfig(**LAYERS, **PATCH8)).save_pretrained(tmp_path)
    hub_cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hub_cfg, "model_type": "beit"}))
    with pytest.raises(vitlab.CheckpointError, match=r"model_type='beit'; vitlab reads transformers' 'vit', 'deit', "
                                                     r"'dinov2', 'dinov2_with_registers', 'clip', 'siglip', 'vit_mae', "
                                                     r"'dinov3_vit', 'aimv2_vision_model', 'clip_vision_model', "
                                                     r"'siglip_vision_model', 'aimv2'$"):
        vitlab.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**hub_cfg, "architectures": ["CLIPForImageClassification"]}))
    with pytest.raises(vitlab.CheckpointError, match="of model_type 'deit' vitlab reads DeiTModel, "):
        vitlab.load(tmp_path)


@pytest.mark.parametrize("processor, expected", [
    (transformers.ViTImageProcessor(), ((224, 224), 1.0, "bilinear", (0.5,) * 3)),
    (transformers.DeiTImageProcessor(), ((224, 224), 0.875, "bicubic", (0.5,) * 3)),
    (transformers.CLIPImageProcessor(), ((224, 224), 1.0, "bicubic", CLIP_MEAN)),
    (transformers.BitImageProcessor(size={"shortest_edge": 256}, image_mean=[0.485, 0.456, 0.406]),
     ((224, 224), 0.875, "bicubic", (0.485, 0.456, 0.406))),
    (transformers.SiglipImageProcessor(size={"height": 384, "width": 384}), ((384, 384), 1.0, "bicubic", (0.5,) * 3)),
], ids=lambda p: type(p).__name__ if not isinstance(p, tuple) else "")
def test_preprocessing_read_from_each_image_processor(tmp_path, processor, expected):
    processor.save_pretrained(tmp_path)
    pre = hf_convert.preprocessing_from_config(json.loads((tmp_path / "preprocessor_config.json").read_text()),
                                               (224, 224))
    size, crop_pct, interpolation, mean = expected
    assert (pre.img_size, pre.crop_pct, pre.interpolation) == (size, pytest.approx(crop_pct), interpolation)
    assert pre.mean == pytest.approx(mean, abs=1e-6)
