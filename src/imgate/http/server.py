"""A small HTTP/1.1 server on httptools + asyncio (works the same under uvloop).

It serves the logic HTTP API: JSON in, JSON out, small bodies, a handful of exact-path routes. What it
does on purpose:

- keep-alive (the HTTP/1.1 default; ``Connection: close`` and HTTP/1.0 honoured), pipelined requests
  answered strictly in order, one handler at a time per connection;
- request bodies bounded by ``max_body`` before they are read (``Content-Length``) and while they are
  read (chunked), the header section bounded by ``max_header_bytes``;
- every error is a JSON envelope ``{"code": <non-zero>, "message": ..., "data": null}``: 404 for an
  unknown path, 405 (with ``Allow``) for a known path and another method, 413 for a big body, 431 for a
  big header section, 400 for bytes that are not HTTP, 500 for a handler that raised (the exception is
  logged and the connection goes on serving);
- idle connections are closed after ``idle_timeout`` seconds; reading pauses while too many pipelined
  requests wait and while the peer does not read its responses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools

__all__ = [
    "HttpError",
    "HttpServer",
    "Request",
    "Response",
    "Router",
    "error",
    "json_response",
    "ok",
    "static_file",
    "static_handler",
]

log = logging.getLogger("imgate.http")

Handler = Callable[["Request"], Awaitable["Response"]]
Observer = Callable[[str, int], None]

# Pipelined requests waiting for their turn before the server stops reading from the connection.
_PIPELINE_HIGH = 32
_PIPELINE_LOW = 8
# Route label used for requests that match no route (keeps metric label cardinality bounded).
UNMATCHED = "unmatched"
# Seconds an errored connection keeps discarding input before it closes (see _linger_close).
_LINGER = 2.0


# ---------------------------------------------------------------------------------------------------------
# Requests and responses


class Request:
    """One parsed HTTP request. ``headers`` keys are lower case (repeated headers joined with ", ")."""

    __slots__ = (
        "method", "path", "query_string", "headers", "body", "remote", "version", "keep_alive",
        "route", "_query_list", "_query",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str = "",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        remote: Any = None,
        version: str = "1.1",
        keep_alive: bool = True,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers if headers is not None else {}
        self.body = body
        self.remote = remote
        self.version = version
        self.keep_alive = keep_alive
        self.route: str | None = None  # the matched route path, set by the server
        self._query_list: list[tuple[str, str]] | None = None
        self._query: dict[str, str] | None = None

    @property
    def query_list(self) -> list[tuple[str, str]]:
        """All query parameters in order, repeated names kept."""
        if self._query_list is None:
            qs = self.query_string
            if "%" in qs or "+" in qs or ";" in qs:
                self._query_list = parse_qsl(qs, keep_blank_values=True)
            else:
                # nothing to unquote (the usual machine-made query): split it directly
                self._query_list = [(k, v) for k, _, v in (item.partition("=") for item in qs.split("&") if item)]
        return self._query_list

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; the last value wins for a repeated name."""
        if self._query is None:
            self._query = dict(self.query_list)
        return self._query

    def __repr__(self) -> str:
        q = f"?{self.query_string}" if self.query_string else ""
        return f"<Request {self.method} {self.path}{q} body={len(self.body)}B from {self.remote}>"


class Response:
    """An HTTP response; ``headers`` are extra headers (Content-Type/Length are set by the server)."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int = 200,
        body: bytes | str = b"",
        content_type: str = "application/octet-stream",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = int(status)
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.content_type = content_type
        self.headers: dict[str, str] = dict(headers) if headers else {}

    def json(self) -> Any:
        """The body decoded as JSON (handy in tests)."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.content_type} {len(self.body)}B>"


