"""A real imgate.http.server for tests: one on 127.0.0.1:0 in a background event loop (asyncio or uvloop,
the ``loop_kind`` fixture), a router with routes of every kind (``make_router``; the ``srv`` fixture),
and ``Conn``, a blocking socket client so that every byte on the wire is the test's choice."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
import uvloop

from imgate.http.server import HttpError, HttpServer, Request, Response, Router, json_response, ok

MAX_BODY = 1000
MAX_HEADER = 4096


class ServerThread:
    """An HttpServer running on its own event loop in a daemon thread."""

    def __init__(self, router: Router, loop_kind: str, **kwargs):
        self.loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
        self.server = HttpServer(router, **kwargs)
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
        self._ready.set()
        self.loop.run_forever()
        self.loop.close()

    def start(self) -> "ServerThread":
        self.thread.start()
        assert self._ready.wait(10)
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self):
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace=1.0), self.loop)
        fut.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def make_router(observed: list | None = None) -> Router:
    r = Router()

    async def echo(req: Request) -> Response:
        return ok({
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "query_list": req.query_list,
            "body": req.body.decode("latin-1"),
            "headers": req.headers,
            "remote_is_loopback": bool(req.remote) and req.remote[0] == "127.0.0.1",
            "version": req.version,
        })

    async def slow(req: Request) -> Response:
        await asyncio.sleep(float(req.query.get("s", "0.2")))
        return ok({"slow": req.query.get("n")})

    async def boom(req: Request) -> Response:
        raise RuntimeError("handler bug")

    async def teapot(req: Request) -> Response:
        raise HttpError(418, "short and stout", code=4180)

    async def not_a_response(req: Request):
        return {"oops": True}

    async def raw(req: Request) -> Response:
        return json_response([1, 2, 3], status=201, headers={"X-Extra": "yes"})

    async def empty(req: Request) -> Response:
        return Response(204)

    def sync_echo(req: Request) -> Response:
        # a plain function: answered in the callback that read the request
        return ok({"sync": True, "n": req.query.get("n")})

    def sync_teapot(req: Request) -> Response:
        raise HttpError(418, "sync and stout")

    async def late_boom(req: Request) -> Response:
        await asyncio.sleep(0.05)
        raise RuntimeError("handler bug after waiting")

    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0.01).__await__()
            return ok({"awaitable": True})

    r.add("GET", "/sync", sync_echo)
    r.add("GET", "/sync-teapot", sync_teapot)
    r.add("GET", "/late-boom", late_boom)
    r.add("GET", "/awaitable", lambda req: Awaitable())
    r.add("GET", "/echo", echo)
    r.add("POST", "/echo", echo)
    r.add("GET", "/slow", slow)
    r.add("GET", "/boom", boom)
    r.add("GET", "/teapot", teapot)
    r.add("GET", "/bad-return", not_a_response)
    r.add("GET", "/raw", raw)
    r.add("DELETE", "/empty", empty)
    if observed is not None:
        r.observer = lambda route, status: observed.append((route, status))
    return r


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request):
    return request.param


@pytest.fixture
def observed():
    return []


@pytest.fixture
def srv(loop_kind, observed):
    s = ServerThread(make_router(observed), loop_kind, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, idle_timeout=5).start()
    yield s
    s.stop()


# ---------------------------------------------------------------------------------------------------------
# A tiny HTTP/1.1 response reader over a blocking socket


class Conn:
    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before a response; got {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        proto, status, _ = lines[0].split(" ", 2)
        assert proto == "HTTP/1.1"
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed in a response body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(status), headers, body

    def json(self) -> tuple[int, dict[str, str], dict]:
        status, headers, body = self.response()
        return status, headers, json.loads(body)

    def at_eof(self, timeout: float = 30.0) -> bool:
        """True when the server closed the connection (after any bytes left unread)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body
