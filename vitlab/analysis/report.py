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
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitlab.analysis import figure7
from vitlab.analysis.attention import attention_maps, methods_for, upsample_map
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
from vitlab.data.folder import UndecodableImage
from vitlab.errors import UsageError
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
        loaded = _decodable(dataset, idx)
        x = torch.stack([transform(img) for img, _ in loaded])
        images = (pre.denormalize(x).clamp(0, 1) * 255).round().byte()
        masks, labels = None, torch.tensor([label for _, label in loaded])
    return Sample(x, to_model[labels], images, masks)


def _decodable(dataset: Any, idx: torch.Tensor) -> list[tuple[Any, int]]:
    """(image, label) of the streamed files at ``idx`` that decode; the others are skipped with one warning."""
    loaded, skipped = [], []
    for i in idx.tolist():
        try:
            loaded.append(dataset.load(i))
        except UndecodableImage as e:
            skipped.append(str(e.path))
    if skipped:
        warnings.warn(f"analysis: skipped {len(skipped)} of {len(idx)} sampled files that do not decode: "
                      f"{', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}", stacklevel=3)
    if not loaded:
        raise UsageError(f"none of the {len(idx)} sampled files of the data set decodes")
    return loaded


@dataclass
class _Report:
    """What the sections fill in: the numbers (report.json) and the figures, each (section, file, caption)."""

    out: Path
    numbers: dict[str, Any]
    figures: list[tuple[str, str, str]] = field(default_factory=list)

    def figure(self, section: str, path: Path, caption: str) -> None:
        self.figures.append((section, path.name, caption))


def analyze(model: VisionTransformer, test_set: Any, train_set: Any, out_dir: str | Path, *,
            compare: VisionTransformer | ResNet | None = None, names: tuple[str, str] = ("model", "compare"),
            n_images: int = 512, n_probe_train: int = 2000, n_faithfulness: int = 64, n_show: int = 6,
            cka_batch: int = 128, snn_temperature: float = 0.1, seed: int = 0, progress: bool = True) -> Path:
    """Run every analysis and write ``out_dir/report.html``, ``report.json`` and the figures; return the HTML path."""
    from tqdm.auto import tqdm

    model = model.eval()
    report = _Report(Path(out_dir), {"model": names[0], "config": model.config.to_dict()})
    report.out.mkdir(parents=True, exist_ok=True)
    test = sample_images(model, test_set, n_images, seed)
    report.numbers["accuracy"] = {"top1": accuracy(model, test.x, test.y), "images": len(test.y)}
    bar = tqdm(total=4, disable=not progress, unit="section")
    maps = _attention_maps(report, model, test, n_show, n_faithfulness)
    bar.update(1)
    _faithfulness(report, model, test, maps, n_faithfulness, seed)
    bar.update(1)
    _figure7(report, model, test)
    bar.update(1)
    _representations(report, model, test, train_set, compare, test_set, names, n_images, n_probe_train, cka_batch,
                     snn_temperature, seed)
    bar.close()
    (report.out / "report.json").write_text(json.dumps(report.numbers, indent=1))
    return _write_html(report.out, report.numbers, report.figures)


def _attention_maps(report: _Report, model: VisionTransformer, test: Sample, n_show: int,
                    n_faithfulness: int) -> dict[str, torch.Tensor]:
    """Raw attention, rollout and gradient rollout, drawn for the first ``n_show`` images; returns the maps, (n, h, w)
    per method, for the images shown and scored (for all of them when the pointing game needs them)."""
    n_maps = len(test.y) if test.masks is not None else min(len(test.y), max(n_show, n_faithfulness))
    maps = {m: torch.cat([attention_maps(model, test.x[i:min(i + 64, n_maps)], m).maps for i in range(0, n_maps, 64)])
            for m in methods_for(model)}  # in batches: gradient rollout keeps a graph per batch
    show = slice(0, min(n_show, len(test.y)))
    with torch.no_grad():
        pred = model(test.x[show]).argmax(-1)
    class_names = model.class_names or [str(i) for i in range(model.config.num_classes)]
    titles = [f"true {class_names[t]}\npred {class_names[p]}"
              for t, p in zip(test.y[show].tolist(), pred.tolist(), strict=True)]
    shown = {m: upsample_map(v[show], tuple(test.x.shape[-2:])).numpy() for m, v in maps.items()}
    images = test.images[show].permute(0, 2, 3, 1).numpy()
    report.figure("Attention maps", plot_saliency_grid(images, shown, titles, report.out / "attention.png"),
                  "Raw attention of the last block, attention rollout and gradient rollout (predicted class)"
                  + (", and the attention pool's own map." if "pool" in maps else "."))
    return maps


