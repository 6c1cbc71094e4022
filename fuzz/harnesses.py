"""Fuzz harnesses: each ``one_*(data)`` feeds arbitrary bytes to one parser of untrusted input and
fails (raises AssertionError, or lets an unexpected exception out) when the parser does something other
than accept the input or refuse it with its documented error.

Run long with atheris (``make fuzz``: ``fuzz/run.py``); ``tests/test_fuzz_smoke.py`` runs every
harness over a bounded number of seeded inputs in ``make test``.
"""

from __future__ import annotations

import asyncio
import json

# every module a harness reaches is imported here, so that fuzz/run.py instruments it and the compiled
# ones register their coverage counters before the fuzzer starts
from imgate.auth import AuthError, parse_auth_body
from imgate.cache.memory import MemoryCache
from imgate.core import (
    FrameDecoder,
    ProtocolError,
    WebSocketError,
    WebSocketHandshake,
    WebSocketParser,
    encode_frame,
)
from imgate.http._protocol import HttpProtocol
from imgate.http.server import HttpServer, Response, Router
from imgate.im.protocol import (
    E_BAD_REQUEST, E_FORBIDDEN, E_OUT_OF_RANGE, E_TOO_LARGE, INT64_MAX, OP_GROUP_ACK, OP_GROUP_PULL, OP_MSG_ACK,
    OP_MSG_SEND, OP_READ, OP_SYNC, ImError, get_int, parse_body,
)
from imgate.im.service import ImService
from imgate.im.store import ReadResult, Stored, SyncPage
from imgate.proxy._delivery import push_packed_nowait
from imgate.rpc.packed import pack_push, unpack_pushes

# The bounds the parsers are built with here: small enough that an input of MAX_LEN holds several
# messages at the bound and one just past it (at libFuzzer's default 4096-byte cap a 4096-byte body was
# never reachable whole), and that no harness spends its time on bytes that only repeat what a shorter
# input already did. The bound is a parameter of each parser: the code that enforces it is the same.
MAX_BODY = 512
MAX_HEADER = 1024
#: libFuzzer's -max_len per harness (fuzz/run.py passes it unless told otherwise): 2048 is four bodies
#: at MAX_BODY with their headers, or a head at MAX_HEADER and its body; longer inputs cost time in
#: proportion to their length (every input is also fed cut into small chunks) and reach no new state.
#: The other harnesses parse one bounded document and keep libFuzzer's default.
MAX_LEN = {"goim_frames": 2048, "websocket": 2048, "handshake": 2048, "http": 2048}


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


def one_goim_batch(data: bytes) -> None:
    """An op-9 body as the client takes it (imgate.client): whole frames back to back, or an error; a
    batch that ends inside a frame is refused, so every accepted batch re-encodes to its bytes."""
    dec = FrameDecoder(max_body=MAX_BODY)
    try:
        inner = dec.feed(data)
    except ProtocolError as e:
        assert str(e)
        return
    encoded = b"".join(encode_frame(f.op, f.seq, f.body, f.ver) for f in inner)
    assert dec.buffered == len(data) - len(encoded), "bytes lost or invented between frames"
    assert data.startswith(encoded)


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
    hs = WebSocketHandshake(max_header_bytes=MAX_HEADER)
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


SYNC_MAX = 50


class _CheckingStore:
    """A MessageStore that answers with empty results and asserts that everything the service hands
    it is already validated: ids and positions within the contract's ranges, content canonical JSON."""

    supports_groups = True

    async def max_seq(self, uid):
        assert 0 < uid <= INT64_MAX
        return 5

    async def send(self, msg):
        assert 0 < msg.sender <= INT64_MAX and 0 < len(msg.cmid) <= 128
        assert (msg.to is None) != (msg.group is None)
        assert msg.group is None or 0 < msg.group <= INT64_MAX
        assert len(msg.content.encode()) <= _ImLimits.max_message_bytes
        json.loads(msg.content)
        return Stored(1, 0, {msg.sender: 1}, duplicate=True)   # a duplicate: nothing to deliver

    async def sync(self, uid, after, limit):
        assert 0 <= after <= INT64_MAX and 1 <= limit <= SYNC_MAX
        return SyncPage([], False, 0, 1)

    async def mark_read(self, uid, conv, seq):
        assert isinstance(conv, str) and 0 <= seq <= INT64_MAX
        return ReadResult(seq, None)

    async def group_pull(self, uid, group, after, limit):
        assert 0 < group <= INT64_MAX and 0 <= after <= INT64_MAX and 1 <= limit <= SYNC_MAX
        return [], False, 0

    async def group_ack(self, uid, group, gseq):
        assert 0 < group <= INT64_MAX and 0 <= gseq <= INT64_MAX
        return gseq

    async def read_groups(self, uid):
        return []


