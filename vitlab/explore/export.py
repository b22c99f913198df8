"""``vitlab explore --export page.html IMAGE...``: one self-contained HTML file with the explorer's page and its
data embedded (no server, no network), for a course, a paper or an issue.

The page is the server's page (``static/``) with its script and style inlined and ``window.VITLAB_DATA`` set to
what the server would answer: the model, each image's analysis, every block's hover rows (when the token count
keeps them small: ``ROWS_INLINE_BYTES``), and the maps a server computes on demand, for a fixed set of choices:
rollout for every block, head fusion, discard ratio in ``DISCARD_RATIOS`` and first block in ``FIRST_BLOCKS``;
gradient rollout up to the last block for each of the top-k classes; deletion and insertion AUC of the three
default maps (raw, rollout, gradient rollout of the predicted class). Everything is computed by the same
:class:`~vitlab.explore.compute.Explorer` methods the server calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vitlab.analysis.attention import HEAD_FUSIONS
from vitlab.checkpoint import atomic_write
from vitlab.errors import UsageError
from vitlab.explore.compute import Explorer, MapParams
from vitlab.preprocess import load_image

STATIC = Path(__file__).parent / "static"
DISCARD_RATIOS = (0.0, 0.5, 0.9)
FIRST_BLOCKS = (0, 1)


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
    info = explorer.model_info()
    data: dict[str, Any] = {"model": info, "images": [], "rows": {}, "maps": {}, "faithfulness": {},
                            "options": {"discard": list(DISCARD_RATIOS),
                                        "first": [f for f in FIRST_BLOCKS if f < info.get("depth", 1)],
                                        "grad": True}}
    for i, path in enumerate(images, start=1):
        if log:
            log(f"[{i}/{len(images)}] {path}")
        source = explorer.add_image(load_image(path), Path(path).name, kind="file")
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
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no "</script>" inside the data
    page = page.replace('<link rel="stylesheet" href="static/explorer.css">', f"<style>\n{css}</style>")
    page = page.replace('<script src="static/explorer.js"></script>',
                        f"<script>window.VITLAB_DATA = {payload};</script>\n<script>\n{js}</script>")
    out = Path(out)
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))  # a reader never sees half a page
    return out