class HttpError(Exception):
    """Raise from a handler to answer ``status`` with the JSON error envelope."""

    def __init__(self, status: int, message: str, code: int | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.code = code
        self.headers = dict(headers) if headers else None

    def response(self) -> Response:
        resp = error(self.status, self.message, self.code)
        if self.headers:
            resp.headers.update(self.headers)
        return resp


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``data`` serialised as JSON, as it is (no envelope)."""
    return Response(status, _dumps(data), "application/json", headers)


def ok(data: Any = None) -> Response:
    """200 with the envelope ``{"code": 0, "message": "", "data": data}``."""
    return Response(200, _dumps({"code": 0, "message": "", "data": data}), "application/json")


def error(status: int, message: str, code: int | None = None) -> Response:
    """``status`` with ``{"code": code or -status, "message": message, "data": null}``."""
    if not code:
        code = -int(status)
    return Response(status, _dumps({"code": code, "message": message, "data": None}), "application/json")


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


class Router:
    """Exact-path routing: ``add(method, path, handler)``. HEAD falls back to the GET handler.

    ``observer`` (optional, ``fn(route, status)``) is told about every answered request; the server uses
    the router's observer unless it was given its own.
    """

    def __init__(self) -> None:
        self._paths: dict[str, dict[str, Handler]] = {}
        self.observer: Observer | None = None

    def add(self, method: str, path: str, handler: Handler) -> None:
        method = method.upper()
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        methods = self._paths.setdefault(path, {})
        if method in methods:
            raise ValueError(f"route {method} {path} is already registered")
        methods[method] = handler

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def deco(fn: Handler) -> Handler:
            self.add(method, path, fn)
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
# The connection protocol


class _Abort(Exception):
    """Raised inside an httptools callback to stop parsing; the error is already queued."""


class _Failure:
    """A protocol-level error answered in order after the requests before it, then the connection closes."""

    __slots__ = ("status", "message")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "server", "loop", "transport", "parser", "remote", "queue", "worker", "stopped", "closed",
        "pipeline_paused", "write_paused", "drain_waiter", "last_activity", "idle_handle",
        "_url", "_headers", "_body", "_body_len", "_in_head", "_head_bytes", "_head_chunk_bytes",
        "_messages_begun", "_keep_alive", "_expect_continue",
    )

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote: Any = None
        self.queue: deque[Request | _Failure] = deque()
        self.worker: asyncio.Task | None = None
        self.stopped = False  # no more requests are read from this connection
        self.closed = False
        self.pipeline_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.last_activity = self.loop.time()
        self.idle_handle: asyncio.TimerHandle | None = None
        self._reset_message()
        self._messages_begun = 0

    def _reset_message(self) -> None:
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        self._in_head = False
        self._head_bytes = 0
        self._head_chunk_bytes = 0
        self._keep_alive = True
        self._expect_continue = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.remote = transport.get_extra_info("peername")
        self.server._conns.add(self)
        self._arm_idle(self.server.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._conns.discard(self)
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        self.drain_waiter = None

    def eof_received(self) -> bool:
        # The peer will send nothing more: answer what was already received, then close.
        self.stopped = True
        return self.worker is not None or bool(self.queue)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        self.last_activity = self.loop.time()
        was_in_head = self._in_head
        begun = self._messages_begun
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Abort):
                log.exception("HTTP parser callback failed", exc_info=exc.__context__ or exc)
                self._fail(400, "malformed HTTP request")
        except httptools.HttpParserUpgrade:
            # An Upgrade request (for instance a WebSocket handshake sent to the API port): it is
            # answered like any request, then the connection closes; bytes after it are not HTTP.
            if self.queue and isinstance(self.queue[-1], Request):
                self.queue[-1].keep_alive = False
            self._stop()
        except httptools.HttpParserError:
            self._fail(400, "malformed HTTP request")
        else:
            if self._in_head and was_in_head and begun == self._messages_begun:
                # The whole chunk belongs to the header section of one message.
                self._head_chunk_bytes += len(data)
                self._check_head_size()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._messages_begun += 1
        self._reset_message()
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        self._check_head_size(raise_=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        self._check_head_size(raise_=True)
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        prev = self._headers.get(key)
        self._headers[key] = val if prev is None else f"{prev}, {val}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._keep_alive = self.parser.should_keep_alive()
        cl = self._headers.get("content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                self._fail(400, "malformed HTTP request", raise_=True)
            if n > self.server.max_body:
                self._fail(413, f"request body exceeds {self.server.max_body} bytes", raise_=True)
        if self._headers.get("expect", "").lower() == "100-continue":
            # Answer the interim response only when nothing else is owed on this connection,
            # so that it cannot be taken for the reply to an earlier pipelined request.
            if not self.queue and self.worker is None and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self.server.max_body:
            self._fail(413, f"request body exceeds {self.server.max_body} bytes", raise_=True)
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        url = bytes(self._url)
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            self._fail(400, f"malformed request target {url[:200].decode('latin-1')!r}", raise_=True)
        path = unquote((parsed.path or b"/").decode("latin-1"), encoding="utf-8", errors="replace")
        query = (parsed.query or b"").decode("latin-1")
        req = Request(
            parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            b"".join(self._body),
            self.remote,
            parser.get_http_version(),
            self._keep_alive,
        )
        self._reset_message()
        self.queue.append(req)
        if len(self.queue) >= _PIPELINE_HIGH and not self.pipeline_paused and self.transport is not None:
            self.pipeline_paused = True
            self.transport.pause_reading()
        self._ensure_worker()

    # -- helpers

    def _check_head_size(self, raise_: bool = False) -> None:
        limit = self.server.max_header_bytes
        if self._head_bytes > limit or self._head_chunk_bytes > limit:
            self._fail(431, f"request header section exceeds {limit} bytes", raise_=raise_)

    def _fail(self, status: int, message: str, raise_: bool = False) -> None:
        if not self.stopped:
            self.queue.append(_Failure(status, message))
            self._stop()
            self._ensure_worker()
        if raise_:
            raise _Abort()

    def _stop(self) -> None:
        """Read nothing more from this connection."""
        self.stopped = True
        if self.transport is not None and not self.closed:
            try:
                self.transport.pause_reading()
            except RuntimeError:  # pragma: no cover - already closing
                pass

    def _ensure_worker(self) -> None:
        if self.worker is None and self.queue and not self.closed:
            self.worker = self.loop.create_task(self._work())

    def _arm_idle(self, delay: float) -> None:
        if self.server.idle_timeout and self.server.idle_timeout > 0:
            self.idle_handle = self.loop.call_later(delay, self._on_idle)

    def _on_idle(self) -> None:
        self.idle_handle = None
        if self.closed:
            return
        if self.worker is not None or self.queue:
            self._arm_idle(self.server.idle_timeout)
            return
        quiet = self.loop.time() - self.last_activity
        if quiet >= self.server.idle_timeout:
            self.transport.close()  # type: ignore[union-attr]
        else:
            self._arm_idle(self.server.idle_timeout - quiet)

    async def _work(self) -> None:
        try:
            while self.queue and not self.closed:
                item = self.queue.popleft()
                if self.pipeline_paused and len(self.queue) <= _PIPELINE_LOW and not self.stopped:
                    self.pipeline_paused = False
                    self.transport.resume_reading()  # type: ignore[union-attr]
                if isinstance(item, _Failure):
                    self.server._observe(UNMATCHED, item.status)
                    self.transport.write(_encode_response(error(item.status, item.message), False, False, False))  # type: ignore[union-attr]
                    self._linger_close()
                    return
                resp = await self.server._dispatch(item)
                if self.closed:
                    return
                keep_alive = item.keep_alive and not self.server._closing and not (self.stopped and not self.queue)
                data = _encode_response(resp, keep_alive, item.method == "HEAD", item.version == "1.0")
                self.transport.write(data)  # type: ignore[union-attr]
                self.last_activity = self.loop.time()
                if not keep_alive:
                    self.queue.clear()
                    self.stopped = True
                    self.transport.close()  # type: ignore[union-attr]
                    return
                if self.write_paused:
                    self.drain_waiter = self.loop.create_future()
                    await self.drain_waiter
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - defensive: never leave a connection hanging
            log.exception("HTTP connection worker failed")
            if self.transport is not None:
                self.transport.abort()
        finally:
            self.worker = None

    def _linger_close(self) -> None:
        """Close after an error while the peer may still be sending (a big body, garbage).

        Closing a socket with unread input makes the kernel send RST, and the peer may lose the error
        response; so shut down our side, discard what still arrives, and close on the peer's EOF or
        after a short delay.
        """
        t = self.transport
        if t is None or self.closed:
            return
        self.queue.clear()
        self.stopped = True
        if t.can_write_eof():
            t.write_eof()
            try:
                t.resume_reading()
            except RuntimeError:  # pragma: no cover
                pass
            self.loop.call_later(_LINGER, t.close)
        else:  # pragma: no cover - TLS transports cannot half-close
            t.close()

_HEAD_CACHE: dict = {}


def _encode_response(resp: Response, keep_alive: bool, head_only: bool, http10: bool) -> bytes:
    status = resp.status
    if not resp.headers and keep_alive and not http10 and not head_only and 200 <= status < 300 and status != 204:
        # the common reply (a push's): a cached head up to Content-Length
        key = (status, resp.content_type)
        prefix = _HEAD_CACHE.get(key)
        if prefix is None:
            prefix = _HEAD_CACHE[key] = (f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: "
                                         f"{resp.content_type}\r\nContent-Length: ").encode("latin-1")
        return b"%s%d\r\n\r\n%s" % (prefix, len(resp.body), resp.body)
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    no_body = status < 200 or status in (204, 304)
    if not no_body:
        lines.append(f"Content-Type: {resp.content_type}")
        lines.append(f"Content-Length: {len(resp.body)}")
    for k, v in resp.headers.items():
        if k.lower() in ("content-length", "connection", "transfer-encoding"):
            continue
        lines.append(f"{k}: {v}")
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if head_only or no_body:
        return head
    return head + resp.body


# ---------------------------------------------------------------------------------------------------------
# The server


class HttpServer:
    """``HttpServer(routes)``; ``await start(host, port)`` (port 0 picks one: see ``.port``); ``await stop()``.

    ``observer(route, status)`` is called once per answered request (route = the matched path, or
    ``"unmatched"``); by default the router's ``observer`` is used.
    """

    def __init__(
        self,
        routes: Router | Mapping[tuple[str, str], Handler] | Iterable[tuple[str, str, Handler]],
        *,
        max_body: int = 1 << 20,
        max_header_bytes: int = 16384,
        idle_timeout: float = 60,
        observer: Observer | None = None,
    ) -> None:
        self.router = _as_router(routes)
        self.max_body = int(max_body)
        self.max_header_bytes = int(max_header_bytes)
        self.idle_timeout = idle_timeout
        self.observer = observer if observer is not None else self.router.observer
        self.host: str | None = None
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_HttpProtocol] = set()
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
        self._server = await loop.create_server(lambda: _HttpProtocol(self), host, port, **kwargs)
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
            if conn.worker is None and not conn.queue and conn.transport is not None:
                conn.transport.close()
            else:
                conn._stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._conns and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        await server.wait_closed()

    def _observe(self, route: str, status: int) -> None:
        if self.observer is not None:
            try:
                self.observer(route, status)
            except Exception:  # pragma: no cover - metrics must never break serving
                log.exception("HTTP observer failed")

    async def _dispatch(self, req: Request) -> Response:
        router = self.router
        handler = router.resolve(req.method, req.path)
        route = UNMATCHED
        try:
            if handler is None:
                allowed = router.allowed(req.path)
                if allowed:
                    route = req.path
                    resp = error(405, f"method {req.method} not allowed for {req.path}; allowed: {', '.join(allowed)}")
                    resp.headers["Allow"] = ", ".join(allowed)
                else:
                    resp = error(404, f"no route for {req.method} {req.path}")
            else:
                route = req.route = req.path
                resp = await handler(req)
                if not isinstance(resp, Response):
                    raise TypeError(f"handler for {req.method} {req.path} returned {type(resp).__name__}, not Response")
        except HttpError as e:
            resp = e.response()
        except Exception:
            log.exception("handler for %s %s failed", req.method, req.path)
            resp = error(500, "internal error")
        self._observe(route, resp.status)
        return resp
