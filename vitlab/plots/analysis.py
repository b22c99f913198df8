"""Charts of what the analyses measure inside a model: the paper's Figure 7 (patch-embedding components,
position-embedding similarity, mean attention distance), block-by-block matrices (CKA) and series (probes, soft
nearest-neighbour loss, ablations), and the self-attention cost against the image size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitlab.plots.common import pyplot, save_figure


def _to_image(a: np.ndarray) -> np.ndarray:
    """(C, P, P) -> (P, P, C) or (P, P) rescaled to [0, 1] for display."""
    a = np.moveaxis(a, 0, -1) if a.shape[0] in (1, 3) else a[0]
    a = a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a
    lo, hi = a.min(), a.max()
    return (a - lo) / max(hi - lo, 1e-12)


def plot_patch_components(components: np.ndarray, variance: np.ndarray, path: str | Path) -> Path:
    """Figure 7 (left): principal components (k, C, P, P) of the patch-embedding filters, as images."""
    plt = pyplot()
    k = len(components)
    cols = min(k, 7)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(k):
        ax = axes.flat[i]
        ax.imshow(_to_image(components[i]), interpolation="nearest", cmap="gray")
        ax.set_title(f"PC{i + 1} {100 * variance[i]:.0f}%", fontsize=6)
    fig.suptitle("RGB embedding filters (principal components)", fontsize=9)
    return save_figure(fig, path)


def plot_position_similarity(similarity: np.ndarray, path: str | Path) -> Path:
    """Figure 7 (centre): for each grid position (h, w), its cosine similarity to all positions (h, w)."""
    plt = pyplot()
    h, w = similarity.shape[:2]
    fig, axes = plt.subplots(h, w, figsize=(0.6 * w + 1, 0.6 * h + 0.6), squeeze=False)
    for i in range(h):
        for j in range(w):
            axes[i, j].imshow(similarity[i, j], vmin=-1, vmax=1, cmap="viridis", interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.suptitle("Position embedding similarity (rows, columns: input patch)", fontsize=9)
    return save_figure(fig, path)


def plot_attention_distance(distances: np.ndarray, ceiling: float, path: str | Path) -> Path:
    """Figure 7 (right): mean attention distance (L, Nh) of every head against the block, with the uniform
    attention ceiling."""
    plt = pyplot()
    depth, heads = distances.shape
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for h in range(heads):
        ax.scatter(np.arange(depth), distances[:, h], s=12, label=f"head {h}" if heads <= 8 else None)
    ax.axhline(ceiling, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("block")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, ceiling * 1.15)
    ax.legend(fontsize=6)
    return save_figure(fig, path)


def plot_matrix(matrix: np.ndarray, title: str, xlabel: str, ylabel: str, path: str | Path) -> Path:
    """A heatmap in [0, 1] (CKA between layers), the first row at the bottom."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(matrix, vmin=0, vmax=1, origin="lower", cmap="magma", aspect="auto")
    fig.colorbar(im, ax=ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # block indices
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return save_figure(fig, path)


def plot_per_block(series: dict[str, Sequence[float]], ylabel: str, path: str | Path,
                   chance: float | None = None) -> Path:
    """Lines of a value per block (linear probes, soft nearest-neighbour loss, ablation accuracy)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, values in series.items():
        ax.plot(np.arange(len(values)), values, "o-", markersize=3, label=name)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("block")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_attention_cost(pixels: Sequence[int], msa: Sequence[float], wmsa: Sequence[float], window: int,
                        path: str | Path) -> Path:
    """Self-attention multiply-adds against the number of pixels: global MSA (quadratic) and W-MSA (linear)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(pixels, np.asarray(msa) / 1e9, "o-", label="global MSA (ViT)")
    ax.plot(pixels, np.asarray(wmsa) / 1e9, "s-", label=f"W-MSA, window {window} (Swin)")
    ax.set_xlabel("pixels per image")
    ax.set_ylabel("self-attention GMACs, all blocks")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
