"""Workers and storms: `imgate serve --workers W` for each W given, measured from outside.

For each W: a connect storm (N clients authenticate, 200 in flight: server CPU-us per authenticated
connection, every process of the server together), fan-out (M room pushes one at a time, each once
all N have the previous: CPU-us per delivery, and the coordinator's CPU as a share of the workers'
and per push), unicast (N pushes by mid, one per client, over one keep-alive HTTP connection: CPU-us
per delivery, every process together), and with W >= 2 a reconnect storm (one worker killed: time
until all its clients are back, p99 auth latency of the returning clients, busy notices). CPU comes
from /proc/<pid>/task/*/schedstat of the serve process and its workers. The clients run in this
process on the same machine; the pushes use one keep-alive connection, as a business server would.
The last line compares the last W with the first: the CPU per delivery as a ratio (issue 15 asks
<= 1.1 for workers=2 against 1) and the coordinator's share (<= 5%).

    PYTHONPATH=src .venv/bin/python benchmarks/scale_bench.py --workers 1,2 --clients 4000 --messages 20
"""

from __future__ import annotations

import argparse
import asyncio
import http.client as httpclient
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "load"))
from common import proc_times  # noqa: E402

from benchutil import stop_process  # noqa: E402

from imgate import client as imclient  # noqa: E402


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def cpu(pids) -> dict[int, float]:
    return {p: proc_times(p)[0] for p in pids}


def slices(pids) -> int:
    """Times the processes' threads were put on a CPU (schedstat's third field): about one per wake-up,
    so their growth per push counts the wake-ups a push costs."""
    n = 0
    for pid in pids:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                n += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[2])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
    return n


def io_calls(pid: int) -> tuple[int, int]:
    """(read, write) system calls of the process so far (/proc/<pid>/io: syscr, syscw)."""
    try:
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except OSError:
        return 0, 0
    return int(fields["syscr"]), int(fields["syscw"])


def start_serve(workers: int, tmp: Path, push_window: float | None = None):
    conf = tmp / "serve.toml"
    # idle clients stay; no message store; an open API on loopback (the pushes carry no key)
    conf.write_text('heartbeat_timeout = 900.0\nim = false\napi_auth = "none"\n'
                    + ("" if push_window is None else f"worker_push_window = {push_window}\n"))
    out = open(tmp / "serve.out", "wb")
    p = subprocess.Popen([sys.executable, "-m", "imgate", "serve", "--workers", str(workers), "--config", str(conf),
                          "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--http", "127.0.0.1:0", "--auth", "none",
                          "--api-auth", "none", "--data-dir", str(tmp / "data")], stdout=out, stderr=subprocess.STDOUT,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    end = time.monotonic() + 60
    while "  HTTP API" not in (text := (tmp / "serve.out").read_text(errors="replace")):
        if p.poll() is not None or time.monotonic() > end:
            raise RuntimeError(text)
        time.sleep(0.1)
    while workers > 1 and len(children(p.pid)) < workers:
        time.sleep(0.1)
    time.sleep(1.5)  # the workers' first reports
    tcp = re.search(r"goim TCP\s+tcp://([\d.:]+)", text).group(1)
    http = re.search(r"HTTP API\s+http://([\d.:]+)/", text).group(1)
    return p, tcp, http


class Pusher:
    """One keep-alive HTTP connection to the API (each request answered before the next)."""

    def __init__(self, http: str):
        host, port = http.rsplit(":", 1)
        self.conn = httpclient.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: bytes) -> None:
        self.conn.request("POST", path, body=body)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status} {data[:200]!r}")

    def posts(self, items: list) -> None:
        for path, body in items:
            self.post(path, body)


