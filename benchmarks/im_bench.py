"""Single-chat IM benchmark against a real `imgate serve`, small and local.

    PYTHONPATH=src .venv/bin/python benchmarks/im_bench.py [--pairs 5000] [--im-sync full|normal] [--json FILE]

`make bench` runs it after the load benchmarks (pairs = 5,000 x SCALE); `make bench-im` runs it alone.

Three phases, each client a WebSocket connection of imgate.client in this one driver process:
1. throughput: every sender keeps ``--window`` sends in flight for ``--seconds``; receivers ack each
   push (op 25). Messages answered by a 23 per second and per server CPU-second (the server's
   /proc/<pid>/task/*/schedstat run time over the window).
2. latency: ``--rate`` messages/s spread over the pairs; send-to-delivery p50/p99 (the content
   carries the driver's monotonic clock, read again when the op 24 arrives).
3. sync: a user with ``--sync-msgs`` offline messages syncs them in one SYNC; the median of 5.
The driver shares the two cores with the server, so phase 1 is bounded by both; the CPU figure is
the server's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchutil import pct, server_cpu, start_serve  # noqa: F401  (pct and server_cpu: group_bench's too)
from imgate import client as imclient


def start_server(workdir: Path, im_sync: str) -> tuple[subprocess.Popen, dict]:
    return start_serve(workdir, dict(data_dir=str(workdir / "data"), heartbeat_timeout=900.0, im_sync=im_sync,
                                     max_pending=8 << 20, metrics_auth=False,  # /metrics read without a key
                                     # the offline phase's sender fills an inbox from one connection at once
                                     client_op_rate=100000.0, client_op_burst=100000, im_user_rate=0.0))


def store_counts(http: str) -> dict:
    """The message store's commit and write counters from /metrics."""
    import urllib.request
    with urllib.request.urlopen(http + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        for key in ("imgate_im_commits_total", "imgate_im_store_writes_total"):
            if line.startswith(key + " "):
                out[key] = float(line.split()[1])
    return out


async def pairs_up(url: str, pairs: int, first_uid: int):
    async def one(mid):
        return await imclient.connect(url, mid=mid, heartbeat=None, timeout=30)

    receivers = [await one(first_uid + 2 * i + 1) for i in range(pairs)]
    senders = [await one(first_uid + 2 * i) for i in range(pairs)]
    return senders, receivers


def on_pushes(c, sink):
    def got(frame):
        if frame.op != 24:
            return
        msgs = json.loads(frame.body)["msgs"]
        sink(msgs)
        c.ack(msgs[-1]["seq"])
    return got


async def throughput(url, http, pid, args):
    senders, receivers = await pairs_up(url, args.pairs, 1_000_000)
    delivered = [0]
    for r in receivers:
        r.on_push = on_pushes(r, lambda msgs: delivered.__setitem__(0, delivered[0] + len(msgs)))
    for s in senders:
        s.on_push = lambda f: None
    stop = time.monotonic() + args.seconds
    sent = [0]

    async def pump(i, s):
        to = 1_000_000 + 2 * i + 1
        n = 0
        while time.monotonic() < stop:
            await asyncio.gather(*(s.send_message(to, n + k, cmid=f"t{i}-{n + k}") for k in range(args.window)))
            n += args.window
            sent[0] += args.window
    before = store_counts(http)
    cpu0, t0 = server_cpu(pid), time.monotonic()
    await asyncio.gather(*(pump(i, s) for i, s in enumerate(senders)))
    cpu, wall = server_cpu(pid) - cpu0, time.monotonic() - t0
    after = store_counts(http)
    commits = after["imgate_im_commits_total"] - before["imgate_im_commits_total"]
    writes = after["imgate_im_store_writes_total"] - before["imgate_im_store_writes_total"]
    for c in senders + receivers:
        c.abort()
    return {"messages": sent[0], "seconds": round(wall, 2), "messages_per_s": round(sent[0] / wall),
            "server_cpu_s": round(cpu, 2), "messages_per_cpu_s": round(sent[0] / cpu), "delivered": delivered[0],
            "commits": int(commits), "writes_per_commit": round(writes / max(commits, 1), 1)}


async def latency(url, args):
    senders, receivers = await pairs_up(url, args.pairs, 2_000_000)
    lat = []
    for r in receivers:
        r.on_push = on_pushes(r, lambda msgs: lat.extend(time.monotonic_ns() - m["content"] for m in msgs))
    for s in senders:
        s.on_push = lambda f: None
    total = int(args.rate * args.seconds)
    start = time.monotonic()
    tasks = []
    for n in range(total):
        due = start + n / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        i = n % args.pairs
        tasks.append(asyncio.ensure_future(
            senders[i].send_message(2_000_000 + 2 * i + 1, time.monotonic_ns(), cmid=f"l{n}")))
    await asyncio.gather(*tasks)
    deadline = time.monotonic() + 10
    while len(lat) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for c in senders + receivers:
        c.abort()
    ms = [x / 1e6 for x in lat]
    return {"rate": args.rate, "messages": total, "delivered": len(ms), "p50_ms": round(pct(ms, 0.5), 2),
            "p99_ms": round(pct(ms, 0.99), 2), "max_ms": round(max(ms), 2) if ms else None}


async def sync_offline(url, args):
    times = []
    for k in range(5):
        a, b = 3_000_000 + 2 * k, 3_000_000 + 2 * k + 1
        (await imclient.connect(url, mid=b, heartbeat=None)).abort()  # b has an inbox, and is offline
        sender = await imclient.connect(url, mid=a, heartbeat=None)
        for n in range(0, args.sync_msgs, 50):
            await asyncio.gather(*(sender.send_message(b, {"n": n + j, "text": "x" * 40}, cmid=f"s{n + j}")
                                   for j in range(min(50, args.sync_msgs - n))))
        sender.abort()
        reader = await imclient.connect(url, mid=b, heartbeat=None)
        t0 = time.perf_counter()
        reply = await reader.sync(0, args.sync_msgs)
        times.append((time.perf_counter() - t0) * 1000)
        assert len(reply["msgs"]) == args.sync_msgs, len(reply["msgs"])
        reader.abort()
    return {"messages": args.sync_msgs, "median_ms": round(statistics.median(times), 2),
            "max_ms": round(max(times), 2)}


TARGETS = {  # what one embedded node should reach on a 2-core machine
    "messages_per_s >= 5000": lambda r: r["throughput"]["messages_per_s"] >= 5000,
    "p99 send-to-delivery <= 25 ms at 2,000/s": lambda r: r["latency"]["p99_ms"] <= 25,
    "sync of 1,000 messages <= 50 ms": lambda r: r["sync"]["median_ms"] <= 50,
}


async def main(args):
    with tempfile.TemporaryDirectory(prefix="im-bench-") as tmp:
        proc, urls = start_server(Path(tmp), args.im_sync)
        try:
            url = urls["ws"] + "/sub"
            out = {"im_sync": args.im_sync, "pairs": args.pairs}
            out["throughput"] = await throughput(url, urls["http"], proc.pid, args)
            out["latency"] = await latency(url, args)
            out["sync"] = await sync_offline(url, args)
        finally:
            proc.kill()
            proc.wait()
    out["targets"] = {name: ok(out) for name, ok in TARGETS.items()}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(out, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())),
                                              indent=1))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=0, help="sender/receiver pairs (default 5,000 x --scale)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--json", default="", help="also write the figures to this file")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--window", type=int, default=4, help="sends in flight per sender (throughput)")
    p.add_argument("--rate", type=float, default=2000.0, help="messages per second (latency)")
    p.add_argument("--sync-msgs", type=int, default=1000)
    p.add_argument("--im-sync", choices=["full", "normal"], default="full")
    args = p.parse_args()
    args.pairs = args.pairs or max(10, int(5000 * args.scale))
    try:
        import uvloop
        uvloop.run(main(args))
    except ImportError:
        asyncio.run(main(args))
    os._exit(0)
