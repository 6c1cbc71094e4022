"""A small HTTP/1.1 server on httptools + asyncio (works the same under uvloop).

It serves the logic HTTP API: JSON in, JSON out, small bodies, a handful of exact-path routes. The
connection itself is compiled: ``imgate/http/_protocol.pyx``, with the plain-request parser
(``_plain.pyx``), httptools' callbacks (``_httptools.pyx``), the dispatcher (``_dispatch.pyx``), the
request (``_request.pyx``) and the reply on the wire (``_reply.pyx``). What it does on purpose:

- keep-alive (the HTTP/1.1 default; ``Connection: close`` and HTTP/1.0 honoured), pipelined requests
  answered strictly in order, one handler at a time per connection;
- a handler may be a plain function returning a :class:`Response` or a coroutine function; a coroutine
  that finishes without waiting is answered in the same callback that read the request (no task), and
  the replies to one read go out in one write;
- request bodies bounded by ``max_body`` before they are read (``Content-Length``) and while they are
  read (chunked), the header section bounded by ``max_header_bytes``;
- every error is a JSON envelope ``{"code": <non-zero>, "message": ..., "data": null}``: 404 for an
  unknown path, 405 (with ``Allow``) for a known path and another method, 413 for a big body, 431 for a
  big header section, 400 for bytes that are not HTTP, 500 for a handler that raised (the exception is
  logged and the connection goes on serving);
- a request whose head and body have not all arrived ``request_timeout`` seconds after its first byte
  is answered 408 and the connection closed (a client trickling bytes holds nothing for long);
- idle connections are closed after ``idle_timeout`` seconds; reading pauses while too many pipelined
  requests wait and while the peer does not read its responses.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Union

from imgate.http._protocol import UNMATCHED, HttpProtocol, Request
from imgate.http.messages import HttpError, Response, error, json_response, ok

__all__ = [
    "HttpError",
    "HttpServer",
    "DEFAULT_SCOPE",
    "PUBLIC",
    "Request",
    "Response",
    "Router",
    "UNMATCHED",
    "error",
    "json_response",
    "ok",
    "static_file",
    "static_handler",
]

log = logging.getLogger("imgate.http")

Handler = Callable[[Request], Union[Awaitable[Response], Response]]
# fn(route, status), or a dict of counts per (route, status) that the server keeps itself
Observer = Callable[[str, int], None] | dict[tuple[str, int], int]


# ---------------------------------------------------------------------------------------------------------
# Static files shipped as package data


_static_cache: dict[tuple[str, str], tuple[bytes, str]] = {}


def _content_type(name: str) -> str:
    ctype, _ = mimetypes.guess_type(name)
    if name.endswith(".js"):
        ctype = "text/javascript"
    ctype = ctype or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/json", "image/svg+xml"):
        ctype += "; charset=utf-8"
    return ctype


def static_file(name: str, directory: str = "static", package: str = "imgate") -> Response:
    """``package``'s data file ``directory/name`` (read once, then cached), with the content type its
    name implies. An unknown file is a 404."""
    key = (f"{package}/{directory}", name)
    hit = _static_cache.get(key)
    if hit is None:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise HttpError(404, f"no static file {name!r}")
        try:
            data = resources.files(package).joinpath(directory, name).read_bytes()
        except (FileNotFoundError, ModuleNotFoundError, IsADirectoryError, NotADirectoryError):
            raise HttpError(404, f"no static file {name!r}") from None
        hit = _static_cache[key] = (data, _content_type(name))
    data, ctype = hit
    return Response(200, data, ctype, {"Cache-Control": "no-cache"})


def static_handler(name: str, directory: str = "static", package: str = "imgate") -> Handler:
    """A route handler that serves one package-data file."""

    async def handler(req: Request) -> Response:
        return static_file(name, directory, package)

    handler.__name__ = f"static_{name.replace('.', '_')}"
    return handler


# ---------------------------------------------------------------------------------------------------------
# Routing

PUBLIC = "public"        # the scope of a route anyone may call (health, static files)
DEFAULT_SCOPE = "admin"  # what a route that declares no scope requires


class Router:
    """Exact-path routing: ``add(method, path, handler, scope)``. HEAD falls back to the GET handler.
    Each route declares the credential scope it needs; a ``guard`` checks it (see :attr:`guard`).

    ``observer`` (optional, ``fn(route, status)``) is told about every answered request; the server uses
    the router's observer unless it was given its own. It may also be a dict: the server then adds one to
    ``observer[(route, status)]`` itself, without a call per request.
    """

    def __init__(self, guard: Any = None) -> None:
        self._paths: dict[str, dict[str, Handler]] = {}
        self._declared: dict[tuple[str, str], tuple[Handler, str]] = {}  # (method, path) -> (handler, scope)
        self._guard = guard
        self.observer: Observer | None = None

    @property
    def guard(self) -> Any:
        """What checks credentials: an object with ``guard(handler, scope) -> handler`` (e.g.
        :class:`imgate.http.apikeys.ApiAuth`), or None: no route is checked. Setting it re-wraps every
        route already added, in place (connections resolve from the live table)."""
        return self._guard

    @guard.setter
    def guard(self, guard: Any) -> None:
        self._guard = guard
        for (method, path), (handler, scope) in self._declared.items():
            self._paths[path][method] = self._wrapped(handler, scope)

    def _wrapped(self, handler: Handler, scope: str) -> Handler:
        if self._guard is None or scope == PUBLIC:
            return handler
        return self._guard.guard(handler, scope)

    def scope(self, method: str, path: str) -> str | None:
        """The scope the route declared (``PUBLIC`` for an open one), None for no such route."""
        found = self._declared.get((method.upper(), path))
        return found[1] if found else None

    @property
    def paths(self) -> Mapping[str, Mapping[str, Handler]] | None:
        """path -> {method: handler}, live: the compiled connection protocol resolves from it as
        :meth:`resolve` does, without a Python call per request. None in a subclass with its own
        :meth:`resolve`, which the server then calls."""
        return self._paths if type(self).resolve is Router.resolve else None

    def add(self, method: str, path: str, handler: Handler, scope: str = DEFAULT_SCOPE) -> None:
        """Route ``method path`` to ``handler``. ``scope`` is what a caller's credential must grant
        when the router has a guard: ``PUBLIC`` for a route anyone may call; a route that declares
        nothing needs ``admin``."""
        method = method.upper()
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        methods = self._paths.setdefault(path, {})
        if method in methods:
            raise ValueError(f"route {method} {path} is already registered")
        self._declared[(method, path)] = (handler, scope)
        methods[method] = self._wrapped(handler, scope)

    def route(self, method: str, path: str, scope: str = DEFAULT_SCOPE) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def deco(fn: Handler) -> Handler:
            self.add(method, path, fn, scope)
            return fn

        return deco

    def routes(self) -> list[tuple[str, str]]:
        """Every registered ``(method, path)``."""
        return [(m, p) for p, methods in self._paths.items() for m in methods]

    def allowed(self, path: str) -> list[str]:
        methods = self._paths.get(path)
        if not methods:
            return []
        out = sorted(methods)
        if "GET" in methods and "HEAD" not in methods:
            out.append("HEAD")
        return out

    def resolve(self, method: str, path: str) -> Handler | None:
        methods = self._paths.get(path)
        if methods is None:
            return None
        handler = methods.get(method)
        if handler is None and method == "HEAD":
            handler = methods.get("GET")
        return handler

    def __contains__(self, path: str) -> bool:
        return path in self._paths

    def __len__(self) -> int:
        return sum(len(m) for m in self._paths.values())


def _as_router(routes: Router | Mapping[tuple[str, str], Handler] | Iterable[tuple[str, str, Handler]]) -> Router:
    if isinstance(routes, Router):
        return routes
    router = Router()
    items = routes.items() if isinstance(routes, Mapping) else ((m, p, h) for m, p, h in routes)
    for item in items:
        if isinstance(routes, Mapping):
            (method, path), handler = item
        else:
            method, path, handler = item
        router.add(method, path, handler)
    return router


# ---------------------------------------------------------------------------------------------------------
# The server


class HttpServer:
    """``HttpServer(routes)``; ``await start(host, port)`` (port 0 picks one: see ``.port``); ``await stop()``.

    ``observer(route, status)`` is called once per answered request (route = the matched path, or
    ``"unmatched"``); a dict is counted in instead; by default the router's ``observer`` is used.
    """

    def __init__(
        self,
        routes: Router | Mapping[tuple[str, str], Handler] | Iterable[tuple[str, str, Handler]],
        *,
        max_body: int = 1 << 20,
        max_header_bytes: int = 16384,
        idle_timeout: float = 60,
        request_timeout: float = 30,
        observer: Observer | None = None,
        fast_path: bool = True,
    ) -> None:
        self.router = _as_router(routes)
        # plain requests (what programs send) parsed without httptools; off: every byte through it
        self.fast_path = fast_path
        self.max_body = int(max_body)
        self.max_header_bytes = int(max_header_bytes)
        self.idle_timeout = idle_timeout
        # a request's head and body must arrive within this many seconds of its first byte, however
        # they trickle (the idle timeout alone lets one byte every few seconds hold a connection)
        self.request_timeout = float(request_timeout)
        self.request_timeouts = 0   # requests answered 408 for it
        self.observer = observer if observer is not None else self.router.observer
        self.host: str | None = None
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[HttpProtocol] = set()
        self._closing = False

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def start(self, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        """Listen on ``host:port`` (extra keyword arguments go to ``loop.create_server``)."""
        if self._server is not None:
            raise RuntimeError("HttpServer already started")
        loop = asyncio.get_running_loop()
        kwargs.setdefault("reuse_address", True)
        self._closing = False
        self._server = await loop.create_server(lambda: HttpProtocol(self), host, port, **kwargs)
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        log.info("HTTP API listening on %s:%s", self.host, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, finish the requests in progress (up to ``grace`` seconds), close everything."""
        if self._server is None:
            return
        self._closing = True
        server, self._server = self._server, None
        server.close()
        for conn in list(self._conns):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._conns and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._conns):
            conn.abort()
        await server.wait_closed()
