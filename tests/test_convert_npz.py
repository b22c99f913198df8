"""Google .npz, both ways: vitlab -> export_npz -> timm's own reader; vitlab -> npz -> vitlab; a big_vision
layout written by this test's own mapping from a timm model -> vitlab.load; broken files."""

import numpy as np
import pytest
import timm  # noqa: E402
import torch
from conftest import randomize_
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402
from timm.models.vision_transformer import _load_weights as timm_load_npz  # noqa: E402

import vitlab
from vitlab import VisionTransformer, ViTConfig
from vitlab.convert.npz import to_npz

TOL = 1e-4


def test_export_npz_reads_into_timm(tmp_path):
    """timm's reader is independent of vitlab's: it checks the writer's transposes and key names."""
    model = randomize_(vitlab.create_model("Ti/16", depth=2))
    path = vitlab.export_npz(model, tmp_path / "ti16.npz")
    ref = timm.create_model("vit_tiny_patch16_224", depth=2).eval()
    timm_load_npz(ref, str(path))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ref(x) - model(x)).abs().max().item()
    print(f"vitlab Ti/16 -> npz -> timm: max |logit diff| {diff:.2e}")
    assert diff <= TOL


ROUND_TRIP = {
    "Ti/16": dict(config=vitlab.get_config("Ti/16", depth=2)),  # a registered size at 224 px, 2 of its 12 blocks
    # 48 wide with 3 heads: the width alone does not tell the head count, the npz does.
    "pre_logits+no_qkv_bias": dict(config=ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                                    mlp_dim=100, qkv_bias=False, representation_size=24,
                                                    num_classes=5)),
    "gap_no_cls": dict(config=ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_dim=100,
                                        pool="gap", class_token=False, num_classes=5)),
}


@pytest.mark.parametrize("case", list(ROUND_TRIP))
def test_npz_round_trip(tmp_path, case):
    spec = ROUND_TRIP[case]
    model = randomize_(VisionTransformer(spec["config"]))
    path = vitlab.export_npz(model, tmp_path / "model.npz")
    back = vitlab.load(path).eval()
    assert back.source_format == "npz"
    changed = {"qkv_bias": True} if not model.config.qkv_bias else {}  # the layout always has qkv biases (zero)
    assert back.config == model.config.replace(**changed)
    size = model.config.img_size
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        diff = (model(x) - back(x)).abs().max().item()
    print(f"npz round trip {case}: max |logit diff| {diff:.2e}")
    assert diff <= 1e-6
    pre = back.preprocessing
    assert (pre.img_size, pre.mean, pre.std, pre.interpolation, pre.crop_pct) == (
        size, (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9)


@pytest.mark.parametrize("change,what", [
    (dict(num_register_tokens=2), "register"), (dict(qk_norm=True), "qk_norm"),
    (dict(layer_scale_init=1e-5), "layer scale"), (dict(pos_embed="sincos2d"), "sincos2d"),
    (dict(pool="gap", fc_norm=True), "fc_norm"), (dict(stem="conv"), "conv stem"),
])
def test_to_npz_rejects_what_the_layout_cannot_hold(change, what):
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, mlp_dim=96).replace(**change)
    with pytest.raises(vitlab.CheckpointError, match=what):
        to_npz(VisionTransformer(cfg).state_dict(), cfg)


