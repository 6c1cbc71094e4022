"""The HTTP connection's plain-request path against httptools, byte for byte.

The protocol parses "plain" requests (what programs send) itself and leaves everything else to
httptools. Whatever the bytes and however they are split into reads, a connection with the plain path
on must hand the handlers the same requests, write the same bytes and close the same way as one that
feeds everything to httptools.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgate.http import _protocol
from imgate.http._protocol import HttpProtocol
from imgate.http.server import HttpServer, Response, Router

MAX_BODY = 64
MAX_HEADER = 512


class Transport:
    def __init__(self):
        self.out = bytearray()
        self.closed = False
        self.eof = False
        self.paused = False

    def write(self, data):
        self.out += data

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 4242) if name == "peername" else default

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def can_write_eof(self):
        return True

    def write_eof(self):
        self.eof = True

    def is_closing(self):
        return self.closed


def run_connection(chunks: list[bytes], fast: bool) -> tuple[list, bytes, bool, bool]:
    seen = []

    def record(req):
        seen.append((req.method, req.path, req.query_string, sorted(req.headers.items()), req.body,
                     req.version, req.keep_alive))
        return Response(200, b"n=%d" % len(seen), "text/plain")

    router = Router()
    for path in ("/a", "/b/c", "/"):
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            router.add(method, path, record)

    async def go():
        server = HttpServer(router, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, idle_timeout=0, fast_path=fast)
        proto = HttpProtocol(server)
        t = Transport()
        proto.connection_made(t)
        for chunk in chunks:
            if t.closed:
                break
            proto.data_received(chunk)
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        return t

    t = asyncio.run(go())
    return seen, bytes(t.out), t.closed, t.eof


# -- requests: mostly plain, with every way of not being plain mixed in

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "get", "FOO", "CONNECT"])
TARGETS = st.sampled_from([
    "/a", "/a?x=1&y=2", "/b/c?mids=1,2,3&operation=1000", "/", "/a?", "/a?q=%20", "/a%2Fb", "/a#frag",
    "/nothere", "http://h/a?x=1", "*", "/a?x=\x7f", "/a\tb", "/a?k=v?w", "/a?" + "q" * 480,
])
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "])
HEADER_LINES = st.sampled_from([
    "Host: t", "User-Agent: bench/1.0", "Accept: */*", "X-Empty:", "X-Pad:   spaced   ", "X-Tab:\tv\t",
    "Connection: keep-alive", "Connection: Keep-Alive", "Connection: close", "Connection: upgrade",
    "Upgrade: websocket", "Expect: 100-continue", "Transfer-Encoding: chunked", "X-Dup: 1", "x-dup: 2",
    "Bad Name: v", "NoColon", " folded: v", "X-Utf8: \xe9", "X-Ctl: a\x01b", "Content-Type: application/json",
    "X-Big: " + "b" * 300, "content-length: 5", "Content-Length: 00",
])


@st.composite
def request(draw):
    method = draw(METHODS)
    target = draw(TARGETS)
    version = draw(VERSIONS)
    lines = draw(st.lists(HEADER_LINES, max_size=4))
    body = draw(st.binary(max_size=80))
    cl = draw(st.sampled_from(["exact", "none", "twice", "bad", "short"]))
    if cl == "exact":
        lines.append(f"Content-Length: {len(body)}")
    elif cl == "twice":
        lines += [f"Content-Length: {len(body)}", f"Content-Length: {len(body)}"]
    elif cl == "bad":
        lines.append("Content-Length: 1x")
    elif cl == "short":
        lines.append(f"Content-Length: {max(0, len(body) - 1)}")
        body = body[:-1]
    else:
        body = b""
    if any(line.startswith("Transfer-Encoding") for line in lines):
        body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
        lines = [line for line in lines if not line.startswith("Content-Length")]
    eol = draw(st.sampled_from(["\r\n"] * 9 + ["\n"]))
    head = f"{method} {target} {version}{eol}" + "".join(f"{line}{eol}" for line in lines) + eol
    return head.encode("latin-1") + body


@st.composite
def stream(draw):
    # requests repeated byte for byte, as a program sends them: the connection reuses the last plain
    # request's parsed path and header block (_plain.PlainMemo), so repeats must parse like the first
    reqs = draw(st.lists(request(), min_size=1, max_size=3))
    order = draw(st.lists(st.integers(0, len(reqs) - 1), min_size=1, max_size=6))
    data = b"".join(reqs[i] for i in order)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    chunks, prev = [], 0
    for c in cuts + [len(data)]:
        chunks.append(data[prev:c])
        prev = c
    return [c for c in chunks if c]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream())
def test_plain_path_matches_httptools(chunks):
    assert run_connection(chunks, fast=True) == run_connection(chunks, fast=False)


class CountingParser:
    """Stands for httptools' parser: counts the bytes the connection leaves to httptools."""

    fed = 0

    def __init__(self, protocol):
        pass

    def feed_data(self, data):
        CountingParser.fed += len(data)


