"""End-to-end latency of a unicast through the cluster: HTTP -> logic -> Kafka -> push -> RPC -> proxy -> client.

Starts its own Redis and Kafka (scripts/services.sh) and the roles as processes (tests/clusterutil.py),
connects clients to both proxies, then pushes by mid at a fixed rate with a timestamp in each body and
measures the time until the client has it (same host, same clock). Prints p50/p90/p99/max and writes
JSON with --json.

    PYTHONPATH=src .venv/bin/python benchmarks/cluster_latency.py --pushes 2000 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clusterutil import Cluster  # noqa: E402
from helpers import free_port  # noqa: E402

from imgate import client as imclient  # noqa: E402

SERVICES = ROOT / "scripts" / "services.sh"


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(cluster: Cluster, pushes: int, rate: float, users: int) -> dict:
    clients = []
    for i in range(users):
        proxy = "A" if i % 2 else "B"
        clients.append(await imclient.connect(cluster.tcp_url(proxy), mid=900000 + i, heartbeat=None))
    latencies: list[float] = []
    done = asyncio.Event()

    def on_push(c):
        def handle(frame):
            sent = struct.unpack(">d", frame.body[:8])[0]
            latencies.append(time.time() - sent)
            if len(latencies) >= pushes:
                done.set()
        return handle

    # warm up: the push consumer must have joined its group and the producers be connected
    warm = clients[0]
    for _ in range(60):
        await asyncio.get_running_loop().run_in_executor(
            None, cluster.http, "L1", "POST", "/goim/push/mids?operation=1000&mids=900000", struct.pack(">d", 0.0))
        try:
            await warm.recv(timeout=1.0)
            break
        except asyncio.TimeoutError:
            continue
    while True:  # drain stragglers of the warm-up
        try:
            await warm.recv(timeout=1.0)
        except asyncio.TimeoutError:
            break
    for c in clients:
        c.on_push = on_push(c)
    loop = asyncio.get_running_loop()
    port = cluster.ports["L1"]["http"]
    # a keep-alive HTTP connection per sender; pushes paced at `rate`
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []

    async def push(i):
        body = struct.pack(">d", time.time()) + b"x" * 24
        mid = 900000 + (i % users)
        writer.write(b"POST /goim/push/mids?operation=1000&mids=%d HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n"
                     % (mid, cluster.api_key.encode(), len(body)) + body)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        await reader.readexactly(length)
        statuses.append(int(head.split()[1]))

    t0 = time.monotonic()
    for i in range(pushes):
        target = t0 + i / rate
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await push(i)
    try:
        await asyncio.wait_for(done.wait(), 30)
    except asyncio.TimeoutError:
        pass
    writer.close()
    for c in clients:
        await c.close()
    ms = [x * 1000 for x in latencies]
    return {
        "pushes": pushes, "rate_per_s": rate, "users": users, "delivered": len(ms),
        "http_ok": statuses.count(200),
        "p50_ms": round(pct(ms, 0.50), 2), "p90_ms": round(pct(ms, 0.90), 2),
        "p99_ms": round(pct(ms, 0.99), 2), "max_ms": round(max(ms), 2), "mean_ms": round(statistics.mean(ms), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=200.0, help="pushes per second")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgate-latency-"))
    redis_port, kafka_port, ctrl_port = free_port(), free_port(), free_port()
    subprocess.run(["bash", str(SERVICES), "install"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["bash", str(SERVICES), "start-redis", str(redis_port), str(work)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["bash", str(SERVICES), "start-kafka", str(kafka_port), str(ctrl_port), str(work)], check=True,
                   stdout=subprocess.DEVNULL)
    cluster = Cluster(work, f"redis://127.0.0.1:{redis_port}/0", f"127.0.0.1:{kafka_port}", online_interval=1.0)
    try:
        cluster.start()
        time.sleep(1.0)
        result = uvloop.run(measure(cluster, args.pushes, args.rate, args.users))
    finally:
        cluster.stop()
        subprocess.run(["bash", str(SERVICES), "stop", str(work)], stdout=subprocess.DEVNULL)
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
