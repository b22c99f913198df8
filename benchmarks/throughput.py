r"""Print how fast vitlab runs beside timm and Hugging Face transformers on the same architecture and weights.

A script that prints figures, not a timed test. For each model, mode, batch size, dtype and compile setting it
times every library on the same input, interleaving the runs (A B C A B C ...) after a warm-up, and prints per
library the median time per iteration, its min-max over the rounds, images/s, the ratio to vitlab and the peak
memory (and on a GPU the model FLOPs utilisation, MFU = images/s x FLOPs per image / peak FLOP/s, with
FLOPs per image = 2 x MACs for inference and 6 x MACs for a training step, MACs from ``vitlab.flops``).

Same weights: a random ``transformers.ViTForImageClassification`` (its init + 0.02 N(0, 1) on every tensor, so
the head is not zero) is saved with ``save_pretrained``, read with ``vitlab.load`` and written for timm with
``vitlab.export_timm``: every conversion is vitlab's own, and the logits of the three are compared once.

Modes:
    inference   forward passes under torch.inference_mode
    train       forward + cross-entropy + backward + AdamW step (the same optimizer for every library)
    attention   one layer's attention maps through vitlab's API (only that layer leaves the fused kernel) against
                a plain forward, and the usual workaround (explicit attention everywhere: vitlab with
                set_fused_attn(False), timm with fused_attn=False + forward hooks, HF eager + output_attentions)
    latency     batch-1 latency: vitlab.inference.prepare_for_inference (bf16 weights) against timm eager fp32,
                and its accuracy cost (max |logit diff| and top-1 agreement with vitlab fp32 eager)

The goals, on a quiet 2-core CPU (about 9 minutes in all; on a GPU add --device cuda and raise the batch sizes):
    python benchmarks/throughput.py --models cifar --modes inference,train --batch-sizes 128 \
        --dtypes fp32,bf16 --iters 2 --repeats 5 --json bench.jsonl                    # 1. vitlab >= timm (~1 min)
    python benchmarks/throughput.py --models vit_tiny_patch16_224 --modes inference,train --batch-sizes 32 \
        --dtypes fp32,bf16 --iters 2 --repeats 5 --json bench.jsonl                    # 1. (~2 min)
    python benchmarks/throughput.py --models vit_base_patch16_224 --modes inference,train --batch-sizes 8 \
        --dtypes fp32,bf16 --warmup 1 --iters 1 --repeats 5 --json bench.jsonl         # 1. (~2.5 min)
    python benchmarks/throughput.py --models vit_base_patch16_224 --modes attention --batch-sizes 4 \
        --dtypes fp32 --warmup 1 --iters 2 --repeats 5 --json bench.jsonl              # 2. map <= 1.15 fwd (~1 min)
    python benchmarks/throughput.py --models vit_base_patch16_224 --modes latency --compile off,on \
        --iters 10 --repeats 5 --images 200 --data /tmp/cifarjpg/test --json bench.jsonl  # 3. <= 0.67 timm (~1.5 min)
(/tmp/cifarjpg: unzip /work/shared/data/cifar10-jpeg.zip there; without --data, noise images are used.)
Add --compile off,on for torch.compile (compile time is reported apart and not timed) and --json FILE to
append one JSON line per table row.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vitlab
from vitlab.config import ViTConfig
from vitlab.convert.timm import timm_model_args
from vitlab.data.folder import IMAGE_EXTENSIONS
from vitlab.flops import count_flops
from vitlab.inference import prepare_for_inference
from vitlab.preprocess import Preprocessing, load_image
from vitlab.train.config import load_config

LIBS = ("vitlab", "timm", "hf")
MODES = ("inference", "train", "attention", "latency")
MODEL_SHORTHANDS = {"cifar": "recipe:cifar10-reference"}  # patch 4 at 32 px, class token: timm and HF can match
# Dense peak TFLOP/s from NVIDIA's data sheets: (bf16, tf32, fp32 without tensor cores). First match wins.
PEAK_TFLOPS = {"H100 PCIe": (756.0, 378.0, 51.2), "H100": (989.4, 494.7, 66.9), "H200": (989.4, 494.7, 66.9),
               "A100": (312.0, 156.0, 19.5)}
LOGIT_TOLERANCE = 1e-3  # the three libraries must agree this closely in fp32 (5e-2 with --tf32)
try:
    LIBC = ctypes.CDLL("libc.so.6")  # glibc's malloc_trim, for the CPU peak memory
except OSError:
    LIBC = None


# ----------------------------------------------------------------------------- one set of weights, three libraries

def model_config(name: str) -> ViTConfig:
    """A registered vitlab name or alias, ``recipe:<name>`` (the model of a training recipe), or ``cifar``."""
    name = MODEL_SHORTHANDS.get(name, name)
    if name.startswith("recipe:"):
        model = load_config(name.removeprefix("recipe:")).model
        return vitlab.get_config(model.name, **model.overrides)
    return vitlab.get_config(name)


def hf_config(cfg: ViTConfig) -> transformers.ViTConfig:
    """The transformers config of the same architecture; HF's ViT has no gap pool, registers, LayerScale, ..."""
    unsupported = [what for what, bad in [
        ("pool='gap' or no class token", cfg.pool != "token" or not cfg.class_token),
        ("register tokens", cfg.num_register_tokens), ("qk_norm", cfg.qk_norm),
        ("LayerScale", cfg.layer_scale_init is not None), ("a conv stem", cfg.stem != "patch"),
        ("a non-learned position table", cfg.pos_embed != "learned"), ("pre-logits", cfg.representation_size),
        ("non-square images", cfg.img_size[0] != cfg.img_size[1])] if bad]
    if unsupported:
        raise ValueError(f"transformers' ViT cannot express this model ({', '.join(unsupported)}); choose a plain "
                         "class-token ViT such as vit_base_patch16_224 or 'cifar'")
    return transformers.ViTConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_dim, image_size=cfg.img_size[0], patch_size=cfg.patch_size,
        num_channels=cfg.in_chans, num_labels=cfg.num_classes, qkv_bias=cfg.qkv_bias, layer_norm_eps=cfg.norm_eps,
        hidden_act="gelu" if cfg.mlp_act == "gelu" else "gelu_pytorch_tanh",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build_models(cfg: ViTConfig, tmp: Path, device: torch.device) -> dict[str, torch.nn.Module]:
    """HF (random, moved off its init) -> save_pretrained -> vitlab.load -> vitlab.export_timm -> timm."""
    hf = transformers.ViTForImageClassification(hf_config(cfg))
    hf.set_attn_implementation("sdpa")
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp / "hf")
    ours = vitlab.load(tmp / "hf")
    vitlab.export_timm(ours, tmp / "timm.safetensors")
    peer = TimmViT(**timm_model_args(ours.config))
    peer.load_state_dict(load_file(str(tmp / "timm.safetensors")))
    return {name: m.to(device).eval() for name, m in (("vitlab", ours), ("timm", peer), ("hf", hf))}


