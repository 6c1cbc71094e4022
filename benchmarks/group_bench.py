"""Group IM benchmark against a real `imgate serve`, small and local (not part of `make bench` yet).

    PYTHONPATH=src .venv/bin/python benchmarks/group_bench.py [--members 200] [--rate 100] [--seconds 5]
        [--large 2000] [--pushes 50] [--json FILE]

1. write mode: a ``--members`` group, every member online (WebSocket, acking), ``--rate`` group
   messages/s for ``--seconds``; per message the time from the send until the last member has its
   op 24 (stored in every inbox and pushed), p50/p99, and deliveries per server CPU-second.
2. read mode: a ``--large`` group (every member online on the one proxy) gets ``--pushes`` messages,
   one after the other, each waited for until every member has it; then the same connections, also
   in a plain room, get as many ``/goim/push/room`` pushes of the same size. Server CPU per message
   for both, and their ratio (the issue's target: <= 1.2 at 10,000 members).
The driver shares the two cores with the server; the CPU figures are the server's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from im_bench import pct, server_cpu  # noqa: E402

from imgate import client as imclient  # noqa: E402
from imgate.config import dump_toml  # noqa: E402


def start_server(workdir: Path) -> tuple[subprocess.Popen, dict]:
    """`imgate serve` on free loopback ports, its API open (a local benchmark), as im_bench's."""
    conf = workdir / "serve.toml"
    conf.write_text(dump_toml(dict(tcp="127.0.0.1:0", ws="127.0.0.1:0", http="127.0.0.1:0", auth="none",
                                   api_auth="none", data_dir=str(workdir / "data"), heartbeat_timeout=900.0,
                                   max_pending=8 << 20, ack_timeout=60.0, client_op_rate=0.0, im_user_rate=0.0)))
    proc = subprocess.Popen([sys.executable, "-m", "imgate", "serve", "--config", str(conf), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    urls = {}
    for line in proc.stdout:
        m = re.search(r"(tcp|ws|http)://[\d.]+:(\d+)", line)
        if m:
            urls[m.group(1)] = m.group(0)
        if line.lstrip().startswith("HTTP API"):
            break
    return proc, urls


def call(http: str, method: str, path: str, body) -> dict:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(http + path, data=data, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["data"]


class Member:
    """One online member: counts the op-24 msgs it got per gseq (or per room push), acks its inbox."""

    def __init__(self, client, seen: dict):
        self.client = client
        self.seen = seen
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self):
        async for f in self.client:
            if f.op != 24:
                if f.op == 1000:
                    key = ("room", json.loads(f.body)["n"])
                    self.seen[key] = self.seen.get(key, 0) + 1
                continue
            last = 0
            for m in json.loads(f.body)["msgs"]:
                key = m["gseq"]
                self.seen[key] = self.seen.get(key, 0) + 1
                last = max(last, m["seq"])
            if last:
                self.client.ack(last)


async def online(url: str, uids, seen: dict, room: str = "") -> list:
    out = []
    for i in range(0, len(uids), 200):
        out += await asyncio.gather(*(imclient.connect(url, mid=u, heartbeat=None, room_id=room)
                                      for u in uids[i:i + 200]))
    return [Member(c, seen) for c in out]


async def until(pred, timeout=60.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError("benchmark deliveries did not all arrive")
        await asyncio.sleep(0.0005)


async def write_mode(url, http, pid, args) -> dict:
    uids = list(range(1, args.members + 1))
    seen: dict = {}
    members = await online(url, uids, seen)
    g = call(http, "POST", "/im/groups?uid=1", {"name": "w", "members": uids})["group"]
    sender = members[0].client
    await until(lambda: seen.get(1, 0) == len(uids))  # the creation message
    lat, sent = [], 0
    cpu0, t0 = server_cpu(pid), time.monotonic()
    period = 1.0 / args.rate
    waits = []

    async def one(i):
        start = time.monotonic()
        reply = await sender.send_group(g, {"i": i})
        await until(lambda: seen.get(reply["gseq"], 0) == len(uids))
        lat.append(time.monotonic() - start)

    while time.monotonic() - t0 < args.seconds:
        waits.append(asyncio.ensure_future(one(sent)))
        sent += 1
        await asyncio.sleep(max(0.0, t0 + sent * period - time.monotonic()))
    await asyncio.gather(*waits)
    cpu = server_cpu(pid) - cpu0
    for m in members:
        m.task.cancel()
        m.client.abort()
    return {"members": len(uids), "messages": sent, "rate": args.rate,
            "fanout_p50_ms": round(pct(lat, 0.5) * 1000, 2), "fanout_p99_ms": round(pct(lat, 0.99) * 1000, 2),
            "deliveries_per_cpu_s": round(sent * len(uids) / cpu)}


async def read_mode(url, http, pid, args) -> dict:
    uids = list(range(100_001, 100_001 + args.large))
    seen: dict = {}
    members = await online(url, uids, seen, room="bench://1")
    g = call(http, "POST", "/im/groups?uid=100001", {"name": "r", "members": uids})["group"]  # joins its room
    sender = members[0].client
    content = "x" * 100
    cpu0 = server_cpu(pid)
    for i in range(args.pushes):
        reply = await sender.send_group(g, content)
        await until(lambda: seen.get(reply["gseq"], 0) == len(uids))
    group_cpu = server_cpu(pid) - cpu0
    body = json.dumps({"msgs": [{"seq": 0, "gseq": 0, "content": content}], "n": 0}).encode()
    cpu0 = server_cpu(pid)
    for i in range(args.pushes):
        b = body.replace(b'"n": 0', f'"n": {i}'.encode())
        call(http, "POST", "/goim/push/room?operation=1000&type=bench&room=1", b)
        await until(lambda: seen.get(("room", i), 0) == len(uids))
    room_cpu = server_cpu(pid) - cpu0
    for m in members:
        m.task.cancel()
        m.client.abort()
    return {"members": len(uids), "messages": args.pushes,
            "group_cpu_ms_per_msg": round(group_cpu / args.pushes * 1000, 3),
            "room_cpu_ms_per_push": round(room_cpu / args.pushes * 1000, 3),
            "ratio": round(group_cpu / room_cpu, 2)}


async def main(args):
    with tempfile.TemporaryDirectory() as tmp:
        proc, urls = start_server(Path(tmp))
        try:
            results = {"write": await write_mode(urls["ws"] + "/sub", urls["http"], proc.pid, args),
                       "read": await read_mode(urls["ws"] + "/sub", urls["http"], proc.pid, args)}
        finally:
            proc.kill()
            proc.wait()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=200)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--large", type=int, default=2000)
    ap.add_argument("--pushes", type=int, default=50)
    ap.add_argument("--json")
    asyncio.run(main(ap.parse_args()))
