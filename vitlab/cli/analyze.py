"""``vitlab analyze``: the analysis report of a checkpoint on a data set."""

from __future__ import annotations

import argparse
from pathlib import Path

import vitlab
from vitlab.cli.common import EXIT_OK, beside, require_vit, short_name, with_warnings
from vitlab.cli.domains import DATA, INPUT_FOLDER, MODEL, OUTPUT_FOLDER, integer
from vitlab.cli.train import DATA_HELP


def add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="one HTML report: attention maps, faithfulness, Figure 7, CKA, probes",
                       description="Every analysis of a checkpoint on a data set: attention maps, rollout and "
                                   "gradient rollout with their deletion/insertion AUC (and the pointing game on "
                                   "data with masks), the paper's Figure 7, and per-block linear probes, CKA, soft "
                                   "nearest-neighbour loss and residual ablation; --compare adds CKA across models.")
    p.add_argument("--checkpoint", required=True, type=MODEL, metavar="CHECKPOINT",
                   help="a checkpoint of any supported format")
    p.add_argument("--data", required=True, type=DATA, metavar="DATASET", help=DATA_HELP)
    p.add_argument("--compare", type=MODEL, metavar="CHECKPOINT",
                   help="a second checkpoint: CKA between the two models' blocks")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="analysed split (default: test)")
    p.add_argument("--data-dir", type=INPUT_FOLDER, metavar="DIR", help="an existing copy of the data set")
    p.add_argument("--images", type=integer(1, 10**6), default=512, metavar="N", help="images analysed (default: 512)")
    p.add_argument("--probe-images", type=integer(2, 10**7), default=2000, metavar="N",
                   help="training images for the linear probes (default: 2000)")
    p.add_argument("--out", type=OUTPUT_FOLDER, metavar="DIR",
                   help="output folder (default: analysis/ beside the checkpoint)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=analyze)


def analyze(checkpoint: str, data: str, out: str | None = None, compare: str | None = None, split: str = "test",
            data_dir: str | None = None, images: int = 512, probe_images: int = 2000, progress: bool = True) -> int:
    """Write the analysis report (HTML, figures, JSON) of a checkpoint on a data set, optionally beside a second."""
    from vitlab.analysis.report import analyze as run_analysis
    from vitlab.data import load_dataset

    model = with_warnings(vitlab.load, checkpoint)
    require_vit(model, checkpoint, "the report analyses a ViT; pass the CNN as --compare to set it beside one")
    other = with_warnings(vitlab.load, compare) if compare else None
    test_set = load_dataset(data, split, data_dir=data_dir)
    train_set = load_dataset(data, "train", data_dir=data_dir)
    out_dir = Path(out) if out else beside(checkpoint, "analysis")
    path = run_analysis(model, test_set, train_set, out_dir, compare=other,
                        names=(short_name(checkpoint), short_name(compare) if compare else ""), n_images=images,
                        n_probe_train=probe_images, progress=progress)
    print(f"wrote {path}, {path.parent / 'report.json'} and the figures beside them")
    return EXIT_OK
