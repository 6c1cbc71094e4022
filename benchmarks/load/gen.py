"""A load generator process: holds thousands of WebSocket clients and counts what reaches them.

Started by run.py (several of them, so that no process nears the open-files cap) and driven over its
stdin/stdout with one JSON object per line. Clients belong to named groups (one per server under test,
plus that server's extra idle connections); each group has its own counters.

  {"cmd": "connect", "host", "port", "src", "path", "n", "mid0", "room", "group", "conc", "timeout"}
      open n clients (mids mid0 .. mid0+n-1) from source address `src`: TCP connect, WebSocket upgrade,
      goim auth (op 7) as one binary message; a client is "in" when its op-8 reply arrives. At most
      `conc` in flight. Emits {"ev": "progress", "authed": k} twice a second, then
      {"ev": "connected", "authed", "failed", "pending", "t_start", "t_end", "auth_times": [...]}.
  {"cmd": "close", "group": g}     close the group's clients (TCP close) -> {"ev": "closed", "n"}
  {"cmd": "reset"}                 zero every group's counters and latencies -> {"ev": "reset"}
  {"cmd": "notify", "target": n}   {"ev": "reached", ...} once the deliveries of all groups together
                                   reach n (at once if they already have)
  {"cmd": "stats"}                 -> {"ev": "stats", "groups": {g: {...}}, "total", "cpu", ...}
  {"cmd": "dump", "group", "path"} the group's latencies (us, int32) since the last reset -> .npy
  {"cmd": "poll", "ms": m}         poll mode (m > 0): sleep m ms between loop iterations, never block in
                                   epoll_wait (the server's sends then wake nobody up); 0 turns it off
  {"cmd": "exit"}

What it does per received chunk is kept small: the WebSocket framing of the server's (unmasked) frames
is cut here, goim frames by imgate.core's compiled FrameDecoder (an op-9 batch is decoded again for its
inner frames), and each op-1000 frame adds one delivery and one latency sample (now - the stamp in its
body). Runs of standard pushes (all the benchmark's pushes have one size) take a numpy fast path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import sys
import time
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "src"))

import numpy as np  # noqa: E402
import uvloop  # noqa: E402

from imgate.core import FrameDecoder, ProtocolError, encode_frame, ws_unmask  # noqa: E402

from common import BODY_SIZE, OP_PUSH, raise_nofile  # noqa: E402

OP_AUTH = 7
OP_AUTH_REPLY = 8
OP_RAW = 9
OP_DISCONNECT = 6
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

monotonic_ns = time.monotonic_ns
stamp_of = struct.Struct(">Q").unpack_from
DEC = FrameDecoder(1 << 20)  # every WebSocket message carries whole frames: one decoder serves all

# Fast paths for runs of standard pushes: a run is viewed as a numpy record array, checked field by
# field (frame size, header length, op; WebSocket header byte and length), and counted with its stamps
# in a few vector operations. Anything that does not check out goes the generic way.
STD = 16 + BODY_SIZE                 # one goim push frame
FAST_MIN = 8                         # shorter runs: the generic loop is as cheap
_FRAME = [("plen", ">u4"), ("hlen", ">u2"), ("ver", ">u2"), ("op", ">u4"), ("seq", ">u4"), ("ts", ">i8"),
          ("rest", f"V{BODY_SIZE - 8}")]
FRAME_DT = np.dtype(_FRAME)                                # an op-9 body made of pushes
WS_DT = np.dtype([("b0", "u1"), ("b1", "u1")] + _FRAME)    # WebSocket messages of one push each
assert FRAME_DT.itemsize == STD and WS_DT.itemsize == STD + 2 and STD < 126


def _valid(arr, ws: bool):
    ok = (arr["plen"] == STD) & (arr["hlen"] == 16) & (arr["op"] == OP_PUSH)
    if ws:
        ok &= (arr["b0"] == 0x82) & (arr["b1"] == STD)
    return ok


def ws_client_frame(payload: bytes) -> bytes:
    """One masked binary client frame (RFC 6455 5.3)."""
    n = len(payload)
    mask = os.urandom(4)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    else:
        head = struct.pack("!BBH", 0x82, 0xFE, n)
    return head + mask + ws_unmask(payload, mask)


class Counters:
    """What reached one group's clients since the last reset."""

    __slots__ = ("deliveries", "messages", "bytes", "lat", "lat_chunks")

    def __init__(self):
        self.reset()

    def reset(self):
        self.deliveries = 0
        self.messages = 0        # WebSocket messages received after auth
        self.bytes = 0
        self.lat = array("i")    # microseconds, one per delivery (generic path)
        self.lat_chunks = []     # numpy arrays of microseconds (fast paths)

    def latencies(self):
        return np.concatenate([np.frombuffer(self.lat, dtype=np.int32)] +
                              [x.astype(np.int32) for x in self.lat_chunks])


