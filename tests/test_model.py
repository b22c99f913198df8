import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

import vitlab
from vitlab import VisionTransformer, ViTConfig

TINY = dict(embed_dim=64, depth=3, num_heads=4, mlp_dim=96, num_classes=5, img_size=32, patch_size=8)

# Every option of the config, each in at least one model.
CONFIGS = {
    "token": {},
    "gap": dict(pool="gap", class_token=False),
    "gap_fc_norm_with_cls": dict(pool="gap", fc_norm=True),
    "registers": dict(num_register_tokens=4),
    "sincos": dict(pos_embed="sincos2d"),
    "mimetic_init": dict(attn_init="mimetic", pos_embed="sincos2d"),
    "no_pos": dict(pos_embed="none"),
    "qk_norm_layer_scale": dict(qk_norm=True, layer_scale_init=1e-5),
    "representation": dict(representation_size=48),
    "conv_stem": dict(stem="conv"),
    "non_square": dict(img_size=(24, 40)),
    "in_chans_1": dict(in_chans=1),
    "gelu_tanh_no_qkv_bias": dict(mlp_act="gelu_tanh", qkv_bias=False),
    "features_only": dict(num_classes=0),
    "regularised": dict(dropout=0.1, attn_dropout=0.1, drop_path_rate=0.2),
}


def tiny(**kw) -> VisionTransformer:
    return VisionTransformer(ViTConfig(**{**TINY, **kw}))


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = tiny(**CONFIGS[name])
    randomize_(model).train()
    cfg = model.config
    x = torch.randn(2, cfg.in_chans, *cfg.img_size)
    out = model(x)
    assert out.shape == (2, cfg.num_classes or cfg.num_features)
    out.square().sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{n} has an all-zero gradient"


@pytest.mark.parametrize("name", ["token", "gap", "registers", "qk_norm_layer_scale", "non_square"])
def test_fused_and_explicit_attention_agree(name):
    model = randomize_(tiny(**CONFIGS[name]), std=0.2)
    x = torch.randn(3, 3, *model.config.img_size)
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attn(False)
        explicit = model(x)
    assert fused.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_bf16_training_on_the_cpu_takes_the_explicit_attention_and_keeps_its_numbers(monkeypatch):
    # torch's CPU flash kernel trains slower in bf16 (docs/recipes-log.md, issue 16), so bf16 training skips it.
    model = randomize_(tiny(**CONFIGS["gap"]), std=0.2)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert calls == [] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)  # bf16 keeps ~3 significant digits
    assert ref.abs().max() > 0.1
    out.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
    assert calls == [1] * 2 * model.config.depth  # fp32, and bf16 inference, stay fused


def test_intermediates_structure_and_attention_only_where_asked(monkeypatch):
    model = randomize_(tiny(num_register_tokens=2, img_size=(32, 48)))
    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        out = model.forward_intermediates(x, layers=[0, -1], return_attention=True)
        logits = model(x)
    assert set(out.tokens) == {0, 2} and set(out.attention) == {0, 2}
    assert len(calls) == 1 + 3  # block 1 stayed fused in forward_intermediates; the plain forward fused 3 times
    N = 1 + 2 + 4 * 6
    assert out.attention[0].shape == (2, 4, N, N)
    torch.testing.assert_close(out.attention[2].sum(-1), torch.ones(2, 4, N))
    assert out.grid_size == (4, 6) and out.num_prefix_tokens == 3
    assert out.patch_tokens(2).shape == (2, 4, 6, 64)
    torch.testing.assert_close(model.forward_head(out.features), logits)
    assert set(model.forward_intermediates(x, layers=2).tokens) == {1, 2}
    assert set(model.forward_intermediates(x).tokens) == {0, 1, 2}
    assert model.forward_intermediates(x).attention == {}


def test_intermediate_attention_matches_a_hand_computation():
    model = randomize_(tiny(depth=1), std=0.2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_intermediates(x, return_attention=True)
        z = model.blocks[0].norm1(model.embed(x))
        q, k, _ = model.blocks[0].attn.qkv(z).reshape(1, -1, 3, 4, 16).permute(2, 0, 3, 1, 4)
        expected = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    torch.testing.assert_close(out.attention[0], expected)


def test_layer_index_errors():
    model = tiny()
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), layers=[3])
    with pytest.raises(ValueError, match="last n blocks"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), layers=0)


