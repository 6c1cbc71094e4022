"""imgate.http.server against real sockets: a server on 127.0.0.1:0 in a background event loop (asyncio and
uvloop), clients are plain blocking sockets so that every byte on the wire is the test's choice."""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import socket
import threading
import time

import pytest
import uvloop

from polling import wait_until

from imgate.http.server import (
    HttpError,
    HttpServer,
    Request,
    Response,
    Router,
    error,
    json_response,
    ok,
    static_file,
)

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


# ---------------------------------------------------------------------------------------------------------
# Routing, requests, responses


def test_routing_query_headers_body(srv):
    c = Conn(srv.port)
    c.send(get("/echo?a=1&b=x%20y&a=2&empty=", "X-Custom: Hello\r\n"))
    status, headers, data = c.json()
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert data["code"] == 0 and data["message"] == ""
    d = data["data"]
    assert d["method"] == "GET" and d["path"] == "/echo"
    assert d["query"] == {"a": "2", "b": "x y", "empty": ""}  # last value wins
    assert d["query_list"] == [["a", "1"], ["b", "x y"], ["a", "2"], ["empty", ""]]
    assert d["headers"]["x-custom"] == "Hello"  # lower-case names, values as sent
    assert d["remote_is_loopback"] and d["version"] == "1.1"

    c.send(post("/echo", b"hello body"))
    status, _, data = c.json()
    assert status == 200 and data["data"]["method"] == "POST" and data["data"]["body"] == "hello body"
    c.close()


def test_percent_encoded_path(srv):
    c = Conn(srv.port)
    c.send(get("/%65cho"))
    status, _, data = c.json()
    assert status == 200 and data["data"]["path"] == "/echo"


