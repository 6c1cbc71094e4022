"""imgate.http.server against real sockets: a server on 127.0.0.1:0 in a background event loop (asyncio and
uvloop), clients are plain blocking sockets so that every byte on the wire is the test's choice."""

import asyncio
import http.client
import json
import socket
import threading

import pytest

from httpserverutil import Conn, ServerThread, get, loop_kind, make_router, observed, post, srv  # noqa: F401 (fixtures)
from imgate.http.server import HttpError, Request, Response, Router, error, json_response, ok, static_file
from polling import wait_until


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