def _big_vision_arrays(ref: TimmViT, prefix: str, scanned: bool) -> dict[str, np.ndarray]:
    """big_vision's ViT parameters from a timm model, by this test's own reading of big_vision's vit.py:
    Flax Dense kernels (in, out), conv (kh, kw, in, out), attention kernels (D, Nh, Dh) / (Nh, Dh, D),
    ``pos_embedding`` (1, h*w, D) without a class row, and with ``scan=True`` one ``encoderblock`` whose
    tensors are stacked on a leading depth axis."""
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    D, Nh = ref.embed_dim, ref.blocks[0].attn.num_heads
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"],
           "pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    if "cls_token" in sd:
        out["cls"] = sd["cls_token"]
    blocks = []
    for i in range(len(ref.blocks)):
        b, blk = f"blocks.{i}.", {}
        q, k, v = np.split(sd[b + "attn.qkv.weight"], 3)
        qb, kb, vb = np.split(sd[b + "attn.qkv.bias"], 3)
        for name, w_, b_ in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            blk[f"MultiHeadDotProductAttention_0/{name}/kernel"] = w_.T.reshape(D, Nh, D // Nh)
            blk[f"MultiHeadDotProductAttention_0/{name}/bias"] = b_.reshape(Nh, D // Nh)
        blk["MultiHeadDotProductAttention_0/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(Nh, D // Nh, D)
        blk["MultiHeadDotProductAttention_0/out/bias"] = sd[b + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            blk[f"{ln}/scale"], blk[f"{ln}/bias"] = sd[b + f"{norm}.weight"], sd[b + f"{norm}.bias"]
        for j in (0, 1):
            blk[f"MlpBlock_0/Dense_{j}/kernel"] = sd[b + f"mlp.fc{j + 1}.weight"].T
            blk[f"MlpBlock_0/Dense_{j}/bias"] = sd[b + f"mlp.fc{j + 1}.bias"]
        blocks.append(blk)
    if scanned:
        out.update({f"Transformer/encoderblock/{k}": np.stack([blk[k] for blk in blocks]) for k in blocks[0]})
    else:
        out.update({f"Transformer/encoderblock_{i}/{k}": a for i, blk in enumerate(blocks) for k, a in blk.items()})
    return {prefix + k: np.ascontiguousarray(a) for k, a in out.items()}


BIG_VISION = [  # (pool, prefix, scanned)
    ("gap", "params/", True),
    ("gap", "params/img/", False),
    ("token", "", True),
]


@pytest.mark.parametrize("pool,prefix,scanned", BIG_VISION)
def test_big_vision_layout(tmp_path, pool, prefix, scanned):
    # big_vision 'gap': LayerNorm on every token, then the mean (timm: avg pool without fc_norm); 'tok': a class
    # token that gets no position embedding (timm: no_embed_class). 48 wide with 3 heads, stated only by the npz.
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.5, num_classes=5,
                  class_token=pool == "token", global_pool="avg" if pool == "gap" else pool, fc_norm=False,
                  no_embed_class=True)
    ref = randomize_(TimmViT(**kwargs))
    path = tmp_path / "bv.npz"
    np.savez(path, **_big_vision_arrays(ref, prefix, scanned), **{"opt/state/step": np.zeros(())})
    check = TimmViT(**kwargs).eval()
    timm_load_npz(check, str(path))  # timm also reads big_vision: a check on this test's own writer
    model = vitlab.load(path).eval()
    assert model.source_format == "npz-big_vision"
    assert (model.config.pool, model.config.class_token, model.config.num_heads) == (pool, pool == "token", 3)
    assert model.config.fc_norm is False and model.config.mlp_dim == 120
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(x)
        assert (expected - check(x)).abs().max() <= TOL
        diff = (expected - model(x)).abs().max().item()
    print(f"big_vision {pool} {prefix or '(no prefix)'} scanned={scanned}: max |logit diff| {diff:.2e}")
    assert diff <= TOL


def test_big_vision_without_table_is_sincos2d_and_map_head_is_rejected(tmp_path):
    ref = TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, num_classes=5, class_token=False,
                  global_pool="avg", fc_norm=False)
    arrays = _big_vision_arrays(ref, "params/", scanned=True)
    del arrays["params/pos_embedding"]
    np.savez(tmp_path / "sincos.npz", **arrays)
    assert vitlab.load(tmp_path / "sincos.npz").config.pos_embed == "sincos2d"
    np.savez(tmp_path / "map.npz", **arrays, **{"params/MAPHead_0/probe": np.zeros((1, 1, 48), np.float32)})
    with pytest.raises(vitlab.CheckpointError, match="map pooling not supported"):
        vitlab.load(tmp_path / "map.npz")


def test_broken_npz_files_raise_checkpoint_error(tmp_path):
    model = VisionTransformer(ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, mlp_dim=96))
    good = vitlab.export_npz(model, tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive at all" * 10)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    for name in ("truncated", "garbage", "single", "other"):
        with pytest.raises(vitlab.CheckpointError):
            vitlab.load(tmp_path / f"{name}.npz")


def test_opt_target_prefix_and_bfloat16_arrays(tmp_path):
    """Training saves of vision_transformer nest the weights under opt/target/; JAX bfloat16 arrays arrive in
    numpy as 2-byte void (no ml_dtypes), which vitlab widens bit-exactly to float32."""
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_dim=96, num_classes=5)
    model = randomize_(VisionTransformer(cfg))
    arrays = to_npz(model.state_dict(), cfg)
    bf16 = {k: torch.from_numpy(a).to(torch.bfloat16) for k, a in arrays.items()}
    np.savez(tmp_path / "bf16.npz", **{f"opt/target/{k}": t.view(torch.int16).numpy().view("V2")
                                       for k, t in bf16.items()}, **{"opt/state/step": np.array(7)})
    back = vitlab.load(tmp_path / "bf16.npz").eval()
    expected = VisionTransformer(cfg).eval()
    expected.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (back(x) - expected(x)).abs().max() <= 1e-6
        assert (back(x) - model(x)).abs().max() > 1e-6  # the bf16 rounding is really there
