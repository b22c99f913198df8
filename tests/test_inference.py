"""The bf16 inference path: a copy of the model whose logits stay close to fp32's, and `predict --dtype`."""

import pytest
import torch
from conftest import randomize_

import vitlab
from vitlab.inference import prepare_for_inference

SMALL = dict(depth=2, embed_dim=64, num_heads=2, mlp_dim=128)  # a narrow Ti/4: quick to build and to run in bf16


def test_bf16_copy_is_close_to_fp32_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=10, **SMALL), std=0.05)
    fast = prepare_for_inference(model)
    assert next(model.parameters()).dtype == torch.float32 and model.blocks[0].attn.qkv.weight.requires_grad
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    x = torch.randn(16, 3, 32, 32)
    with torch.inference_mode():
        ref, out = model(x), fast(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # bf16 keeps 8 mantissa bits: relative error about 2^-8 per op; the logits here are O(1)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.8
    same = prepare_for_inference(model, "float32")
    with torch.inference_mode():
        torch.testing.assert_close(same(x), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="dtype='int8' is not one of"):
        prepare_for_inference(model, "int8")


def test_predict_with_bf16(capsys, tmp_path):
    from PIL import Image

    from vitlab.cli import main

    torch.manual_seed(0)
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=3, **SMALL), std=0.05)
    ckpt = vitlab.save(model, tmp_path / "m.safetensors", class_names=["a", "b", "c"])
    png = tmp_path / "x.png"
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(png)
    assert main(["predict", str(png), "--model", str(ckpt), "--topk", "3"]) == 0
    fp32 = capsys.readouterr().out
    assert main(["predict", str(png), "--model", str(ckpt), "--topk", "3", "--dtype", "bfloat16"]) == 0
    bf16 = capsys.readouterr().out
    probs = [[float(line.split()[1]) for line in out.splitlines()[1:]] for out in (fp32, bf16)]
    assert len(probs[1]) == 3 and max(abs(a - b) for a, b in zip(*probs, strict=True)) < 0.02


def test_evaluate_model_on_the_bf16_path_agrees_with_fp32():
    from vitlab.data import ImageDataset
    from vitlab.evaluate import evaluate_model

    torch.manual_seed(0)
    model = randomize_(vitlab.create_model("Ti/4@32", num_classes=3, **SMALL), std=0.05)
    images = (torch.rand(40, 3, 32, 32) * 255).byte()
    with torch.no_grad():  # labels = the fp32 model's own predictions: fp32 top-1 is 1 by construction
        labels = model(((images.float() / 255) - 0.5) / 0.5).argmax(-1)
    data = ImageDataset(images, labels, ["a", "b", "c"])
    assert evaluate_model(model, data).top1 == 1.0
    bf16 = evaluate_model(model, data, dtype="bfloat16")
    assert 0.85 <= bf16.top1 <= 1.0 and next(model.parameters()).dtype == torch.float32


def test_compile_wraps_the_copy(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m: seen.append(m) or m)
    model = vitlab.create_model("Ti/4@32", num_classes=2, depth=1)
    fast = prepare_for_inference(model, compile=True)
    assert seen == [fast] and fast.model is not model
