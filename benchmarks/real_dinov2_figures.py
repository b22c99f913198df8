"""The README's figures of a real pretrained ViT: where the DINOv2 ViT-S/14 of benchmarks/real_dinov2.py attends on
the photos of tests/data/photos, and the paper's Figure 7 on its weights.

    python benchmarks/real_dinov2_figures.py [--out docs/figures/dinov2]

Writes, with vitlab's own functions (the ones ``vitlab attention`` and ``vitlab analyze`` draw with):
    attention.png           per photo: the last block's class-token attention, attention rollout from block 0 and
                            rollout from block 1, with each photo's hand-drawn object box
    block0_sink.png         per photo: the attention each patch receives in block 0 (averaged over the queries)
    pos_similarity.png      Figure 7 (centre): position-embedding similarity, at 224 px (a 16 x 16 grid)
    attention_distance.png  Figure 7 (right): mean attention distance per head and block, over the photos
    cli-coffee.png          ``vitlab attention tests/data/photos/coffee.jpg --model <weights> --method rollout
                            --first-layer 1``: the map and the six heads of the last block
and prints the figures the README quotes. The photos are resized straight to 224 x 224 (their boxes with them).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import vitlab  # noqa: E402
from vitlab.analysis import figure7  # noqa: E402
from vitlab.analysis.attention import attention_maps, upsample_map  # noqa: E402
from vitlab.cli import main as vitlab_main  # noqa: E402
from vitlab.plots import plot_attention_distance, plot_position_similarity  # noqa: E402
from vitlab.plots.attention import plot_saliency_grid  # noqa: E402


def _real_dinov2():
    spec = importlib.util.spec_from_file_location("benchmarks_real_dinov2", REPO / "benchmarks" / "real_dinov2.py")
    module = sys.modules["benchmarks_real_dinov2"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _boxed(image: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """The (224, 224, 3) uint8 image with its box drawn in green (the box in the photo's own pixels)."""
    from PIL import ImageDraw

    pil = Image.fromarray(image)
    sy, sx = 224 / size[0], 224 / size[1]
    x0, y0, x1, y1 = box
    ImageDraw.Draw(pil).rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=(0, 255, 0), width=2)
    return np.asarray(pil)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "dinov2")
    args = p.parse_args(argv)
    from photos import load_photos

    weights = _real_dinov2().build().hf_folder
    model = vitlab.load(weights).eval()
    photos = load_photos()
    pixels = np.stack([np.asarray(ph.image.resize((224, 224))) for ph in photos])  # (B, 224, 224, 3)
    x = model.preprocessing.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    args.out.mkdir(parents=True, exist_ok=True)

    maps = {"last block, class token": attention_maps(model, x, "raw").maps,
            "rollout, blocks 0-11": attention_maps(model, x, "rollout").maps,
            "rollout, blocks 1-11": attention_maps(model, x, "rollout", first_layer=1).maps}
    with torch.no_grad():
        out = model.forward_intermediates(x, return_attention=True)
    received = out.attention[0].mean(1)[:, 1:, 1:].mean(1).reshape(-1, 16, 16)  # (B, 16, 16) block 0's columns
    boxed = np.stack([_boxed(pixels[i], ph.box, ph.size) for i, ph in enumerate(photos)])
    titles = [ph.name for ph in photos]
    shown = {k: upsample_map(v, (224, 224)).numpy() for k, v in maps.items()}
    plot_saliency_grid(boxed, shown, titles, args.out / "attention.png")
    plot_saliency_grid(boxed, {"block 0: attention received": upsample_map(received, (224, 224)).numpy()}, titles,
                       args.out / "block0_sink.png")
    for i, ph in enumerate(photos):
        mask = ph.mask((16, 16))
        mass = {k: float((v[i] * mask).sum()) for k, v in maps.items()}
        print(f"{ph.name}: box share {mask.mean():.3f}; mass in the box: "
              + ", ".join(f"{k} {m:.3f} ({m / mask.mean():.2f}x)" for k, m in mass.items())
              + f"; block 0 sends {received[i].max():.3f} of the attention to one patch")

    at224 = vitlab.load(weights, img_size=224)  # the 37x37 table resampled as transformers does, for a 16x16 plot
    plot_position_similarity(figure7.model_position_similarity(at224).numpy(), args.out / "pos_similarity.png")
    dist = torch.stack([figure7.mean_attention_distance(out.attention[b], out.grid_size, 14, 1) for b in range(12)])
    ceiling = figure7.uniform_attention_distance((16, 16), 14)
    plot_attention_distance(dist.numpy(), ceiling, args.out / "attention_distance.png")
    print("mean attention distance (px) per block, min-max over heads: "
          + ", ".join(f"{b}: {d.min():.0f}-{d.max():.0f}" for b, d in enumerate(dist)) + f" (uniform: {ceiling:.0f})")
    coffee = REPO / "tests" / "data" / "photos" / "coffee.jpg"
    vitlab_main(["attention", str(coffee), "--model", str(weights), "--method", "rollout", "--first-layer", "1",
                 "--out", str(args.out / "cli-coffee.png")])
    for png in args.out.glob("*.png"):  # 256 colours: a fifth of the size, for the repository
        Image.open(png).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


if __name__ == "__main__":
    main()