def logits(out) -> torch.Tensor:
    return getattr(out, "logits", out)  # transformers returns an output object


@torch.inference_mode()
def logit_differences(models: dict[str, torch.nn.Module], cfg: ViTConfig, device: torch.device) -> dict[str, float]:
    x = torch.randn(2, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(1)).to(device)
    ref = models["vitlab"](x)
    return {lib: (logits(models[lib](x)) - ref).abs().max().item() for lib in ("timm", "hf")}


# ----------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


class PeakMemory:
    """Peak memory of a block above what was in use when it began (weights, optimizer state and the other
    libraries' models excluded). CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak RSS (VmHWM,
    reset through /proc/self/clear_refs, after glibc's malloc_trim; Linux only, else None)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                if LIBC is not None:
                    LIBC.malloc_trim(0)  # hand freed heap pages back, so the RSS at the start is what is in use
                Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
                self.base = _proc_status_kib("VmRSS") * 1024
            except (OSError, StopIteration):
                self.base = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is not None:
            self.peak = _proc_status_kib("VmHWM") * 1024 - self.base


@dataclass
class Row:
    label: str
    batch: int
    step: Callable[[], object] | None = None  # one iteration
    times: list[float] = field(default_factory=list)  # seconds per iteration, one per timed round
    peak_bytes: int | None = None
    first_call_s: float = 0.0  # the warm-up's first call: includes torch.compile's compilation
    compiled: bool = False
    flops_per_image: float | None = None  # for MFU

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def time_interleaved(rows: list[Row], device: torch.device, args: argparse.Namespace) -> list[Row]:
    """Warm every row's step up, then ``args.repeats`` rounds of A B C ..., each timing ``args.iters`` iterations."""
    for row in rows:
        t0 = time.perf_counter()
        row.step()
        sync(device)
        row.first_call_s = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            row.step()
    sync(device)
    for _ in range(args.repeats):
        for row in rows:
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    row.step()
                sync(device)
                row.times.append((time.perf_counter() - t0) / args.iters)
            if mem.peak is not None:
                row.peak_bytes = max(row.peak_bytes or 0, mem.peak)
    return rows


