#!/usr/bin/env python3
"""Throughput of the internal RPC: push_room_batch calls per second through 1 connection vs a pool.

    PYTHONPATH=src .venv/bin/python benchmarks/rpc_bench.py [--json out.json] [--seconds 2] [--rounds 3]

The server is a ProxyRpcService over a stub proxy (push_room_batch returns 1 at once: this measures
the RPC, not the room table) in a separate process (subprocess, uvloop). The client process runs
ProxyClient(pool_size=N) with C concurrent callers, each awaiting push_room_batch(room, ~100-byte
frames) in a loop. Rows:

  conns=1 callers=1          no pipelining: one request per round trip (what a naive client gets)
  conns=1 callers=C          pipelining + write coalescing on one connection
  conns=4|8 spread callers=C the pool as configured by default (round robin + less busy of two)
  conns=4|8 fill callers=C   balance="fill": fill the first connection up to fill_limit (128) in flight,
                             then the next

Each row runs --rounds times, rows interleaved (the machine is shared and noisy); the table shows the
median calls/s, the CPU seconds per second of the client and the server process (1.0 = one core
saturated), the CPU microseconds each side spent per call (stable even on a busy machine, where calls/s
is not), and the ratio of calls/s to the conns=1 callers=C row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
try:
    import imgate  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src"))

import uvloop  # noqa: E402

from imgate.core import encode_frame  # noqa: E402
from imgate.rpc.wire import DEFAULT_WRITE_BATCH  # noqa: E402
from imgate.rpc.proxy import ProxyClient, ProxyRpcService  # noqa: E402

ROOM = "live://1000"
SERVER_ID = "bench-proxy"


class StubProxy:
    server_id = SERVER_ID

    def __init__(self):
        self.calls = 0

    def push_room_batch(self, room_id, frames):
        self.calls += 1
        return 1

    def push_room(self, room_id, op, body):
        self.calls += 1
        return 1

    def push_conns(self, conn_ids, op, body):
        return len(conn_ids)

    def push_all(self, op, body, speed=0):
        return 0

    def rooms(self):
        return {ROOM: 1}


def serve(write_batch: int) -> None:
    async def main():
        svc = ProxyRpcService(StubProxy(), write_batch=write_batch)
        await svc.start("127.0.0.1", 0)
        print(svc.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await svc.stop()

    uvloop.run(main())


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(addr: str, server_pid: int, conns: int, callers: int, seconds: float, frames: bytes,
                  write_batch: int = DEFAULT_WRITE_BATCH, balance: str = "spread") -> dict:
    client = ProxyClient(SERVER_ID, addr, pool_size=conns, write_batch=write_batch, balance=balance)
    pool = client.pool
    pool.start()
    while pool.live < conns:
        await asyncio.sleep(0.01)
    done = 0
    stop = False

    async def caller():
        nonlocal done
        push = client.push_room_batch
        while not stop:
            await push(ROOM, frames)
            done += 1

    tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
    await asyncio.sleep(min(0.3, seconds / 4))  # warm up
    d0, c0, s0, t0 = done, time.process_time(), proc_cpu(server_pid), time.perf_counter()
    await asyncio.sleep(seconds)
    d1, c1, s1, t1 = done, time.process_time(), proc_cpu(server_pid), time.perf_counter()
    stop = True
    await asyncio.gather(*tasks)
    await client.close()
    dt = t1 - t0
    per_conn = [c.requests for c in pool._conns if c is not None]
    return dict(conns=conns, callers=callers, calls_per_s=(d1 - d0) / dt, client_cpu=(c1 - c0) / dt,
                server_cpu=(s1 - s0) / dt, per_conn_requests=per_conn)


async def bench(args) -> list[dict]:
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                               "--write-batch", str(args.write_batch)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
    try:
        port = int(server.stdout.readline())
        addr = f"127.0.0.1:{port}"
        frames = encode_frame(1000, 0, b"m" * 84)  # one 100-byte inner frame
        rows = [(1, 1, "spread"), (1, args.callers, "spread")] + [(n, args.callers, "spread") for n in args.pools]
        rows += [(n, args.callers, "fill") for n in args.pools]
        results: dict[tuple, list[dict]] = {r: [] for r in rows}
        for rnd in range(args.rounds):
            order = rows if rnd % 2 == 0 else list(reversed(rows))
            for conns, callers, balance in order:
                results[(conns, callers, balance)].append(await one_run(
                    addr, server.pid, conns, callers, args.seconds, frames, args.write_batch, balance))
    finally:
        server.stdin.close()
        server.wait(10)
    out = []
    for (conns, callers, balance), runs in results.items():
        med = statistics.median(r["calls_per_s"] for r in runs)
        out.append(dict(conns=conns, callers=callers, balance=balance if conns > 1 else "-", calls_per_s=round(med),
                        runs=[round(r["calls_per_s"]) for r in runs],
                        client_cpu=round(statistics.median(r["client_cpu"] for r in runs), 2),
                        server_cpu=round(statistics.median(r["server_cpu"] for r in runs), 2),
                        client_us_per_call=round(statistics.median(
                            1e6 * r["client_cpu"] / r["calls_per_s"] for r in runs), 1),
                        server_us_per_call=round(statistics.median(
                            1e6 * r["server_cpu"] / r["calls_per_s"] for r in runs), 1),
                        per_conn_requests=runs[-1]["per_conn_requests"]))
    base = next(r for r in out if r["conns"] == 1 and r["callers"] == args.callers)["calls_per_s"]
    for r in out:
        r["ratio_vs_1conn"] = round(r["calls_per_s"] / base, 2) if base else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--callers", type=int, default=256, help="concurrent callers (requests in flight)")
    ap.add_argument("--pools", type=int, nargs="*", default=[4, 8], help="pool sizes to compare with 1")
    ap.add_argument("--write-batch", type=int, default=DEFAULT_WRITE_BATCH,
                    help="frames that trigger a write before the end of the loop iteration (both sides)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.write_batch)
        return
    load = os.getloadavg()
    rows = uvloop.run(bench(args))
    print(f"push_room_batch (~100-byte frames), server in a separate process, {args.rounds} rounds x "
          f"{args.seconds}s, median")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'conns':>5} {'balance':>7} {'callers':>7} {'calls/s':>10} {'x 1conn':>8} {'client cpu':>10} {'server cpu':>10} "
          f"{'client us/call':>14} {'server us/call':>14}  runs")
    for r in rows:
        print(f"{r['conns']:>5} {r['balance']:>7} {r['callers']:>7} {r['calls_per_s']:>10,} {r['ratio_vs_1conn']:>8} "
              f"{r['client_cpu']:>10} {r['server_cpu']:>10} {r['client_us_per_call']:>14} "
              f"{r['server_us_per_call']:>14}  {r['runs']}")
    if args.json:
        doc = dict(bench="rpc push_room_batch", python=platform.python_version(), machine=platform.machine(),
                   cpus=os.cpu_count(), write_batch=args.write_batch, loadavg_before=[round(x, 2) for x in load], seconds=args.seconds, rounds=args.rounds, callers=args.callers,
                   payload_bytes=100, rows=rows, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
