"""What the explorer shows, computed with the library's own analysis functions.

:class:`Explorer` holds one model, the images it can show (a folder, the built-in ``shapes`` samples, uploads)
and a small cache of each image's forward pass: its logits and every block's attention probabilities
(``forward_intermediates(return_attention=True)``), from which the raw maps, rollouts, hover rows and attention
distances are read without running the model again. Gradient rollout and deletion/insertion need the model and
run it (:func:`~vitlab.analysis.attention.attention_maps`, :func:`~vitlab.analysis.faithfulness.faithfulness`).

Everything returned is a JSON-ready dict; arrays travel as base64 of uint8, each map (and each hover row)
rescaled to 0..255 between its own minimum and maximum, as :func:`~vitlab.analysis.attention.upsample_map`
does for the figures. The page (``static/``) and the exported page read the same dicts.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vitlab.analysis.attention import (
    HEAD_FUSIONS,
    POOL_METHOD,
    attention_maps,
    fuse_heads,
    head_query,
    layer_map,
    methods_for,
    over_patches,
    patch_rows,
    pool_map,
    rollout_map,
)
from vitlab.analysis.faithfulness import faithfulness
from vitlab.analysis.figure7 import (
    mean_attention_distance,
    model_position_similarity,
    patch_embedding_components,
    position_similarity,
    uniform_attention_distance,
)
from vitlab.data.folder import IMAGE_EXTENSIONS
from vitlab.errors import ExploreError, ImageTooLarge, NotFoundError, UndecodableImage  # noqa: F401
from vitlab.inference import class_names_for
from vitlab.model import VisionTransformer
from vitlab.pos_embed import resample_pos_embed, sincos_2d
from vitlab.preprocess import Preprocessing, decode_image

TOP_K = 5
MAX_FOLDER_IMAGES = 1000  # files listed from --images (sorted; the rest are left out, with a note)
MAX_UPLOADS = 64  # uploads kept; the oldest go first
MAX_UPLOAD_PIXELS = 50_000_000  # an upload's header may claim no more (PIL's own bomb limit is 89 M, errors at 179 M)
ROWS_INLINE_BYTES = 4 << 20  # a block's hover rows (variants x h*w x h*w bytes) up to this go to the page at once;
# larger (DINOv2 at 518 px: 9 x 1369^2 = 17 MB) are fetched one row at a time under the pointer
CACHE_BYTES = 2 << 30  # the attention of the images analysed last, kept for rollouts and hover rows
NUM_FILTERS = 28  # patch-embedding components shown (the paper's Figure 7, left)
FAITHFULNESS_STEPS = 16


def b64(array: np.ndarray | torch.Tensor) -> str:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Rescale every row (last dim) to 0..255 between its own minimum and maximum, as uint8."""
    x = x.detach().float()
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)


def png_data_url(image: np.ndarray) -> str:
    """uint8 (H, W, 3) -> a data: URL of its PNG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def shown_name(path: str | Path) -> str:
    """A file name as the page shows it: bytes that are not UTF-8 (a Linux name may hold any) as U+FFFD, so that
    every name travels as JSON."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _decode(data: bytes, name: str) -> Image.Image:
    """Decode an image the page asked for (an upload, a file of --images) as upright RGB, or an ExploreError (415)
    that names it as the page's user knows it (``name``: the upload's file name, the path under --images) and says
    why in words, never the server's paths or PIL's name for an in-memory file."""
    try:
        return decode_image(data, name)
    except ImageTooLarge as e:  # its own words: the size it claims, and what to do if it is genuine
        raise ExploreError(str(e), 415) from e
    except UndecodableImage as e:
        if isinstance(e.__cause__, UnidentifiedImageError):
            reason = "its bytes are not in any image format PIL reads"
        else:
            reason = re.sub(r"<_io\.\w+[^>]*>|\bthe data\b", "it", e.reason)
        raise ExploreError(f"{name} is not an image that can be decoded ({reason}); pass a JPEG, PNG, WebP, BMP or "
                           "other PIL-readable file", 415) from e