# ----------------------------------------------------------------------------- what is timed

@dataclass(frozen=True)
class Case:
    mode: str
    batch: int
    dtype: str
    compile: bool


def autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def inference_step(model: torch.nn.Module, x: torch.Tensor, case: Case, device: torch.device) -> Callable:
    model = torch.compile(model) if case.compile else model

    def step():
        with torch.inference_mode(), autocast(device, case.dtype):
            return model(x)
    return step


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, case: Case, device: torch.device) -> Callable:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    compiled = torch.compile(model) if case.compile else model

    def step():
        with autocast(device, case.dtype):
            loss = F.cross_entropy(logits(compiled(x)).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def images_like(cfg: ViTConfig, batch: int, device: torch.device) -> torch.Tensor:
    return torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(0)).to(device)


def bench_throughput(models, cfg: ViTConfig, case: Case, args, device) -> tuple[list[Row], list[str]]:
    x = images_like(cfg, case.batch, device)
    y = torch.randint(0, cfg.num_classes, (case.batch,), generator=torch.Generator().manual_seed(2)).to(device)
    flops = count_flops(cfg) * (3 if case.mode == "train" else 1)  # count_flops: 2 x MACs of one forward
    rows = []
    for lib in args.libs:
        if case.mode == "train":  # a copy: the shared models keep their weights for the other modes
            step = train_step(copy.deepcopy(models[lib]).train(), x, y, case, device)
        else:
            step = inference_step(models[lib], x, case, device)
        label = "hf (sdpa)" if lib == "hf" else lib
        rows.append(Row(label, case.batch, step, compiled=case.compile, flops_per_image=flops))
    return time_interleaved(rows, device, args), []


def bench_attention(models, cfg: ViTConfig, case: Case, args, device) -> tuple[list[Row], list[str]]:
    """One layer's maps through vitlab's API, a plain fused forward, and explicit attention everywhere."""
    x, layer = images_like(cfg, case.batch, device), args.attn_layer % cfg.depth
    ours = models["vitlab"]
    everywhere = copy.deepcopy(ours)
    everywhere.set_fused_attn(False)

    def ours_maps(model, layers):
        out = model.forward_intermediates(x, layers=layers, return_attention=True)
        return model.forward_head(out.features), out.attention

    calls = {"vitlab forward (fused)": lambda: ours(x),
             f"vitlab attention map, layer {layer}": lambda: ours_maps(ours, [layer]),
             "vitlab set_fused_attn(False), all maps": lambda: ours_maps(everywhere, None)}
    if "timm" in args.libs:
        peer, maps = copy.deepcopy(models["timm"]), []
        for blk in peer.blocks:
            blk.attn.fused_attn = False
            blk.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(o))
        calls["timm forward (fused)"] = lambda: models["timm"](x)
        calls["timm fused_attn=False + hooks, all maps"] = lambda: (peer(x), maps.copy(), maps.clear())
    if "hf" in args.libs:
        eager = copy.deepcopy(models["hf"])
        eager.set_attn_implementation("eager")
        calls["hf forward (sdpa)"] = lambda: models["hf"](x)
        calls["hf eager, output_attentions=True"] = lambda: eager(x, output_attentions=True).attentions

    def in_mode(call):
        def step():
            with torch.inference_mode(), autocast(device, case.dtype):
                return call()
        return step

    rows = time_interleaved([Row(label, case.batch, in_mode(c)) for label, c in calls.items()], device, args)
    base, one, every = rows[0].median, rows[1].median, rows[2].median
    return rows, [f"attention map (layer {layer}) / forward = {one / base:.2f} (goal <= 1.15); workaround "
                  f"(explicit attention everywhere) / forward = {every / base:.2f}",
                  "attention mode runs eager (no torch.compile)" if True in args.compile else ""]


