"""What every figure shares: matplotlib's pyplot on the non-interactive Agg backend (figures work on a server
without a display), writing a figure to a file, and a saliency map drawn over an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot with the Agg backend (imported on first use: `import vitlab` stays free of matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close ``fig``; the folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def overlay(ax, image: np.ndarray, saliency: np.ndarray) -> None:
    """Draw ``image`` (H, W, 3) or grey (H, W) with a map (H, W) in [0, 1] over it, half transparent (every
    attention figure)."""
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    ax.imshow(saliency, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