def _faithfulness(report: _Report, model: VisionTransformer, test: Sample, maps: dict[str, torch.Tensor],
                  n_faithfulness: int, seed: int) -> None:
    """Deletion / insertion AUC of each map against one random order; the pointing game on data with masks."""
    patch = model.config.patch_size
    x_f, target = test.x[:n_faithfulness], test.y[:n_faithfulness]
    order = random_order(len(target), maps["raw"][0].numel(), seed)  # one random baseline for every map
    rand = deletion_insertion_curves(model, x_f, maps["raw"][:n_faithfulness], target, patch, order=order)
    curves = {"random order": (rand["deletion"].mean(0).numpy(), rand["insertion"].mean(0).numpy())}
    faith = {}
    for m, v in maps.items():
        c = deletion_insertion_curves(model, x_f, v[:n_faithfulness], target, patch)
        curves[m] = (c["deletion"].mean(0).numpy(), c["insertion"].mean(0).numpy())
        faith[m] = asdict(summarize(c, rand))
    report.numbers["faithfulness"] = faith
    report.figure("Faithfulness", plot_deletion_insertion(rand["fraction"].numpy(), curves,
                                                          report.out / "deletion_insertion.png"),
                  f"Probability of the true class as patches are deleted / inserted in the order of each map "
                  f"({n_faithfulness} images).")
    if test.masks is not None:
        report.numbers["pointing_game"] = {}
        for m in maps:
            hit, chance = pointing_game(maps[m], test.masks)
            report.numbers["pointing_game"][m] = {"hit_rate": hit, "chance": chance}


