"""``vitlab analyze``: every analysis of one checkpoint (and optionally a second to compare) on one data set,
as a self-contained HTML page with its figures beside it and a JSON of the numbers behind them.

Sections: accuracy; attention maps (raw, rollout, gradient rollout) on a few images; their faithfulness
(deletion/insertion AUC against a random order) and, when the data has object masks (``shapes``), the pointing
game; the paper's Figure 7 (patch-embedding components, position-embedding similarity, mean attention distance);
and Raghu et al. 2021's analyses per block (linear probes, CKA between blocks and across models, soft
nearest-neighbour loss, residual ablation).
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vitlab.analysis import figure7
from vitlab.analysis.attention import METHODS, attention_maps, upsample_map
from vitlab.analysis.faithfulness import deletion_insertion_curves, pointing_game, random_order, summarize
from vitlab.analysis.representations import (
    block_representations,
    cka_matrix,
    probe_blocks,
    residual_ablation,
    residual_ablation_cka,
    soft_nearest_neighbor_loss,
)
from vitlab.cnn import ResNet
from vitlab.data import ImageDataset
from vitlab.data.datasets import generator
from vitlab.evaluate import accuracy, class_index_map
from vitlab.model import VisionTransformer
from vitlab.plots.analysis import (
    plot_attention_distance,
    plot_matrix,
    plot_patch_components,
    plot_per_block,
    plot_position_similarity,
)
from vitlab.plots.attention import plot_deletion_insertion, plot_saliency_grid


@dataclass
class Sample:
    x: torch.Tensor  # (n, C, H, W) normalised with the model's mean and std
    y: torch.Tensor  # (n,) the model's class indices
    images: torch.Tensor  # (n, C, H, W) uint8, for display
    masks: torch.Tensor | None  # (n, H, W) bool object masks, when the data set has them


def sample_images(model: VisionTransformer, dataset: Any, n: int, seed: int = 0) -> Sample:
    """A seeded random subset of ``n`` images of ``dataset``, ready for ``model``."""
    to_model = class_index_map(model, dataset)
    idx = torch.randperm(len(dataset), generator=generator("analyze", seed))[:n]
    pre = model.preprocessing
    if isinstance(dataset, ImageDataset):
        images = dataset.images[idx]
        x = pre.normalize(images.float() / 255.0)
        masks = dataset.masks[idx] if dataset.masks is not None else None
        labels = dataset.labels[idx]
    else:  # streamed: the weights' own preprocessing (resize, centre crop), un-normalised for display
        transform = pre.transform()
        loaded = [dataset.load(int(i)) for i in idx]
        x = torch.stack([transform(img) for img, _ in loaded])
        images = (pre.denormalize(x).clamp(0, 1) * 255).round().byte()
        masks, labels = None, torch.tensor([label for _, label in loaded])
    return Sample(x, to_model[labels], images, masks)


def analyze(model: VisionTransformer, test_set: Any, train_set: Any, out_dir: str | Path, *,
            compare: VisionTransformer | ResNet | None = None, names: tuple[str, str] = ("model", "compare"),
            n_images: int = 512, n_probe_train: int = 2000, n_faithfulness: int = 64, n_show: int = 6,
            cka_batch: int = 128, snn_temperature: float = 0.1, seed: int = 0, progress: bool = True) -> Path:
    """Run every analysis and write ``out_dir/report.html``, ``report.json`` and the figures; return the HTML path."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cfg = model.config
    steps = ["sample", "attention maps", "faithfulness", "figure 7", "probes", "cka", "soft nn", "ablation"]
    bar = tqdm(total=len(steps), disable=not progress, unit="step")
    numbers: dict[str, Any] = {"model": names[0], "config": cfg.to_dict()}
    figures: list[tuple[str, str, str]] = []  # (section, file, caption)

    def step(name: str) -> None:
        bar.set_description(name)
        bar.update(1)

    test = sample_images(model, test_set, n_images, seed)
    numbers["accuracy"] = {"top1": accuracy(model, test.x, test.y), "images": len(test.y)}
    step("sample")

    show = slice(0, min(n_show, len(test.y)))
    size = tuple(test.x.shape[-2:])
    # Maps for the images shown and scored for faithfulness; for all of them only when the pointing game needs them.
    n_maps = len(test.y) if test.masks is not None else min(len(test.y), max(n_show, n_faithfulness))
    maps = {m: torch.cat([attention_maps(model, test.x[i:min(i + 64, n_maps)], m).maps for i in range(0, n_maps, 64)])
            for m in METHODS}  # (n_maps, h, w) each, in batches: gradient rollout keeps a graph per batch
    with torch.no_grad():
        pred = model(test.x[show]).argmax(-1)
    class_names = model.class_names or [str(i) for i in range(cfg.num_classes)]
    titles = [f"true {class_names[t]}\npred {class_names[p]}" for t, p in zip(test.y[show].tolist(), pred.tolist(),
                                                                              strict=True)]
    shown = {m: upsample_map(v[show], size).numpy() for m, v in maps.items()}
    figures.append(("Attention maps", plot_saliency_grid(test.images[show].permute(0, 2, 3, 1).numpy(), shown,
                                                         titles, out / "attention.png").name,
                    "Raw attention of the last block, attention rollout and gradient rollout (predicted class)."))
    step("attention maps")

    faith, curves = {}, {}
    x_f, target = test.x[:n_faithfulness], test.y[:n_faithfulness]
    order = random_order(len(target), maps["raw"][0].numel(), seed)  # one random baseline for every map
    rand = deletion_insertion_curves(model, x_f, maps["raw"][:n_faithfulness], target, cfg.patch_size, order=order)
    curves["random order"] = (rand["deletion"].mean(0).numpy(), rand["insertion"].mean(0).numpy())
    for m, v in maps.items():
        c = deletion_insertion_curves(model, x_f, v[:n_faithfulness], target, cfg.patch_size)
        curves[m] = (c["deletion"].mean(0).numpy(), c["insertion"].mean(0).numpy())
        faith[m] = asdict(summarize(c, rand))
    fraction = rand["fraction"].numpy()
    numbers["faithfulness"] = faith
    curve_png = plot_deletion_insertion(fraction, curves, out / "deletion_insertion.png")
    figures.append(("Faithfulness", curve_png.name,
                    f"Probability of the true class as patches are deleted / inserted in the order of each map "
                    f"({n_faithfulness} images)."))
    if test.masks is not None:
        numbers["pointing_game"] = {}
        for m in METHODS:
            hit, chance = pointing_game(maps[m], test.masks)
            numbers["pointing_game"][m] = {"hit_rate": hit, "chance": chance}
    step("faithfulness")

    if cfg.stem == "patch":
        comps, var = figure7.patch_embedding_components(model, k=28)
        figures.append(("Figure 7", plot_patch_components(comps.numpy(), var.numpy(), out / "patch_pcs.png").name,
                        "Principal components of the patch-embedding filters (paper Figure 7, left)."))
    if model.pos_embed is not None:
        sim = figure7.model_position_similarity(model)
        figures.append(("Figure 7", plot_position_similarity(sim.numpy(), out / "pos_similarity.png").name,
                        "Cosine similarity of each position embedding with all others (Figure 7, centre)."))
    dist = figure7.attention_distances(model, test.x[:256])
    ceiling = figure7.uniform_attention_distance((size[0] // cfg.patch_size, size[1] // cfg.patch_size),
                                                 cfg.patch_size)
    numbers["mean_attention_distance"] = {"per_block_head": dist.tolist(), "uniform": ceiling}
    dist_png = plot_attention_distance(dist.numpy(), ceiling, out / "attention_distance.png")
    figures.append(("Figure 7", dist_png.name,
                    "Mean attention distance of every head against the block (Figure 7, right)."))
    step("figure 7")

    train = sample_images(model, train_set, n_probe_train, seed + 1)
    reps_test = block_representations(model, test.x)
    reps_train = block_representations(model, train.x)
    probes = probe_blocks(reps_train, train.y, reps_test, test.y)
    numbers["linear_probes"] = probes
    chance = 1.0 / cfg.num_classes if cfg.num_classes else None
    figures.append(("Representations", plot_per_block(
        {f"{k} token" if k == "cls" else "mean of patch tokens": v for k, v in probes.items()}, "linear probe top-1",
        out / "probes.png", chance).name, f"Linear probes per block ({n_probe_train} train images)."))
    step("probes")

    cka_self = cka_matrix(reps_test["mean"], reps_test["mean"], cka_batch)
    numbers["cka"] = {"within": cka_self.tolist()}
    figures.append(("Representations", plot_matrix(cka_self.numpy(), f"CKA between blocks ({names[0]})", "block",
                                                   "block", out / "cka.png").name,
                    "Minibatch linear CKA between the blocks' mean patch tokens."))
    if compare is not None:
        compare = compare.eval()
        other_test = sample_images(compare, test_set, n_images, seed)  # the same images, its preprocessing
        other = block_representations(compare, other_test.x)["mean"]
        cross = cka_matrix(reps_test["mean"], other, cka_batch)
        numbers["cka"]["across"] = cross.tolist()
        numbers["compare"] = {"model": names[1], "architecture": type(compare).__name__,
                              "config": compare.config.to_dict(),
                              "accuracy": accuracy(compare, other_test.x, other_test.y)}
        figures.append(("Representations", plot_matrix(cross.numpy(), "CKA across models",
                                                       f"compare ({type(compare).__name__}) block",
                                                       f"model ({type(model).__name__}) block",
                                                       out / "cka_across.png").name,
                        f"Minibatch linear CKA between the blocks of the model ({names[0]}) and of the compared "
                        f"model ({names[1]}), each block's output averaged over tokens or positions."))
    step("cka")

    snn = {k: [soft_nearest_neighbor_loss(torch.nn.functional.normalize(block, dim=-1), test.y, snn_temperature)
               for block in r] for k, r in reps_test.items()}
    numbers["soft_nearest_neighbor_loss"] = {"temperature": snn_temperature, **snn}
    figures.append(("Representations", plot_per_block(snn, "soft nearest-neighbour loss", out / "snn.png").name,
                    f"Soft nearest-neighbour loss of the L2-normalised representations (T = {snn_temperature}): "
                    "lower means classes are better separated."))
    step("soft nn")

    ablation = residual_ablation(model, test.x, test.y)
    numbers["residual_ablation"] = {"top1_without_block_residual": ablation, "top1": numbers["accuracy"]["top1"]}
    figures.append(("Representations", plot_per_block({"block i without residuals": ablation}, "top-1",
                                                      out / "ablation.png", chance).name,
                    "Accuracy with the residual connections of one block removed at inference."))
    change = residual_ablation_cka(model, test.x, cka_batch, intact=reps_test["mean"])
    numbers["residual_ablation"]["cka_to_intact"] = change.tolist()
    figures.append(("Representations", plot_matrix(change.numpy(), "CKA to the intact model's block",
                                                   "block j", "residuals removed in block i",
                                                   out / "ablation_cka.png").name,
                    "How removing one block's residuals changes every block: CKA between block j's representation "
                    "in the intact model and with block i's residuals removed (1 = unchanged)."))
    step("ablation")
    bar.close()

    (out / "report.json").write_text(json.dumps(numbers, indent=1))
    return _write_html(out, numbers, figures)


def _write_html(out: Path, numbers: dict[str, Any], figures: list[tuple[str, str, str]]) -> Path:
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>vitlab analysis: {e(numbers['model'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%}"
             "td,th{padding:2px 8px;text-align:right}</style>",
             f"<h1>vitlab analysis: {e(numbers['model'])}</h1>",
             f"<p>Top-1 on {numbers['accuracy']['images']} images: {100 * numbers['accuracy']['top1']:.2f}%"]
    if "compare" in numbers:
        parts.append(f"; {e(numbers['compare']['model'])} ({e(numbers['compare']['architecture'])}): "
                     f"{100 * numbers['compare']['accuracy']:.2f}%")
    parts.append("</p><h2>Faithfulness</h2><table><tr><th>map</th><th>deletion AUC</th><th>random</th>"
                 "<th>insertion AUC</th><th>random</th></tr>")
    for m, f in numbers["faithfulness"].items():
        parts.append(f"<tr><td>{e(m)}</td><td>{f['deletion_auc']:.3f}</td><td>{f['random_deletion_auc']:.3f}</td>"
                     f"<td>{f['insertion_auc']:.3f}</td><td>{f['random_insertion_auc']:.3f}</td></tr>")
    parts.append("</table>")
    if "pointing_game" in numbers:
        parts.append("<h3>Pointing game</h3><table><tr><th>map</th><th>hit rate</th><th>chance</th></tr>")
        for m, p in numbers["pointing_game"].items():
            parts.append(f"<tr><td>{e(m)}</td><td>{p['hit_rate']:.3f}</td><td>{p['chance']:.3f}</td></tr>")
        parts.append("</table>")
    section = None
    for sec, name, caption in figures:
        if sec != section:
            parts.append(f"<h2>{e(sec)}</h2>")
            section = sec
        parts.append(f"<figure><img src='{e(name)}'><figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<p>The numbers behind every figure: <a href='report.json'>report.json</a>.</p>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