def bench_latency(models, cfg: ViTConfig, case: Case, args, device) -> tuple[list[Row], list[str]]:
    """Batch 1: timm eager fp32 (the reference), vitlab eager fp32, and vitlab's fast inference path."""
    x, fp32 = images_like(cfg, 1, device), Case("inference", 1, "fp32", False)
    steps = {"timm eager fp32": inference_step(models["timm"], x, fp32, device),
             "vitlab eager fp32": inference_step(models["vitlab"], x, fp32, device)}
    if "hf" in args.libs:
        steps["hf (sdpa) eager fp32"] = inference_step(models["hf"], x, fp32, device)
    notes, fast = [], {}
    eager = prepare_for_inference(models["vitlab"], dtype="bfloat16")  # one bf16 copy for every row and the cost
    for compiled in args.compile:
        label = "vitlab prepare_for_inference(bf16)" + (" + compile" if compiled else "")
        fast[label] = torch.compile(eager) if compiled else eager  # what prepare_for_inference(compile=True) does
        steps[label] = inference_step(fast[label], x, fp32, device)
    rows = [Row(label, 1, step, compiled="compile" in label) for label, step in steps.items()]
    rows = time_interleaved(rows, device, args)
    best = min((r for r in rows if r.label in fast), key=lambda r: r.median)
    notes.append(f"{best.label} / timm eager fp32 = {best.median / rows[0].median:.2f} (goal <= 0.67)")
    images, source = eval_images(cfg, args.images, args.data)
    cost = accuracy_cost(models["vitlab"], eager, images, device)
    notes.append(f"accuracy cost of prepare_for_inference(bf16) on {cost['images']} {source}: max |logit diff| vs "
                 f"vitlab fp32 eager {cost['max_abs_diff']:.2e} (fp32 logits: std {cost['logit_std']:.2f}), top-1 "
                 f"agreement {cost['top1_agree']}/{cost['images']}; fp32 top-1 spans {cost['distinct_top1']} "
                 f"classes, median top1-top2 margin {cost['median_margin']:.3f}")
    notes.append("weights are random (transformers' init + 0.02 N(0, 1) on every tensor, head included): the "
                 "agreement measures bf16 rounding on near-random logits, not ImageNet accuracy")
    return rows, notes


