"""A fast inference path: the same model with its weights cast to bfloat16.

On CPUs with AMX or AVX-512 BF16 (recent Xeons) and on GPUs, bf16 matrix multiplies run several times
faster than fp32; casting the weights once avoids the per-call casts that ``torch.autocast`` pays.
The price is precision: bf16 keeps 8 bits of mantissa, so logits move by about 1e-2 and a few
near-tied top-1 predictions can flip. ``benchmarks/throughput.py --modes latency`` measures both the
speed-up and this accuracy cost (BENCHMARKS.md has the figures).

    fast = prepare_for_inference(model)          # a copy; the original model is untouched
    with torch.inference_mode():
        logits = fast(images)                     # fp32 images in, fp32 logits out
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from vitlab.errors import UsageError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class InferenceModel(nn.Module):
    """Wraps a model cast to ``dtype``: casts the input to it and the logits back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def class_names_for(model: nn.Module) -> list[str]:
    """The names of a classifier's outputs: the checkpoint's own; else ImageNet-1k's for a 1000-class head (the
    names ship with torchvision, no download); else ``class_<i>``."""
    k = model.config.num_classes
    names = getattr(model, "class_names", None)
    if names and len(names) == k:
        return list(names)
    if k == 1000:
        from torchvision.models import ViT_B_16_Weights

        return list(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])
    return [f"class_{i}" for i in range(k)]


def prepare_for_inference(model: nn.Module, dtype: str = "bfloat16", compile: bool = False) -> InferenceModel:
    """A copy of ``model`` in eval mode with weights in ``dtype`` (bfloat16, float16 or float32).

    compile=True also wraps it in ``torch.compile`` (pays on GPUs; on small CPUs it often does not).
    float16 is for GPUs: most CPUs have no fast fp16 matrix multiply.
    """
    if dtype not in DTYPES:
        raise UsageError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    fast = InferenceModel(copy.deepcopy(model).to(DTYPES[dtype]), DTYPES[dtype]).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    return torch.compile(fast) if compile else fast
