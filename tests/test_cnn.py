"""The ResNet baseline: the paper's sizes, a vitlab checkpoint round trip, training with the ViT trainer, and the
ViT-vs-CNN representation analyses."""

import warnings

import pytest
import torch
from conftest import randomize_
from safetensors import safe_open

import vitlab
from vitlab.analysis import block_representations, probe_blocks
from vitlab.analysis.representations import cka_matrix, residual_ablation_cka
from vitlab.cnn import RESNETS, ResNet
from vitlab.model import Intermediates
from vitlab.train.config import load_config
from vitlab.train.optim import build_optimizer
from vitlab.train.trainer import train


def _blocks_by_hand(model: ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every residual block, (B, C_l, h_l, w_l), running the stem and the blocks one by one."""
    x, out = model.stem(x), []
    for stage in model.stages:
        for blk in stage:
            x = blk(x)
            out.append(x)
    return out


def test_the_paper_sizes_and_stems():
    # He et al. 2016 Table 6: ResNet-20 has 0.27M parameters, ResNet-56 0.85M (a 10-class head).
    assert sum(p.numel() for p in vitlab.create_model("resnet20").parameters()) == pytest.approx(0.27e6, rel=0.02)
    assert sum(p.numel() for p in vitlab.create_model("resnet56").parameters()) == pytest.approx(0.85e6, rel=0.02)
    # torchvision's resnet18 on ImageNet: 11,689,512 parameters with 1000 classes.
    r18 = vitlab.create_model("resnet18", num_classes=1000, img_size=224)
    assert r18.config.stem == "imagenet" and sum(p.numel() for p in r18.parameters()) == 11_689_512
    model = vitlab.create_model("resnet20", num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    blocks = _blocks_by_hand(model, x)
    assert model.config.stem == "cifar" and len(blocks) == model.config.depth == 9
    assert [tuple(b.shape[1:]) for b in blocks[::3]] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    torch.testing.assert_close(model.forward_head(blocks[-1]), model(x))
    torch.testing.assert_close(model.forward_features(x), blocks[-1])
    with pytest.raises(ValueError, match="unknown ResNet 'resnet19'; available: resnet20"):
        vitlab.cnn.create_resnet("resnet19")
    with pytest.raises(ValueError, match="no pretrained ResNet weights"):
        vitlab.create_model("resnet20", pretrained=True)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))


def test_resnet_and_vit_intermediates_are_the_same_type():
    cnn = randomize_(vitlab.create_model("resnet20", num_classes=4))
    vit = randomize_(vitlab.create_model("Ti/4@32", num_classes=4, depth=2, embed_dim=48, num_heads=3, mlp_dim=96))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, ref = cnn.forward_intermediates(x), vit.forward_intermediates(x)
        by_hand = _blocks_by_hand(cnn, x)
        assert type(out) is type(ref) is Intermediates
        assert sorted(out.tokens) == list(range(9)) and out.attention == {} and out.num_prefix_tokens == 0
        for i, block in enumerate(by_hand):  # (B, C, h, w) -> one token per position, row-major: (B, h*w, C)
            torch.testing.assert_close(out.tokens[i], block.flatten(2).transpose(1, 2), rtol=0, atol=0)
        assert out.grid_size == (8, 8) and out.patch_tokens(8).shape == (2, 8, 8, 64)
        torch.testing.assert_close(cnn.forward_head(out.features), cnn(x))  # features: what the head reads
        torch.testing.assert_close(vit.forward_head(ref.features), vit(x))
        assert sorted(cnn.forward_intermediates(x, layers=2).tokens) == [7, 8]
        assert sorted(cnn.forward_intermediates(x, layers=[0, -1]).tokens) == [0, 8]
    with pytest.raises(ValueError, match="a ResNet has no attention"):
        cnn.forward_intermediates(x, return_attention=True)
    with pytest.raises(ValueError, match="layer index 9 is out of range for a model of 9 blocks"):
        cnn.forward_intermediates(x, layers=[9])
    with pytest.raises(ValueError, match="not the 8x8 grid"):
        out.patch_tokens(0)


def test_a_fresh_resnet_starts_each_block_as_the_identity():
    model = vitlab.create_model("resnet20").eval()
    blk = model.stages[1][1]  # a block without a projection shortcut: the zero-init BN makes it relu(x)
    x = torch.randn(2, 32, 16, 16)
    torch.testing.assert_close(blk(x), x.relu())


def test_checkpoint_round_trip(tmp_path):
    model = randomize_(vitlab.create_model("resnet20", num_classes=3))
    path = vitlab.save(model, tmp_path / "r.safetensors", class_names=["a", "b", "c"])
    loaded = vitlab.load(path)
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(loaded, ResNet) and loaded.class_names == ["a", "b", "c"]
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="3 classes, 5 were asked for"):
        fresh = vitlab.load(path, num_classes=5, img_size=64)
    assert fresh.config.num_classes == 5 and fresh.preprocessing.img_size == (64, 64)
    assert fresh.config.stem == "cifar" and fresh.class_names is None  # the stem the weights were trained with


@pytest.mark.slow  # 100 training steps and 2,000 validation images: 5-10 s on 2 CPU cores
def test_the_trainer_trains_a_resnet_like_a_vit(tmp_path):
    # shapes drawn at 16 px: a fifth of the time of 32 px (5 s against 34 s on 2 CPU cores), still learnable.
    cfg = load_config("cifar10-resnet20", overrides=["data.dataset=shapes", "data.img_size=16", "budget_minutes=0",
                                                     "max_steps=100", "data.batch_size=32", "optim.warmup_steps=5",
                                                     "optim.lr=0.05", "eval_every_epochs=100", "device=cpu"])
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    model = vitlab.load(tmp_path / "run" / "model.safetensors")
    assert isinstance(model, ResNet) and model.config.num_classes == 6 and model.preprocessing.img_size == (16, 16)
    # 6 classes: chance is 1/6; measured 0.4405 (seed 0), 0.4405, 0.484, 0.4345 (seeds 1-3), 2 CPU cores, 2026-11-23.
    assert result.step == 100 and result.val_acc > 0.3, result


def test_layer_wise_lr_decay_is_refused_for_a_resnet():
    cfg = load_config("cifar10-resnet20")
    cfg.optim.layer_decay = 0.7
    with pytest.raises(ValueError, match="layer-wise lr decay is for ViTs"):
        build_optimizer(vitlab.create_model("resnet20"), cfg.optim)


def test_vit_and_cnn_representations_compare_block_by_block():
    vit = randomize_(vitlab.create_model("Ti/4@32", num_classes=4, depth=3, embed_dim=48, num_heads=3, mlp_dim=96))
    cnn = randomize_(vitlab.create_model("resnet20", num_classes=4))
    x = torch.randn(24, 3, 32, 32)
    reps = block_representations(cnn, x, batch_size=10)["mean"]
    assert [tuple(r.shape) for r in reps[::3]] == [(24, 16), (24, 32), (24, 64)]
    with torch.no_grad():  # each block's output averaged over the positions, as before forward_intermediates
        for rep, block in zip(reps, _blocks_by_hand(cnn.eval(), x), strict=True):
            torch.testing.assert_close(rep, block.mean(dim=(2, 3)))
        torch.testing.assert_close(reps[-1], cnn.forward_head(cnn.forward_features(x), pre_logits=True))
    cross = cka_matrix(block_representations(vit, x)["mean"], reps, batch_size=12)
    assert cross.shape == (3, 9) and ((cross >= -0.2) & (cross <= 1.0 + 1e-6)).all()
    within = cka_matrix(reps, reps, batch_size=12)
    torch.testing.assert_close(within.diagonal(), torch.ones(9), atol=1e-5, rtol=0)
    y = torch.arange(24) % 2
    probes = probe_blocks({"mean": [r[:16] for r in reps]}, y[:16], {"mean": [r[16:] for r in reps]}, y[16:])
    assert len(probes["mean"]) == 9


def test_residual_ablation_changes_only_the_blocks_after_it():
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=4, depth=3, embed_dim=48, num_heads=3,
                                           mlp_dim=96), std=0.2)
    change = residual_ablation_cka(model, torch.randn(16, 3, 32, 32), batch_size=8)
    assert change.shape == (3, 3)
    for i in range(3):
        torch.testing.assert_close(change[i, :i], torch.ones(i), atol=1e-5, rtol=0)  # blocks before i: unchanged
        assert change[i, i] < 0.99  # the ablated block itself moves
    assert all(b.residual for b in model.blocks)  # restored


def test_resnet_names_do_not_clash_with_vit_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not set(RESNETS) & set(vitlab.list_models())


def test_the_cli_describes_a_resnet_and_says_which_commands_are_for_vits(tmp_path, capsys):
    from PIL import Image

    from vitlab.cli import main

    ckpt = str(vitlab.save(vitlab.create_model("resnet20", num_classes=3), tmp_path / "r.safetensors"))
    assert main(["info", ckpt]) == 0
    out = capsys.readouterr().out
    assert "0.27M" in out and "ResNet (vitlab.cnn), 9 residual blocks, cifar stem" in out
    png = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(png)
    assert main(["predict", str(png), "--model", ckpt, "--topk", "2"]) == 0
    for argv in (["attention", str(png), "--model", ckpt], ["complexity", "--model", ckpt],
                 ["export", "--model", ckpt, "--out", str(tmp_path / "r.onnx")]):
        assert main(argv) == 2
        assert "is a ResNet (vitlab's CNN baseline)" in capsys.readouterr().err


def test_a_resnet_checkpoint_whose_tensors_do_not_fit_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    path = vitlab.save(vitlab.create_model("resnet20", num_classes=3), tmp_path / "r.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    save_file({k: v for k, v in sd.items() if k != "head.bias"}, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(vitlab.CheckpointError, match=r"missing keys \['head.bias'\]"):
        vitlab.load(tmp_path / "missing.safetensors")
    sd["head.weight"] = torch.zeros(3, 32)
    save_file(sd, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(vitlab.CheckpointError, match=r"head\.weight is \(3, 32\) but .*resnet20.* gives it \(3, 64\)"):
        vitlab.load(tmp_path / "shape.safetensors")


def test_import_vitlab_does_not_import_torchvision():
    """The ResNet baseline builds from torchvision's blocks, imported when a ResNet is built, not at `import vitlab`
    (torchvision takes over a second to import)."""
    import subprocess
    import sys

    code = "import sys, vitlab; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
