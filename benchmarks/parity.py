"""Print how closely vitlab matches its peers on the same weights, through vitlab's own loader.

For each case a peer model is built with random weights (moved off their init), saved in the peer's
format, loaded with ``vitlab.load`` and both are run on the same random images in fp32:

    python benchmarks/parity.py            # needs the dev extras: timm, transformers

The tests in tests/test_parity_timm.py and tests/test_convert_*.py assert the same comparisons
(max |logit difference| <= 1e-4); this script prints the figures for the README.
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

import timm
import torch
import torchvision
import transformers
from safetensors.torch import save_file
from timm.models.vision_transformer import _load_weights, checkpoint_filter_fn

import vitlab


def randomize_(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return module.eval()


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return getattr(out, "logits", out)  # transformers returns an output object


@torch.no_grad()
def max_diff(a: torch.nn.Module, b: torch.nn.Module, size: int) -> float:
    x = torch.randn(4, 3, size, size)
    return (logits(a, x) - logits(b, x)).abs().max().item()


def timm_cases(tmp: Path):
    for name, size, other in [("vit_tiny_patch16_224", 224, 288), ("vit_base_patch16_224", 224, 384),
                              ("vit_base_patch32_224", 224, 384), ("vit_base_patch16_reg4_gap_256", 256, 192)]:
        ref = randomize_(timm.create_model(name))
        path = tmp / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
        yield f"timm {name} @{size}", max_diff(ref, vitlab.load(path).eval(), size)
        ref_other = timm.create_model(name, img_size=other).eval()
        ref_other.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ref_other))
        yield f"timm {name} @{other} (resampled)", max_diff(ref_other, vitlab.load(path, img_size=other).eval(), other)


def hf_cases(tmp: Path):
    cfg = transformers.ViTConfig(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, intermediate_size=200,
                                 image_size=48, patch_size=8, num_labels=7, qkv_bias=False)
    ref = randomize_(transformers.ViTForImageClassification(cfg))
    ref.save_pretrained(tmp / "hf")
    label = "transformers ViTForImageClassification (D=96, 4 heads, no qkv bias) @48"
    yield label, max_diff(ref, vitlab.load(tmp / "hf").eval(), 48)


def torchvision_cases(tmp: Path):
    ref = randomize_(torchvision.models.vit_b_16())
    torch.save(ref.state_dict(), tmp / "vit_b_16.pth")
    yield "torchvision vit_b_16 @224", max_diff(ref, vitlab.load(tmp / "vit_b_16.pth").eval(), 224)


def npz_cases(tmp: Path):
    model = randomize_(vitlab.create_model("vit_tiny_patch16_224"))
    vitlab.export_npz(model, tmp / "ti16.npz")
    ref = timm.create_model("vit_tiny_patch16_224").eval()
    _load_weights(ref, str(tmp / "ti16.npz"))
    yield "vitlab -> .npz -> timm's npz reader, Ti/16 @224", max_diff(ref, model, 224)


def main() -> int:
    torch.manual_seed(0)
    print(f"vitlab {vitlab.__version__}, torch {torch.__version__}, timm {timm.__version__}, "
          f"transformers {transformers.__version__}, torchvision {torchvision.__version__}")
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, fp32, batch 4\n")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for cases in (timm_cases, hf_cases, torchvision_cases, npz_cases):
            for label, diff in cases(Path(tmp)):
                worst = max(worst, diff)
                print(f"{label:<70} max |logit diff| {diff:.2e}")
    print(f"\nworst: {worst:.2e} (tolerance 1e-4)")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