def _figure7(report: _Report, model: VisionTransformer, test: Sample) -> None:
    """The paper's Figure 7: patch-embedding components, position similarity, mean attention distance."""
    cfg, out = model.config, report.out
    if cfg.stem == "patch":
        comps, var = figure7.patch_embedding_components(model, k=28)
        report.figure("Figure 7", plot_patch_components(comps.numpy(), var.numpy(), out / "patch_pcs.png"),
                      "Principal components of the patch-embedding filters (paper Figure 7, left).")
    if model.pos_embed is not None:
        sim = figure7.model_position_similarity(model)
        report.figure("Figure 7", plot_position_similarity(sim.numpy(), out / "pos_similarity.png"),
                      "Cosine similarity of each position embedding with all others (Figure 7, centre).")
    dist = figure7.attention_distances(model, test.x[:256])
    h, w = test.x.shape[-2:]
    ceiling = figure7.uniform_attention_distance((h // cfg.patch_size, w // cfg.patch_size), cfg.patch_size)
    report.numbers["mean_attention_distance"] = {"per_block_head": dist.tolist(), "uniform": ceiling}
    report.figure("Figure 7", plot_attention_distance(dist.numpy(), ceiling, out / "attention_distance.png"),
                  "Mean attention distance of every head against the block (Figure 7, right).")


def _representations(report: _Report, model: VisionTransformer, test: Sample, train_set: Any,
                     compare: VisionTransformer | ResNet | None, test_set: Any, names: tuple[str, str], n_images: int,
                     n_probe_train: int, cka_batch: int, snn_temperature: float, seed: int) -> None:
    """Raghu et al. 2021 per block: linear probes, CKA within (and across) models, soft nearest-neighbour loss and
    residual ablation."""
    out, numbers = report.out, report.numbers
    train = sample_images(model, train_set, n_probe_train, seed + 1)
    reps_test, reps_train = block_representations(model, test.x), block_representations(model, train.x)
    probes = probe_blocks(reps_train, train.y, reps_test, test.y)
    numbers["linear_probes"] = probes
    chance = 1.0 / model.config.num_classes if model.config.num_classes else None
    series = {f"{k} token" if k == "cls" else "mean of patch tokens": v for k, v in probes.items()}
    report.figure("Representations", plot_per_block(series, "linear probe top-1", out / "probes.png", chance),
                  f"Linear probes per block ({n_probe_train} train images).")

    cka_self = cka_matrix(reps_test["mean"], reps_test["mean"], cka_batch)
    numbers["cka"] = {"within": cka_self.tolist()}
    report.figure("Representations", plot_matrix(cka_self.numpy(), f"CKA between blocks ({names[0]})", "block",
                                                 "block", out / "cka.png"),
                  "Minibatch linear CKA between the blocks' mean patch tokens.")
    if compare is not None:
        _compare(report, model, compare, reps_test["mean"], test_set, names, n_images, cka_batch, seed)

    snn = {k: [soft_nearest_neighbor_loss(torch.nn.functional.normalize(block, dim=-1), test.y, snn_temperature)
               for block in r] for k, r in reps_test.items()}
    numbers["soft_nearest_neighbor_loss"] = {"temperature": snn_temperature, **snn}
    report.figure("Representations", plot_per_block(snn, "soft nearest-neighbour loss", out / "snn.png"),
                  f"Soft nearest-neighbour loss of the L2-normalised representations (T = {snn_temperature}): "
                  "lower means classes are better separated.")

    ablation = residual_ablation(model, test.x, test.y)
    numbers["residual_ablation"] = {"top1_without_block_residual": ablation, "top1": numbers["accuracy"]["top1"]}
    report.figure("Representations", plot_per_block({"block i without residuals": ablation}, "top-1",
                                                    out / "ablation.png", chance),
                  "Accuracy with the residual connections of one block removed at inference.")
    change = residual_ablation_cka(model, test.x, cka_batch, intact=reps_test["mean"])
    numbers["residual_ablation"]["cka_to_intact"] = change.tolist()
    report.figure("Representations", plot_matrix(change.numpy(), "CKA to the intact model's block", "block j",
                                                 "residuals removed in block i", out / "ablation_cka.png"),
                  "How removing one block's residuals changes every block: CKA between block j's representation "
                  "in the intact model and with block i's residuals removed (1 = unchanged).")


def _compare(report: _Report, model: VisionTransformer, compare: VisionTransformer | ResNet,
             mean_tokens: list[torch.Tensor], test_set: Any, names: tuple[str, str], n_images: int, cka_batch: int,
             seed: int) -> None:
    """CKA between the blocks of the model and of a second one (a ViT or the ResNet) on the same images."""
    compare = compare.eval()
    other_test = sample_images(compare, test_set, n_images, seed)  # the same images, its preprocessing
    cross = cka_matrix(mean_tokens, block_representations(compare, other_test.x)["mean"], cka_batch)
    report.numbers["cka"]["across"] = cross.tolist()
    report.numbers["compare"] = {"model": names[1], "architecture": type(compare).__name__,
                                 "config": compare.config.to_dict(),
                                 "accuracy": accuracy(compare, other_test.x, other_test.y)}
    figure = plot_matrix(cross.numpy(), "CKA across models", f"compare ({type(compare).__name__}) block",
                         f"model ({type(model).__name__}) block", report.out / "cka_across.png")
    report.figure("Representations", figure,
                  f"Minibatch linear CKA between the blocks of the model ({names[0]}) and of the compared "
                  f"model ({names[1]}), each block's output averaged over tokens or positions.")


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
