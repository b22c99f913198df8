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
Sync endpoints run in Starlette's thread pool; the explorer's lock serialises the model. Every answer carries
``X-Content-Type-Options: nosniff`` and the page a Content-Security-Policy that runs only ``static/explorer.js``:
image and class names are data, shown as text, and nothing in them can run.

:func:`listen` binds the socket before anything is announced, so a port in use or a host that does not resolve is
one :class:`~vitlab.errors.UsageError` naming ``--port`` or ``--host``, not uvicorn's log after the address.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from vitlab.errors import UsageError
from vitlab.explore.compute import ExploreError, Explorer, MapParams

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"explorer.js": "text/javascript", "explorer.css": "text/css"}
MAX_UPLOAD_BYTES = 25 << 20  # an upload larger than this is refused before it is decoded
# the page runs its own script only (no inline script, no eval) and fetches only from this server; images are
# drawn from data: URLs
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


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

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_POLICY})

    routes = [
        Route("/", page),
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
    return Starlette(routes=routes, middleware=[Middleware(NoSniff)])


class NoSniff:
    """ASGI middleware: every answer says ``X-Content-Type-Options: nosniff``, so a browser reads JSON (with the
    names in it) as JSON, never as a page."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_nosniff(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_nosniff if scope["type"] == "http" else send)


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": f"the upload is larger than {limit >> 20} MB; send a smaller image"}, 413)


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to ``host``:``port`` (port 0: a free one), or a :class:`UsageError` that names ``--host`` or
    ``--port`` and what to do. Binding before announcing the address means the address printed is one that works."""
    shown = f"[{host}]" if ":" in host else host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else "not a valid host name"
        raise UsageError(f"--host {host}: cannot resolve it ({reason}); pass an address of this machine, such as "
                         "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from e
    except OverflowError as e:
        raise UsageError(f"--port {port}: a port is a number in 0..65535") from e
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port
        sock.bind(address)
    except OSError as e:
        sock.close()
        where = f"cannot listen on {shown}:{port}"
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"{where}: address already in use; pass --port N (another free port) or stop what "
                             "uses it") from e
        if e.errno == errno.EACCES:
            raise UsageError(f"{where}: permission denied (ports below 1024 need privileges); pass --port 8000 "
                             "or another port above 1023") from e
        if e.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"{where}: --host {host} is not an address of this machine; pass 127.0.0.1 or one of "
                             "its own addresses") from e
        raise UsageError(f"{where}: {e.strerror or e}; pass another --host or --port") from e
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The page's address for a bound socket: ``http://HOST:PORT/`` (an IPv6 host in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server(explorer: Explorer) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(create_app(explorer), log_level="warning"))


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000, sock: socket.socket | None = None) -> None:
    """Serve until interrupted (Ctrl-C), on ``sock`` (from :func:`listen`) or else on a socket bound to
    ``host``:``port`` now."""
    sock = sock if sock is not None else listen(host, port)
    with sock:
        _server(explorer).run(sockets=[sock])


class BackgroundServer:
    """The explorer served from a thread of this process (a notebook, a test, a benchmark)::

        with BackgroundServer(explorer) as server:   # port 0: a free port
            print(server.url)                        # http://127.0.0.1:PORT/
    """

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        self._sock = listen(host, port)  # bound here: no race for the free port between choosing and serving
        self.url = url_of(self._sock)
        self._server = _server(explorer)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
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
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
