"""A driver process of benchmarks/group_bench.py: holds a slice of a group's members online (goim over
TCP) and reports when each message has reached all of them.

Driven over stdin/stdout, one JSON object per line:

  {"cmd": "connect", "port", "mid0", "n", "room"}  open n connections (mids mid0 .. mid0+n-1), each
      authenticated (op 7 -> 8), 200 in flight -> {"ev": "connected", "n"}
  {"cmd": "exit"}

For every op-24 msg (by its ``gseq``) and every op-1000 room push (by its ``"n"``) it counts the
connections that got it; when all n have, it prints {"ev": "done", "key": "g<gseq>" | "r<n>", "t": ns}
with the CLOCK_MONOTONIC time the last one arrived (the parent's clock is the same). Inbox entries
(``seq`` > 0) are acked with op 25 once per received chunk, as a client acks what one read brought.
Kept lean (a byte search per msg, no JSON decoding) so that the driver takes little of the CPU the
server under test needs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import uvloop  # noqa: E402

from imgate.core import FrameDecoder, encode_frame  # noqa: E402

OP_AUTH, OP_AUTH_REPLY, OP_RAW, OP_MSG_PUSH, OP_MSG_ACK, OP_ROOM = 7, 8, 9, 24, 25, 1000
GSEQ = re.compile(rb'"gseq":(\d+)')
SEQ = re.compile(rb'\{"seq":(\d+)')
ROOM_N = re.compile(rb'"n": ?(\d+)')
now_ns = time.monotonic_ns


class Driver:
    def __init__(self):
        self.n = 0
        self.counts: dict = {}
        self.authed = 0
        self.auth_wait: asyncio.Future | None = None

    def got(self, key: bytes, t: int) -> None:
        c = self.counts.get(key, 0) + 1
        if c == self.n:
            del self.counts[key]
            emit({"ev": "done", "key": key.decode(), "t": t})
        else:
            self.counts[key] = c


def emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Conn(asyncio.Protocol):
    __slots__ = ("d", "t", "dec", "acked")

    def __init__(self, d: Driver, auth: bytes):
        self.d = d
        self.dec = FrameDecoder(1 << 22)
        self.acked = 0
        self.t = auth  # the auth frame until connected

    def connection_made(self, t):
        auth, self.t = self.t, t
        t.write(auth)

    def data_received(self, data):
        now = now_ns()
        d = self.d
        top = 0
        frames = self.dec.feed(data)
        while frames:
            more = []
            for f in frames:
                op = f.op
                if op == OP_MSG_PUSH:
                    body = f.body
                    for g in GSEQ.findall(body):
                        d.got(b"g" + g, now)
                    for s in SEQ.findall(body):
                        top = max(top, int(s))
                elif op == OP_RAW:
                    more += FrameDecoder(1 << 22).feed(f.body)
                elif op == OP_ROOM:
                    m = ROOM_N.search(f.body)
                    if m:
                        d.got(b"r" + m.group(1), now)
                elif op == OP_AUTH_REPLY:
                    d.authed += 1
                    if d.authed == d.n and d.auth_wait is not None and not d.auth_wait.done():
                        d.auth_wait.set_result(None)
            frames = more
        if top > self.acked:
            self.acked = top
            self.t.write(encode_frame(OP_MSG_ACK, 0, b'{"seq":%d}' % top))


async def connect(d: Driver, cmd: dict) -> None:
    loop = asyncio.get_running_loop()
    d.n = cmd["n"]
    d.auth_wait = loop.create_future()
    sem = asyncio.Semaphore(200)

    async def one(mid):
        auth = encode_frame(OP_AUTH, 1, json.dumps({"mid": mid, "key": "", "room_id": cmd["room"],
                                                    "platform": "bench"}).encode())
        async with sem:
            await loop.create_connection(lambda: Conn(d, auth), "127.0.0.1", cmd["port"])

    await asyncio.gather(*(one(cmd["mid0"] + i) for i in range(d.n)))
    await asyncio.wait_for(d.auth_wait, 120)
    emit({"ev": "connected", "n": d.n})


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    d = Driver()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "connect":
            await connect(d, cmd)
        elif cmd["cmd"] == "exit":
            return


if __name__ == "__main__":
    uvloop.run(main())