def test_plain_requests_do_take_the_plain_path(monkeypatch):
    # the property above would pass if the plain path never ran: check it handles the plain kind, and
    # gives up at the first request that is not plain
    plain = b"POST /a?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    other = b"POST /a?x=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    monkeypatch.setattr(_protocol.httptools, "HttpRequestParser", CountingParser)

    async def taken(data):
        server = HttpServer(Router(), idle_timeout=0)
        proto = HttpProtocol(server)
        proto.connection_made(Transport())
        CountingParser.fed = 0
        proto.data_received(data)
        return len(data) - CountingParser.fed

    assert asyncio.run(taken(plain * 3)) == 3 * len(plain)
    assert asyncio.run(taken(plain + other + plain)) == len(plain)
    assert asyncio.run(taken(plain[:-1])) == 0  # the body is not all here yet


@pytest.mark.parametrize("fast", [True, False])
def test_pipelined_plain_requests_in_one_read_one_write(fast):
    req = b"GET /a?i=%d HTTP/1.1\r\nHost: t\r\n\r\n"
    seen, out, closed, _ = run_connection([b"".join(req % i for i in range(20))], fast)
    assert [s[2] for s in seen] == [f"i={i}" for i in range(20)]
    assert out.count(b"HTTP/1.1 200 OK") == 20 and not closed


HEAD = "Host: t\r\nAuthorization: Bearer k1\r\nContent-Length: 3\r\n\r\n"


@pytest.mark.parametrize("chunks", [
    # the same header block under other targets and bodies, then a different one, then the first again
    [f"POST /a?i={i} HTTP/1.1\r\n{HEAD}ab{i}".encode() for i in range(3)]
    + [b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nz", f"POST /b/c HTTP/1.1\r\n{HEAD}xyz".encode()],
    # the same path under other header blocks: a field added, one refused, a bad length
    [b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /a HTTP/1.1\r\nHost: t\r\nX: 1\r\n\r\n",
     b"GET /a HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\n\r\n", b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"],
    # a repeated head whose body is split over reads, and a repeat cut inside its head
    [f"POST /a HTTP/1.1\r\n{HEAD}abc".encode() + f"POST /a HTTP/1.1\r\n{HEAD}a".encode(), b"bc",
     f"POST /a HTTP/1.1\r\n{HEAD}"[:30].encode(), f"POST /a HTTP/1.1\r\n{HEAD}abc"[30:].encode()],
    # a repeated head that no longer fits the header limit once the target grows
    [f"POST /a HTTP/1.1\r\n{HEAD}abc".encode(), f"POST /a?{'q' * 460} HTTP/1.1\r\n{HEAD}abc".encode()],
])
def test_repeated_heads_parse_like_httptools(chunks):
    assert run_connection(chunks, fast=True) == run_connection(chunks, fast=False)


def test_a_repeated_head_is_reused_and_each_request_owns_its_headers():
    got = []

    def handler(req):
        got.append((req.path, dict(req.headers), req.headers))
        req.headers["host"] = "changed by a handler"   # must not reach the next request
        req.headers.pop("authorization", None)
        return Response(200, b"", "text/plain")

    router = Router()
    router.add("POST", "/a", handler)

    async def go():
        server = HttpServer(router, idle_timeout=0)
        proto = HttpProtocol(server)
        proto.connection_made(Transport())
        proto.data_received(b"".join(f"POST /a?i={i} HTTP/1.1\r\n{HEAD}abc".encode() for i in range(3)))

    asyncio.run(go())
    want = {"host": "t", "authorization": "Bearer k1", "content-length": "3"}
    assert [g[1] for g in got] == [want] * 3
    assert len({id(g[2]) for g in got}) == 3          # a dict of its own per request
    # the second and third took the first's parsed fields: the same path and value objects
    assert got[1][0] is got[2][0]
    firsts = [g for g in got[1:]]
    assert firsts[0][1]["authorization"] is firsts[1][1]["authorization"]