_IM_OPS = (OP_MSG_SEND, OP_MSG_ACK, OP_SYNC, OP_GROUP_PULL, OP_GROUP_ACK, OP_READ)
#: what a refusal may say; 503 (an exception the service did not expect) is a failure
_IM_REFUSALS = {E_BAD_REQUEST, E_FORBIDDEN, E_OUT_OF_RANGE, E_TOO_LARGE}
_IM = {}


def one_im_op(data: bytes) -> None:
    """A whole IM operation through ImService.receive, ops 22-32 (the first byte chooses the op and
    whether the connection has a user id): the reply is empty or a JSON object, a refusal carries one
    of the documented codes, and the store only ever sees validated requests."""
    if not data:
        return
    if not _IM:
        _IM["loop"] = asyncio.new_event_loop()
        _IM["svc"] = ImService(_CheckingStore(), MemoryCache(), None, sync_max_limit=SYNC_MAX,
                               max_message_bytes=_ImLimits.max_message_bytes)
    op = _IM_OPS[data[0] % len(_IM_OPS)]
    mid = 0 if data[0] >= 0xF0 else 7
    out = _IM["loop"].run_until_complete(_IM["svc"].receive("fuzz", 1, mid, op, 1, data[1:]))
    if out:
        reply = json.loads(out)
        assert isinstance(reply, dict)
        if "code" in reply:
            assert reply["code"] in _IM_REFUSALS, reply
            assert isinstance(reply["error"], str) and reply["error"]


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
    if fast not in _HTTP:
        router = Router()
        router.add("POST", "/p", lambda req: Response(200, req.body, "text/plain"), "public")
        router.add("GET", "/g", lambda req: Response(200, repr(req.query).encode(), "text/plain"), "public")
        _HTTP[fast] = HttpServer(router, max_body=MAX_BODY, max_header_bytes=MAX_HEADER, fast_path=fast, idle_timeout=0)
    return _HTTP[fast]


_LOOP = None


