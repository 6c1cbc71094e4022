"""Reconnect storm (issue 15): N clients (15,000) on proxy A of a cluster on loopback -- its own Redis and
Kafka, one logic, proxies A and B -- then A is killed and every client comes back on B at once.

Reports the time from the kill until the last client is authenticated again, the p99 of the auth
latencies of the returning clients (op 7 written -> op 8 read, one figure per attempt that got an
answer), auth timeouts (an attempt with no answer within --auth-timeout: must be 0), the busy notices
proxy B answered with (op 6 "busy" + retry_ms, honoured by the clients), and the peak CPU of logic,
Redis and proxy B (cores, over 0.5 s windows, from /proc/<pid>/stat sampled every 0.1 s).

The clients are goim TCP connections held by --drivers processes of this script (``--driver``): a
process may hold 20,000 open files here, so no process holds more than ~15,000 connections.

    PYTHONPATH=src .venv/bin/python benchmarks/reconnect_storm.py [--clients 15000] [--json FILE]
"""

from __future__ import annotations

import argparse
from bisect import insort
from operator import attrgetter
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services.sh"
HEADER = struct.Struct(">ihhii")
OP_AUTH, OP_AUTH_REPLY, OP_NOTICE = 7, 8, 6
TICK = os.sysconf("SC_CLK_TCK")
RETRY_AT = attrgetter("retry_at")


# ------------------------------------------------------------------------------------------ driver


class Conn:
    __slots__ = ("mid", "sock", "buf", "sent_at", "retry_at", "authed")

    def __init__(self, mid: int):
        self.mid, self.sock, self.buf, self.sent_at, self.retry_at, self.authed = mid, None, b"", 0.0, 0.0, False


def auth_frame(mid: int) -> bytes:
    body = json.dumps({"mid": mid, "key": "", "room_id": "live://1", "platform": "bench", "accepts": [1000]}).encode()
    return HEADER.pack(16 + len(body), 16, 1, OP_AUTH, 1) + body


def driver(first: str, second: str, mid0: int, n: int, conc: int, auth_timeout: float) -> None:
    """Hold n clients: authenticate them on ``first``; when their connections drop, authenticate them
    again on ``second``, honouring busy notices. Talks JSON lines on stdout."""
    sel = selectors.DefaultSelector()
    conns = [Conn(mid0 + i) for i in range(n)]
    stats = {"lat": [], "timeouts": 0, "busy": 0, "refused": 0, "last": 0.0}

    def open_(c: Conn, addr: tuple) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(addr)
        except BlockingIOError:
            pass
        c.sock, c.buf, c.authed = s, b"", False
        sel.register(s, selectors.EVENT_WRITE, c)

    def drop(c: Conn) -> None:
        sel.unregister(c.sock)
        c.sock.close()
        c.sock = None

    def run(addr: tuple, pending: list, measure: bool) -> None:
        waiting = list(pending)   # not connected yet, in order
        inflight = 0
        left = len(pending)
        while left:
            now = time.monotonic()
            while waiting and inflight < conc and waiting[0].retry_at <= now:
                open_(waiting.pop(0), addr)
                inflight += 1
            for key, ev in sel.select(0.05):
                c = key.data
                if ev & selectors.EVENT_WRITE:
                    try:
                        c.sock.send(auth_frame(c.mid))
                    except OSError:
                        drop(c)
                        inflight -= 1
                        c.retry_at = time.monotonic() + 0.1
                        insort(waiting, c, key=RETRY_AT)
                        continue
                    c.sent_at = time.monotonic()
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                try:
                    data = c.sock.recv(4096)
                except OSError:
                    data = b""
                c.buf += data
                if len(c.buf) >= 16:
                    size, _, _, op, _ = HEADER.unpack_from(c.buf)
                    if len(c.buf) < size:
                        continue
                    t = time.monotonic()
                    inflight -= 1
                    if op == OP_AUTH_REPLY:
                        if measure:
                            stats["lat"].append(t - c.sent_at)
                        stats["last"] = t
                        c.authed = True
                        sel.unregister(c.sock)  # held open, no longer read
                        left -= 1
                        continue
                    notice = json.loads(c.buf[16:size] or b"{}")
                    if notice.get("reason") == "busy":
                        stats["busy"] += 1
                        if measure:
                            stats["lat"].append(t - c.sent_at)
                        c.retry_at = t + notice.get("retry_ms", 100) / 1000
                    else:
                        stats["refused"] += 1
                        c.retry_at = t + 0.5
                    drop(c)
                    insort(waiting, c, key=RETRY_AT)
                elif not data:  # closed before any answer
                    inflight -= 1
                    drop(c)
                    c.retry_at = time.monotonic() + 0.1
                    insort(waiting, c, key=RETRY_AT)
            now = time.monotonic()
            for key in list(sel.get_map().values()):
                c = key.data
                if key.events == selectors.EVENT_READ and now - c.sent_at > auth_timeout:
                    stats["timeouts"] += 1
                    inflight -= 1
                    drop(c)
                    c.retry_at = now
                    insort(waiting, c, key=RETRY_AT)

    run(parse(first), conns, measure=False)
    print(json.dumps({"ready": n}), flush=True)
    # every connection is held; wait until the proxy goes away, then come back on the other one
    while True:
        r, _, _ = select_any([c.sock for c in conns])
        if r:
            break
    lost = []
    deadline = time.monotonic() + 30
    while len(lost) < n and time.monotonic() < deadline:
        for c in conns:
            if c.authed:
                try:
                    gone = c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    c.sock.close()
                    c.sock, c.authed, c.retry_at = None, False, 0.0
                    lost.append(c)
        if len(lost) < n:
            time.sleep(0.01)
    stats["lat"] = []
    run(parse(second), lost, measure=True)
    print(json.dumps({"back": len(lost), **stats}), flush=True)
    sys.stdin.read()  # hold the connections until told