def eval_images(cfg: ViTConfig, n: int, data: str | None) -> tuple[torch.Tensor, str]:
    """``n`` images from an image folder (evenly spread over its sorted files, resized to the model's size), or
    multi-scale noise (amplitudes 1, 1/2, 1/4, 1/8 from coarse to fine, roughly natural images' 1/f falloff)."""
    size = cfg.img_size
    if data:
        files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"--data {data}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
        transform = Preprocessing.default_for(cfg).replace(crop_pct=1.0).transform()
        picks = [files[i * len(files) // n] for i in range(min(n, len(files)))]
        return torch.stack([transform(load_image(p)) for p in picks]), f"images from {data}"
    g = torch.Generator().manual_seed(0)
    x = sum(amp * F.interpolate(torch.randn(n, cfg.in_chans, k, k, generator=g), size=size, mode="bicubic")
            for amp, k in ((1.0, 4), (0.5, 16), (0.25, 64), (0.125, size[0])))
    return x / x.std(dim=(1, 2, 3), keepdim=True), "multi-scale noise images (seed 0)"


@torch.inference_mode()
def accuracy_cost(reference, fast, images: torch.Tensor, device: torch.device, chunk: int = 16) -> dict:
    ref = torch.cat([reference(c.to(device)).float().cpu() for c in images.split(chunk)])
    out = torch.cat([fast(c.to(device)).float().cpu() for c in images.split(chunk)])
    top2 = ref.topk(2, dim=1).values
    return dict(images=len(images), max_abs_diff=(out - ref).abs().max().item(), logit_std=ref.std().item(),
                top1_agree=int((out.argmax(1) == ref.argmax(1)).sum()), distinct_top1=ref.argmax(1).unique().numel(),
                median_margin=(top2[:, 0] - top2[:, 1]).median().item())


BENCHES = {"inference": bench_throughput, "train": bench_throughput, "attention": bench_attention,
           "latency": bench_latency}


def cases(mode: str, args: argparse.Namespace) -> list[Case]:
    if mode == "latency":  # batch 1; fp32 rows and the bf16 fast path; --compile applies to the fast path
        return [Case(mode, 1, "fp32", False)]
    compiles = [False] if mode == "attention" else args.compile
    return [Case(mode, b, d, c) for b in args.batch_sizes for d in args.dtypes for c in compiles]


# ----------------------------------------------------------------------------- report

def peak_tflops(device: torch.device, dtype: str, override: float | None) -> float | None:
    if override or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    precision = 0 if dtype == "bf16" else 1 if torch.backends.cuda.matmul.allow_tf32 else 2
    return next((peaks[precision] for key, peaks in PEAK_TFLOPS.items() if key in name), None)


def git_revision() -> str:
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=Path(__file__).parent, capture_output=True, text=True).stdout.strip()
    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + (" with uncommitted changes" if git("status", "--porcelain") else "")


def header(device: torch.device) -> list[str]:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    return [f"command: python {shlex.join(sys.argv)}",
            f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
            f"ISA {torch.backends.cpu.get_cpu_capability()}; GPU: {gpu}",
            f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}, "
            f"vitlab {vitlab.__version__} (git {git_revision()})"]


