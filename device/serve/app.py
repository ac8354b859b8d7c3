"""The dashboard's web app (Starlette on uvicorn): GET routes only, a token on any non-local bind.

Starlette and uvicorn are small, maintained and pure Python (uvicorn's h11 parser needs no
compiler on a Pi), and their sync routes run in a thread pool, so a slow query never stalls the
event loop. The page, its script and style are this package's own files, read once at start.
"""

from __future__ import annotations

import hmac
import secrets
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from ferlite.device.serve import params as p
from ferlite.device.serve.data import LogData
from ferlite.errors import ConfigError, LogError, RuntimeMissingError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "ferlite_token"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
THREADS = 4  # queries at once: enough for a Pi's four cores, few enough to leave the camera loop its own
HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True)
class Access:
    """Who may read: anyone on a local bind without a token, else only holders of the token."""

    local: bool
    token: str | None


def _host_name(headers: dict[bytes, bytes]) -> str:
    host = headers.get(b"host", b"").decode("latin-1")
    return host[1:].split("]")[0] if host.startswith("[") else host.split(":")[0]


class Guard:
    """ASGI middleware in front of every route: the token (cookie, or `?token=` once, which sets the
    cookie and drops itself from the URL), the Host of a local bind (no DNS rebinding), safe headers."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, RedirectResponse

        request = Request(scope)
        headers = dict(scope["headers"])
        response = None
        if self.access.local and _host_name(headers) not in LOCAL_HOSTS:
            response = PlainTextResponse("this dashboard answers only to localhost", 400)
        elif self.access.token:
            given = request.query_params.get("token")
            if given is not None and _same(given, self.access.token):
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                path = "/" + request.url.path.lstrip("/")  # never "//host": that would leave the site
                response = RedirectResponse(path + (f"?{rest}" if rest else ""), 303)
                response.set_cookie(COOKIE, self.access.token, httponly=True, samesite="strict")
            elif not _same(request.cookies.get(COOKIE, ""), self.access.token):
                response = PlainTextResponse("401: this dashboard needs its token: open it once with ?token=TOKEN", 401)

        async def send_safely(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await (response or self.app)(scope, receive, send_safely)


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def create_app(data: LogData, access: Access) -> Guard:
    """The Starlette app over `data`: the page, its two assets and five read-only JSON routes."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    folder = resources.files("ferlite.device.serve").joinpath("static")
    assets = {name: (folder.joinpath(name).read_bytes(), kind) for name, kind in STATIC.items()}
    page = folder.joinpath("index.html").read_bytes()

    def args(request: Request, *allowed: str) -> dict[str, str]:
        return p.check(request.query_params.multi_items(), allowed)

    def index(request: Request) -> Response:
        args(request)
        return Response(page, media_type="text/html")

    def asset(request: Request) -> Response:
        args(request)
        name = request.path_params["name"]
        if name not in assets:
            raise HTTPException(404)
        body, kind = assets[name]
        return Response(body, media_type=kind)

    def runs(request: Request) -> Response:
        return JSONResponse(data.runs(p.device(args(request, "device"), data.has_device)))

    def now(request: Request) -> Response:
        args(request)
        return JSONResponse(data.now())

    def timeline(request: Request) -> Response:
        q = args(request, "from", "to", "run", "device")
        device = p.device(q, data.has_device)
        span = p.time_range(q, data.span(device))
        if span is None:
            return JSONResponse({"buckets": [], "series": {}, "totals": {}, "bucket": "minute"})
        return JSONResponse(data.timeline(span, p.integer(q, "run"), device))

    def tracks(request: Request) -> Response:
        run = p.integer(args(request, "run"), "run", required=True)
        found = data.tracks(run)
        if found is None:
            return JSONResponse({"error": f"no run {run} in this log"}, 404)
        return JSONResponse(found)

    def face(request: Request) -> Response:
        q = args(request, "run", "track")
        crop = data.face(p.integer(q, "run", required=True), p.integer(q, "track", required=True))
        if crop is None:
            return JSONResponse({"error": "no saved face for this track (the run did not use --save-faces)"}, 404)
        return FileResponse(crop, media_type="image/png")

    def bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, 400)

    def unavailable(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"cannot read the log now: {str(exc).splitlines()[0]}"}, 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from anyio import to_thread

        to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield

    routes = [Route("/", index), Route("/static/{name}", asset), Route("/api/runs", runs), Route("/api/now", now),
              Route("/api/timeline", timeline), Route("/api/tracks", tracks), Route("/api/face", face)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={p.ParamError: bad_request, LogError: unavailable, sqlite3.Error: unavailable})
    return Guard(app, access)


def read_token(path: Path | None, environ: dict[str, str]) -> str | None:
    """The token from a file (--token-file) or FERLITE_SERVE_TOKEN; never from the command line itself."""
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the token file ({exc.strerror})") from None
    else:
        token = environ.get("FERLITE_SERVE_TOKEN", "").strip() or None
    if token is not None and (len(token) < 16 or not token.isascii() or not token.isprintable()):
        raise ConfigError("the serve token must be at least 16 printable ASCII characters")
    return token


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why not (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)
    return sock


def serve(log: Path, host: str, port: int, token: str | None, say: Callable[[str], None]) -> None:
    """Serve `log` until interrupted; says the address (and a generated token) once."""
    try:
        import uvicorn
    except ImportError:
        raise RuntimeMissingError("`ferlite serve` needs its extra: pip install 'ferlite[serve]'") from None
    data = LogData(log)
    local = host in LOCAL_HOSTS
    generated = token is None and not local
    if generated:
        token = secrets.token_urlsafe(24)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    shown = host if local else socket.gethostname()
    say(f"serving {log} read-only on http://{'[' + shown + ']' if ':' in shown else shown}:{bound}/ "
        f"(listening on {host}:{bound}; Ctrl-C stops)")
    if generated:
        say(f"token (shown once; the browser keeps it as a cookie): open http://{shown}:{bound}/?token={token}")
    elif token:
        say("every visitor needs the token: open the address once with ?token=TOKEN (the browser keeps it)")
    config = uvicorn.Config(create_app(data, Access(local, token)), http="h11", ws="none", log_level="warning",
                            access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
