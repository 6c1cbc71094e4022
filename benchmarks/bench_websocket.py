"""Micro-benchmarks of the WebSocket codec (pytest-benchmark).

    .venv/bin/python -m pytest benchmarks/bench_websocket.py --benchmark-enable --benchmark-only

For the unmask/memcpy bandwidth ratio in one run, see benchmarks/ratio_unmask.py.
"""
import os
import struct

import pytest

from imgate._core.websocket import (
    WS_OP_BINARY,
    WebSocketParser,
    _copy_bytes,
    encode_ws_frame,
    ws_unmask,
)

MASK = bytes([0x37, 0xFA, 0x21, 0x3D])
SIZE_64K = 64 * 1024


def masked_frame(payload: bytes, opcode: int = WS_OP_BINARY) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", n)
    return head + MASK + ws_unmask(payload, MASK)


@pytest.fixture(scope="module")
def small_frames():
    # 1000 client frames of 32 bytes (a goim heartbeat is 16) in one read
    return b"".join(masked_frame(os.urandom(32)) for _ in range(1000))


@pytest.fixture(scope="module")
def payload_64k():
    return os.urandom(SIZE_64K)


def test_parse_1000_small_frames(benchmark, small_frames):
    benchmark.group = "ws-parse: 1000 x 32 B masked frames in one chunk"

    def run():
        return WebSocketParser().feed(small_frames)

    assert len(benchmark(run)) == 1000


def test_parse_one_64k_frame(benchmark, payload_64k):
    benchmark.group = "ws-parse: one 64 KiB masked frame"
    wire = masked_frame(payload_64k)

    def run():
        return WebSocketParser().feed(wire)

    assert benchmark(run) == [(WS_OP_BINARY, payload_64k)]


def test_parse_64k_frame_in_4k_chunks(benchmark, payload_64k):
    benchmark.group = "ws-parse: one 64 KiB masked frame"
    wire = masked_frame(payload_64k)
    chunks = [wire[i:i + 4096] for i in range(0, len(wire), 4096)]

    def run():
        p = WebSocketParser()
        out = []
        for c in chunks:
            out += p.feed(c)
        return out

    assert benchmark(run) == [(WS_OP_BINARY, payload_64k)]


# Same-size copies, same allocation (a fresh bytes object of 64 KiB) on every side.

def test_unmask_64k(benchmark, payload_64k):
    benchmark.group = "ws-unmask: 64 KiB (vs memcpy)"
    benchmark.extra_info["bytes"] = SIZE_64K
    assert len(benchmark(ws_unmask, payload_64k, MASK)) == SIZE_64K


def test_memcpy_64k_baseline(benchmark, payload_64k):
    benchmark.group = "ws-unmask: 64 KiB (vs memcpy)"
    benchmark.extra_info["bytes"] = SIZE_64K
    assert benchmark(_copy_bytes, payload_64k) == payload_64k


def test_bytes_of_bytearray_64k_baseline(benchmark, payload_64k):
    benchmark.group = "ws-unmask: 64 KiB (vs memcpy)"
    src = bytearray(payload_64k)
    assert benchmark(bytes, src) == payload_64k


@pytest.mark.parametrize("size", [16, 200, SIZE_64K])
def test_encode_frame(benchmark, size):
    benchmark.group = "ws-encode: server frame"
    payload = os.urandom(size)
    assert len(benchmark(encode_ws_frame, payload)) > size
