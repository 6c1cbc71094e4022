#!/usr/bin/env python3
"""What closing many slow consumers at once costs the healthy clients (issue 14, finding 7).

    PYTHONPATH=src .venv/bin/python benchmarks/slow_consumers.py [--slow 1000] [--healthy 20] [--rate 50] [--size 16384]

Starts ``imgate serve`` (loopback, ``--max-pending`` as given, default the node's 1 MiB) with
``--slow`` TCP clients that never read (4 KiB receive window) and ``--healthy`` clients that read, all
in one room. Pushes to the room at ``--rate`` per second, each carrying its send time; the healthy
clients' latency is reported by send time: in the second before the slow ones overflow, around the
closes (from a quarter second before the first to a quarter second after the last), and after. Also: how many slow ones were closed, and how
many close notices went out late or were dropped (from /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.join(ROOT, "src"))

from benchutil import free_port, pct, stop_process  # noqa: E402
from imgate.core import FrameDecoder, encode_frame  # noqa: E402

ROOM = ("bench", "slow")


async def main(args) -> int:
    data = tempfile.mkdtemp(prefix="imgate-slow-")
    ports = [free_port() for _ in range(3)]
    conf = os.path.join(data, "imgate.toml")
    with open(conf, "w") as f:
        f.write(f"max_pending = {args.max_pending}\nheartbeat_timeout = 900.0\n")
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or os.path.join(ROOT, "src"))
    # an API key (a node without API credentials, for a before/after comparison, refuses the command)
    key = subprocess.run([sys.executable, "-m", "imgate", "apikey", "create", "--scope", "admin", "--data-dir", data],
                         capture_output=True, text=True, env=env).stdout.strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgate", "serve", "--auth", "none", "--config", conf, "--data-dir", data,
         "--tcp", f"127.0.0.1:{ports[0]}", "--ws", f"127.0.0.1:{ports[1]}", "--http", f"127.0.0.1:{ports[2]}",
         "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert "is up" in proc.stdout.readline()
        loop = asyncio.get_running_loop()
        auth = lambda mid: encode_frame(7, 1, json.dumps({"mid": mid, "room_id": "%s://%s" % ROOM}).encode())  # noqa: E731
        slow = []
        for i in range(args.slow):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", ports[0]))
            s.sendall(auth(100000 + i))
            slow.append(s)
        lat: list[tuple[float, float]] = []   # (send time, latency ms)

        async def healthy(mid):
            r, w = await asyncio.open_connection("127.0.0.1", ports[0])
            w.write(auth(mid))
            dec = FrameDecoder(max_body=1 << 22)
            while True:
                chunk = await r.read(65536)
                if not chunk:
                    return
                now = time.time()
                for fr in dec.feed(chunk):
                    bodies = [fr.body] if fr.op == 1000 else []
                    if fr.op == 9:
                        bodies = [x.body for x in FrameDecoder(max_body=1 << 22).feed(fr.body) if x.op == 1000]
                    for b in bodies:
                        sent = struct.unpack(">d", b[:8])[0]
                        lat.append((sent, (now - sent) * 1000))

        readers = [loop.create_task(healthy(i + 1)) for i in range(args.healthy)]
        r, w = await asyncio.open_connection("127.0.0.1", ports[2])

        async def http(method, path, body=b""):
            cred = f"Authorization: Bearer {key}\r\n" if key else ""
            w.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{cred}"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await r.readuntil(b"\r\n\r\n")
            n = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
            return await r.readexactly(n)

        def metric(text, name):
            for line in text.decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            return 0.0

        await asyncio.sleep(1.0)
        t0 = time.time()
        first_close = last_close = None
        i = 0
        while time.time() - t0 < args.seconds:
            body = struct.pack(">d", time.time()) + b"p" * (args.size - 8)
            await http("POST", "/goim/push/room?operation=1000&type=%s&room=%s" % ROOM, body)
            i += 1
            if i % 20 == 0:
                m = await http("GET", "/metrics")
                closed = metric(m, "imgate_slow_consumer_closes_total")
                if closed and first_close is None:
                    first_close = time.time()
                if closed >= args.slow and last_close is None:
                    last_close = time.time()
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.time()))
        m = await http("GET", "/metrics")
        for t in readers:
            t.cancel()
        # by send time: the second before the slow ones overflow (their buffers filling), around the
        # closes (a quarter second either side: the metrics are polled every 20 pushes), and after
        lo = (first_close or time.time()) - 0.25
        hi = (last_close or time.time()) + 0.25
        before = [x for t, x in lat if lo - 1.0 <= t < lo]
        during = [x for t, x in lat if lo <= t <= hi]
        after = [x for t, x in lat if t > hi]
        print(f"slow consumers closed: {metric(m, 'imgate_slow_consumer_closes_total'):.0f} of {args.slow}; "
              f"notices late {metric(m, 'imgate_close_notices_late_total'):.0f}, "
              f"dropped {metric(m, 'imgate_close_notices_dropped_total'):.0f}")
        if first_close and last_close:
            print(f"first to last close: {(last_close - first_close) * 1000:.0f} ms")
        for name, xs in (("before", before), ("around the closes", during), ("after", after)):
            print(f"healthy latency {name:<18} n={len(xs):<6} p50 {pct(xs, 0.5):7.2f} ms  p99 {pct(xs, 0.99):7.2f} ms  "
                  f"max {max(xs) if xs else float('nan'):7.2f} ms")
        for s in slow:
            s.close()
        return 0
    finally:
        stop_process(proc, 15)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--healthy", type=int, default=20)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--max-pending", dest="max_pending", type=int, default=1 << 20,
                    help="the node's max_pending (default its default, 1 MiB)")
    sys.exit(asyncio.run(main(ap.parse_args())))