def test_keep_alive_two_requests_one_connection(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/echo?n=1")
    r1 = conn.getresponse()
    assert r1.status == 200 and json.loads(r1.read())["data"]["query"] == {"n": "1"}
    sock = conn.sock
    assert sock is not None and r1.getheader("Connection") is None
    conn.request("POST", "/echo?n=2", body=b"xyz")
    r2 = conn.getresponse()
    assert r2.status == 200 and json.loads(r2.read())["data"]["body"] == "xyz"
    assert conn.sock is sock  # the same connection served both
    conn.close()


def test_pipelined_requests_answered_in_order(srv):
    c = Conn(srv.port)
    # The first request is slow: the later, fast ones must still be answered after it.
    c.send(get("/slow?n=first&s=0.2") + get("/echo?n=2") + post("/echo?n=3", b"abc") + get("/nope") + get("/slow?n=last&s=0"))
    s1, _, d1 = c.json()
    s2, _, d2 = c.json()
    s3, _, d3 = c.json()
    s4, _, d4 = c.json()
    s5, _, d5 = c.json()
    assert (s1, d1["data"]) == (200, {"slow": "first"})
    assert (s2, d2["data"]["query"]) == (200, {"n": "2"})
    assert (s3, d3["data"]["body"]) == (200, "abc")
    assert s4 == 404
    assert (s5, d5["data"]) == (200, {"slow": "last"})
    c.close()


def test_sync_handler_and_mixed_pipeline_keep_order(srv, observed):
    # a waiting handler first: the ones behind it (sync, coroutine that does not wait) must not overtake it
    c = Conn(srv.port)
    c.send(get("/slow?s=0.2&n=1") + get("/sync?n=2") + get("/echo?n=3") + get("/slow?s=0.01&n=4") + get("/sync?n=5"))
    got = [c.json()[2]["data"] for _ in range(5)]
    assert [d.get("slow") or d.get("n") or d["query"]["n"] for d in got] == ["1", "2", "3", "4", "5"]
    assert got[1] == {"sync": True, "n": "2"}
    # nothing waits now: answered at once, still in order, on the same connection
    c.send(get("/sync?n=6") + get("/awaitable") + get("/sync?n=7"))
    assert [c.json()[2]["data"] for _ in range(3)] == [{"sync": True, "n": "6"}, {"awaitable": True}, {"sync": True, "n": "7"}]
    c.close()
    assert ("/sync", 200) in observed and ("/awaitable", 200) in observed


def test_sync_handler_errors_and_errors_after_waiting(srv, observed, caplog):
    c = Conn(srv.port)
    c.send(get("/sync-teapot") + get("/late-boom") + get("/sync?n=1"))
    status, _, body = c.json()
    assert (status, body["message"]) == (418, "sync and stout")
    status, _, body = c.json()
    assert (status, body["message"]) == (500, "internal error")
    status, _, body = c.json()
    assert status == 200 and body["data"]["n"] == "1"
    c.close()
    assert ("/late-boom", 500) in observed and ("/sync-teapot", 418) in observed
    assert "handler bug after waiting" in caplog.text


def test_many_pipelined_requests(srv):
    # More than the server keeps queued before it pauses reading: exercises pause/resume.
    n = 200
    c = Conn(srv.port)
    c.send(b"".join(get(f"/echo?i={i}") for i in range(n)))
    for i in range(n):
        status, _, data = c.json()
        assert status == 200 and data["data"]["query"] == {"i": str(i)}
    c.close()


def test_request_split_in_tiny_pieces(srv):
    c = Conn(srv.port)
    raw = post("/echo?x=1", b"0123456789", "X-A: b\r\n")
    for i in range(len(raw)):
        c.send(raw[i:i + 1])
    status, _, data = c.json()
    assert status == 200 and data["data"]["body"] == "0123456789"


def test_chunked_request_body(srv):
    c = Conn(srv.port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, _, data = c.json()
    assert status == 200 and data["data"]["body"] == "hello world"


def test_head_uses_get_handler_without_body(srv):
    c = Conn(srv.port)
    c.send(b"HEAD /raw HTTP/1.1\r\nHost: t\r\n\r\n" + get("/raw"))
    status, headers, body = c.response(head_only=True)
    assert status == 201 and body == b"" and headers["content-length"] == str(len(b"[1,2,3]"))
    status, headers, body = c.response()
    assert status == 201 and body == b"[1,2,3]" and headers["x-extra"] == "yes"


def test_204_has_no_body(srv):
    c = Conn(srv.port)
    c.send(b"DELETE /empty HTTP/1.1\r\nHost: t\r\n\r\n" + get("/raw"))
    status, headers, body = c.response(head_only=True)
    assert status == 204 and "content-length" not in headers
    assert c.response()[0] == 201


def test_expect_100_continue(srv):
    c = Conn(srv.port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = c.response(head_only=True)
    assert status == 100
    c.send(b"data")
    status, _, data = c.json()
    assert status == 200 and data["data"]["body"] == "data"


# ---------------------------------------------------------------------------------------------------------
# Errors


def test_404_unknown_route(srv, observed):
    c = Conn(srv.port)
    c.send(get("/x"))
    status, _, data = c.json()
    assert status == 404
    assert data == {"code": -404, "message": "no route for GET /x", "data": None}
    c.send(get("/echo"))  # the connection stays usable
    assert c.json()[0] == 200
    assert ("unmatched", 404) in observed and ("/echo", 200) in observed


def test_405_wrong_method_with_allow(srv, observed):
    c = Conn(srv.port)
    c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    status, headers, data = c.json()
    assert status == 405
    assert set(headers["allow"].split(", ")) == {"GET", "POST", "HEAD"}
    assert data["code"] == -405 and "PUT" in data["message"] and data["data"] is None
    assert ("/echo", 405) in observed


def test_dict_observer_is_counted_by_the_server(loop_kind):
    # the node's way: the metrics' count dict as the observer, bumped without a call per request
    r = make_router()
    counts = {}
    r.observer = counts
    s = ServerThread(r, loop_kind, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, idle_timeout=5).start()
    try:
        c = Conn(s.port)
        for target in ("/echo", "/echo", "/x", "/teapot"):
            c.send(get(target))
            c.json()
        c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        c.json()
        assert counts == {("/echo", 200): 2, ("unmatched", 404): 1, ("/teapot", 418): 1, ("/echo", 405): 1}
    finally:
        s.stop()


def test_counter_observer_and_router_with_its_own_resolve(loop_kind):
    # a dict subclass is counted in too; a router overriding resolve() is asked, not bypassed
    class Aliases(Router):
        def resolve(self, method, path):
            return super().resolve(method, "/echo" if path == "/alias" else path)

    r = Aliases()
    r.add("GET", "/echo", make_router().resolve("GET", "/echo"))
    counts = collections.Counter()
    r.observer = counts
    assert r.paths is None and make_router().paths is not None
    s = ServerThread(r, loop_kind, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, idle_timeout=5).start()
    try:
        c = Conn(s.port)
        for target in ("/alias", "/echo", "/nope"):
            c.send(get(target))
            c.json()
        assert counts == {("/alias", 200): 1, ("/echo", 200): 1, ("unmatched", 404): 1}
    finally:
        s.stop()


def test_big_replies_to_a_slow_reader_arrive_whole_and_in_order(loop_kind):
    # replies go straight to the socket while the transport holds nothing; once a send() falls short
    # the transport takes the rest, and the order, until it has drained
    big = b"z" * (1 << 20)

    def sized(req: Request) -> Response:
        return Response(200, req.query["i"].encode() + b":" + big)

    r = Router()
    r.add("GET", "/big", sized)
    s = ServerThread(r, loop_kind, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, idle_timeout=5).start()
    try:
        c = Conn(s.port)
        # 24 MiB of replies, more than the kernel buffers on both ends hold, each request in a read of
        # its own: while the client does not read, a send() falls short and later replies must queue
        # behind the transport's rest
        for i in range(24):
            c.send(get(f"/big?i={i}"))
            time.sleep(0.01)
        for i in range(24):
            status, _, body = c.response()
            assert status == 200 and body == str(i).encode() + b":" + big
        c.send(get("/big?i=99"))  # drained: straight to the socket again
        assert c.response()[2] == b"99:" + big
    finally:
        s.stop()


def test_413_from_content_length_before_reading(srv):
    c = Conn(srv.port)
    # Only the head is sent: the server must answer from Content-Length alone.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
    status, headers, data = c.json()
    assert status == 413
    assert data == {"code": -413, "message": f"request body exceeds {MAX_BODY} bytes", "data": None}
    assert headers["connection"] == "close"
    assert c.at_eof()


def test_413_big_body_actually_sent_still_gets_the_reply(srv):
    c = Conn(srv.port)
    body = b"x" * 300_000
    c.sock.settimeout(5)

    def sender():
        try:
            c.send(post("/echo", body))
        except OSError:
            pass

    t = threading.Thread(target=sender)
    t.start()
    status, _, data = c.json()
    t.join(5)
    assert status == 413 and data["message"] == f"request body exceeds {MAX_BODY} bytes"


def test_413_chunked_body_too_big(srv):
    c = Conn(srv.port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        c.send(b"190\r\n" + b"y" * 400 + b"\r\n")  # 5 x 400 bytes > 1000
    status, _, data = c.json()
    assert status == 413 and data["message"] == f"request body exceeds {MAX_BODY} bytes"
    assert c.at_eof()


def test_413_after_earlier_pipelined_request_is_answered_first(srv):
    c = Conn(srv.port)
    c.send(get("/slow?n=a&s=0.1") + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\n\r\n")
    assert c.json()[2]["data"] == {"slow": "a"}
    assert c.json()[0] == 413
    assert c.at_eof()


def test_431_header_section_too_big(srv):
    c = Conn(srv.port)
    c.send(get("/echo", f"X-Big: {'a' * (MAX_HEADER + 10)}\r\n"))
    status, _, data = c.json()
    assert status == 431 and data["code"] == -431 and str(MAX_HEADER) in data["message"]
    assert c.at_eof()


def test_431_many_headers_in_small_pieces(srv):
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n")
    try:
        for i in range(2000):
            c.send(f"X-H{i}: {'v' * 50}\r\n".encode())
    except OSError:
        pass
    status, _, data = c.json()
    assert status == 431


def test_431_unterminated_header_line(srv):
    # One header value that never ends, sent in pieces: bounded even though no callback fires.
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.1\r\nX-Endless: ")
    try:
        for _ in range(40):
            c.send(b"z" * 1024)
            time.sleep(0.005)
    except OSError:
        pass
    status, _, data = c.json()
    assert status == 431


def test_431_long_url(srv):
    c = Conn(srv.port)
    c.send(get("/echo?q=" + "u" * (MAX_HEADER + 1)))
    assert c.json()[0] == 431


def test_headers_just_under_the_limit_pass(srv):
    c = Conn(srv.port)
    c.send(get("/echo", f"X-Big: {'a' * (MAX_HEADER - 200)}\r\n"))
    assert c.json()[0] == 200


def test_malformed_request_400_then_server_serves_next_client(srv):
    c = Conn(srv.port)
    c.send(b"\x00\x01\x02 this is not http\r\n\r\n")
    status, headers, data = c.json()
    assert status == 400
    assert data == {"code": -400, "message": "malformed HTTP request", "data": None}
    assert headers["connection"] == "close"
    assert c.at_eof()
    c2 = Conn(srv.port)
    c2.send(get("/echo"))
    assert c2.json()[0] == 200


def test_malformed_after_good_request(srv):
    c = Conn(srv.port)
    c.send(get("/echo?n=1") + b"GET /echo HTTP/1.1\r\nBad Header Line\r\n\r\n")
    assert c.json()[0] == 200
    assert c.json()[0] == 400
    assert c.at_eof()


def test_handler_exception_500_and_connection_goes_on(srv, caplog):
    c = Conn(srv.port)
    with caplog.at_level("ERROR", logger="imgate.http"):
        c.send(get("/boom"))
        status, _, data = c.json()
    assert status == 500 and data == {"code": -500, "message": "internal error", "data": None}
    assert any("handler bug" in (r.exc_text or "") or (r.exc_info and "handler bug" in str(r.exc_info[1])) for r in caplog.records)
    c.send(get("/bad-return"))
    assert c.json()[0] == 500
    c.send(get("/echo"))
    assert c.json()[0] == 200
    c2 = Conn(srv.port)
    c2.send(get("/echo"))
    assert c2.json()[0] == 200


def test_http_error_from_handler(srv):
    c = Conn(srv.port)
    c.send(get("/teapot"))
    status, _, data = c.json()
    assert status == 418 and data == {"code": 4180, "message": "short and stout", "data": None}


def test_connection_close_honoured(srv):
    c = Conn(srv.port)
    c.send(get("/echo", "Connection: close\r\n") + get("/echo?never=1"))
    status, headers, _ = c.json()
    assert status == 200 and headers["connection"] == "close"
    assert c.at_eof()
    assert c.buf == b""  # the request after it was not answered


def test_http10_closes_unless_keep_alive(srv):
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.0\r\n\r\n")
    status, headers, data = c.json()
    assert status == 200 and data["data"]["version"] == "1.0"
    assert c.at_eof()
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = c.json()
    assert headers["connection"] == "keep-alive"
    c.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.json()[0] == 200


def test_half_closed_client_still_gets_answers(srv):
    c = Conn(srv.port)
    c.send(get("/slow?n=x&s=0.05") + get("/echo?n=y"))
    c.sock.shutdown(socket.SHUT_WR)
    assert c.json()[2]["data"] == {"slow": "x"}
    assert c.json()[2]["data"]["query"] == {"n": "y"}
    assert c.at_eof()


def test_upgrade_request_answered_then_closed(srv):
    c = Conn(srv.port)
    c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello")
    status, headers, _ = c.json()
    assert status == 200 and headers["connection"] == "close"
    assert c.at_eof()


# ---------------------------------------------------------------------------------------------------------
# Lifecycle


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_idle_connection_closed(kind):
    s = ServerThread(make_router(), kind, idle_timeout=0.3).start()
    try:
        c = Conn(s.port)
        c.send(get("/echo"))
        assert c.json()[0] == 200
        assert c.at_eof(), "an idle keep-alive connection is closed by the server"
    finally:
        s.stop()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_stop_finishes_request_in_progress_and_closes(kind):
    entered, release = threading.Event(), threading.Event()

    async def held(req: Request) -> Response:
        entered.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        return ok({"held": True})

    router = make_router()
    router.add("GET", "/held", held)
    s = ServerThread(router, kind).start()
    port = s.port
    busy = Conn(port)
    idle = Conn(port)
    idle.send(get("/echo"))
    assert idle.json()[0] == 200
    busy.send(get("/held"))
    assert entered.wait(30), "the request is in progress"
    stopping = asyncio.run_coroutine_threadsafe(s.server.stop(grace=60), s.loop)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError:
            return True
        return False

    wait_until(refused, what="the server to stop listening")
    release.set()  # only now may the request in progress finish: it must still be answered
    status, headers, data = busy.json()
    assert status == 200 and data["data"] == {"held": True} and headers["connection"] == "close"
    assert busy.at_eof() and idle.at_eof()
    stopping.result(60)
    s.loop.call_soon_threadsafe(s.loop.stop)
    s.thread.join(30)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_start_on_port_zero_reports_port(loop_kind):
    s = ServerThread(make_router(), loop_kind).start()
    try:
        assert isinstance(s.port, int) and s.port > 0
        assert s.server.host == "127.0.0.1"
    finally:
        s.stop()


# ---------------------------------------------------------------------------------------------------------
# Helpers without a server


def test_envelope_helpers():
    assert ok({"a": 1}).json() == {"code": 0, "message": "", "data": {"a": 1}}
    assert ok().json() == {"code": 0, "message": "", "data": None}
    r = error(400, "missing parameter 'x'")
    assert r.status == 400 and r.json() == {"code": -400, "message": "missing parameter 'x'", "data": None}
    assert error(409, "conflict", code=7).json()["code"] == 7
    assert HttpError(404, "nope").response().json() == {"code": -404, "message": "nope", "data": None}
    j = json_response({"x": "é"})
    assert j.content_type == "application/json" and j.json() == {"x": "é"}


def test_router_rules():
    r = Router()

    async def h(req):
        return ok()

    r.add("get", "/a", h)
    with pytest.raises(ValueError):
        r.add("GET", "/a", h)
    with pytest.raises(ValueError):
        r.add("GET", "no-slash", h)
    assert r.routes() == [("GET", "/a")]
    assert r.resolve("HEAD", "/a") is h and r.resolve("POST", "/a") is None and r.resolve("GET", "/b") is None
    assert r.allowed("/a") == ["GET", "HEAD"] and r.allowed("/b") == []
    assert "/a" in r and len(r) == 1


def test_static_files():
    page = static_file("index.html")
    assert page.status == 200 and page.content_type == "text/html; charset=utf-8"
    assert b'id="status"' in page.body
    js = static_file("demo.js")
    assert js.content_type == "text/javascript; charset=utf-8" and b"WebSocket" in js.body
    for bad in ("nope.txt", "../config.py", ".hidden", ""):
        with pytest.raises(HttpError) as e:
            static_file(bad)
        assert e.value.status == 404