def test_any_input_size_resamples_the_learned_table_and_keeps_the_class_row():
    model = randomize_(tiny())
    with torch.no_grad():
        tokens = model.embed(torch.zeros(1, 3, 48, 64))  # 6x8 grid instead of 4x4
    assert tokens.shape == (1, 1 + 48, 64)
    # zero image: patch tokens are bias + resampled positions; class token = cls + its own position row
    torch.testing.assert_close(tokens[0, 0], (model.cls_token + model.pos_embed[:, 0])[0, 0])
    same = model.embed(torch.zeros(1, 3, 32, 32))
    torch.testing.assert_close(same[0, 1:] - model.patch_embed.proj.bias, model.pos_embed[0, 1:])


def test_sincos_grid_is_computed_for_any_size():
    model = tiny(pos_embed="sincos2d")
    assert model.pos_embed is None and not any("pos" in n for n, _ in model.named_parameters())
    assert model(torch.randn(1, 3, 40, 56)).shape == (1, 5)


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        model(torch.randn(3, 32, 32))


def test_config_validation():
    with pytest.raises(ValueError, match="pool='avg' is not one of"):
        ViTConfig(pool="avg")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        ViTConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="needs class_token=True"):
        ViTConfig(class_token=False)
    with pytest.raises(ValueError, match="power of 2"):
        ViTConfig(stem="conv", patch_size=14, img_size=224)
    with pytest.raises(TypeError, match="unknown ViTConfig field"):
        ViTConfig().replace(width=3)
    cfg = ViTConfig(img_size=(32, 64), patch_size=8, num_register_tokens=2)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.num_tokens == 4 * 8 + 3


def test_the_conv_stem_channels_have_one_rule():
    cfg = ViTConfig(stem="conv", patch_size=16, embed_dim=192, num_heads=3)  # 4 convs from D / 2^3 = 24
    assert cfg.conv_stem_channels == (24, 48, 96, 192)
    assert cfg.replace(stem_width=64).conv_stem_channels == (64, 128, 192, 192)  # capped at D
    assert cfg.replace(embed_dim=32, num_heads=2).conv_stem_channels == (8, 16, 32, 32)  # at least 8 wide
    assert ViTConfig().conv_stem_channels == ()  # the patch stem has no convs
    stem = VisionTransformer(cfg.replace(depth=1)).patch_embed
    assert [m.out_channels for m in stem.convs if isinstance(m, torch.nn.Conv2d)] == [24, 48, 96, 192]
    deep = cfg.replace(patch_size=4, img_size=32, stem_depth=2)  # 2 stages of (stride 2, stride 1)
    assert deep.conv_stem_layers == ((3, 96, 2), (96, 96, 1), (96, 192, 2), (192, 192, 1))
    convs = [m for m in VisionTransformer(deep.replace(depth=1)).patch_embed.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.stride[0]) for m in convs] == list(deep.conv_stem_layers)
    with pytest.raises(ValueError, match="stem_depth=2: .* only with stem='conv'"):
        ViTConfig(stem_depth=2)
    with pytest.raises(ValueError, match="stem_depth=0"):
        deep.replace(stem_depth=0)


def test_official_init():
    model = tiny(num_register_tokens=2, layer_scale_init=0.1)
    assert model.head.weight.abs().sum() == 0 and model.head.bias.abs().sum() == 0
    assert model.cls_token.abs().sum() == 0
    assert model.reg_token[0, 0].ne(model.reg_token[0, 1]).any()  # registers must differ
    assert torch.all(model.blocks[0].ls1.gamma == 0.1)
    assert 0.015 < model.blocks[0].attn.qkv.weight.std() < 0.025
    assert model.blocks[0].attn.qkv.weight.abs().max() <= 0.04 + 1e-6  # truncated at 2 std
    fan_in = 3 * 8 * 8
    assert abs(model.patch_embed.proj.weight.std() - fan_in**-0.5) < 0.2 * fan_in**-0.5


