"""goim v2 frame codec: imgate's Cython codec against a plain pure-Python one, side by side.

The pure-Python decoder and encoder below are the reference the "Done when" ratio is measured against
(benchmarks/ratios.py imports them from here, so both tools time the same code). They are written the
way a careful Python programmer would write them, not to lose: a precompiled ``struct.Struct``, local
name lookups in the loop, a ``__slots__`` frame object, one pass over the buffer per feed, the same
header validation as imgate's decoder and an owned ``bytes`` body per frame.

Timings use the thread's CPU clock (``time.thread_time``): the machine is shared, and wall time would
mostly measure the neighbours. Compare within a group only.
"""

import struct
import time

import pytest

try:  # the public API; needs every extension built (websocket included)
    from imgate.core import FrameDecoder, encode_frame
except ImportError:  # the frame module alone is enough here
    from imgate._core.frame import FrameDecoder, encode_frame

HEADER_SIZE = 16
N_FRAMES = 1000
BODY_SIZE = 32
OP_SEND_MSG = 4

_HEADER = struct.Struct(">ihhii")  # packLen, headerLen, ver, op, seq


class PyProtocolError(ValueError):
    pass


class PyFrame:
    __slots__ = ("ver", "op", "seq", "body")

    def __init__(self, ver, op, seq, body):
        self.ver = ver
        self.op = op
        self.seq = seq
        self.body = body


class PyFrameDecoder:
    """Incremental goim v2 decoder in pure Python: a bytearray buffer, one unpack_from per frame."""

    def __init__(self, max_body=65536):
        self.max_body = max_body
        self._buf = bytearray()

    def feed(self, data):
        buf = self._buf
        buf += data
        frames = []
        append = frames.append
        unpack_from = _HEADER.unpack_from
        max_body = self.max_body
        n = len(buf)
        pos = 0
        with memoryview(buf) as view:
            while n - pos >= HEADER_SIZE:
                pack_len, header_len, ver, op, seq = unpack_from(buf, pos)
                if pack_len < 0:
                    raise PyProtocolError(f"packLen is negative: {pack_len}")
                if header_len != HEADER_SIZE:
                    raise PyProtocolError(f"headerLen must be 16, got {header_len}")
                if pack_len < HEADER_SIZE:
                    raise PyProtocolError(f"packLen {pack_len} is smaller than the 16-byte header")
                if pack_len - HEADER_SIZE > max_body:
                    raise PyProtocolError(f"packLen {pack_len} exceeds the limit")
                end = pos + pack_len
                if end > n:
                    break
                append(PyFrame(ver, op, seq, view[pos + HEADER_SIZE:end].tobytes()))
                pos = end
        if pos:
            del buf[:pos]
        return frames


def py_encode_frame(op, seq, body=b"", ver=1):
    return _HEADER.pack(HEADER_SIZE + len(body), HEADER_SIZE, ver, op, seq) + body


def make_bodies(n=N_FRAMES, size=BODY_SIZE):
    """n distinct bodies of `size` bytes (JSON-ish, like a chat push)."""
    return [(b'{"m":%07d,"t":"hello, room!"' % i).ljust(size - 1, b" ")[: size - 1] + b"}" for i in range(n)]


def make_chunk(n=N_FRAMES, size=BODY_SIZE):
    """One read's worth of n back-to-back frames (what a busy client connection delivers)."""
    return b"".join(py_encode_frame(OP_SEND_MSG, i, body) for i, body in enumerate(make_bodies(n, size)))


def imgate_encode_all(bodies):
    enc = encode_frame
    return [enc(OP_SEND_MSG, seq, body) for seq, body in enumerate(bodies)]


def py_encode_all(bodies):
    enc = py_encode_frame
    return [enc(OP_SEND_MSG, seq, body) for seq, body in enumerate(bodies)]


def _check_decoded(frames, bodies):
    assert len(frames) == len(bodies)
    for seq, (f, body) in enumerate(zip(frames, bodies)):
        assert (f.ver, f.op, f.seq, f.body) == (1, OP_SEND_MSG, seq, body)


# ------------------------------------------------------------------ pytest-benchmark


@pytest.fixture(scope="module")
def bodies():
    return make_bodies()


@pytest.fixture(scope="module")
def chunk():
    return make_chunk()


def test_sanity_both_codecs_agree(bodies, chunk):
    assert imgate_encode_all(bodies) == py_encode_all(bodies)
    assert b"".join(imgate_encode_all(bodies)) == chunk
    _check_decoded(FrameDecoder().feed(chunk), bodies)
    _check_decoded(PyFrameDecoder().feed(chunk), bodies)
    # split anywhere, the pure-Python decoder still yields the same frames
    dec = PyFrameDecoder()
    frames = dec.feed(chunk[:1001]) + dec.feed(chunk[1001:])
    _check_decoded(frames, bodies)
    with pytest.raises(PyProtocolError):
        PyFrameDecoder().feed(_HEADER.pack(20, 12, 1, 2, 0))


@pytest.mark.benchmark(group="frame-decode-1000x32B", timer=time.thread_time)
def test_decode_imgate(benchmark, chunk, bodies):
    dec = FrameDecoder()
    frames = benchmark(dec.feed, chunk)
    _check_decoded(frames, bodies)


@pytest.mark.benchmark(group="frame-decode-1000x32B", timer=time.thread_time)
def test_decode_pure_python(benchmark, chunk, bodies):
    dec = PyFrameDecoder()
    frames = benchmark(dec.feed, chunk)
    _check_decoded(frames, bodies)


@pytest.mark.benchmark(group="frame-encode-1000x32B", timer=time.thread_time)
def test_encode_imgate(benchmark, bodies, chunk):
    out = benchmark(imgate_encode_all, bodies)
    assert b"".join(out) == chunk


@pytest.mark.benchmark(group="frame-encode-1000x32B", timer=time.thread_time)
def test_encode_pure_python(benchmark, bodies, chunk):
    out = benchmark(py_encode_all, bodies)
    assert b"".join(out) == chunk
