"""The peers' push trigger: a tiny HTTP/1.1 control port (see benchmarks/peers/README.md).

`POST /push` with the message as the body: the peer broadcasts it once, answers `200 ok`. Keep-alive,
pipelined requests handled in order, each as soon as it is complete (the same work per request as
imgate's `POST /goim/push/room`). Anything else gets 404. Shared by the Python peers.
"""

from __future__ import annotations

import asyncio
import struct

OP_PUSH = 1000
OP_AUTH_REPLY = 8
_HEADER = struct.Struct(">IHHII")

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nContent-Type: text/plain\r\n\r\nnot found"


def goim_frame(op: int, body: bytes, seq: int = 0) -> bytes:
    """A goim v2 frame: 16-byte big-endian header (packLen, headerLen 16, ver 1, op, seq), then the body."""
    return _HEADER.pack(16 + len(body), 16, 1, op, seq) + body


AUTH_REPLY = goim_frame(OP_AUTH_REPLY, b"{}", 1)


class ControlProtocol(asyncio.Protocol):
    """Calls `on_push(body)` for each complete `POST /push` request, in order."""

    def __init__(self, on_push):
        self.on_push = on_push
        self.buf = b""
        self.t = None

    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        pos = 0
        out = []
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if end + 4 + length > len(buf):
                break
            body = buf[end + 4:end + 4 + length]
            pos = end + 4 + length
            if head.startswith(b"POST /push"):
                self.on_push(body)
                out.append(OK)
            else:
                out.append(NOT_FOUND)
        self.buf = buf[pos:]
        if out:
            self.t.write(b"".join(out))


async def serve_control(loop, host: str, port: int, on_push):
    return await loop.create_server(lambda: ControlProtocol(on_push), host, port, backlog=128)


def run_peer(main) -> None:
    """A Python peer's command line: ``--ws HOST:PORT`` it serves, ``--control HOST:PORT`` for the
    pushes; ``main(args)`` runs on uvloop."""
    import argparse

    import uvloop

    p = argparse.ArgumentParser()
    p.add_argument("--ws", required=True)
    p.add_argument("--control", required=True)
    uvloop.run(main(p.parse_args()))


def hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)