def test_mimetic_init_starts_each_head_on_the_tokens_most_like_the_query():
    torch.manual_seed(0)
    model, plain = tiny(attn_init="mimetic"), tiny()
    D, Nh, Dh = 64, 4, 16
    x = torch.randn(30, D)  # 30 tokens of unit-variance features, as after a LayerNorm
    for m, self_first in ((model, 0.8), (plain, None)):
        w = m.blocks[1].attn.qkv.weight  # (3D, D): rows [q; k; v]
        for h in range(Nh):
            q, k = x @ w[h * Dh:(h + 1) * Dh].T, x @ w[D + h * Dh:D + (h + 1) * Dh].T  # (30, Dh)
            own = ((q @ k.T).argmax(-1) == torch.arange(30)).float().mean()  # tokens scoring themselves highest
            if self_first:
                assert own >= self_first, (h, own)
            else:
                assert own < 0.3, (h, own)
    attn = model.blocks[1].attn
    vproj = attn.qkv.weight[2 * D:].T @ attn.proj.weight.T  # x -> x W_v W_proj when a token attends to itself
    assert -0.5 < vproj.diag().mean() < -0.3 and vproj.fill_diagonal_(0).abs().mean() < 0.1
    assert torch.all(attn.qkv.bias == 0) and torch.all(attn.proj.bias == 0)


def test_mimetic_init_with_sincos_positions_starts_more_local():
    from vitlab.analysis.figure7 import attention_distances

    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    kw = dict(patch_size=4, pos_embed="sincos2d")
    local = attention_distances(tiny(attn_init="mimetic", **kw).eval(), x).mean(-1)  # (depth,) px
    spread = attention_distances(tiny(**kw).eval(), x).mean(-1)
    assert torch.all(local < spread - 2), (local, spread)
    with pytest.raises(ValueError, match="attn_init"):
        ViTConfig(attn_init="xavier")


def test_reset_classifier_and_gradient_checkpointing():
    model = randomize_(tiny(dropout=0.0)).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.config.num_classes == 7
    assert model.head.weight.abs().sum() == 0
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)


def test_registry_names_and_aliases():
    assert vitlab.get_config("B/16") == vitlab.get_config("vit_base_patch16_224")
    assert vitlab.get_config("B/16@384").img_size == (384, 384)
    assert vitlab.get_config("Ti/4@32") == vitlab.get_config("vit_tiny_patch4_32")
    assert vitlab.get_config("S/2").img_size == (32, 32)  # patch 2/4 aliases default to 32 px
    names = vitlab.list_models()
    for size in ("tiny", "small", "base", "large", "huge"):
        for patch in (8, 14, 16, 32):
            assert f"vit_{size}_patch{patch}_224" in names
    assert "vit_base_patch16_384" in names and "vit_base_patch14_336" in names
    assert vitlab.list_models("*patch4_32") == ["vit_tiny_patch4_32", "vit_small_patch4_32", "vit_base_patch4_32"]
    with pytest.raises(ValueError, match="unknown model 'vit_gigantic'.*vit_base_patch16_224"):
        vitlab.create_model("vit_gigantic")


def test_create_model_overrides():
    model = vitlab.create_model("Ti/4@32", num_classes=100, drop_path_rate=0.1, depth=2)
    assert model.config.num_classes == 100 and model.config.depth == 2
    assert model.preprocessing.img_size == (32, 32) and model.preprocessing.crop_pct == 1.0
    with pytest.raises(TypeError, match="unknown ViTConfig field"):
        vitlab.create_model("Ti/16", heads=3)


def test_patch_dropout_keeps_a_random_subset_in_training_only():
    model = vitlab.create_model("Ti/4@32", num_classes=10, depth=2, patch_drop_rate=0.25)
    plain = vitlab.create_model("Ti/4@32", num_classes=10, depth=2)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(8, 3, 32, 32)
    model.train()
    assert model.forward_features(x).shape == (8, 1 + 48, 192)  # class token + 75% of the 8x8 patches
    model.forward_features(x).pow(2).sum().backward()
    assert model.pos_embed.grad[0, 1:].abs().sum(-1).count_nonzero() == 64  # different patches per image
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # evaluation sees every patch
    with pytest.raises(ValueError, match="patch_drop_rate"):
        vitlab.create_model("Ti/4@32", patch_drop_rate=1.0)