def select_any(socks: list) -> tuple:
    import select
    p = select.epoll()
    for s in socks[:1]:
        p.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    events = p.poll()
    p.close()
    return events, None, None


def parse(addr: str) -> tuple:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


# ------------------------------------------------------------------------------------------ cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError):
        return 0.0


class Sampler(threading.Thread):
    """Peak CPU (cores) of each named process over 0.5 s windows, sampled every 0.1 s."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids, self.peak, self.stop = pids, {k: 0.0 for k in pids}, threading.Event()

    def run(self) -> None:
        hist: list = []
        while not self.stop.wait(0.1):
            hist.append((time.monotonic(), {k: cpu_s(p) for k, p in self.pids.items()}))
            old = [h for h in hist if hist[-1][0] - h[0] >= 0.5]
            if old:
                t0, c0 = old[-1]
                t1, c1 = hist[-1]
                for k in self.pids:
                    self.peak[k] = max(self.peak[k], (c1[k] - c0[k]) / (t1 - t0))
                hist = hist[hist.index(old[-1]):]


def start_role(role: str, name: str, conf: dict, work: Path) -> subprocess.Popen:
    from imgate.config import dump_toml

    path = work / f"{name}.toml"
    path.write_text(dump_toml(conf))
    log = open(work / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "imgate", role, "--config", str(path)], stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=str(ROOT))


def wait_log(work: Path, name: str, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while text not in (work / f"{name}.log").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{name} did not start:\n" + (work / f"{name}.log").read_text(errors="replace")[-3000:])
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=15000)
    ap.add_argument("--drivers", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=100, help="connects in flight per driver")
    ap.add_argument("--auth-timeout", type=float, default=10.0)
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of --clients (make bench SCALE=0.1)")
    ap.add_argument("--driver", nargs=6, metavar=("FIRST", "SECOND", "MID0", "N", "CONC", "TIMEOUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.driver:
        a = args.driver
        driver(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5]))
        return
    args.clients = max(100, int(args.clients * args.scale))
    per = -(-args.clients // args.drivers)
    if per > hard - 100:
        sys.exit(f"{per} connections per driver exceed the open-files limit {hard}: use more --drivers")
    work = Path(tempfile.mkdtemp(prefix="imgate-storm-"))
    redis, kafka, ctrl = free_port(), free_port(), free_port()
    subprocess.run(["bash", str(SERVICES), "start-redis", str(redis), str(work)], check=True, stdout=subprocess.DEVNULL)
    procs: dict[str, subprocess.Popen] = {}
    drivers: list[subprocess.Popen] = []
    try:
        subprocess.run(["bash", str(SERVICES), "start-kafka", str(kafka), str(ctrl), str(work)], check=True,
                       stdout=subprocess.DEVNULL)
        lrpc, lhttp = free_port(), free_port()
        common = dict(redis_url=f"redis://127.0.0.1:{redis}/0", kafka=f"127.0.0.1:{kafka}", auth="none", im=False,
                      api_auth="none", heartbeat_timeout=900.0, data_dir=str(work / "data"),
                      logic_addrs=[f"127.0.0.1:{lrpc}"])
        procs["logic"] = start_role("logic", "logic", dict(common, server_id="logic", http=f"127.0.0.1:{lhttp}",
                                                           logic_rpc=f"127.0.0.1:{lrpc}"), work)
        wait_log(work, "logic", "is up", procs["logic"])
        ports = {}
        for name in ("A", "B"):
            ports[name] = free_port()
            procs[name] = start_role("proxy", name, dict(common, server_id=name, tcp=f"127.0.0.1:{ports[name]}",
                                                         ws=f"127.0.0.1:{free_port()}", rpc=f"127.0.0.1:{free_port()}"),
                                     work)
            wait_log(work, name, "is up", procs[name])
        a, b = f"127.0.0.1:{ports['A']}", f"127.0.0.1:{ports['B']}"
        for i in range(args.drivers):
            n = min(per, args.clients - i * per)
            drivers.append(subprocess.Popen(
                [sys.executable, __file__, "--driver", a, b, str(1_000_000 + i * per), str(n), str(args.concurrency),
                 str(args.auth_timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        t_up = time.monotonic()
        for d in drivers:
            json.loads(d.stdout.readline())
        print(f"{args.clients} clients on proxy A in {time.monotonic() - t_up:.1f} s; killing A", flush=True)
        redis_pid = int((work / "redis" / "redis.pid").read_text())
        pids = {"logic": procs["logic"].pid, "redis": redis_pid, "proxy B": procs["B"].pid}
        sampler = Sampler(pids)
        sampler.start()
        time.sleep(1.0)
        c0 = {k: cpu_s(p) for k, p in pids.items()}
        t0 = time.monotonic()
        procs["A"].send_signal(signal.SIGKILL)
        results = [json.loads(d.stdout.readline()) for d in drivers]
        c1 = {k: cpu_s(p) for k, p in pids.items()}
        sampler.stop.set()
        sampler.join()
        lat = sorted(x for r in results for x in r["lat"])
        back = sum(r["back"] for r in results)
        out = {
            "clients": args.clients, "back": back,
            "seconds_until_all_back": round(max(r["last"] for r in results) - t0, 2),
            "p99_auth_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 1) if lat else None,
            "p50_auth_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
            "auth_timeouts": sum(r["timeouts"] for r in results),
            "busy_notices": sum(r["busy"] for r in results),
            "other_refusals": sum(r["refused"] for r in results),
            "peak_cpu_cores": {k: round(v, 2) for k, v in sampler.peak.items()},
            "cpu_us_per_reconnect": {k: round((c1[k] - c0[k]) / max(1, back) * 1e6, 1) for k in pids},
        }
        print(json.dumps(out), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    finally:
        for d in drivers:
            d.kill()
        for group in (("A", "B"), ("logic",)):  # the proxies first: they report their sessions' end to logic
            for name in group:
                if name in procs and procs[name].poll() is None:
                    procs[name].send_signal(signal.SIGTERM)
            for name in group:
                try:
                    procs[name].wait(30) if name in procs else None
                except subprocess.TimeoutExpired:
                    procs[name].kill()
        subprocess.run(["bash", str(SERVICES), "stop", str(work)], stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
