"""CIFAR-10 from scratch in a fixed wall-clock budget: vitlab's recipes against the usual ViT tutorial recipe.

Each recipe trains for ``--minutes`` of training-step time on the same machine, one after the other (never at
the same time: they would share the cores), and is scored on the 10,000 test images. The reference is
``cifar10-reference``: a plain ViT (patch 4, width 192, depth 6, 3 heads, MLP 384) with the common tutorial
recipe (AdamW lr 1e-3, weight decay 0.05, 200 warmup steps then cosine, random crop with 4 px padding + flip,
label smoothing 0.1, batch 128). Every recipe, the reference too, gets a schedule that spans the budget (see
``budget_minutes`` in :mod:`vitlab.train.config`), so none is cut off halfway down its cosine.

    python benchmarks/cifar10_budget.py --minutes 20                 # reference, cifar10-vit, cifar10-hybrid
    python benchmarks/cifar10_budget.py --minutes 5 --recipes cifar10-hybrid,my_recipe.toml --set optim.lr=3e-3
    python benchmarks/cifar10_budget.py --minutes 20 --recipes cifar10-resnet20,cifar10-resnet20+amp=bf16

A recipe may carry its own overrides after ``+`` (``NAME+KEY=VALUE+KEY=VALUE``), applied after ``--set``'s, so one
run can hold the same recipe twice with one thing changed.

Distillation with the teacher's time counted: ``--teacher SPEC:MINUTES`` trains recipe SPEC for MINUTES first (a
row of its own), and every recipe that says ``distill.teacher=teacher`` learns from it in the rest of the budget
(``--minutes`` less MINUTES; the teacher's forward passes count in the student's steps):

    python benchmarks/cifar10_budget.py --minutes 20 --teacher cifar10-resnet20+amp=bf16:6 \
        --recipes cifar10-deepstem,cifar10-deepstem+distill.teacher=teacher

Data: ``--data DIR`` (``DIR/train/<class>/*.jpg`` and ``DIR/test/<class>/*.jpg``), else ``--zip`` (default: the
shared copy ``../shared/data/cifar10-jpeg.zip`` beside the repository) unpacked once into ``--cache``. The images
are read through the ``folder:`` loader, as a user's own data set would be.

Prints one row per recipe (the precision it ran in, test accuracy, steps, epochs, images/s) and each recipe's
difference from the reference, and appends the rows, with the command, hardware and date, to ``<out>/results.jsonl``.
The precision is what the run's ``amp`` resolved to on this machine (``amp = "auto"``: bf16 only where the hardware
runs it natively; see vitlab.precision), read from the run folder's ``environment.json``, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import torch

import vitlab
from vitlab.data.folder import IMAGE_EXTENSIONS
from vitlab.train.config import ConfigError, TrainConfig, load_config
from vitlab.train.trainer import train

REPO = Path(__file__).resolve().parent.parent
REFERENCE = "cifar10-reference"
TEACHER = "teacher"  # distill.teacher=teacher: the model --teacher trains in this run
DEFAULT_RECIPES = (REFERENCE, "cifar10-vit", "cifar10-hybrid")


def unpack(zip_path: Path, cache: Path) -> Path:
    """Unpack the CIFAR-10 JPEG zip into ``cache`` once (a marker file says the unpacking finished)."""
    done = cache / ".unpacked"
    if not done.is_file():
        if not zip_path.is_file():
            raise SystemExit(f"error: no data: {zip_path} does not exist; pass --data DIR or --zip FILE")
        cache.mkdir(parents=True, exist_ok=True)
        print(f"unpacking {zip_path} into {cache} ...", flush=True)
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(cache)
        done.write_text(str(zip_path))
    roots = [p.parent for p in cache.rglob("train") if p.is_dir() and (p.parent / "test").is_dir()]
    if not roots:
        raise SystemExit(f"error: {cache} has no train/ and test/ folders; delete it and run again")
    return roots[0]


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``NAME+KEY=VALUE+...`` -> (NAME, [KEY=VALUE, ...])."""
    recipe, *own = spec.split("+")
    for o in own:
        if "=" not in o:
            raise SystemExit(f"error: {spec!r}: {o!r} is not KEY=VALUE (write NAME+KEY=VALUE+KEY=VALUE)")
    return recipe, own


def recipe_config(spec: str, overrides: list[str], last: list[str] = ()) -> tuple[str, TrainConfig]:
    """The row name and config of a ``--recipes`` entry (a built-in name or a .toml file, then its own overrides,
    then ``last``: what the run itself decides, as a student's teacher)."""
    recipe, own = split_spec(spec)
    is_file = recipe.endswith(".toml")
    cfg = load_config(None if is_file else recipe, recipe if is_file else None, [*overrides, *own, *last])
    return "+".join([Path(recipe).stem, *own]), cfg