async def run_one(workers: int, n: int, messages: int, push_window: float | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    serve, tcp, http = start_serve(workers, tmp, push_window)
    loop = asyncio.get_running_loop()
    res: dict = {"workers": workers, "clients": n}
    if push_window is not None:
        res["worker_push_window"] = push_window
    try:
        pids = [serve.pid, *children(serve.pid)]
        sem = asyncio.Semaphore(200)
        busy: list = []

        async def one(i):
            async with sem:
                return await imclient.connect_with_retry(f"tcp://{tcp}", mid=100_000 + i, room_id="live://1",
                                                         heartbeat=None, timeout=60, deadline=300, on_busy=busy.append)

        c0 = cpu(pids)
        t0 = time.monotonic()
        clients = list(await asyncio.gather(*(one(i) for i in range(n))))
        dt = time.monotonic() - t0
        c1 = cpu(pids)
        used = sum(c1[p] - c0[p] for p in pids)
        res["storm"] = {"seconds": round(dt, 2), "conns_per_s": round(n / dt), "cpu_us_per_conn": round(used / n * 1e6, 1),
                        "busy": len(busy)}

        pusher = Pusher(http)
        # fan-out: one room push at a time, the next once everyone has it
        c0 = cpu(pids)
        for k in range(messages):
            body = f"m{k}".encode()
            await loop.run_in_executor(None, pusher.post, "/goim/push/room?operation=1000&type=live&room=1", body)
            for c in clients:
                while (await c.recv(timeout=60)).body != body:
                    pass
        c1 = cpu(pids)
        total = sum(c1[p] - c0[p] for p in pids)
        coord = c1[serve.pid] - c0[serve.pid]
        res["fanout"] = {"deliveries": n * messages, "cpu_us_per_delivery": round(total / (n * messages) * 1e6, 2)}
        if workers > 1:
            res["fanout"]["coordinator_share_of_workers"] = round(coord / max(1e-9, total - coord), 3)
            res["fanout"]["coordinator_us_per_push"] = round(coord / messages * 1e6)

        # unicast: one push by mid to each client, then wait until each has its own
        c0, s0, s0c, io0 = cpu(pids), slices(pids), slices([serve.pid]), {p: io_calls(p) for p in pids}
        sent = loop.run_in_executor(None, pusher.posts, [
            (f"/goim/push/mids?operation=1000&mids={100_000 + i}", f"u{i}".encode()) for i in range(n)])
        for i, c in enumerate(clients):
            want = f"u{i}".encode()
            while (await c.recv(timeout=60)).body != want:
                pass
        await sent
        c1, s1, s1c, io1 = cpu(pids), slices(pids), slices([serve.pid]), {p: io_calls(p) for p in pids}
        total = sum(c1[p] - c0[p] for p in pids)
        res["unicast"] = {"deliveries": n, "cpu_us_per_delivery": round(total / n * 1e6, 2),
                          "wakeups_per_delivery": round((s1 - s0) / n, 2)}
        if workers > 1:  # the one process every unicast passes through: it bounds the rate
            res["unicast"]["coordinator_us_per_push"] = round((c1[serve.pid] - c0[serve.pid]) / n * 1e6, 1)
            res["unicast"]["coordinator_wakeups_per_push"] = round((s1c - s0c) / n, 2)
            # per push: the coordinator's reads and writes (HTTP and to the workers), the workers' together
            res["unicast"]["coordinator_reads_writes_per_push"] = [
                round((io1[serve.pid][k] - io0[serve.pid][k]) / n, 2) for k in (0, 1)]
            res["unicast"]["workers_reads_writes_per_push"] = [
                round(sum(io1[p][k] - io0[p][k] for p in pids[1:]) / n, 2) for k in (0, 1)]
            res["unicast"]["workers_us_per_push"] = round(sum(c1[p] - c0[p] for p in pids[1:]) / n * 1e6, 1)

        if workers > 1:
            victim = children(serve.pid)[0]
            os.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
            while not any(c.closed for c in clients):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            lost = [i for i, c in enumerate(clients) if c.closed]
            lat: list[float] = []
            busy.clear()

            async def back(i):
                async with sem:
                    s = time.monotonic()
                    clients[i] = await imclient.connect_with_retry(
                        f"tcp://{tcp}", mid=100_000 + i, room_id="live://1", heartbeat=None, timeout=60, deadline=300,
                        on_busy=busy.append)
                    lat.append(time.monotonic() - s)

            await asyncio.gather(*(back(i) for i in lost))
            lat.sort()
            res["reconnect"] = {"lost": len(lost), "seconds_until_all_back": round(time.monotonic() - t0, 2),
                                "p99_auth_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 1) if lat else None,
                                "busy": len(busy)}
        for c in clients:
            c.abort()
    finally:
        stop_process(serve)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--clients", type=int, default=4000)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--push-windows", default="",
                    help="worker_push_window values: each run with W >= 2 once per value (default: the config's)")
    ap.add_argument("--repeat", type=int, default=1, help="the whole sequence this many times (a shared machine)")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of --clients (make bench SCALE=0.1)")
    args = ap.parse_args()
    args.clients = max(100, int(args.clients * args.scale))
    out = []
    windows = [float(x) for x in args.push_windows.split(",") if x] or [None]
    for _ in range(args.repeat):
        for w in [int(x) for x in args.workers.split(",")]:
            for window in windows if w > 1 else [None]:
                out.append(asyncio.run(run_one(w, args.clients, args.messages, window)))
                print(json.dumps(out[-1]), flush=True)
    summary = {}
    if len(out) > 1:
        # the last W against the first, each averaged over its runs (--repeat; one window: the last)
        first_w, last_w = out[0]["workers"], out[-1]["workers"]
        window = out[-1].get("worker_push_window")
        firsts = [r for r in out if r["workers"] == first_w]
        lasts = [r for r in out if r["workers"] == last_w and r.get("worker_push_window") == window]

        def ratio(part: str, key: str) -> float:
            return round(sum(r[part][key] for r in lasts) / len(lasts) / (sum(r[part][key] for r in firsts) / len(firsts)), 2)

        summary = {"workers": f"{last_w} vs {first_w}", "runs_each": [len(firsts), len(lasts)],
                   "storm_cpu_ratio": ratio("storm", "cpu_us_per_conn"),
                   "fanout_cpu_ratio": ratio("fanout", "cpu_us_per_delivery"),
                   "unicast_cpu_ratio": ratio("unicast", "cpu_us_per_delivery"),
                   "coordinator_share_of_workers": out[-1]["fanout"].get("coordinator_share_of_workers")}
        print(json.dumps({"summary": summary}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": out, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
