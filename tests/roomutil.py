"""Real loopback socket pairs and a uvloop loop for the room table's tests (unit/test_room*.py)."""

import asyncio
import socket
import struct

import pytest
import uvloop


def tcp_pairs(n):
    """n connected loopback TCP pairs: (server_side, client_side), both non-blocking."""
    lsock = socket.create_server(("127.0.0.1", 0), backlog=n + 16)
    port = lsock.getsockname()[1]
    pairs = []
    try:
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = lsock.accept()
            s.setblocking(False)
            c.setblocking(False)
            pairs.append((s, c))
    finally:
        lsock.close()
    return pairs


def rest_of_stream(s, c):
    """Close the server side's writing half and read what the client still gets up to that end:
    whatever the table had sent (or still sends) shows up here, with no waiting on a clock."""
    s.shutdown(socket.SHUT_WR)
    return read_exact(c, 1 << 22, timeout=30)


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test says so: timers (call_later) are due
    exactly when the test has advanced past them."""

    def __init__(self):
        super().__init__()
        self.now = 1000.0

    def time(self):
        return self.now


def close_all(pairs):
    for s, c in pairs:
        s.close()
        c.close()


def read_available(sock, limit=1 << 22):
    out = bytearray()
    while len(out) < limit:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_exact(sock, n, timeout=5.0):
    sock.settimeout(timeout)
    try:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)
    finally:
        sock.setblocking(False)


def ws_messages(data):
    """Split unmasked server WebSocket frames into (opcode, payload)."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert not b1 & 0x80, "server frames are never masked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack(">H", data[i : i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack(">Q", data[i : i + 8])[0], i + 8
        assert b0 & 0x80, "FIN set"
        out.append((b0 & 0x0F, data[i : i + n]))
        i += n
    return out


@pytest.fixture
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()
