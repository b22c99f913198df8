"""Is a saliency map faithful to the model? Deletion and insertion curves (Petsiuk et al. 2018, RISE) and the
pointing game (Zhang et al. 2016), on the patch grid.

Deletion: remove the patches in order of saliency, most salient first, and follow the probability of the
class; a faithful map makes it fall fast (low area under the curve). Insertion: start from an image with every
patch removed and put them back in the same order; a faithful map makes it rise fast (high area). Both are
compared with a random order of the same patches. A removed patch is filled with ``fill`` (default 0: the data
mean, for normalised inputs).

Pointing game: the most salient patch is a hit when at least half of its pixels lie on the object mask. The
chance level is what a patch drawn uniformly at random scores under the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitlab.errors import UsageError


def _patch_mask(order: torch.Tensor, k: int, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, h*w) patch order -> (B, 1, H, W) bool, True on the first ``k`` patches of each image's order."""
    b = order.shape[0]
    h, w = grid
    on = torch.zeros(b, h * w, dtype=torch.bool, device=order.device)
    on.scatter_(1, order[:, :k], True)
    on = on.view(b, 1, h, w)
    return on.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


@torch.no_grad()
def deletion_insertion_curves(model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                              patch_size: int, steps: int = 16, fill: float = 0.0, order: torch.Tensor | None = None,
                              batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Probability of ``target`` (B,) as patches are deleted from / inserted into ``x`` (B, C, H, W).

    maps: (B, h, w) saliency on the patch grid (h = H / patch_size); ``order``: (B, h*w) an explicit patch order
    instead (e.g. random). Returns {"fraction": (steps+1,), "deletion": (B, steps+1), "insertion": (B, steps+1)}.
    The masked images go through the model about ``batch_size`` at a time (B at a time when B is larger).
    """
    b, _, height, width = x.shape
    grid = (height // patch_size, width // patch_size)
    n = grid[0] * grid[1]
    if maps.shape != (b, *grid) and order is None:
        raise UsageError(f"maps must be (B, h, w) = {(b, *grid)} for images {tuple(x.shape)} and patch size "
                         f"{patch_size}, got {tuple(maps.shape)}")
    if order is None:
        order = maps.reshape(b, n).argsort(dim=1, descending=True)
    counts = torch.linspace(0, n, steps + 1).round().long().tolist()
    curves = {"deletion": [], "insertion": []}
    pending: list[tuple[str, torch.Tensor]] = []  # masked images waiting for a batched forward pass

    def run() -> None:
        probs = model(torch.cat([images for _, images in pending])).softmax(dim=-1)  # (b * len(pending), K)
        for (name, _), p in zip(pending, probs.split(b), strict=True):
            curves[name].append(p.gather(1, target[:, None])[:, 0])
        pending.clear()

    for k in counts:
        on = _patch_mask(order, k, grid, patch_size)
        for name, images in (("deletion", torch.where(on, fill, x)), ("insertion", torch.where(on, x, fill))):
            pending.append((name, images))
            if b * len(pending) >= batch_size:
                run()
    if pending:
        run()
    return {"fraction": torch.tensor(counts, dtype=torch.float32) / n,
            "deletion": torch.stack(curves["deletion"], 1), "insertion": torch.stack(curves["insertion"], 1)}


def auc(fraction: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    """Area under ``curve`` (..., S) over ``fraction`` (S,) in [0, 1], trapezoidal."""
    return torch.trapezoid(curve, fraction, dim=-1)


@dataclass
class Faithfulness:
    deletion_auc: float  # mean over images, saliency order (lower is better)
    insertion_auc: float  # (higher is better)
    random_deletion_auc: float  # the same with a random patch order
    random_insertion_auc: float


def random_order(num_images: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    """(num_images, num_patches): a seeded random patch order per image, the baseline of the curves."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num_patches, generator=g) for _ in range(num_images)])


def summarize(curves: dict[str, torch.Tensor], random: dict[str, torch.Tensor]) -> Faithfulness:
    """Mean AUCs of :func:`deletion_insertion_curves` for a map and for a random order."""
    f = curves["fraction"]
    return Faithfulness(auc(f, curves["deletion"]).mean().item(), auc(f, curves["insertion"]).mean().item(),
                        auc(f, random["deletion"]).mean().item(), auc(f, random["insertion"]).mean().item())


def faithfulness(model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                 patch_size: int, steps: int = 16, fill: float = 0.0, seed: int = 0) -> Faithfulness:
    """Deletion and insertion AUC of ``maps`` beside a random patch order (seeded)."""
    curves = deletion_insertion_curves(model, x, maps, target, patch_size, steps, fill)
    order = random_order(x.shape[0], maps[0].numel(), seed).to(x.device)
    rand = deletion_insertion_curves(model, x, maps, target, patch_size, steps, fill, order=order)
    return summarize(curves, rand)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """(hit rate, chance level) of ``maps`` (B, h, w) against object ``masks`` (B, H, W) bool.

    A patch counts as on the object when at least half of its pixels are; the hit rate is the fraction of
    images whose most salient patch is on it, the chance level the mean fraction of patches on it.
    """
    b, h, w = maps.shape
    if masks.shape[0] != b or masks.shape[1] % h or masks.shape[2] % w:
        raise UsageError(f"masks {tuple(masks.shape)} do not tile the maps' grid {(h, w)} for {b} images")
    ph, pw = masks.shape[1] // h, masks.shape[2] // w
    cover = masks.float().reshape(b, h, ph, w, pw).mean(dim=(2, 4))  # (B, h, w): fraction of each patch on it
    on = (cover >= 0.5).reshape(b, h * w)
    top = maps.reshape(b, h * w).argmax(dim=1)
    hits = on.gather(1, top[:, None])[:, 0].float()
    return hits.mean().item(), on.float().mean().item()