class Gen:
    def __init__(self):
        self.loop = asyncio.get_event_loop()
        self.total = 0             # deliveries of every group: what `notify` watches
        self.target = 1 << 62
        self.groups: dict[str, set] = {}
        self.counters: dict[str, Counters] = {}
        self.authed = 0
        self.lost = 0              # connections the server closed
        self.notices = 0           # op-6 frames received
        self.errors = 0
        self.connecting = None
        self.poll_s = 0.0
        self.path = b"/sub"

    def group(self, name):
        if name not in self.groups:
            self.groups[name] = set()
            self.counters[name] = Counters()
        return self.groups[name], self.counters[name]

    def emit(self, obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def check_target(self):
        if self.total >= self.target:
            self.target = 1 << 62
            self.emit({"ev": "reached", "total": self.total, "t": time.monotonic()})


class Client(asyncio.Protocol):
    __slots__ = ("g", "t", "state", "buf", "auth", "group", "c")

    def __init__(self, g: Gen, auth: bytes, group: set, counters: Counters):
        self.g = g
        self.t = None
        self.state = 0       # 0: upgrade sent, 1: auth sent, 2: in (op 8 received), 3: closed
        self.buf = b""
        self.auth = auth
        self.group = group
        self.c = counters

    def connection_made(self, t):
        self.t = t
        key = base64.b64encode(os.urandom(16))
        t.write(b"GET %s HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.g.path, key))

    def connection_lost(self, exc):
        g = self.g
        if self.state != 3:
            g.lost += 1
            if self.state < 2 and g.connecting is not None:
                g.connecting.failed_one()
        self.state = 3
        self.group.discard(self)

    def data_received(self, data):
        now = monotonic_ns()
        c = self.c
        c.bytes += len(data)
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        if self.state == 0:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.g.errors += 1
                self.close()
                return
            self.state = 1
            self.t.write(self.auth)
            self.auth = None
            pos = end + 4
        n = len(data)
        count = 0
        lat = c.lat
        while pos + 2 <= n:
            ln = data[pos + 1] & 127
            h = 2
            if ln == 126:
                if pos + 4 > n:
                    break
                ln = (data[pos + 2] << 8) | data[pos + 3]
                h = 4
            elif ln == 127:
                if pos + 10 > n:
                    break
                ln = int.from_bytes(data[pos + 2:pos + 10], "big")
                h = 10
            end = pos + h + ln
            if end > n:
                break
            if ln == STD and h == 2 and n - pos >= FAST_MIN * (STD + 2) and self.state == 2:
                k = (n - pos) // (STD + 2)
                arr = np.frombuffer(data, WS_DT, k, pos)
                ok = _valid(arr, True)
                if not ok.all():
                    k = int(ok.argmin())    # the run ends before the first message that differs
                if k >= FAST_MIN:
                    c.lat_chunks.append((now - arr["ts"][:k]) // 1000)
                    count += k
                    c.messages += k
                    pos += k * (STD + 2)
                    continue
            opcode = data[pos] & 15
            if opcode == 2:
                c.messages += 1
                try:
                    frames = DEC.feed(data[pos + h:end])
                except ProtocolError:
                    self.g.errors += 1
                    self.close()
                    return
                for f in frames:
                    op = f.op
                    if op == OP_PUSH:
                        count += 1
                        lat.append((now - stamp_of(f.body)[0]) // 1000)
                    elif op == OP_RAW:
                        body = f.body
                        if len(body) >= FAST_MIN * STD and len(body) % STD == 0:
                            arr = np.frombuffer(body, FRAME_DT)
                            if _valid(arr, False).all():
                                c.lat_chunks.append((now - arr["ts"]) // 1000)
                                count += len(arr)
                                continue
                        for f2 in DEC.feed(body):
                            if f2.op == OP_PUSH:
                                count += 1
                                lat.append((now - stamp_of(f2.body)[0]) // 1000)
                    elif op == OP_AUTH_REPLY:
                        if self.state == 1:
                            self.state = 2
                            self.g.authed += 1
                            if self.g.connecting is not None:
                                self.g.connecting.authed_one()
                    elif op == OP_DISCONNECT:
                        self.g.notices += 1
            elif opcode == 8:       # close: drop the connection
                self.close()
                return
            elif opcode == 9:       # ping -> pong (empty payload, zero mask)
                self.t.write(b"\x8a\x80\x00\x00\x00\x00")
            pos = end
        if pos < n:
            self.buf = data[pos:]
        if count:
            c.deliveries += count
            g = self.g
            g.total += count
            if g.total >= g.target:
                g.check_target()

    def close(self):
        if self.state != 3:
            self.state = 3
            self.group.discard(self)
            if self.t is not None:
                self.t.close()


class Connecting:
    """One connect command: keeps `conc` connections in flight until n are in (or failed)."""

    def __init__(self, g: Gen, cmd: dict):
        self.g = g
        self.addr = (cmd["host"], int(cmd["port"]))
        self.src = cmd.get("src")
        self.n = int(cmd["n"])
        self.mid0 = int(cmd["mid0"])
        self.room = cmd["room"]
        self.conc = int(cmd.get("conc", 256))
        self.group, self.counters = g.group(cmd.get("group", "main"))
        self.next = 0
        self.inflight = 0
        self.authed = 0
        self.failed = 0
        self.auth_times = array("d")
        self.done = g.loop.create_future()
        self.t_start = time.monotonic()

    def start(self):
        if self.n <= 0:
            self.done.set_result(None)
        self.fill()
        return self.done

    def fill(self):
        loop = self.g.loop
        while self.inflight < self.conc and self.next < self.n:
            mid = self.mid0 + self.next
            self.next += 1
            self.inflight += 1
            loop.create_task(self.open_one(mid))

    async def open_one(self, mid: int):
        g = self.g
        body = json.dumps({"mid": mid, "key": "", "room_id": self.room, "platform": "bench",
                           "accepts": []}).encode()
        client = Client(g, ws_client_frame(encode_frame(OP_AUTH, 1, body)), self.group, self.counters)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.src:
                # each server's clients come from their own loopback address (its own port range);
                # the port is picked at connect time, per destination
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.src, 0))
            await g.loop.sock_connect(sock, self.addr)
            await g.loop.create_connection(lambda: client, sock=sock)
        except OSError:
            sock.close()
            client.state = 3
            self.failed_one()
            return
        self.group.add(client)

    def authed_one(self):
        self.authed += 1
        self.auth_times.append(time.monotonic())
        self._finish_one()

    def failed_one(self):
        self.failed += 1
        self._finish_one()

    def _finish_one(self):
        self.inflight -= 1
        if self.authed + self.failed >= self.n:
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.fill()


async def do_connect(g: Gen, cmd: dict):
    c = Connecting(g, cmd)
    g.connecting = c
    timeout = float(cmd.get("timeout", 120))

    async def ticker():
        while True:
            await asyncio.sleep(0.5)
            g.emit({"ev": "progress", "authed": c.authed, "failed": c.failed})

    tick = g.loop.create_task(ticker())
    try:
        await asyncio.wait_for(asyncio.shield(c.start()), timeout)
    except asyncio.TimeoutError:
        pass
    tick.cancel()
    g.connecting = None
    times = list(c.auth_times)
    g.emit({"ev": "connected", "authed": c.authed, "failed": c.failed, "pending": c.n - c.authed - c.failed,
            "t_start": c.t_start, "t_end": times[-1] if times else c.t_start, "auth_times": times})


def poll_tick(g: Gen):
    if g.poll_s:
        time.sleep(g.poll_s)
        g.loop.call_soon(poll_tick, g)   # a pending callback: the next epoll_wait does not block


async def main():
    raise_nofile()
    g = Gen()
    loop = g.loop
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    g.emit({"ev": "ready", "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        c = cmd["cmd"]
        if c == "connect":
            g.path = cmd.get("path", "/sub").encode()
            await do_connect(g, cmd)
        elif c == "close":
            group = g.groups.get(cmd["group"], set())
            n = len(group)
            for client in list(group):
                client.close()
            await asyncio.sleep(0)
            g.emit({"ev": "closed", "n": n})
        elif c == "reset":
            for counters in g.counters.values():
                counters.reset()
            g.target = 1 << 62
            g.emit({"ev": "reset", "total": g.total})
        elif c == "notify":
            g.target = int(cmd["target"])
            g.check_target()
        elif c == "stats":
            groups = {name: {"deliveries": k.deliveries, "messages": k.messages, "bytes": k.bytes,
                             "open": len(g.groups[name])} for name, k in g.counters.items()}
            g.emit({"ev": "stats", "groups": groups, "total": g.total, "authed": g.authed, "lost": g.lost,
                    "notices": g.notices, "errors": g.errors, "cpu": time.process_time()})
        elif c == "dump":
            counters = g.counters.get(cmd["group"]) or Counters()
            lat = counters.latencies()
            np.save(cmd["path"], lat)
            g.emit({"ev": "dumped", "n": len(lat)})
        elif c == "poll":
            # poll mode: sleep in a timer between loop iterations instead of blocking in epoll_wait,
            # so the server never pays for waking a generator up (on a real network nobody it sends
            # to is woken on its machine); 0 turns it off
            was = g.poll_s
            g.poll_s = float(cmd["ms"]) / 1000
            if g.poll_s and not was:
                loop.call_soon(poll_tick, g)
            g.emit({"ev": "poll", "ms": cmd["ms"]})
        elif c == "exit":
            break
    g.emit({"ev": "bye"})


if __name__ == "__main__":
    uvloop.run(main())
