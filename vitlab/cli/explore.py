"""``vitlab explore``: the attention explorer in the browser, or one self-contained page of it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vitlab.cli.common import EXIT_OK, MODEL_HELP, add_device, add_pretrained, load_model_spec, parse_device, warn
from vitlab.cli.domains import HOST, IMAGE_FILE, INPUT_FOLDER, MODEL, OUTPUT_FILE, PORT, integer
from vitlab.errors import UsageError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # addresses only this machine reaches


def add_explore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="an interactive attention explorer in the browser (or --export one page)",
                       description="Start a local web server with a page to look inside a model: the prediction, "
                                   "any block's and head's attention, rollout and gradient rollout over the image, "
                                   "the attention row of the patch under the pointer, mean attention distance, "
                                   "position-embedding similarity, patch-embedding filters, deletion/insertion "
                                   "AUC. --export writes the page of given images as one HTML file instead.")
    p.add_argument("--model", "-m", required=True, type=MODEL, metavar="NAME_OR_CHECKPOINT", help=MODEL_HELP)
    add_pretrained(p)
    p.add_argument("--images", type=INPUT_FOLDER, metavar="DIR",
                   help="a folder of images to pick from (subfolders included)")
    p.add_argument("--shapes", type=integer(0, 1000), default=6, metavar="N",
                   help="built-in `shapes` sample images listed (default: 6; 0 for none)")
    p.add_argument("--host", type=HOST, default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; anything else exposes the model "
                        "and your uploads to the network)")
    p.add_argument("--port", type=PORT, default=8000, help="port (default: 8000)")
    p.add_argument("--export", type=OUTPUT_FILE, metavar="PAGE.html",
                   help="write one self-contained page for IMAGE... and exit; every IMAGE is decoded first, and if "
                        "one cannot be, nothing is written (exit 2)")
    p.add_argument("export_images", nargs="*", type=IMAGE_FILE, metavar="IMAGE",
                   help="with --export: the image files of the page")
    add_device(p)
    p.set_defaults(func=explore)


def explore(model: str, images: str | None = None, shapes: int = 6, host: str = "127.0.0.1", port: int = 8000,
            export: str | None = None, export_images: Sequence[str] = (), device: str = "cpu",
            pretrained: bool = False) -> int:
    """Serve the explorer until Ctrl-C, or write the exported page."""
    from vitlab.explore import Explorer, export_page

    if export_images and not export:
        raise UsageError("image files on the command line are for --export PAGE.html; to browse a folder of images "
                         "pass --images DIR")
    if export:
        from vitlab.errors import check_writable

        check_writable(export, "--export")  # before the model loads and the minutes of work per image
    dev = parse_device(device)
    net, trained = load_model_spec(model, pretrained)
    if not trained:
        warn(f"{model!r} has random weights: its attention shows no learned structure and its predictions are "
             "meaningless. Pass --pretrained, a name with a pretrained tag, or a checkpoint file")
    explorer = Explorer(net, name=model, images_dir=images, shapes_samples=0 if export else shapes, device=dev)
    if export:
        path = export_page(explorer, export_images, export, log=lambda line: print(line, flush=True))
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser, no server needed")
        return EXIT_OK
    try:
        from vitlab.explore.server import listen, serve, url_of
    except ImportError as e:
        raise UsageError(f"vitlab explore needs its web server ({e.name} is missing): pip install 'vitlab[explore]'"
                         ) from e
    if host not in LOCAL_HOSTS:
        warn(f"--host {host}: the explorer is reachable from other machines, with no login; anyone who can reach "
             "it can run the model and upload images")
    with listen(host, port) as sock:  # bound before the address is announced: a port in use is one error line
        print(f"vitlab explore: {model} at {url_of(sock)} (Ctrl-C stops)", flush=True)
        serve(explorer, sock=sock)
    return EXIT_OK