def mfu(row: Row, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: images/s x FLOPs per image / peak FLOP/s."""
    if not (peak_tflops and row.flops_per_image):
        return None
    return row.batch / row.median * row.flops_per_image / (peak_tflops * 1e12)


def table(rows: list[Row], ratio_header: str, device: torch.device, peak: float | None) -> list[str]:
    """One markdown table; ratio = this row's median time / the first row's (for throughput modes that is
    vitlab's images/s over this library's)."""
    mem = "peak mem MiB (alloc)" if device.type == "cuda" else "peak RSS MiB"
    cols = ["library", "median ms/iter", "min-max ms", "img/s", ratio_header, mem] + (["MFU"] if peak else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.label, f"{r.median * 1e3:.1f}", f"{min(r.times) * 1e3:.1f}-{max(r.times) * 1e3:.1f}",
                 f"{r.batch / r.median:.1f}", f"{r.median / rows[0].median:.2f}",
                 "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.0f}"]
        if peak:
            cells.append(f"{mfu(r, peak):.1%}" if r.flops_per_image else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


RATIO_HEADERS = {"inference": "vitlab/this img/s", "train": "vitlab/this img/s", "attention": "time / vitlab fwd",
                 "latency": "time / timm fp32"}


def report(model: str, case: Case, rows: list[Row], notes: list[str], args, device) -> None:
    peak = peak_tflops(device, case.dtype, args.peak_tflops) if case.mode in ("inference", "train") else None
    setting = "fp32, bf16 fast path" if case.mode == "latency" else \
        f"{case.dtype} | compile {'on' if case.compile else 'off'}"
    title = f"{model} | {case.mode} | batch {case.batch} | {setting}"
    compiled = [f"{r.label} {r.first_call_s:.1f} s" for r in rows if r.compiled]
    if compiled:
        notes = [*notes, "first call incl. torch.compile (not timed): " + ", ".join(compiled)]
    print(f"\n### {title}\n", *table(rows, RATIO_HEADERS[case.mode], device, peak), sep="\n")
    for note in filter(None, notes):
        print(f"- {note}")
    if args.json:
        write_json(args.json, model, case, rows, notes, device, peak)


def write_json(path: str, model: str, case: Case, rows: list[Row], notes: list[str], device, peak) -> None:
    """Append one JSON line per row (times in ms, one per timed round; ratio = median time / first row's)."""
    date = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"
    with open(path, "a") as f:
        for r in rows:
            row = dict(model=model, **asdict(case), device=str(device), label=r.label, median_ms=r.median * 1e3,
                       times_ms=[t * 1e3 for t in r.times], img_s=r.batch / r.median, ratio=r.median / rows[0].median,
                       ratio_to=rows[0].label, peak_bytes=r.peak_bytes, mfu=mfu(r, peak),
                       first_call_s=r.first_call_s, notes=notes, date=date)
            f.write(json.dumps(row) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def listed(kind, choices=None):
        def parse(text):
            items = [kind(t) for t in text.split(",") if t]
            bad = [i for i in items if choices and i not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"{bad} not in {', '.join(map(str, choices))}")
            return items
        return parse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=listed(str), default=["cifar", "vit_tiny_patch16_224", "vit_base_patch16_224"],
                   help="registered names or aliases, recipe:<name>, or 'cifar' (recipe cifar10-reference's model)")
    p.add_argument("--modes", type=listed(str, MODES), default=["inference", "train"])
    p.add_argument("--batch-sizes", type=listed(int), default=[32])
    p.add_argument("--dtypes", type=listed(str, ("fp32", "bf16")), default=["fp32", "bf16"])
    p.add_argument("--compile", type=listed(str, ("off", "on")), default=["off"])
    p.add_argument("--libs", type=listed(str, LIBS), default=list(LIBS),
                   help="vitlab is always timed, and timm in latency mode")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per library (>= 1)")
    p.add_argument("--iters", type=int, default=5, help="iterations per timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per library, interleaved")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--attn-layer", type=int, default=-1, help="attention mode: the layer whose maps are asked for")
    p.add_argument("--images", type=int, default=100, help="latency mode: images for the accuracy cost")
    p.add_argument("--data", help="latency mode: an image folder (searched recursively) instead of noise images")
    p.add_argument("--peak-tflops", type=float, help="GPU peak TFLOP/s for MFU (default: by GPU name and dtype)")
    p.add_argument("--tf32", action="store_true", help="CUDA fp32: allow TF32 matrix multiplies")
    p.add_argument("--json", help="append one JSON line per table row to this file")
    args = p.parse_args(argv)
    args.libs = ["vitlab"] + [lib for lib in args.libs if lib != "vitlab"]
    args.compile = [c == "on" for c in args.compile]
    if min(args.warmup, args.iters, args.repeats, args.images) < 1:
        p.error("--warmup, --iters, --repeats and --images must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (is this a CPU build of torch?)")
    return args


def main(argv: list[str] | None = None) -> int:
    start, args = time.perf_counter(), parse_args(argv)
    device = torch.device(args.device)
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    print(*header(device), sep="\n")
    print("peak memory: above what was in use before each timed round (weights, optimizer state and the other "
          "libraries' models excluded); " + ("CUDA max_memory_allocated" if device.type == "cuda" else
                                             "CPU: the process's peak RSS (after malloc_trim), not allocator stats"))
    tolerance = 5e-2 if args.tf32 else LOGIT_TOLERANCE
    for name in args.models:
        cfg = model_config(name)
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            models = build_models(cfg, Path(tmp), device)
        diffs = logit_differences(models, cfg, device)
        print(f"\n## {name}: D={cfg.embed_dim}, depth {cfg.depth}, {cfg.num_heads} heads, MLP {cfg.mlp_dim}, patch "
              f"{cfg.patch_size}, {cfg.img_size[0]} px, {cfg.num_classes} classes; {count_flops(cfg) / 2e9:.2f} GMACs"
              f"/image. Same weights (HF -> vitlab.load -> vitlab.export_timm), fp32 max |logit diff| vs vitlab: "
              + ", ".join(f"{lib} {d:.1e}" for lib, d in diffs.items()))
        if max(diffs.values()) > tolerance:
            raise RuntimeError(f"{name}: the libraries disagree by more than {tolerance} ({diffs}); not timing")
        for mode in args.modes:
            for case in cases(mode, args):
                if True in args.compile:
                    torch._dynamo.reset()  # fresh compile caches: no recompile limit carried over from other cases
                rows, notes = BENCHES[mode](models, cfg, case, args, device)
                report(name, case, rows, notes, args, device)
    print(f"\nwall time of the whole run: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
