"""``vitlab explore --export page.html IMAGE...``: one self-contained HTML file with the explorer's page and its
data embedded (no server, no network), for a course, a paper or an issue.

The page is the server's page (``static/``) with its script and style inlined and ``window.VITLAB_DATA`` set to
what the server would answer: the model, each image's analysis, every block's hover rows (when the token count
keeps them small: ``ROWS_INLINE_BYTES``), and the maps a server computes on demand, for a fixed set of choices:
rollout for every block, head fusion, discard ratio in ``DISCARD_RATIOS`` and first block in ``FIRST_BLOCKS``;
gradient rollout up to the last block for each of the top-k classes; deletion and insertion AUC of the three
default maps (raw, rollout, gradient rollout of the predicted class). Everything is computed by the same
:class:`~vitlab.explore.compute.Explorer` methods the server calls.

Before any of that work the output path is checked (:func:`~vitlab.errors.check_writable`) and every image is
decoded: a file that does not decode is one :class:`~vitlab.errors.DataError` naming it (every such file), and
nothing is written; the page is one file, so it has all the images asked for or is not written.

The data is embedded as JSON in which ``<``, ``>``, ``&``, U+2028 and U+2029 are ``\\uXXXX`` escapes
(:func:`embed_json`): no image or class name can end the script or change how the HTML parser reads it, and the
page's Content-Security-Policy runs only its own two scripts (by hash) and fetches nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vitlab.analysis.attention import HEAD_FUSIONS
from vitlab.checkpoint import atomic_write
from vitlab.errors import (
    DataError,
    DiskFullError,
    NotFoundError,
    OutputError,
    UndecodableImage,
    UsageError,
    check_writable,
)
from vitlab.explore.compute import Explorer, MapParams, shown_name
from vitlab.preprocess import load_image

STATIC = Path(__file__).parent / "static"
DISCARD_RATIOS = (0.0, 0.5, 0.9)
FIRST_BLOCKS = (0, 1)
# characters that may not appear raw inside <script> (they could close it, or open a comment or a nested script in
# the HTML parser's eyes) or in a JavaScript string literal of older engines (the two line separators)
SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(data: Any) -> str:
    """``data`` as JSON that can sit inside an HTML ``<script>`` element whatever its strings hold: ASCII only
    (json's default: every other character, a lone surrogate included, as ``\\uXXXX``) and the characters of
    SCRIPT_ESCAPES written as JSON escapes, so the text has no ``<``, ``>`` or ``&`` and parses to the same value."""
    return json.dumps(data, separators=(",", ":")).translate(str.maketrans(SCRIPT_ESCAPES))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _maps(explorer: Explorer, image_id: str, top: list[dict[str, Any]]) -> dict[str, Any]:
    info = explorer.model_info()
    depth = info["depth"]
    maps: dict[str, Any] = {}

    def add(p: MapParams) -> None:
        m = explorer.map(image_id, p)
        maps[m.pop("key")] = m

    for block in range(depth):
        for fusion in HEAD_FUSIONS:
            for discard in DISCARD_RATIOS:
                for first in FIRST_BLOCKS:
                    if first <= block:
                        add(MapParams("rollout", block, fusion, first, discard))
    if "grad-rollout" in info["methods"]:
        for t in top:
            for discard in DISCARD_RATIOS:
                for first in FIRST_BLOCKS:
                    if first < depth:
                        add(MapParams("grad-rollout", depth - 1, "mean", first, discard, t["index"]))
    return maps


def export_page(explorer: Explorer, images: Sequence[str | Path], out: str | Path,
                log: Callable[[str], None] | None = None) -> Path:
    """Write the self-contained page of ``images`` (files) to ``out``, atomically; return its path. ``log``: called
    with a line per image (the command line prints them: B/16 takes about a minute per image on 2 CPU cores)."""
    if not images:
        raise UsageError("--export needs at least one image file: vitlab explore --model M --export page.html a.jpg")
    out = check_writable(out, "--export")  # before the minutes of work, not after
    pictures = _decode_all(images)
    info = explorer.model_info()
    data: dict[str, Any] = {"model": info, "images": [], "rows": {}, "maps": {}, "faithfulness": {},
                            "options": {"discard": list(DISCARD_RATIOS),
                                        "first": [f for f in FIRST_BLOCKS if f < info.get("depth", 1)],
                                        "grad": True}}
    for i, path in enumerate(images, start=1):
        if log:
            log(f"[{i}/{len(images)}] {path}")
        source = explorer.add_image(pictures[i - 1], shown_name(Path(path).name), kind="file")
        analysis = explorer.analyze(source.id)
        data["images"].append(analysis)
        if not info["attention"]:
            continue
        data["rows"][source.id] = ({b: explorer.rows(source.id, b)["data"] for b in range(info["depth"])}
                                   if info["rows_inline"] else {})
        data["maps"][source.id] = _maps(explorer, source.id, analysis["top"])
        if info["num_classes"]:
            last = info["depth"] - 1
            defaults = [MapParams("raw", last, "mean"), MapParams("rollout", last, "mean"),
                        MapParams("grad-rollout", last, "mean")]
            faith = {}
            for p in defaults:
                key = explorer.map(source.id, p)["key"]
                faith[key] = explorer.faithfulness(source.id, p)
            data["faithfulness"][source.id] = faith
    page = (STATIC / "index.html").read_text()
    css = (STATIC / "explorer.css").read_text()
    js = (STATIC / "explorer.js").read_text()
    script = f"window.VITLAB_DATA = {embed_json(data)};"
    policy = (f"default-src 'none'; script-src {_csp_hash(script)} {_csp_hash(js)}; style-src {_csp_hash(css)}; "
              "img-src data:; base-uri 'none'; form-action 'none'")  # its own scripts only; nothing fetched
    page = page.replace('<meta charset="utf-8">',
                        f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{policy}">')
    page = page.replace('<link rel="stylesheet" href="static/explorer.css">', f"<style>{css}</style>")
    page = page.replace('<script src="static/explorer.js"></script>',
                        f"<script>{script}</script>\n<script>{js}</script>")
    try:
        atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))  # a reader never sees half a page
    except (DiskFullError, OutputError):  # they name the page already
        raise
    except OSError as e:  # the folder changed since the check: name the page, not the temporary file
        raise OutputError(f"cannot write --export {out}: {e.strerror or e}; choose another path") from e
    return out


def _decode_all(images: Sequence[str | Path]) -> list[Any]:
    """Every image decoded (upright RGB), or one DataError naming each file that is missing or does not decode."""
    pictures, failed = [], []
    for path in images:
        try:
            pictures.append(load_image(path))
        except UndecodableImage as e:
            failed.append(f"{path} is not an image that can be decoded ({e.reason})")
        except (DataError, NotFoundError) as e:
            failed.append(str(e))
    if failed:
        raise DataError(f"{len(failed)} of {len(images)} image(s) cannot be put in the page, so it is not written: "
                        f"{'; '.join(failed)}. Fix or leave out {'that file' if len(failed) == 1 else 'those files'}")
    return pictures
