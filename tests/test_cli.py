import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

import vitlab
from vitlab.cli import main
from vitlab.flops import count_flops

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    """A 2-block ViT-Ti/4 at 32 px with 10 named classes, off its init so that predictions differ."""
    model = randomize_(vitlab.create_model("Ti/4@32", depth=2))
    return vitlab.save(model, tmp_path / "tiny.safetensors", class_names=CIFAR10)


@pytest.fixture
def timm_ckpt(tmp_path) -> Path:
    """A bare timm state dict (no class names, no config) saved with torch.save."""
    import timm
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=3, num_classes=10)
    path = tmp_path / "timm_tiny.pth"
    torch.save(randomize_(model).state_dict(), path)
    return path


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def logits(model: vitlab.VisionTransformer) -> torch.Tensor:
    x = torch.randn(2, 3, *model.config.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


# --- entry points ------------------------------------------------------------------------------------


def test_console_script_version():
    script = Path(sys.executable).parent / ("vitlab.exe" if os.name == "nt" else "vitlab")
    assert script.exists(), f"console script not installed beside {sys.executable}: run the README's install"
    res = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"vitlab {vitlab.__version__}"


def test_python_dash_m(tmp_path):
    res = subprocess.run([sys.executable, "-m", "vitlab", "info", tmp_path / "missing.safetensors"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.startswith("vitlab: error: checkpoint not found")
    assert "Traceback" not in res.stderr


def test_version_and_usage_errors_in_process(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vitlab {vitlab.__version__}"
    assert main([]) == 2  # a command is required
    assert "required" in capsys.readouterr().err
    assert main(["predict", "x.png"]) == 2  # --model missing
    assert "--model" in capsys.readouterr().err
    assert main(["predict", "x.png", "-m", "Ti/16", "--topk", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_every_command_and_argument_has_help(capsys):
    from vitlab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "predict" in a.choices)  # the subparsers action
    assert all(choice.help for choice in sub._choices_actions)  # a one-line help per command
    for name, command in sub.choices.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"
        assert main([name, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: vitlab {name}")
    assert all(a.help for a in parser._actions)


# --- models ------------------------------------------------------------------------------------------


def test_models_pattern(capsys):
    code, out, _ = run(capsys, "models", "vit_tiny*_32")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["name", "params", "GFLOPs", "image", "patch", "tokens"]
    rows = [line.split() for line in lines[1:] if line.startswith("vit_")]
    assert [r[0] for r in rows] == ["vit_tiny_patch2_32", "vit_tiny_patch4_32"]
    cfg = vitlab.get_config("Ti/4@32")
    assert rows[1][1:6] == ["5.36M", f"{count_flops(cfg) / 1e9:.2f}", "32x32", "4", "65"]
    assert "aliases: Ti|S|B|L|H/<patch>" in out and "B/16 = vit_base_patch16_224" in out


def test_models_all_substring_and_alias(capsys):
    _, out, _ = run(capsys, "models")
    assert sum(line.startswith("vit_") for line in out.splitlines()) == len(vitlab.list_models())
    assert "CNN baselines for ViT-vs-CNN comparisons (vitlab.cnn, no pretrained weights): resnet20, resnet56" in out
    base = next(line.split() for line in out.splitlines() if line.startswith("vit_base_patch16_224 "))
    assert base == ["vit_base_patch16_224", "86.57M", "35.13", "224x224", "16", "197", "augreg2_in21k_ft_in1k"]
    _, out, _ = run(capsys, "models", "patch32_384")
    assert {line.split()[0] for line in out.splitlines() if line.startswith("vit_")} == {
        f"vit_{s}_patch32_384" for s in ("tiny", "small", "base", "large", "huge")}
    _, out, _ = run(capsys, "models", "B/16@384")  # an alias is not a substring of a name, but names one
    assert [line.split()[0] for line in out.splitlines() if line.startswith("vit_")] == ["vit_base_patch16_384"]


def test_models_no_match(capsys):
    code, out, err = run(capsys, "models", "resnet*")
    assert code == 2 and out == ""
    assert err == "vitlab: error: no registered model matches 'resnet*'; `vitlab models` lists them all\n"


# --- info --------------------------------------------------------------------------------------------


def test_info_vitlab(capsys, tiny_ckpt):
    code, out, err = run(capsys, "info", tiny_ckpt)
    assert code == 0 and err == ""
    model = vitlab.load(tiny_ckpt)
    n = sum(p.numel() for p in model.parameters())
    assert "format         vitlab" in out
    assert f"params         {n / 1e6:.2f}M ({n:,})" in out
    for f in dataclasses.fields(vitlab.ViTConfig):
        assert f"  {f.name:<20} " in out
    assert "  depth                2\n" in out and "  img_size             [32, 32]\n" in out
    assert "  mean                 [0.5, 0.5, 0.5]\n" in out and "  crop_pct             1.0\n" in out
    assert "class names    10 (airplane, automobile, bird, cat, deer, ...)" in out


def test_info_timm(capsys, timm_ckpt):
    code, out, _ = run(capsys, "info", timm_ckpt)
    assert code == 0
    assert "format         timm" in out
    assert "  patch_size           4\n" in out and "  num_heads            3\n" in out
    assert "class names    0 (none stored)" in out


def test_info_missing_and_corrupt(capsys, tmp_path):
    code, out, err = run(capsys, "info", tmp_path / "missing.safetensors")
    assert code == 2 and out == ""
    assert err.startswith(f"vitlab: error: checkpoint not found: {tmp_path / 'missing.safetensors'}")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "info", bad)
    assert code == 2 and err.startswith("vitlab: error: ") and "bad.pth" in err


# --- convert -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dst, to, fmt", [
    ("out.safetensors", None, "vitlab"),
    ("out.pth", None, "timm"),
    ("out.bin", None, "timm"),
    ("out_timm.safetensors", "timm", "timm"),
    ("out.npz", None, "npz"),
])
def test_convert_and_back(capsys, tmp_path, tiny_ckpt, dst, to, fmt):
    ref = logits(vitlab.load(tiny_ckpt))
    code, out, err = run(capsys, "convert", tiny_ckpt, tmp_path / dst, *(["--to", to] if to else []))
    assert code == 0 and err == ""
    assert out.startswith(f"wrote {tmp_path / dst} ({fmt}; from vitlab;")
    converted = vitlab.load(tmp_path / dst)
    assert converted.source_format.startswith(fmt)
    torch.testing.assert_close(logits(converted), ref, rtol=1e-5, atol=1e-5)

    code, out, _ = run(capsys, "convert", tmp_path / dst, tmp_path / "back.safetensors")
    assert code == 0 and f"(vitlab; from {converted.source_format};" in out
    back = vitlab.load(tmp_path / "back.safetensors")
    assert back.config == converted.config
    torch.testing.assert_close(logits(back), ref, rtol=1e-5, atol=1e-5)


def test_convert_timm_to_vitlab(capsys, tmp_path, timm_ckpt):
    import timm

    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=3, num_classes=10)
    ref.load_state_dict(torch.load(timm_ckpt, weights_only=True))
    code, _, _ = run(capsys, "convert", timm_ckpt, tmp_path / "from_timm.safetensors")
    assert code == 0
    model = vitlab.load(tmp_path / "from_timm.safetensors")
    assert model.source_format == "vitlab"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_convert_img_size_and_num_classes(capsys, tmp_path, tiny_ckpt):
    code, out, err = run(capsys, "convert", tiny_ckpt, tmp_path / "ft.safetensors", "--img-size", "48x64",
                         "--num-classes", "5")
    assert code == 0
    assert "image 48x64, 5 classes" in out
    assert err.startswith("vitlab: warning: ") and "head is new" in err
    model = vitlab.load(tmp_path / "ft.safetensors")
    assert model.config.img_size == (48, 64) and model.config.num_classes == 5
    assert model.preprocessing.img_size == (48, 64) and model.class_names is None


def test_convert_errors(capsys, tmp_path, tiny_ckpt):
    code, _, err = run(capsys, "convert", tiny_ckpt, tmp_path / "out.xyz")
    assert code == 2 and "pass --to vitlab|timm|npz" in err
    code, _, err = run(capsys, "convert", tiny_ckpt, tmp_path / "out.pth", "--to", "vitlab")
    assert code == 2 and "vitlab checkpoints are .safetensors files" in err
    code, _, err = run(capsys, "convert", tiny_ckpt, tmp_path / "out.pth", "--img-size", "big")
    assert code == 2 and "expected an image size like 384 or 384x512" in err
    assert not (tmp_path / "out.pth").exists()


# --- predict -----------------------------------------------------------------------------------------


def _predictions(out: str) -> dict[str, list[tuple[float, str]]]:
    """{image: [(probability, label), ...]} from predict's output."""
    preds, current = {}, None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = preds.setdefault(line, [])
        else:
            _, p, label = line.split(maxsplit=2)
            current.append((float(p), label))
    return preds


def test_predict_checkpoint_class_names(capsys, tiny_ckpt, png):
    code, out, err = run(capsys, "predict", png, png, "--model", tiny_ckpt, "--topk", "3")
    assert code == 0 and err == ""
    preds = _predictions(out)
    assert list(preds) == [str(png)]  # the same file twice: two identical blocks
    assert out.count(str(png)) == 2
    top = preds[str(png)][:3]
    assert len(out.strip().splitlines()) == 2 * (1 + 3)
    probs = [p for p, _ in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-4
    assert {label for _, label in top} <= set(CIFAR10)
    # the same numbers as the model on the same preprocessing
    model = vitlab.load(tiny_ckpt).eval()
    x = model.preprocessing.transform()(vitlab.load_image(png)).unsqueeze(0)
    with torch.no_grad():
        expected = model(x).softmax(-1)[0].topk(3)
    assert [label for _, label in top] == [CIFAR10[i] for i in expected.indices.tolist()]
    np.testing.assert_allclose(probs, expected.values.tolist(), atol=1e-4)


def test_predict_timm_checkpoint_generic_names(capsys, timm_ckpt, png):
    code, out, _ = run(capsys, "predict", png, "-m", timm_ckpt, "-k", "20")
    assert code == 0
    top = _predictions(out)[str(png)]
    assert len(top) == 10  # top-k is capped at the number of classes
    assert all(label.startswith("class_") for _, label in top)
    assert sum(p for p, _ in top) == pytest.approx(1.0, abs=1e-3)


def test_predict_registered_name_warns_and_uses_imagenet_names(capsys, png):
    from torchvision.models import ViT_B_16_Weights

    code, out, err = run(capsys, "predict", png, "--model", "Ti/16", "--topk", "2")
    assert code == 0
    assert err.startswith("vitlab: warning: 'Ti/16' has random weights") and "meaningless" in err
    assert "--pretrained" in err
    top = _predictions(out)[str(png)]
    imagenet = ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(top) == 2 and all(label in imagenet for _, label in top)
    assert all(p == pytest.approx(1 / 1000, abs=1e-5) for p, _ in top)  # zero head: uniform probabilities


def test_predict_bad_image_continues_then_fails(capsys, tmp_path, tiny_ckpt, png):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    missing = tmp_path / "missing.png"
    code, out, err = run(capsys, "predict", text, png, missing, "-m", tiny_ckpt)
    assert code == 1
    assert list(_predictions(out)) == [str(png)]  # the good image after the bad one is still classified
    lines = err.splitlines()
    assert lines[0].startswith(f"vitlab: error: {text} is not an image")
    assert lines[1] == f"vitlab: error: image file not found: {missing}"
    assert lines[2] == "vitlab: error: 2 of 3 image(s) could not be read"


def test_predict_unknown_model(capsys, png):
    code, out, err = run(capsys, "predict", png, "--model", "vit_gigantic_patch16_224")
    assert code == 2 and out == ""
    assert err.startswith("vitlab: error: --model 'vit_gigantic_patch16_224' is neither")
    assert "unknown model 'vit_gigantic_patch16_224'" in err
    assert "vit_tiny_patch16_224" in err and "vit_huge_patch14_224" in err  # the valid names are listed


def test_predict_missing_checkpoint(capsys, tmp_path, png):
    code, _, err = run(capsys, "predict", png, "--model", tmp_path / "nothere.safetensors")
    assert code == 2
    assert err.startswith(f"vitlab: error: checkpoint not found: {tmp_path / 'nothere.safetensors'}")


def test_predict_bad_device(capsys, png, tiny_ckpt):
    code, _, err = run(capsys, "predict", png, "-m", tiny_ckpt, "--device", "toaster")
    assert code == 2 and err.startswith("vitlab: error: predict: argument --device:")
    assert "got 'toaster' (not a device name)" in err
    if not torch.cuda.is_available():
        code, _, err = run(capsys, "predict", png, "-m", tiny_ckpt, "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """huggingface_hub serving repos from local folders remote/<org>/<name>; never the network."""
    from huggingface_hub import errors

    remote = tmp_path / "remote"

    def hf_hub_download(repo_id, filename, **kwargs):
        if not (remote / repo_id).is_dir():
            raise errors.RepositoryNotFoundError.__new__(errors.RepositoryNotFoundError)
        if not (remote / repo_id / filename).is_file():
            not_in_repo = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
            exc = not_in_repo.__new__(not_in_repo)
            Exception.__init__(exc, f"{filename} not in {repo_id}")
            raise exc
        return str(remote / repo_id / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", hf_hub_download)
    return remote


def _timm_hub_repo(folder: Path) -> None:
    """A timm hub repo of a 2-block ViT-Ti/16 whose config.json names its 1000 classes."""
    import timm
    from safetensors.torch import save_file

    ref = randomize_(timm.create_model("vit_tiny_patch16_224", depth=2))
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 1000, "global_pool": "token",
              "model_args": {"depth": 2}, "label_names": [f"hub_label_{i}" for i in range(1000)],
              "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.9,
                                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("argv", [
    ["--model", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"],  # name.tag implies pretrained weights
    ["--model", "Ti/16", "--pretrained"],  # the default tag of vit_tiny_patch16_224
    ["--model", "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"],
])
def test_predict_pretrained_from_hub(capsys, fake_hub, png, argv):
    _timm_hub_repo(fake_hub / "timm" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    code, out, err = run(capsys, "predict", png, *argv, "-k", "3")
    assert code == 0 and err == ""  # trained weights: no random-weights warning
    top = _predictions(out)[str(png)]
    assert len(top) == 3 and all(label.startswith("hub_label_") for _, label in top)


def test_predict_unknown_hub_repo(capsys, fake_hub, png):
    code, _, err = run(capsys, "predict", png, "--model", "hf-hub:nobody/nothing")
    assert code == 2
    assert err.startswith("vitlab: error: no hub repo 'nobody/nothing'")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_on_cuda_matches_cpu(capsys, tiny_ckpt, png):
    code, on_cpu, _ = run(capsys, "predict", png, "-m", tiny_ckpt)
    assert code == 0
    code, on_gpu, _ = run(capsys, "predict", png, "-m", tiny_ckpt, "--device", "cuda")
    assert code == 0
    cpu, gpu = _predictions(on_cpu)[str(png)], _predictions(on_gpu)[str(png)]
    assert [label for _, label in gpu] == [label for _, label in cpu]
    np.testing.assert_allclose([p for p, _ in gpu], [p for p, _ in cpu], atol=1e-3)


# --- attention ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["raw", "rollout", "grad-rollout"])
def test_attention_writes_a_figure_with_the_prediction(capsys, tmp_path, tiny_ckpt, png, method):
    out_png = tmp_path / "fig.png"
    code, out, err = run(capsys, "attention", png, "--model", tiny_ckpt, "--method", method, "--out", out_png,
                         "--discard-ratio", "0.1" if method != "raw" else "0")
    assert code == 0 and err == ""
    assert out_png.is_file() and Image.open(out_png).size[0] > 300
    model = vitlab.load(tiny_ckpt).eval()
    x = model.preprocessing.transform()(vitlab.load_image(png)).unsqueeze(0)
    with torch.no_grad():
        p, c = model(x).softmax(-1)[0].max(0)
    assert f"predicted: {CIFAR10[c]} ({p:.2f}) -> {out_png}" in out


def test_attention_whole_non_square_image_several_files_and_errors(capsys, tmp_path, tiny_ckpt, png):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    folder = tmp_path / "maps"
    code, out, err = run(capsys, "attention", png, bad, "--model", tiny_ckpt, "--whole", "--head", "2",
                         "--out", folder)
    assert code == 1 and "bad.jpg is not an image" in err
    assert (folder / "noise.png").is_file() and not (folder / "bad.png").exists()
    code, _, err = run(capsys, "attention", png, "--model", tiny_ckpt, "--head", "3")
    assert code == 2 and "head=3 is out of range: the model has 3 heads" in err
    code, _, err = run(capsys, "attention", png, "--model", tiny_ckpt, "--method", "rollout", "--head", "1")
    assert code == 2 and "only be shown with method='raw'" in err


def test_complexity_table_and_plot(capsys, tmp_path):
    from vitlab.flops import attention_macs

    plot = tmp_path / "cost.png"
    code, out, err = run(capsys, "complexity", "--model", "B/16", "--img-size", "224,384x512", "--window", "7",
                         "--plot", plot)
    assert code == 0 and err == ""
    assert "86.57M parameters" in out
    lines = out.splitlines()
    row_224 = next(line for line in lines if line.startswith("224x224") and "197" in line)
    assert "35.13" in row_224  # GFLOPs, as `vitlab models`
    assert any(line.startswith("384x512") and " 769 " in f" {line} " for line in lines)  # 24 x 32 + 1 tokens
    cfg = vitlab.get_config("B/16")
    ratio = attention_macs(cfg) / attention_macs(cfg, window=7)
    assert f"{ratio:.2f}x" in out
    assert plot.is_file()
    code, _, err = run(capsys, "complexity", "--model", "B/16", "--img-size", "100")
    assert code == 2 and "not divisible by the patch size 16" in err


@pytest.mark.slow  # about 8 s each: every analysis of the report, and its 11 figures
@pytest.mark.parametrize("compare", ["vit", "resnet"])
def test_analyze_writes_a_report_with_every_section(capsys, tmp_path, compare):
    from vitlab.data import SHAPES_CLASS_NAMES

    def tiny(seed, name="Ti/4@32", **sizes):
        torch.manual_seed(seed)
        model = randomize_(vitlab.create_model(name, num_classes=len(SHAPES_CLASS_NAMES), **sizes), std=0.2)
        return vitlab.save(model, tmp_path / f"m{seed}.safetensors", class_names=SHAPES_CLASS_NAMES)

    vit_sizes = dict(depth=2, embed_dim=48, num_heads=3, mlp_dim=96)
    other = tiny(1, **vit_sizes) if compare == "vit" else tiny(1, "resnet20")
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "analyze", "--checkpoint", tiny(0, **vit_sizes), "--compare", other,
                            "--data", "shapes", "--images", "40", "--probe-images", "60", "--out", out, "--no-progress")
    assert code == 0, err
    numbers = json.loads((out / "report.json").read_text())
    assert {"accuracy", "faithfulness", "pointing_game", "mean_attention_distance", "linear_probes", "cka",
            "soft_nearest_neighbor_loss", "residual_ablation", "compare"} <= set(numbers)
    assert numbers["accuracy"]["images"] == 40
    blocks_other = 2 if compare == "vit" else 9
    assert len(numbers["cka"]["within"]) == 2 and len(numbers["cka"]["across"][0]) == blocks_other
    assert numbers["cka"]["within"][0][0] == pytest.approx(1.0, abs=1e-4)
    assert numbers["compare"]["architecture"] == ("VisionTransformer" if compare == "vit" else "ResNet")
    assert set(numbers["pointing_game"]) == {"raw", "rollout", "grad-rollout"}
    assert len(numbers["residual_ablation"]["cka_to_intact"]) == 2
    page = (out / "report.html").read_text()
    figures = ["attention.png", "deletion_insertion.png", "patch_pcs.png", "pos_similarity.png",
               "attention_distance.png", "probes.png", "cka.png", "cka_across.png", "snn.png", "ablation.png",
               "ablation_cka.png"]
    for name in figures:
        assert (out / name).is_file() and f"src='{name}'" in page, name
    if compare == "resnet":  # the report analyses a ViT; a CNN goes in --compare
        code, _, err = run(capsys, "analyze", "--checkpoint", other, "--data", "shapes", "--out", out, "--no-progress")
        assert code == 2 and "pass the CNN as --compare" in err


def test_complexity_of_a_checkpoint_uses_its_config(capsys, tiny_ckpt):
    code, out, err = run(capsys, "complexity", "--model", tiny_ckpt)
    assert code == 0 and err == ""
    assert f"{count_params_of(tiny_ckpt) / 1e6:.2f}M parameters" in out and "32x32" in out


def count_params_of(path):
    return sum(p.numel() for p in vitlab.load(path).parameters())
