"""Optimizer, parameter groups and learning-rate schedule.

- No weight decay on LayerNorm/BatchNorm weights, biases, LayerScale, position embeddings and the
  class/register tokens (every 1-D tensor, plus ``pos_embed``, ``cls_token``, ``reg_token``).
- Layer-wise learning-rate decay (BEiT; used for fine-tuning): block i gets lr * decay^(L - i), the
  embeddings lr * decay^(L + 1), the final norm and head the full lr.
- Schedule: linear warmup from 0 to the peak over ``warmup_steps``, then cosine to ``min_lr`` (paper
  App. B.1 uses linear warmup then cosine or linear decay). The lr is a pure function of the step (and, for a
  wall-clock budget, of the training time spent, which checkpoints carry), so resuming needs nothing else.
- Wall-clock budget: the cosine's progress is the larger of the step fraction and ``time_progress``, the
  fraction of the budget spent since warmup ended; the run ends when either reaches 1. So a run with a budget
  always finishes its schedule, however fast the machine.
"""

from __future__ import annotations

import math

import torch

from vitlab.errors import ConfigError
from vitlab.model import VisionTransformer
from vitlab.train.config import OptimConfig

NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "reg_token", "attn_pool.latent", "rope.freqs")


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm, pre-logits and head."""
    if name.startswith(("patch_embed", "pos_embed", "cls_token", "dist_token", "reg_token", "norm_pre", "rope.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def freeze_early_layers(model: torch.nn.Module, num_blocks: int) -> int:
    """Freeze the embeddings and the first ``num_blocks`` blocks of a ViT (no gradient, no optimizer state): the
    backward pass stops at the first trained block, so a step costs the frozen blocks' forward only. Returns the
    number of frozen parameters."""
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"model.freeze_blocks={num_blocks}: freezing blocks is for ViTs, not a "
                          f"{type(model).__name__}")
    depth = model.config.depth
    if not 0 <= num_blocks <= depth:
        raise ConfigError(f"model.freeze_blocks={num_blocks} is out of range: the model has {depth} blocks "
                          f"(0..{depth})")
    frozen = 0
    for name, p in model.named_parameters():
        if layer_id(name, depth) <= num_blocks:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    if layer_decay != 1.0 and not isinstance(model, VisionTransformer):
        raise ConfigError(f"optim.layer_decay={layer_decay}: layer-wise lr decay is for ViTs; "
                         f"set it to 1.0 for a {type(model).__name__}")
    depth = model.config.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and name not in NO_DECAY_NAMES
        lid = layer_id(name, depth)
        g = groups.setdefault((lid, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - lid),
        })
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    for g in groups:
        g.pop("names")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ConfigError(f"optim.optimizer={cfg.optimizer!r} is not one of 'adamw', 'sgd'")


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0,
              time_progress: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup, then cosine over the larger
    of the step progress and ``time_progress`` (the fraction of a wall-clock budget spent after warmup)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, time_progress), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int, total_steps: int,
           time_progress: float = 0.0) -> float:
    """Set every group's lr for ``step``; return the peak-group lr."""
    lr = cfg.lr * lr_factor(step, total_steps, cfg.warmup_steps, cfg.min_lr / cfg.lr if cfg.lr else 0.0,
                            time_progress)
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    return lr
