"""Upstream RPC benchmark: op 4 -> imgate serve -> a trivial HTTP backend -> op 5, all on loopback.

    PYTHONPATH=src .venv/bin/python benchmarks/upstream_bench.py [--conns 50] [--window 4] [--seconds 5]
                                                                 [--rate 500] [--json FILE]

Three processes: the backend (this script with ``--backend``: aiohttp.web answering each POST with its
body), ``imgate serve`` with ``upstream_url`` pointing at it, and this driver (raw goim TCP).
1. throughput: ``--conns`` connections each keep ``--window`` op-4 messages in flight for ``--seconds``;
   round trips per second and per server CPU-second (the imgate process's schedstat run time; the
   backend's CPU is not counted).
2. latency at ``--rate`` messages/s: the round trip p50/p99 through the gateway, and the same POSTs made
   directly to the backend by the driver (aiohttp, keep-alive) at the same rate; the difference of the
   two is what the gateway adds on top of the backend's own time.
The driver, the backend and the server share two cores, so phase 1 is bounded by all three.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import free_port, pct, server_cpu, start_serve
from imgate.core import FrameDecoder, encode_frame


def backend_main(port: int) -> None:
    from aiohttp import web

    async def echo(request):
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/up", echo)
    print(f"backend on {port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Conn:
    """One goim TCP connection; replies matched to their seq."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(max_body=1 << 20)
        self.waiting: dict[int, asyncio.Future] = {}
        self.seq = 1

    @classmethod
    async def open(cls, port: int, mid: int) -> "Conn":
        r, w = await asyncio.open_connection("127.0.0.1", port)
        c = cls(r, w)
        w.write(encode_frame(7, 0, json.dumps({"mid": mid, "room_id": "", "platform": "bench"}).encode()))
        while True:
            frames = c.decoder.feed(await r.read(65536))
            if any(f.op == 8 for f in frames):
                break
        asyncio.get_running_loop().create_task(c._read())
        return c

    async def _read(self):
        while data := await self.reader.read(65536):
            for f in self.decoder.feed(data):
                fut = self.waiting.pop(f.seq, None)
                if fut is not None and f.op == 5:
                    fut.set_result(f.body)

    async def call(self, body: bytes) -> bytes:
        self.seq += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = fut
        self.writer.write(encode_frame(4, self.seq, body))
        return await fut


async def throughput(conns, pid, args) -> dict:
    done = [0]
    stop = time.monotonic() + args.seconds

    async def pump(c):
        while time.monotonic() < stop:
            await asyncio.gather(*(c.call(b'{"n": 1}') for _ in range(args.window)))
            done[0] += args.window

    cpu0, t0 = server_cpu(pid), time.monotonic()
    await asyncio.gather(*(pump(c) for c in conns))
    cpu, wall = server_cpu(pid) - cpu0, time.monotonic() - t0
    return {"round_trips": done[0], "seconds": round(wall, 2), "per_second": round(done[0] / wall),
            "server_cpu_s": round(cpu, 2), "per_server_cpu_second": round(done[0] / cpu) if cpu else None}


async def paced(n: int, rate: float, one) -> list[float]:
    """``n`` calls of ``one()`` started ``1/rate`` apart; each call's round trip in ms."""
    out = []

    async def timed():
        t = time.perf_counter()
        await one()
        out.append((time.perf_counter() - t) * 1000)

    tasks, start = [], time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(timed()))
    await asyncio.gather(*tasks)
    return out


async def latency(conns, backend_url, args) -> dict:
    import aiohttp

    n = int(args.rate * args.seconds)
    i = [0]

    async def via_gateway():
        i[0] += 1
        await conns[i[0] % len(conns)].call(b'{"n": 1}')

    async with aiohttp.ClientSession() as s:
        async def direct():
            async with s.post(backend_url, data=b'{"n": 1}') as r:
                await r.read()
        await paced(min(n, 200), args.rate, direct)  # warm the pool
        direct_ms = await paced(n, args.rate, direct)
    gateway_ms = await paced(n, args.rate, via_gateway)
    summary = {}
    for name, ms in (("direct", direct_ms), ("gateway", gateway_ms)):
        summary[name] = {"p50_ms": round(pct(ms, 0.5), 3), "p99_ms": round(pct(ms, 0.99), 3)}
    summary["added_p50_ms"] = round(summary["gateway"]["p50_ms"] - summary["direct"]["p50_ms"], 3)
    summary["added_p99_ms"] = round(summary["gateway"]["p99_ms"] - summary["direct"]["p99_ms"], 3)
    summary["messages"] = n
    summary["rate"] = args.rate
    return summary


async def drive(tcp_port, pid, backend_url, args) -> dict:
    conns = [await Conn.open(tcp_port, 1000 + i) for i in range(args.conns)]
    return {"throughput": await throughput(conns, pid, args), "latency": await latency(conns, backend_url, args),
            "conns": args.conns, "window": args.window}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.backend:
        backend_main(args.backend)
        return 0
    bport = free_port()
    backend = subprocess.Popen([sys.executable, __file__, "--backend", str(bport)], stdout=subprocess.PIPE, text=True)
    backend.stdout.readline()
    backend_url = f"http://127.0.0.1:{bport}/up"
    with tempfile.TemporaryDirectory() as tmp:
        server, urls = start_serve(Path(tmp), dict(data_dir=tmp, heartbeat_timeout=900.0, im=False,
                                                    upstream_url=backend_url, upstream_conn_limit=max(8, args.window),
                                                    upstream_limit=100000,
                                                    # a few driver connections carry every round trip
                                                    client_op_rate=0.0))
        try:
            tcp = int(urls["tcp"].rsplit(":", 1)[1])
            result = asyncio.run(drive(tcp, server.pid, backend_url, args))
        finally:
            server.terminate()
            server.wait(30)
            backend.terminate()
            backend.wait(30)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