@dataclass
class Source:
    """An image the explorer can show: ``path`` (a file under --images) or ``image`` (a sample, an upload)."""

    id: str
    name: str
    kind: str  # "file" | "shapes" | "upload"
    path: Path | None = None
    image: Image.Image | None = None


@dataclass
class MapParams:
    """One saliency map of the page, normalised so that equal maps have equal :meth:`key` (the cache key, and the
    key of the exported page's table; the page's JavaScript builds the same string)."""

    method: str = "raw"
    block: int = -1
    head: str = "mean"  # a fusion (mean, max, min) or a head index as text
    first: int = 0
    discard: float = 0.0
    target: int = -1  # grad-rollout's class; -1: the predicted one

    def key(self) -> str:
        return f"{self.method}|{self.block}|{self.head}|{self.first}|{self.discard:g}|{self.target}"


@dataclass
class _Entry:
    """One image's forward pass."""

    x: torch.Tensor  # (1, C, H, W) normalised
    logits: torch.Tensor  # (1, K)
    attention: list[torch.Tensor] = field(default_factory=list)  # per block (1, Nh, N, N)
    pool_attention: torch.Tensor | None = None  # (1, Nh, h*w)
    query: torch.Tensor | None = None  # (1, N) how the head reads the tokens
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # MapParams.key() -> (h*w,) float
    nbytes: int = 0


