"""ONNX export of a VisionTransformer, checked against eager PyTorch with ONNX Runtime before it is kept.

What gets written: the eval-mode fp32 model as one ONNX graph with input ``pixel_values`` (B, C, H, W) float32,
already preprocessed, and output ``logits`` (B, num_classes) (the pooled features when num_classes=0). With
``dynamic=True`` the batch, H and W axes are dynamic (H and W multiples of P): the 2D resampling of a learned
position table (vitlab.pos_embed, by the config's ``pos_resample``) is inside the graph, as an ONNX Resize (opset
>= 18 for the antialiased one) or, for DINOv2's offset rule, as two interpolation matrices. Without it the
graph takes exactly (batch, C, H, W) at the model's img_size. The model's metadata_props hold the vitlab
version, the config, the preprocessing and the class names as JSON, so the file alone runs it:

    import json, numpy as np, onnxruntime as ort
    sess = ort.InferenceSession("vit.onnx", providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map  # "preprocessing": img_size, mean, std, crop_pct, ...
    pre, names = json.loads(meta["preprocessing"]), json.loads(meta.get("class_names", "null"))
    logits = sess.run(["logits"], {"pixel_values": images.astype(np.float32)})[0]  # images: (B, 3, H, W)

The graph comes from ``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript's ATen-to-ONNX library).
Before the file lands at ``path``, ONNX Runtime (CPU) runs it beside eager PyTorch on the same random images: at
the native size and, when dynamic, at a non-square size whose grid is taller and narrower than the trained one
(so the resampling is checked both enlarging and shrinking). A max |logit difference| above ``atol`` raises
:class:`ExportError` and leaves nothing at ``path``. Needs the extra: ``pip install "vitlab[export]"``.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitlab.config import ViTConfig
from vitlab.errors import CheckpointError, ExportError, NotFoundError, OutputError, UsageError  # noqa: F401
from vitlab.model import VisionTransformer
from vitlab.preprocess import Preprocessing

INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
MIN_OPSET = 18  # ONNX Resize has the `antialias` attribute from opset 18 on; the E_pos resampling needs it
INSTALL_HINT = 'pip install "vitlab[export]"'
EXTERNAL_DATA_BYTES = 1536 * 2**20  # as torch.onnx: weights above 1.5 GiB go to `{name}.data` (protobuf caps at 2 GiB)


@dataclass(frozen=True)
class ParityCheck:
    size: tuple[int, int]  # (H, W) of the random images
    batch: int
    max_abs_diff: float  # max |logits_onnx - logits_eager| over the batch
    top1_agreement: float  # fraction of images whose argmax is the same


@dataclass(frozen=True)
class ExportReport:
    path: Path
    dynamic: bool
    opset: int
    atol: float
    checks: list[ParityCheck]

    def summary(self) -> str:
        axes = "dynamic batch, H and W" if self.dynamic else "static: only this batch and size run"
        mb = sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + ".data")) if p.exists())
        lines = [f"wrote {self.path} ({mb / 2**20:.1f} MB, opset {self.opset}, {axes})"]
        for c in self.checks:
            lines.append(f"  ONNX Runtime vs eager at {c.size[0]}x{c.size[1]}, batch {c.batch}: max |logit diff| "
                         f"{c.max_abs_diff:.1e} (atol {self.atol:g}), top-1 agreement {c.top1_agreement:.0%}")
        return "\n".join(lines)


def _import(*names: str) -> list[Any]:
    import importlib

    try:
        return [importlib.import_module(n) for n in names]
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx, onnxruntime and onnxscript ({e}); install them with: "
                          f"{INSTALL_HINT}") from e


def export_onnx(
    model: VisionTransformer,
    path: str | Path,
    *,
    dynamic: bool = False,
    opset: int | None = None,
    check_sizes: list[tuple[int, int]] | None = None,
    batch: int = 2,
    atol: float = 1e-4,
) -> ExportReport:
    """Export ``model`` to ``path`` (.onnx), check it against eager PyTorch with ONNX Runtime, and keep it only
    if every check is within ``atol``. ``check_sizes`` defaults to the native size, plus a non-square one when
    ``dynamic``; each runs ``batch`` random images. ``opset`` defaults to torch's (at least 18).

    Raises ExportError (the extra is missing, the exporter failed, or a check is off by more than ``atol``),
    FileNotFoundError / PermissionError (the output folder) and ValueError (the arguments). On any failure the
    file at ``path`` is left as it was (absent, or the previous export) and no temporary file remains.
    """
    _, ort, _ = _import("onnx", "onnxruntime", "onnxscript")
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"export_onnx takes a vitlab VisionTransformer, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise UsageError(f"the output must be a .onnx file, got {path.name!r}")
    if opset is not None and opset < MIN_OPSET:
        raise UsageError(f"opset={opset}: the graph needs opset >= {MIN_OPSET} (antialiased Resize); pass "
                         f"{MIN_OPSET} or newer, or leave it unset")
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    cfg = model.config
    sizes = _check_sizes(cfg, dynamic, check_sizes)
    meta = _metadata(model, dynamic)  # checks the class names before minutes of exporting
    fp32_cpu = all(t.device.type == "cpu" and t.dtype == torch.float32
                   for t in itertools.chain(model.parameters(), model.buffers()))
    net = model if fp32_cpu else copy.deepcopy(model).cpu().float()
    was_training = model.training
    tmp_dir = _make_tmp_dir(path)
    try:
        net.eval()
        program = _export(net, cfg, dynamic, opset, batch)
        program.model.metadata_props.update(meta)
        tmp = tmp_dir / path.name
        n_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
        program.save(tmp, external_data=n_bytes > EXTERNAL_DATA_BYTES)  # ViT-H/14 (2.5 GB): weights in tmp.data
        checks = _parity(net, tmp, ort, sizes, batch)
        for c in checks:
            if not c.max_abs_diff <= atol:  # also catches NaN
                raise ExportError(
                    f"ONNX Runtime disagrees with eager PyTorch at {c.size[0]}x{c.size[1]} (batch {c.batch}): max "
                    f"|logit diff| = {c.max_abs_diff:.3g} > atol={atol:g}; nothing was written to {path}. Try "
                    "another opset or onnxruntime version, or report it with the model's config")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        data = tmp.with_name(tmp.name + ".data")
        if data.exists():
            os.replace(data, path.with_name(path.name + ".data"))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        model.train(was_training)
    return ExportReport(path, dynamic, program.model.opset_imports[""], atol, checks)


def _check_sizes(cfg: ViTConfig, dynamic: bool, check_sizes: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
    (H, W), P = cfg.img_size, cfg.patch_size
    if check_sizes is None:  # grid 2 rows taller and 1 column narrower: E_pos enlarged in h, shrunk in w
        check_sizes = [(H, W), (H + 2 * P, max(W - P, P))] if dynamic else [(H, W)]
    sizes = [(int(h), int(w)) for h, w in check_sizes]
    for h, w in sizes:
        if h <= 0 or w <= 0 or h % P or w % P:
            raise UsageError(f"check size {h}x{w} is not a positive multiple of the patch size {P}")
        if not dynamic and (h, w) != (H, W):
            raise UsageError(f"check size {h}x{w}: a static export runs only at the model's {H}x{W}; "
                             "pass dynamic=True (--dynamic) to export and check other sizes")
    return sizes


def _make_tmp_dir(path: Path) -> Path:
    """A private folder beside ``path``: the export is written and checked there, then renamed into place."""
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise NotFoundError(f"output folder {folder} {what}; create it or choose another output path")
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give the output a file name such as {path / 'model.onnx'}")
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir(exist_ok=True)
    except PermissionError as e:
        raise OutputError(f"cannot write to the output folder {folder} ({e.strerror}); choose a writable "
                          "folder for the output") from e
    return tmp


def _export(net: VisionTransformer, cfg: ViTConfig, dynamic: bool, opset: int | None, batch: int):
    from torch.export import Dim

    P = cfg.patch_size
    shapes = None
    example = torch.zeros(2 if dynamic else batch, cfg.in_chans, *cfg.img_size)  # (B, C, H, W); a dynamic B of 1
    if dynamic:  # would be specialised. H = P * grid_h: divisible by P by construction, so no guard on it
        shapes = {"x": {0: Dim("batch"), 2: P * Dim("grid_h"), 3: P * Dim("grid_w")}}
    try:
        with torch.no_grad():
            return torch.onnx.export(net, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                                     input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
    except Exception as e:  # torch.export and the ONNX translation raise many types; name the step that failed
        raise ExportError(f"torch.onnx.export could not export this model ({type(e).__name__}: {e})") from e


def _metadata(model: VisionTransformer, dynamic: bool) -> dict[str, str]:
    """vitlab's checkpoint metadata (format, config, preprocessing, class names), plus the version and the axes."""
    from vitlab import __version__
    from vitlab.checkpoint import model_metadata

    return {**model_metadata(model), "vitlab_version": __version__, "dynamic": json.dumps(dynamic)}


