"""Fuzz harnesses: each ``one_*(data)`` feeds arbitrary bytes to one parser of untrusted input and
fails (raises AssertionError, or lets an unexpected exception out) when the parser does something other
than accept the input or refuse it with its documented error.

Run long with atheris (``make fuzz``: ``fuzz/run.py``); ``tests/test_fuzz_smoke.py`` runs every
harness over a bounded number of seeded inputs in ``make test``.
"""

from __future__ import annotations

import json

from imgate.auth import AuthError, parse_auth_body
from imgate.core import (
    FrameDecoder,
    ProtocolError,
    WebSocketError,
    WebSocketHandshake,
    WebSocketParser,
    encode_frame,
)

MAX_BODY = 4096


def _split(data: bytes) -> list[bytes]:
    """Cut the input into chunks at points the input itself chooses (its first byte): the parsers
    must give the same answer however the stream is cut."""
    if not data:
        return [b""]
    step = data[0] % 17 + 1
    rest = data[1:]
    return [rest[i:i + step] for i in range(0, len(rest), step)] or [b""]


def one_goim_frames(data: bytes) -> None:
    """The goim decoder: whole input at once and chunk by chunk give the same frames or the same error;
    every frame re-encodes to the bytes it came from."""
    def decode(chunks):
        dec = FrameDecoder(max_body=MAX_BODY)
        frames = []
        try:
            for c in chunks:
                frames.extend(dec.feed(c))
        except ProtocolError:
            return frames, True
        return frames, False

    whole, failed = decode([data[1:]] if data else [b""])
    parts, failed2 = decode(_split(data))
    assert failed == failed2, "an error depends on how the stream is cut"
    if not failed:
        assert [(f.op, f.seq, f.body) for f in whole] == [(f.op, f.seq, f.body) for f in parts]
        encoded = b"".join(encode_frame(f.op, f.seq, f.body, f.ver) for f in whole)
        assert data[1:].startswith(encoded)
    for f in whole:
        assert len(f.body) <= MAX_BODY


def one_websocket(data: bytes) -> None:
    """The WebSocket parser (client-to-server frames): messages or WebSocketError, bounded sizes."""
    p = WebSocketParser(max_message=MAX_BODY)
    try:
        for c in _split(data):
            for opcode, payload in p.feed(c):
                assert opcode in (1, 2) and len(payload) <= MAX_BODY
            p.take_output()
    except WebSocketError as e:
        assert 1000 <= e.code < 5000
        e.close_frame()


def one_handshake(data: bytes) -> None:
    """The upgrade request: complete with ok and a 101, or a refusal with a 4xx answer, never a crash."""
    hs = WebSocketHandshake(max_header_bytes=2048)
    done = False
    for c in _split(data):
        if hs.feed(c):
            done = True
            break
    if done:
        assert hs.complete
        head = hs.response.split(b"\r\n", 1)[0]
        if hs.ok:
            assert head.startswith(b"HTTP/1.1 101"), head
        else:
            assert head[9:10] in (b"4", b"5"), head


def one_auth_body(data: bytes) -> None:
    """goim's auth body: normalised fields or AuthError."""
    try:
        fields = parse_auth_body(data)
    except AuthError as e:
        assert str(e)
        return
    assert isinstance(fields["mid"], int) and 0 <= fields["mid"] < 1 << 63
    assert len(fields["key"]) <= 128 and "," not in fields["key"]
    assert len(fields["room_id"]) <= 256
    json.dumps(fields)


class _ImLimits:
    """What ImService._new_message reads of its service: the content bound."""

    max_message_bytes = 16384


def one_im_body(data: bytes) -> None:
    """An IM request body (MSG_SEND, SYNC, ACK, READ fields): a validated message or ImError with a
    code and a message, never another exception."""
    from imgate.im.protocol import ImError, get_int, parse_body
    from imgate.im.service import ImService

    try:
        req = parse_body(data)
    except ImError as e:
        assert e.code and str(e)
        return
    assert isinstance(req, dict)
    try:
        msg = ImService._new_message(_ImLimits, 7, req)
        assert len(msg.content.encode()) <= _ImLimits.max_message_bytes
    except ImError as e:
        assert e.code and str(e)
    for name in ("after", "limit", "seq"):
        try:
            assert 0 <= get_int(req, name, lo=0, default=0) < 1 << 63
        except ImError as e:
            assert e.code and str(e)


class _Transport:
    """Keeps what the HTTP connection writes; enough of an asyncio transport for it."""

    def __init__(self):
        self.out = bytearray()
        self.closed = False

    def write(self, data):
        self.out += data

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self):
        return self.closed

    def get_write_buffer_size(self):
        return 0

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def can_write_eof(self):
        return False

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


_HTTP = {}


def _http_server(fast: bool):
    from imgate.http.server import HttpServer, Response, Router

    if fast not in _HTTP:
        router = Router()
        router.add("POST", "/p", lambda req: Response(200, req.body, "text/plain"), "public")
        router.add("GET", "/g", lambda req: Response(200, repr(req.query).encode(), "text/plain"), "public")
        _HTTP[fast] = HttpServer(router, max_body=MAX_BODY, max_header_bytes=2048, fast_path=fast, idle_timeout=0)
    return _HTTP[fast]


_LOOP = None


def one_http(data: bytes) -> None:
    """The HTTP request parser, compiled fast path and httptools alike: every reply is a well-formed
    status line. Runs on a private event loop, which gets to run after each input (so the replies
    that wait for a task are written, and timers and tasks of closed connections go away)."""
    global _LOOP
    if _LOOP is None:
        import asyncio

        _LOOP = asyncio.new_event_loop()
    for fast in (True, False):
        out = _LOOP.run_until_complete(_http_once(data, fast))
        while out:
            assert out.startswith(b"HTTP/1.1 "), out[:40]
            head, sep, rest = out.partition(b"\r\n\r\n")
            assert sep, "a reply without the end of its head"
            n = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
            out = rest[n[0]:] if n else b""


async def _http_once(data: bytes, fast: bool) -> bytes:
    import asyncio

    from imgate.http._protocol import HttpProtocol

    server = _http_server(fast)
    proto = HttpProtocol(server)
    t = _Transport()
    proto.connection_made(t)
    for c in _split(data):
        if t.closed:
            break
        proto.data_received(c)
    for _ in range(3):   # the answers that went to a task
        await asyncio.sleep(0)
    proto.connection_lost(None)
    await asyncio.sleep(0)
    server._conns.discard(proto)
    return bytes(t.out)


HARNESSES = {
    "goim_frames": one_goim_frames,
    "websocket": one_websocket,
    "handshake": one_handshake,
    "auth_body": one_auth_body,
    "http": one_http,
    "im_body": one_im_body,
}

#: a few valid inputs each to start from
SEEDS = {
    "goim_frames": [b"\x05" + encode_frame(7, 1, b'{"mid":1}') + encode_frame(2, 2, b"")],
    "websocket": [b"\x03\x82\x85\x01\x02\x03\x04" + bytes(b ^ m for b, m in zip(b"hello", b"\x01\x02\x03\x04\x01"))],
    "handshake": [b"\x07GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"],
    "im_body": [b'{"cmid": "c1", "to": 2, "type": "text", "content": {"text": "hi"}}', b'{"after": 0, "limit": 10}'],
    "auth_body": [b'{"mid": 1, "key": "k", "room_id": "live://1", "platform": "web", "accepts": [1000], "token": ""}'],
    "http": [b"\x09POST /p?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /g?x=%41 HTTP/1.1\r\n\r\n",
             b"\x04POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
}
