"""The explorer's web server: a Starlette app over one :class:`~vitlab.explore.compute.Explorer`.

Routes (every ``/api`` answer is JSON; an error is ``{"error": message}`` with a 4xx status):

    GET  /                                   the page (static/index.html)
    GET  /static/{explorer.js,explorer.css}  its script and style (nothing else is served from disk)
    GET  /api/model                          the model: shape, methods, position similarity, patch filters
    GET  /api/images                         the images to pick from
    POST /api/images                         an upload: the raw file as the body (X-Filename: its name)
    GET  /api/images/{id}                    a new image: input, top-k, raw maps, attention distances
    GET  /api/images/{id}/rows?block=        every patch's attention row of a block (small token counts)
    GET  /api/images/{id}/row?block=&head=&patch=        one row (any token count)
    GET  /api/images/{id}/map?method=&block=&head=&first=&discard=&target=
    GET  /api/images/{id}/faithfulness?(the map's parameters)&steps=

Images are named by the ids the server lists, never by a path, so nothing outside ``--images`` can be read.
Sync endpoints run in Starlette's thread pool; the explorer's lock serialises the model.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from vitlab.explore.compute import ExploreError, Explorer, MapParams

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"explorer.js": "text/javascript", "explorer.css": "text/css"}
MAX_UPLOAD_BYTES = 25 << 20  # an upload larger than this is refused before it is decoded


def _int(request: Request, name: str, default: int | None = None) -> int:
    text = request.query_params.get(name)
    if text is None:
        if default is None:
            raise ExploreError(f"missing parameter {name!r}")
        return default
    try:
        return int(text)
    except ValueError as e:
        raise ExploreError(f"{name}={text!r} is not an integer") from e


def _float(request: Request, name: str, default: float) -> float:
    text = request.query_params.get(name)
    try:
        return default if text is None else float(text)
    except ValueError as e:
        raise ExploreError(f"{name}={text!r} is not a number") from e


def map_params(request: Request) -> MapParams:
    q = request.query_params
    return MapParams(q.get("method", "raw"), _int(request, "block", -1), q.get("head", "mean"),
                     _int(request, "first", 0), _float(request, "discard", 0.0), _int(request, "target", -1))


def create_app(explorer: Explorer, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Starlette:
    """The app; ``uvicorn.run(create_app(explorer))`` serves it."""

    def api(fn: Any) -> Any:
        """A sync endpoint whose ExploreError (and ValueError) becomes a JSON error, the server serving on."""
        def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(fn(request))
            except ExploreError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except ValueError as e:  # a library check the explorer did not anticipate: still a message, not a 500
                return JSONResponse({"error": str(e)}, status_code=400)
        return endpoint

    def image_id(request: Request) -> str:
        return request.path_params["id"]

    async def upload(request: Request) -> Response:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_upload_bytes:
            return _too_large(max_upload_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                return _too_large(max_upload_bytes)
        if not body:
            return JSONResponse({"error": "the upload is empty: send an image file as the request body"}, 400)
        name = Path(unquote(request.headers.get("x-filename", ""))).name[:200]  # a name to show, never a path
        try:
            source = await run_in_threadpool(explorer.upload, bytes(body), name)
        except ExploreError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        return JSONResponse({"id": source.id, "name": source.name})

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return JSONResponse({"error": f"no static file {name!r}"}, 404)
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    routes = [
        Route("/", lambda request: FileResponse(STATIC / "index.html", media_type="text/html")),
        Route("/static/{name}", static),
        Route("/api/model", api(lambda r: explorer.model_info())),
        Route("/api/images", api(lambda r: {"images": explorer.image_list()}), methods=["GET"]),
        Route("/api/images", upload, methods=["POST"]),
        Route("/api/images/{id}", api(lambda r: explorer.analyze(image_id(r)))),
        Route("/api/images/{id}/rows", api(lambda r: explorer.rows(image_id(r), _int(r, "block")))),
        Route("/api/images/{id}/row", api(lambda r: explorer.row(image_id(r), _int(r, "block"),
                                                                 r.query_params.get("head", "mean"),
                                                                 _int(r, "patch")))),
        Route("/api/images/{id}/map", api(lambda r: explorer.map(image_id(r), map_params(r)))),
        Route("/api/images/{id}/faithfulness",
              api(lambda r: explorer.faithfulness(image_id(r), map_params(r), _int(r, "steps", 16)))),
    ]
    return Starlette(routes=routes)


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": f"the upload is larger than {limit >> 20} MB; send a smaller image"}, 413)


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(create_app(explorer), host=host, port=port, log_level="warning")


class BackgroundServer:
    """The explorer served from a thread of this process (a notebook, a test, a benchmark)::

        with BackgroundServer(explorer) as server:   # port 0: a free port
            print(server.url)                        # http://127.0.0.1:PORT/
    """

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}/"
        self._server = uvicorn.Server(uvicorn.Config(create_app(explorer), host=host, port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the explorer's server did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