class Explorer:
    """One model and its images, behind a lock: requests from several threads run one at a time."""

    def __init__(self, model: torch.nn.Module, name: str = "model", images_dir: str | Path | None = None,
                 shapes_samples: int = 6, device: torch.device | str = "cpu", cache_bytes: int = CACHE_BYTES):
        self.model = model.eval().to(device)
        self.name, self.device, self.cache_bytes = name, torch.device(device), cache_bytes
        self.is_vit = isinstance(model, VisionTransformer)
        cfg = model.config
        self.preprocessing = model.preprocessing or Preprocessing.default_for(cfg)
        self.transform = self.preprocessing.transform()
        # the patch grid of the input the page shows: the preprocessing's size, which may differ from the size the
        # position table was trained at (DINOv2: a 518-px table, 224-px inputs)
        self.grid = tuple(s // getattr(cfg, "patch_size", 1) for s in self.preprocessing.img_size)
        self.class_names = class_names_for(model) if cfg.num_classes else []
        self.sources: dict[str, Source] = {}
        self.root: Path | None = None  # --images, resolved
        self.note = ""
        self._uploads = 0
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._model_info: dict[str, Any] | None = None
        if images_dir is not None:
            self._add_folder(Path(images_dir))
        self._add_shapes(shapes_samples)

    # ------------------------------------------------------------------------------------------------ images

    def _add_folder(self, root: Path) -> None:
        if not root.is_dir():
            raise NotFoundError(f"--images {root}: not a folder")
        self.root = root.resolve()
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        if len(files) > MAX_FOLDER_IMAGES:
            self.note = f"{root} holds {len(files)} images; the first {MAX_FOLDER_IMAGES} are listed"
        for i, p in enumerate(files[:MAX_FOLDER_IMAGES]):
            self.sources[f"f{i}"] = Source(f"f{i}", shown_name(p.relative_to(self.root)), "file", path=p)

    def _add_shapes(self, n: int) -> None:
        from vitlab.data.shapes import make_shapes

        if n <= 0:
            return
        data = make_shapes("test", size=n, img_size=max(64, max(self.preprocessing.img_size)))
        for i in range(n):
            image = Image.fromarray(data.images[i].permute(1, 2, 0).numpy())
            name = f"shapes {i}: {data.class_names[int(data.labels[i])]}"
            self.sources[f"s{i}"] = Source(f"s{i}", name, "shapes", image=image)

    def add_image(self, image: Image.Image, name: str, kind: str = "upload") -> Source:
        """Register an image (an upload, or a file of an exported page); keeps the last MAX_UPLOADS uploads."""
        with self._lock:
            self._uploads += 1
            source = Source(f"u{self._uploads}", name, kind, image=image)
            self.sources[source.id] = source
            uploads = [k for k, s in self.sources.items() if s.kind == "upload"]
            for old in uploads[:-MAX_UPLOADS]:
                del self.sources[old]
                self._cache.pop(old, None)
            return source

    def upload(self, data: bytes, name: str) -> Source:
        """Decode uploaded bytes (any PIL-readable image of at most MAX_UPLOAD_PIXELS; a non-image, a decompression
        bomb or a larger image is an ExploreError with status 415 or 413) and register them."""
        name = name or f"upload {self._uploads + 1}"
        try:
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                width, height = probe.size
        except Exception:  # noqa: BLE001 - decode_image below names what is wrong
            pass
        else:
            if width * height > MAX_UPLOAD_PIXELS:
                raise ExploreError(f"{name} is {width} x {height} = {width * height / 1e6:.0f} megapixels; the "
                                   f"explorer takes images of up to {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels: send a "
                                   "smaller one", 413)
        return self.add_image(_decode(data, name), name)

    def image_list(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"id": s.id, "name": s.name, "kind": s.kind} for s in self.sources.values()]

    def _source(self, image_id: str) -> Source:
        source = self.sources.get(image_id)
        if source is None:
            raise ExploreError(f"no image {image_id!r}: pick one of the listed images or upload one", 404)
        return source

    def _pil(self, source: Source) -> Image.Image:
        if source.image is not None:
            return source.image
        path = source.path.resolve()
        if not path.is_relative_to(self.root):  # a link that leads out of --images
            raise ExploreError(f"{source.name} lies outside the images folder", 404)
        try:
            data = path.read_bytes()  # decoded from memory: no message can name the server's own path
        except FileNotFoundError as e:
            raise ExploreError(f"{source.name} is no longer in the images folder", 404) from e
        except OSError as e:
            raise ExploreError(f"{source.name} cannot be read ({e.strerror or type(e).__name__})", 403) from e
        return _decode(data, source.name)

    # ------------------------------------------------------------------------------------------ forward pass

    def _entry(self, image_id: str) -> _Entry:
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
            x = self.transform(self._pil(self._source(image_id))).unsqueeze(0).to(self.device)  # (1, C, H, W)
            with torch.no_grad():
                if self.is_vit:
                    out = self.model.forward_intermediates(x, layers=None, return_attention=True)
                    entry = _Entry(x, self.model.forward_head(out.features).float(),
                                   [out.attention[i].float() for i in sorted(out.attention)],
                                   out.pool_attention, head_query(self.model, out))
                else:
                    entry = _Entry(x, self.model(x).float())
            entry.nbytes = sum(a.numel() * a.element_size() for a in entry.attention)
            self._cache[image_id] = entry
            while len(self._cache) > 1 and sum(e.nbytes for e in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
            return entry

    # -------------------------------------------------------------------------------------------- the model

    def variants(self) -> list[str]:
        """The head choices of the page: every head by index, then the fusions."""
        return [str(i) for i in range(self.model.config.num_heads)] + list(HEAD_FUSIONS) if self.is_vit else []

    def model_info(self) -> dict[str, Any]:
        """What does not depend on the image: the model's shape, its methods, Figure 7's left and centre panels."""
        with self._lock:
            if self._model_info is None:
                self._model_info = self._describe_model()
            return self._model_info

    def _describe_model(self) -> dict[str, Any]:
        cfg = self.model.config
        info: dict[str, Any] = {
            "name": self.name, "kind": type(self.model).__name__, "attention": self.is_vit,
            "img_size": list(self.preprocessing.img_size), "num_classes": cfg.num_classes,
            "top_k": min(TOP_K, cfg.num_classes), "note": self.note,
        }
        if not self.is_vit:
            info["reason"] = (f"{type(self.model).__name__} is a convolutional network: it has no attention, so the "
                              "attention, rollout, hover and Figure 7 panels are off")
            return info
        grid = self.grid
        info.update(patch_size=cfg.patch_size, grid=list(grid), depth=cfg.depth, heads=cfg.num_heads,
                    num_prefix=cfg.num_prefix_tokens, registers=cfg.num_register_tokens, pool=cfg.pool,
                    methods=[m for m in methods_for(self.model) if m != "grad-rollout" or cfg.num_classes],
                    variants=self.variants(), fusions=list(HEAD_FUSIONS), rows_inline=self._rows_inline(),
                    uniform_distance=uniform_attention_distance(grid, cfg.patch_size))
        info["position"] = self._position_similarity(grid)
        info["filters"] = self._filters()
        return info

    def _position_similarity(self, grid: tuple[int, int]) -> dict[str, Any]:
        cfg = self.model.config
        if cfg.pos_embed == "learned" and grid == cfg.grid_size:
            sim, what = model_position_similarity(self.model), "the learned position embeddings"
        elif cfg.pos_embed == "learned":  # the table as the forward pass resamples it for this input
            table = resample_pos_embed(self.model.pos_embed.detach(), grid, cfg.grid_size, cfg.num_pos_prefix,
                                       cfg.pos_resample)
            sim = position_similarity(table, grid, cfg.num_pos_prefix)
            what = (f"the learned position embeddings, resampled from {cfg.grid_size[0]}x{cfg.grid_size[1]} as the "
                    "model does for this input")
        elif cfg.pos_embed.startswith("sincos2d"):
            table = sincos_2d(grid, cfg.embed_dim, mae=cfg.pos_embed == "sincos2d_mae")
            sim, what = position_similarity(table, grid, 0), "the fixed 2D sin-cos table"
        elif cfg.rope != "none":
            return {"reason": f"the model's positions are rotations of its queries and keys (rope={cfg.rope!r}), "
                              "not a table: no position similarity to show"}
        else:
            return {"reason": f"the model has no position embedding (pos_embed={cfg.pos_embed!r})"}
        n = grid[0] * grid[1]
        sim = sim.reshape(n, n)
        return {"data": b64(((sim.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)), "of": what}

    def _filters(self) -> dict[str, Any]:
        try:
            comps, variance = patch_embedding_components(self.model, NUM_FILTERS)
        except ValueError as e:
            return {"reason": str(e)}
        k, c, p, _ = comps.shape
        comps = comps / comps.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)  # each in [-1, 1]
        rgb = comps if c == 3 else comps[:, :1].expand(k, 3, p, p)
        image = ((rgb + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)  # (k, P, P, 3)
        return {"count": k, "size": p, "data": b64(image), "variance": [round(v, 5) for v in variance.tolist()]}

    def _rows_inline(self) -> bool:
        n = self.grid[0] * self.grid[1]
        return len(self.variants()) * n * n <= ROWS_INLINE_BYTES

    # -------------------------------------------------------------------------------------------- an image

    def analyze(self, image_id: str) -> dict[str, Any]:
        """A new image: the input as the model sees it, the top-k, every block's raw map for every head choice,
        the attention pool's map, and the mean attention distance of every head."""
        with self._lock:
            source = self._source(image_id)
            entry = self._entry(image_id)
            pre = self.preprocessing
            shown = (pre.denormalize(entry.x[0]).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            if shown.shape[-1] == 1:
                shown = shown.repeat(3, axis=-1)
            out: dict[str, Any] = {"id": image_id, "name": source.name, "image": png_data_url(shown),
                                   "size": list(entry.x.shape[-2:]), "top": self._top(entry)}
            if not self.is_vit:
                return out
            cfg = self.model.config
            n_prefix = cfg.num_prefix_tokens
            raw = torch.stack([torch.cat([layer_map(a, n_prefix, entry.query, self._head(v))
                                          for v in self.variants()]) for a in entry.attention])  # (L, V, h*w)
            out["raw"] = b64(to_uint8(raw))
            if entry.pool_attention is not None:
                out["pool"] = b64(to_uint8(torch.cat([pool_map(entry.pool_attention, self._head(v))
                                                       for v in self.variants()])))  # (V, h*w)
            out["distances"] = [[round(v, 3) for v in mean_attention_distance(a, self.grid, cfg.patch_size,
                                                                               n_prefix).tolist()]
                                for a in entry.attention]
            return out

    def _topk(self, entry: _Entry) -> torch.return_types.topk:
        return entry.logits.softmax(dim=-1)[0].topk(min(TOP_K, len(self.class_names)))

    def _predicted(self, entry: _Entry) -> int:
        """The first of the top-k the page lists (argmax may break a tie differently)."""
        return int(self._topk(entry).indices[0]) if self.class_names else 0

    def _top(self, entry: _Entry) -> list[dict[str, Any]]:
        if not self.class_names:
            return []
        top = self._topk(entry)
        return [{"index": i, "name": self.class_names[i], "prob": round(p, 5)}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def _head(self, head: str) -> str | int:
        if head in HEAD_FUSIONS:
            return head
        if head.isdigit() and int(head) < self.model.config.num_heads:
            return int(head)
        raise ExploreError(f"head={head!r}: expected 0..{self.model.config.num_heads - 1} or one of "
                           f"{', '.join(HEAD_FUSIONS)}")

    def _block(self, block: int) -> int:
        depth = self.model.config.depth
        if not -depth <= block < depth:
            raise ExploreError(f"block={block} is out of range for {depth} blocks (0..{depth - 1})")
        return block % depth

    def _require_attention(self) -> None:
        if not self.is_vit:
            raise ExploreError(self.model_info()["reason"])

    def rows(self, image_id: str, block: int) -> dict[str, Any]:
        """Every patch's attention row in ``block`` for every head choice: (V, h*w, h*w) uint8, per row 0..255."""
        self._require_attention()
        if not self._rows_inline():
            raise ExploreError("this model's hover rows are too large to send at once; ask for one row "
                               "(/row?block=&head=&patch=)", 413)
        with self._lock:
            block = self._block(block)
            a = self._entry(image_id).attention[block]
            n_prefix = self.model.config.num_prefix_tokens
            fused = torch.stack([fuse_heads(a, f) for f in HEAD_FUSIONS], dim=1)  # (1, 3, N, N)
            rows = patch_rows(torch.cat([a, fused], dim=1), n_prefix)[0]  # (V, h*w, h*w)
            return {"block": block, "data": b64(to_uint8(rows))}

    def row(self, image_id: str, block: int, head: str, patch: int) -> dict[str, Any]:
        """One patch's attention row in ``block`` for one head choice: (h*w,) uint8, 0..255."""
        self._require_attention()
        with self._lock:
            block, h = self._block(block), self._head(head)
            n_prefix = self.model.config.num_prefix_tokens
            a = self._entry(image_id).attention[block]
            n = a.shape[-1] - n_prefix
            if not 0 <= patch < n:
                raise ExploreError(f"patch={patch} is out of range: the grid has {n} patches (0..{n - 1})")
            q = a[:, :, n_prefix + patch]  # (1, Nh, N): that patch's query only
            q = q[:, h] if isinstance(h, int) else fuse_heads(q[:, :, None], h)[:, 0]  # (1, N)
            return {"block": block, "head": head, "patch": patch, "data": b64(to_uint8(over_patches(q, n_prefix)[0]))}

    def saliency(self, image_id: str, params: MapParams) -> tuple[torch.Tensor, int]:
        """The map ``params`` describes, (h*w,) float summing to 1, and the class it explains (grad-rollout's
        target; else the predicted class)."""
        self._require_attention()
        cfg = self.model.config
        with self._lock:
            entry = self._entry(image_id)
            predicted = self._predicted(entry)
            params = self._normalise(params, predicted)
            key = params.key()
            if key not in entry.maps:
                n_prefix, query = cfg.num_prefix_tokens, entry.query
                if params.method == "raw":
                    m = layer_map(entry.attention[params.block], n_prefix, query, self._head(params.head))[0]
                elif params.method == "rollout":
                    m = rollout_map(entry.attention[params.first:params.block + 1], n_prefix, query, params.head,
                                    params.discard)[0]
                elif params.method == POOL_METHOD:
                    m = pool_map(entry.pool_attention, self._head(params.head))[0]
                else:
                    m = attention_maps(self.model, entry.x, "grad-rollout", layer=params.block, head="mean",
                                       discard_ratio=params.discard, target=params.target,
                                       first_layer=params.first).maps[0].flatten()
                entry.maps[key] = m.detach()
            return entry.maps[key], params.target if params.method == "grad-rollout" else predicted

    def _normalise(self, p: MapParams, predicted: int) -> MapParams:
        cfg = self.model.config
        valid = self.model_info()["methods"]
        if p.method not in valid:
            raise ExploreError(f"method={p.method!r} is not one of {', '.join(valid)} for this model")
        block = self._block(p.block)
        head = str(self._head(p.head))
        if p.method == "raw":
            return MapParams("raw", block, head)
        if p.method == POOL_METHOD:
            return MapParams(POOL_METHOD, -1, head)
        if head not in HEAD_FUSIONS:
            raise ExploreError(f"{p.method} fuses the heads: head must be one of {', '.join(HEAD_FUSIONS)}")
        if not 0 <= p.first <= block:
            raise ExploreError(f"first={p.first} must be in 0..{block} (the last block rolled out)")
        if not 0.0 <= p.discard < 1.0:
            raise ExploreError(f"discard={p.discard} must be in [0, 1)")
        if p.method == "rollout":
            return MapParams("rollout", block, head, p.first, p.discard)
        target = predicted if p.target < 0 else p.target
        if target >= cfg.num_classes:
            raise ExploreError(f"target={target}: the model has {cfg.num_classes} classes")
        return MapParams("grad-rollout", block, "mean", p.first, p.discard, target)

    def map(self, image_id: str, params: MapParams) -> dict[str, Any]:
        m, target = self.saliency(image_id, params)
        return {"key": self._normalise(params, self._predicted(self._entry(image_id))).key(),
                "data": b64(to_uint8(m)), "target": target,
                "target_name": self.class_names[target] if self.class_names else str(target)}

    def faithfulness(self, image_id: str, params: MapParams, steps: int = FAITHFULNESS_STEPS) -> dict[str, Any]:
        """Deletion and insertion AUC of the map ``params`` for its class, beside a random patch order."""
        if not self.model.config.num_classes:
            raise ExploreError("deletion and insertion follow a class probability: the model has no classifier head")
        if not 2 <= steps <= 256:
            raise ExploreError(f"steps={steps} must be in 2..256")
        with self._lock:
            m, target = self.saliency(image_id, params)
            x = self._entry(image_id).x
            grid = self.grid
            f = faithfulness(self.model, x, m.reshape(1, *grid), torch.tensor([target], device=x.device),
                             self.model.config.patch_size, steps=steps)
            return {"deletion": round(f.deletion_auc, 4), "insertion": round(f.insertion_auc, 4),
                    "random_deletion": round(f.random_deletion_auc, 4),
                    "random_insertion": round(f.random_insertion_auc, 4), "steps": steps, "target": target,
                    "target_name": self.class_names[target]}