def _parity(net: VisionTransformer, onnx_path: Path, ort, sizes: list[tuple[int, int]], batch: int
            ) -> list[ParityCheck]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors come back as exceptions; keep ORT's own log off the console
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)  # the same images on every run; the global RNG is left alone
    checks = []
    for H, W in sizes:
        x = torch.randn(batch, net.config.in_chans, H, W, generator=gen)  # (B, C, H, W)
        with torch.no_grad():
            ref = net(x)  # (B, num_classes)
        try:
            out = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
        except Exception as e:  # onnxruntime's own exception types
            raise ExportError(f"ONNX Runtime could not run the exported model at {H}x{W} (batch {batch}): {e}. "
                              "If only the export size runs, part of the forward pass was traced for fixed shapes; "
                              "export with dynamic=False or report it with the model's config") from e
        top1 = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
        checks.append(ParityCheck((H, W), batch, (out - ref).abs().max().item(), top1))
    return checks


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """What :func:`export_onnx` stored: ``vitlab_version`` (str), ``config`` (ViTConfig), ``preprocessing``
    (Preprocessing), ``class_names`` (list or None) and ``dynamic`` (bool)."""
    (onnx,) = _import("onnx")
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise CheckpointError(f"{path} is not a readable ONNX file ({e})") from e
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("format") != "vitlab":
        raise CheckpointError(f"{path} has no vitlab metadata: it was not written by vitlab.export.export_onnx")
    return {
        "vitlab_version": meta["vitlab_version"],
        "config": ViTConfig.from_dict(json.loads(meta["config"])),
        "preprocessing": Preprocessing.from_dict(json.loads(meta["preprocessing"])),
        "class_names": json.loads(meta["class_names"]) if "class_names" in meta else None,
        "dynamic": json.loads(meta["dynamic"]),
    }