def run_recipe(spec: str, data: Path, n_train: int, minutes: float, out: Path, extra: list[str], device: str,
               last: list[str] = ()) -> dict:
    name, cfg = recipe_config(spec, [f"data.dataset=folder:{data}", f"budget_minutes={minutes}", "epochs=100000",
                                     "eval_every_epochs=100000", "ckpt_every_steps=100000000", f"device={device}",
                                     *extra], last)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    result = train(cfg, run_dir=out / f"{name}-{minutes:g}min-{stamp}", progress=False)
    if result.interrupted:  # stopped by a signal: no row, and no further recipe
        raise SystemExit(f"stopped: {name} was interrupted after {result.step} steps, so it has no row; the rows "
                         f"of the recipes before it are in {out / 'results.jsonl'}")
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [m["img_per_s"] for m in metrics if "img_per_s" in m]
    env = result.run_dir / "environment.json"
    precision = json.loads(env.read_text()).get("precision") if env.is_file() else None
    return {"recipe": name, "precision": precision["dtype"] if precision else "unknown",
            "precision_reason": precision["reason"] if precision else "", "test_acc": result.val_acc,
            "steps": result.step,
            "epochs": result.step * cfg.data.batch_size / n_train, "train_minutes": result.train_seconds / 60,
            "img_per_s": sorted(rates)[len(rates) // 2],  # the trainer logs img/s at least at the last step
            "params": sum(p.numel() for p in vitlab.load(result.run_dir / "model.safetensors").parameters()),
            "run_dir": str(result.run_dir)}


def split_teacher(text: str, minutes: float) -> tuple[str, float]:
    """``--teacher SPEC:MINUTES`` -> (SPEC, MINUTES), which must leave the students some of the budget."""
    spec, _, when = text.rpartition(":")
    try:
        teacher_minutes = float(when)
    except ValueError:
        teacher_minutes = -1.0
    if not spec or not 0 < teacher_minutes < minutes:
        raise SystemExit(f"error: --teacher {text!r}: write SPEC:MINUTES with 0 < MINUTES < --minutes ({minutes:g})")
    return spec, teacher_minutes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, required=True, help="training budget per recipe (minutes)")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                   help="comma-separated built-in recipe names or .toml files, each optionally +KEY=VALUE... "
                        f"(default: {','.join(DEFAULT_RECIPES)})")
    p.add_argument("--data", type=Path, help="an unpacked copy: DIR/train/<class>/, DIR/test/<class>/")
    p.add_argument("--zip", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-jpeg.zip")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vitlab" / "cifar10-jpeg")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "cifar10_budget")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    p.add_argument("--teacher", metavar="SPEC:MINUTES",
                   help="train SPEC for MINUTES first, the teacher of the recipes with distill.teacher=teacher (their "
                        "budget: --minutes less MINUTES)")
    args = p.parse_args(argv)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    teacher = split_teacher(args.teacher, args.minutes) if args.teacher else None
    students = set()
    for spec in ([teacher[0]] if teacher else []) + recipes:  # a bad name, file or key fails now, not after a budget
        try:
            if recipe_config(spec, args.set)[1].distill.teacher == TEACHER:
                students.add(spec)
        except ConfigError as e:
            raise SystemExit(f"error: {spec}: {e}") from None
    if bool(students) != bool(teacher):
        raise SystemExit(f"error: --teacher SPEC:MINUTES trains the teacher of the recipes with "
                         f"distill.teacher={TEACHER}: give both or neither (students: {sorted(students) or 'none'})")
    data = args.data or unpack(args.zip, args.cache)
    n_train = sum(p.suffix.lower() in IMAGE_EXTENSIONS for p in (data / "train").rglob("*"))  # for the epochs
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    when, hw = datetime.now().isoformat(timespec="seconds"), hardware()
    print(f"{command}\n{hw}, torch {torch.__version__}, {when}\n", flush=True)

    rows, teacher_weights = [], None

    def run(recipe: str, minutes: float, last: list[str], **fields) -> dict:
        print(f"--- {fields.get('role', recipe)}: {minutes:g} min ...", flush=True)
        row = run_recipe(recipe, data, n_train, minutes, args.out, args.set, args.device, last)
        row.update(command=command, hardware=hw, date=when, minutes=minutes, overrides=args.set, **fields)
        rows.append(row)
        print(f"    test accuracy {row['test_acc']:.4f} after {row['steps']} steps ({row['epochs']:.1f} epochs, "
              f"{row['img_per_s']:.0f} img/s) in {row['precision']} ({row['precision_reason']})", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    for recipe in recipes:
        if recipe not in students:
            run(recipe, args.minutes, [])
            continue
        spec, teacher_minutes = teacher
        if teacher_weights is None:  # trained once, before its first student
            row = run(spec, teacher_minutes, [], role=f"{TEACHER} {spec}")
            teacher_weights = Path(row["run_dir"]) / "model.safetensors"
        run(recipe, args.minutes - teacher_minutes, [f"distill.teacher={json.dumps(str(teacher_weights))}"],
            teacher=spec, teacher_minutes=teacher_minutes)

    ref = next((r for r in rows if r["recipe"] == REFERENCE), None)
    print(f"\n| recipe | params | budget | precision | steps | epochs | img/s | test acc | vs {REFERENCE} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = f"{100 * (r['test_acc'] - ref['test_acc']):+.2f} pts" if ref else "n/a"
        name, budget = r.get("role", r["recipe"]), f"{r['minutes']:g} min"
        if "teacher_minutes" in r:  # a student: its teacher's minutes, then its own
            budget = f"{r['teacher_minutes']:g} + {r['minutes']:g} min"
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {budget} | {r['precision']} | {r['steps']} | {r['epochs']:.1f} | "
              f"{r['img_per_s']:.0f} | {100 * r['test_acc']:.2f}% | {diff} |")


if __name__ == "__main__":
    main()