def one_http(data: bytes) -> None:
    """The HTTP request parser, compiled fast path and httptools alike: every reply is a well-formed
    status line. Runs on a private event loop, which gets to run after each input (so the replies
    that wait for a task are written, and timers and tasks of closed connections go away)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    for out in _LOOP.run_until_complete(_http_both(data)):
        while out:
            assert out.startswith(b"HTTP/1.1 "), out[:40]
            head, sep, rest = out.partition(b"\r\n\r\n")
            assert sep, "a reply without the end of its head"
            n = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
            after = rest[n[0]:] if n else b""
            # a reply to HEAD says the length of the body it leaves out
            out = after if not after or after.startswith(b"HTTP/1.1 ") or not rest.startswith(b"HTTP/1.1 ") else rest


async def _http_both(data: bytes) -> list:
    """One connection per parser, fed the same chunks; then the event loop runs for both at once (its
    turns were a third of the time per input when each connection had its own)."""
    chunks = _split(data)
    conns = []
    for fast in (True, False):
        server = _http_server(fast)
        proto = HttpProtocol(server)
        t = _Transport()
        proto.connection_made(t)
        for c in chunks:
            if t.closed:
                break
            proto.data_received(c)
        conns.append((server, proto, t))
    # the answers that went to a task: the handlers here never wait, so a task writes in its first
    # step; one more turn of the loop only while the last one wrote something
    for _ in range(3):
        written = sum(len(t.out) for _s, _p, t in conns)
        await asyncio.sleep(0)
        if sum(len(t.out) for _s, _p, t in conns) == written:
            break
    for server, proto, _t in conns:
        proto.connection_lost(None)
    await asyncio.sleep(0)   # the cancelled timers and tasks of the closed connections go away
    for server, proto, _t in conns:
        server._conns.discard(proto)
    return [bytes(t.out) for _s, _p, t in conns]


class _PackedTable:
    def __init__(self):
        self.calls = []

    def send_many(self, chs, frame, op):
        self.calls.append((list(chs), frame, op))
        return len(chs)


class _PackedWorker:
    """What the compiled reader reads of a proxy: connections by id, the table, the counters."""

    def __init__(self, conns: dict):
        self._by_conn_id = conns
        self.table = _PackedTable()
        self.stats_counters = {"pushes": 0, "drops": 0}


def one_packed(data: bytes) -> None:
    """A PUSH_CONNS_PACKED body as a worker reads it (internal RPC input; pointer arithmetic in C): the
    compiled reader accepts exactly what the Python reader (imgate.rpc.packed) accepts, delivers those
    pushes in order to the connections it holds (ids divisible by 3 have left), and of a refused body
    delivers nothing."""
    try:
        want = unpack_pushes(data)
    except ValueError:
        want = None
    held = {cid: cid for ids, _op, _b in (want or ()) for cid in ids if cid % 3}
    worker = _PackedWorker(held)
    try:
        sent = push_packed_nowait(worker, data)
    except ValueError:
        assert want is None, "the compiled reader refused a body the Python reader takes"
        assert worker.table.calls == [] and worker.stats_counters == {"pushes": 0, "drops": 0}
        return
    assert want is not None, "the compiled reader took a body the Python reader refuses"
    expect = [([c for c in ids if c % 3], encode_frame(op, 0, body), op) for ids, op, body in want]
    expect = [e for e in expect if e[0]]
    assert worker.table.calls == expect
    assert sent == sum(len(e[0]) for e in expect) and worker.stats_counters["pushes"] == len(want)


HARNESSES = {
    "goim_frames": one_goim_frames,
    "goim_batch": one_goim_batch,
    "websocket": one_websocket,
    "handshake": one_handshake,
    "auth_body": one_auth_body,
    "http": one_http,
    "im_body": one_im_body,
    "im_op": one_im_op,
    "packed": one_packed,
}

SEEDS_IM_SEND = b'{"cmid": "c1", "to": 2, "type": "text", "content": {"text": "hi"}}'
#: a few valid inputs each to start from
SEEDS = {
    "goim_frames": [b"\x05" + encode_frame(7, 1, b'{"mid":1}') + encode_frame(2, 2, b"")],
    "goim_batch": [encode_frame(1000, 0, b'{"msgs":[]}') + encode_frame(1001, 0, b"x")],
    "websocket": [b"\x03\x82\x85\x01\x02\x03\x04" + bytes(b ^ m for b, m in zip(b"hello", b"\x01\x02\x03\x04\x01"))],
    "handshake": [b"\x07GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"],
    "im_body": [SEEDS_IM_SEND, b'{"after": 0, "limit": 10}'],
    "im_op": [b"\x00" + SEEDS_IM_SEND, b"\x02" + b'{"after": 3, "limit": 10}', b"\x01" + b'{"seq": 4}',
              b"\x03" + b'{"group": 9, "after": 0, "limit": 5}', b"\x04" + b'{"group": 9, "gseq": 2}',
              b"\x05" + b'{"conv": "u:2:7", "seq": 1}',
              # at the bounds, so that a mutation steps over them
              b"\x02" + b'{"after": 9223372036854775807, "limit": 50}',
              b"\x03" + b'{"group": 1, "after": 9223372036854775807, "limit": 50}'],
    "packed": [pack_push([7], 1000, b"hello") + pack_push([8, 9, 1 << 40], -5, b"") + pack_push([6], 1, b"x" * 40)],
    "auth_body": [b'{"mid": 1, "key": "k", "room_id": "live://1", "platform": "web", "accepts": [1000], "token": ""}'],
    "http": [b"\x09POST /p?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /g?x=%41 HTTP/1.1\r\n\r\n",
             b"\x04POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
}
