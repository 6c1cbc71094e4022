#!/usr/bin/env python3
"""`make bench`: load benchmarks of imgate against its peers and against the machine's limit.

    PYTHONPATH=src .venv/bin/python benchmarks/load/run.py [--scale 0.1] [--servers imgate,c1,...]

Servers under test, each started fresh as its own process and measured from outside (/proc/<pid>):
  imgate      `python -m imgate serve --auth none` (room push: POST /goim/push/room, unicast: /goim/push/mids)
  websockets  benchmarks/peers/ws_websockets.py   (websockets.broadcast)
  picows      benchmarks/peers/ws_picows.py       (transport.send per client)
  c1          benchmarks/peers/c_broadcast.c --batch 1   (one send() per message per recipient)
  c20         benchmarks/peers/c_broadcast.c --batch 20  (20 messages per send(): the machine's limit)

How a run goes (N = 10,000 x scale room clients, all WebSocket; benchmarks/load/README.md has more):
  1. each server in turn is started and brought up: its connect storm (connections plus auth per second
     until N are in), then N/2 more for the idle memory (RSS growth per authenticated connection at
     1.5 N connections, RSS from before the first connection); the extra N/2 are closed, N stay;
  2. fan-out rounds: one message to each server's room in turn (order rotating), each only once the
     previous one reached all N clients: no coalescing possible;
  3. burst rounds: 100 messages to each server in turn, written as 100 pipelined HTTP requests in one
     write; deliveries per server CPU-second and latency distribution;
  4. unicast (imgate and c1, the others stopped by then): pushes by mid at 5,000/s to the N users,
     evenly spaced, in rounds the two servers take in turn (the server measured and the driver at
     nice -10 meanwhile: --unicast-nice).
Interleaving the servers (as benchmarks/ratios.py does) gives each the same machine: this box is
shared, and what else runs moves every figure.

Server CPU is taken from /proc/<pid>/task/*/schedstat (the utime+stime of /proc/<pid>/stat, in ns)
over each server's own measured windows; the generators share the two cores, so wall time says little.
RSS is VmRSS. Deliveries, bytes and latency (a CLOCK_MONOTONIC stamp in each message body) are counted
by the generator processes (benchmarks/load/gen.py). Each phase also records the CPU of the load
(generators and driver), of every other process on the machine, and the hypervisor's steal.

Writes benchmarks/results/load-<date>-<commit>[-s<scale>].json, PNG charts per scenario, and (full scale
only, unless --no-md) the "Load benchmarks (make bench)" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import glob
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import uvloop  # noqa: E402

from common import (  # noqa: E402
    BURST, OP_PUSH, PEER_PUSH_PATH, free_port, http_post, machine_busy, machine_steal, make_body, proc_rss, proc_threads,
    proc_times, raise_nofile,
)

PY = sys.executable
RESULTS_DIR = os.path.join(BENCH, "results")
BIN_DIR = os.path.join(BENCH, "bin")
C_SOURCE = os.path.join(BENCH, "peers", "c_broadcast.c")
C_BINARY = os.path.join(BIN_DIR, "c_broadcast")

ROOM_TYPE, ROOM_ID = "bench", "1"
DEFAULT_SERVERS = "imgate,websockets,picows,c1,c20"
ROOM = f"{ROOM_TYPE}://{ROOM_ID}"

TARGETS = [
    # (key, description, op, threshold)
    ("fanout_vs_c1", "fan-out: imgate / C one send per recipient", ">=", 0.9),
    ("fanout_vs_websockets", "fan-out: imgate / websockets", ">=", 1.5),
    ("fanout_vs_picows", "fan-out: imgate / picows", ">=", 1.0),
    ("burst_vs_websockets", "burst: imgate / websockets", ">=", 15.0),
    ("burst_vs_c20", "burst: imgate / C 20 frames per send", ">=", 0.5),
    ("idle_kb_per_conn", "idle memory: imgate KB per authenticated WebSocket connection", "<=", 3.0),
    ("unicast_p99_ms", "unicast: imgate p99 latency (ms) at 5,000 pushes/s", "<=", 2.0),
]


# ------------------------------------------------------------------ progress


class Progress:
    """One status line, rewritten in place on a terminal; a line every few seconds otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.width = 0
        self.t0 = time.monotonic()

    def _stamp(self):
        s = int(time.monotonic() - self.t0)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def update(self, text: str, force: bool = False):
        now = time.monotonic()
        if self.tty:
            line = f"{self._stamp()} {text}"
            sys.stderr.write("\r" + line.ljust(self.width))
            self.width = len(line)
            sys.stderr.flush()
        elif force or now - self.last >= 3.0:
            self.last = now
            sys.stderr.write(f"{self._stamp()} {text}\n")
            sys.stderr.flush()

    def log(self, text: str):
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            self.width = 0
        sys.stderr.write(f"{self._stamp()} {text}\n")
        sys.stderr.flush()


P = Progress()


# ------------------------------------------------------------------ generators


class Generator:
    """One gen.py process, driven over its stdin; its events are sorted into queues by kind."""

    def __init__(self, index: int):
        self.index = index
        self.proc = None
        self.queues: dict[str, asyncio.Queue] = {}
        self.authed_progress = 0
        self.reader_task = None

    async def start(self):
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
        self.proc = await asyncio.create_subprocess_exec(
            PY, os.path.join(HERE, "gen.py"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            limit=1 << 24)
        self.reader_task = asyncio.get_running_loop().create_task(self._read())
        ev = await self.expect("ready", 30)
        self.pid = ev["pid"]

    def q(self, kind):
        q = self.queues.get(kind)
        if q is None:
            q = self.queues[kind] = asyncio.Queue()
        return q

    async def _read(self):
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                self.q("eof").put_nowait({"ev": "eof"})
                return
            ev = json.loads(line)
            if ev["ev"] == "progress":
                self.authed_progress = ev["authed"]
                continue
            self.q(ev["ev"]).put_nowait(ev)

    def send(self, **cmd):
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())

    async def expect(self, kind, timeout):
        get = asyncio.ensure_future(self.q(kind).get())
        eof = asyncio.ensure_future(self.q("eof").get())
        done, _ = await asyncio.wait({get, eof}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for f in (get, eof):
            if f not in done:
                f.cancel()
        if get in done:
            return get.result()
        if eof in done:
            raise RuntimeError(f"generator {self.index} exited")
        raise asyncio.TimeoutError(f"generator {self.index}: no {kind!r} within {timeout} s")

    async def call(self, kind, timeout=60, **cmd):
        self.send(**cmd)
        return await self.expect(kind, timeout)

    def drain(self, kind):
        q = self.q(kind)
        while not q.empty():
            q.get_nowait()

    async def stop(self):
        if self.proc and self.proc.returncode is None:
            try:
                self.send(cmd="exit")
                await asyncio.wait_for(self.proc.wait(), 10)
            except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
                self.proc.kill()
                await self.proc.wait()


# ------------------------------------------------------------------ HTTP pusher


_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


class Pusher(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection that writes requests and counts the responses."""

    def __init__(self):
        self.t = None
        self.buf = b""
        self.responses = 0
        self.errors = 0
        self.first_error = None
        self.waiter = None
        self.want = 0
        self.lost = None
        self.sent_at = None        # deque of send times when response times are tracked
        self.rtt = []

    def track(self):
        from collections import deque

        self.sent_at = deque()

    @classmethod
    async def open(cls, port):
        loop = asyncio.get_running_loop()
        _, p = await loop.create_connection(cls, "127.0.0.1", port)
        return p

    def connection_made(self, t):
        self.t = t
        t.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        self.lost = exc or ConnectionResetError("push connection closed")
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def write(self, data: bytes):
        if self.sent_at is not None:
            self.sent_at.append(time.monotonic())
        self.t.write(data)

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        pos = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            m = _CONTENT_LENGTH.search(head)
            length = int(m.group(1)) if m else 0
            if end + 4 + length > len(buf):
                break
            if not head.startswith(b"HTTP/1.1 200"):
                self.errors += 1
                if self.first_error is None:
                    self.first_error = buf[pos:end + 4 + length][:300].decode("latin-1")
            self.responses += 1
            if self.sent_at:
                self.rtt.append(time.monotonic() - self.sent_at.popleft())
            pos = end + 4 + length
        self.buf = buf[pos:]
        if self.waiter is not None and self.responses >= self.want and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait_responses(self, n, timeout=30):
        if self.responses >= n:
            return
        if self.lost:
            raise self.lost
        self.want = n
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None

    def close(self):
        if self.t:
            self.t.close()


# ------------------------------------------------------------------ servers under test


def build_c_peer():
    stale = not os.path.exists(C_BINARY) or os.path.getmtime(C_BINARY) < os.path.getmtime(C_SOURCE)
    if stale:
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise RuntimeError("no C compiler (set CC) for benchmarks/peers/c_broadcast.c")
        os.makedirs(BIN_DIR, exist_ok=True)
        tmp = C_BINARY + ".tmp"
        subprocess.run([*cc.split(), "-O2", "-Wall", "-pthread", "-o", tmp, C_SOURCE], check=True)
        os.replace(tmp, C_BINARY)
    return C_BINARY


class Server:
    """A server under test: how to start it, where to push, what it is called in the tables."""

    kinds = ("storm", "idle", "fanout", "burst")

    def __init__(self, name, label, logdir):
        self.name = name
        self.label = label
        self.logdir = logdir
        self.proc = None
        self.ws_port = free_port()
        self.ctl_port = free_port()
        self.src = "127.0.0.1"     # source address of its clients
        self.api_key = ""          # sent with every push (imgate's API needs a credential)
        self.pythonpath = os.path.join(ROOT, "src")
        self.pusher = None
        self.share = []            # its room clients per generator
        self.timeouts = 0
        self.down = False

    def argv(self):
        raise NotImplementedError

    room_path = PEER_PUSH_PATH

    def unicast_path(self, mid):
        return f"{PEER_PUSH_PATH}?mid={mid}"

    def start(self):
        self.log_path = os.path.join(self.logdir, f"{self.name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=dict(os.environ, PYTHONPATH=self.pythonpath))
        self.pid = self.proc.pid

    def renice(self, value):
        """Set the server's main thread (the one that serves; nice is per thread on Linux) to ``value``;
        False when not allowed (not root)."""
        try:
            os.setpriority(os.PRIO_PROCESS, self.pid, value)
            return True
        except OSError:
            return False

    async def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        for port in (self.ws_port, self.ctl_port):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name} did not listen on {port} within {timeout} s")
                    await asyncio.sleep(0.05)

    def tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


class Imgate(Server):
    kinds = ("storm", "idle", "fanout", "burst", "unicast")
    gc_trace = None       # --imgate-gc-trace: a JSON path for the GC pauses
    room_path = f"/goim/push/room?operation={OP_PUSH}&type={ROOM_TYPE}&room={ROOM_ID}"

    def unicast_path(self, mid):
        return f"/goim/push/mids?operation={OP_PUSH}&mids={mid}"

    def argv(self):
        self.tcp_port = free_port()
        data = tempfile.mkdtemp(prefix="imgate-bench-", dir=self.logdir)
        conf = os.path.join(self.logdir, f"imgate-{self.name}.toml")
        # a push-scope API key in the node's data dir, made before the node starts; a variant built
        # before API keys existed has no `apikey` command and an open API
        made = subprocess.run(
            [PY, "-m", "imgate", "apikey", "create", "--scope", "push", "--name", "bench", "--data-dir", data],
            capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=self.pythonpath))
        self.api_key = made.stdout.strip() if made.returncode == 0 else ""
        with open(conf, "w") as f:
            # the generators send no heartbeats: keep idle clients for the whole run (default 90 s)
            f.write("heartbeat_timeout = 900.0\n")
            if self.api_key:
                # the connect storm measures the cost of an auth, as for the peers, which admit all at
                # once: the admission rate (a reconnect-storm guard) would measure the rate instead
                f.write("max_auths_per_second = 0\n")
        head = [PY, "-m", "imgate"]
        if self.gc_trace:
            head = [PY, os.path.join(HERE, "gc_trace.py"), self.gc_trace]
        return head + ["serve", "--auth", "none", "--config", conf,
                "--tcp", f"127.0.0.1:{self.tcp_port}", "--ws", f"127.0.0.1:{self.ws_port}",
                "--http", f"127.0.0.1:{self.ctl_port}", "--data-dir", data, "--log-level", "WARNING"]


class PyPeer(Server):
    def __init__(self, name, label, logdir, script):
        super().__init__(name, label, logdir)
        self.script = script

    def argv(self):
        return [PY, os.path.join(BENCH, "peers", self.script), "--ws", f"127.0.0.1:{self.ws_port}",
                "--control", f"127.0.0.1:{self.ctl_port}"]


class CPeer(Server):
    def __init__(self, name, label, logdir, batch, idle_threads=0, work_us=0):
        super().__init__(name, label, logdir)
        self.batch = batch
        self.idle_threads = idle_threads
        self.work_us = work_us
        if batch == 1 and not idle_threads:
            # unicast by mid on the plain C server: the latency floor of this harness on this machine
            self.kinds = Server.kinds + ("unicast",)

    def argv(self):
        return [C_BINARY, "--ws", f"127.0.0.1:{self.ws_port}", "--control", f"127.0.0.1:{self.ctl_port}",
                "--batch", str(self.batch), "--idle-threads", str(self.idle_threads), "--work-us", str(self.work_us)]


def make_variant(name, src, logdir):
    """Another imgate source tree (a proposed change) as one more server of the same run."""
    src = os.path.abspath(src)
    if not os.path.isdir(os.path.join(src, "imgate")):
        raise SystemExit(f"--variant {name}={src}: no imgate package there (give the src/ directory)")
    srv = Imgate(name, f"imgate variant {name}", logdir)
    srv.pythonpath = src
    return srv


def make_servers(names, logdir, gc_trace=None, variants=None):
    table = {
        "imgate": lambda: Imgate("imgate", "imgate", logdir),
        "websockets": lambda: PyPeer("websockets", "websockets (broadcast)", logdir, "ws_websockets.py"),
        "picows": lambda: PyPeer("picows", "picows (naive loop)", logdir, "ws_picows.py"),
        "c1": lambda: CPeer("c1", "C, 1 send/recipient", logdir, 1),
        "c20": lambda: CPeer("c20", "C, 20 frames/send", logdir, 20),
        # not in the default set: c1 with 4 idle threads, as many as the Python servers have
        "c1mt": lambda: CPeer("c1mt", "C, 1 send/recipient, +4 idle threads", logdir, 1, 4),
    }
    for n in names:
        # c1w<N>: c1 spending N CPU-us more per unicast push (a busy loop): is a tail the CPU's?
        m = re.fullmatch(r"c1w(\d+)", n)
        if m:
            table[n] = (lambda n=n, us=int(m.group(1)):
                        CPeer(n, f"C, 1 send/recipient, +{us} CPU-us per unicast push", logdir, 1, work_us=us))
    if gc_trace:
        Imgate.gc_trace = gc_trace
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SystemExit(f"servers named twice: {', '.join(dup)} (each server needs its own clients)")
    for vname, vsrc in (variants or {}).items():
        table[vname] = (lambda vname=vname, vsrc=vsrc: make_variant(vname, vsrc, logdir))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown servers {unknown}; choose from {', '.join(table)}")
    return [table[n]() for n in names]


# ------------------------------------------------------------------ statistics


def latency_summary(lat_us: np.ndarray) -> dict:
    if lat_us.size == 0:
        return {"n": 0}
    q = np.linspace(0, 1, 201)
    values = np.quantile(lat_us, q)
    p = lambda x: float(np.quantile(lat_us, x))  # noqa: E731
    return {
        "n": int(lat_us.size),
        "mean_us": float(lat_us.mean()),
        "p50_us": p(0.5), "p90_us": p(0.9), "p99_us": p(0.99), "p999_us": p(0.999),
        "max_us": float(lat_us.max()),
        "quantiles_us": [round(float(v), 1) for v in values],  # at 0, 0.005, ..., 1: for the charts
    }


def fmt_int(x):
    return f"{x:,.0f}"


# ------------------------------------------------------------------ the run


class Meter:
    """Accumulates, over one or many measured windows, the server's CPU and what else ran meanwhile."""

    def __init__(self, bench, srv):
        self.bench, self.srv = bench, srv
        self.cpu = self.wall = self.wait = self.machine = self.load = self.steal = 0.0
        self.windows = 0

    def start(self):
        self._t = time.monotonic()
        self._cpu, self._wait = proc_times(self.srv.pid)
        self._machine = machine_busy()
        self._steal = machine_steal()
        self._load = self.bench.load_cpu()

    def stop(self):
        cpu, wait = proc_times(self.srv.pid)
        self.cpu += cpu - self._cpu
        self.wait += wait - self._wait
        self.wall += time.monotonic() - self._t
        self.machine += machine_busy() - self._machine
        self.steal += machine_steal() - self._steal
        self.load += self.bench.load_cpu() - self._load
        self.windows += 1

    def record(self) -> dict:
        return {
            "server_cpu_s": self.cpu, "wall_s": self.wall, "windows": self.windows,
            "server_runqueue_wait_s": self.wait,          # runnable but another process had the core
            "load_cpu_s": self.load,                       # generators and driver
            # the machine's busy time that was neither the server's nor ours: other sessions (noise)
            "other_processes_cpu_s": max(0.0, self.machine - self.cpu - self.load),
            "steal_s": self.steal,                         # of that: the hypervisor's (other VMs)
        }

    def noise(self) -> str:
        r = self.record()
        return (f"; load {r['load_cpu_s']:.1f} CPU-s, other processes {r['other_processes_cpu_s']:.1f} CPU-s, "
                f"server waited {self.wait:.2f} s for a core, steal {self.steal:.2f} s")


def rotate(items, k):
    k %= max(len(items), 1)
    return items[k:] + items[:k]


class Bench:
    def __init__(self, args):
        self.args = args
        self.scale = args.scale
        self.n_room = max(10, round(10000 * self.scale))
        self.n_idle = max(15, round(15000 * self.scale))
        self.fanout_msgs = args.fanout_messages
        self.bursts = args.bursts
        self.unicast_rate = args.unicast_rate
        self.unicast_seconds = args.unicast_seconds or max(3.0, 10.0 * self.scale)
        self.conc = args.concurrency
        self.gens: list[Generator] = []
        self.tmp = tempfile.mkdtemp(prefix="imgate-load-")
        self.seq = 0
        self.expected = []        # per generator: the delivery total it should have reached by now

    # -- helpers over all generators

    def split(self, n, mid0):
        """[(gen, count, first mid)]: n clients shared out over the generators."""
        k = len(self.gens)
        out = []
        for i, g in enumerate(self.gens):
            c = n // k + (1 if i < n % k else 0)
            out.append((g, c, mid0))
            mid0 += c
        return out

    async def all_call(self, kind, timeout=60, **cmd):
        for g in self.gens:
            g.send(**cmd)
        return [await g.expect(kind, timeout) for g in self.gens]

    async def stats(self):
        return await self.all_call("stats", cmd="stats")

    def load_cpu(self):
        """CPU seconds of the load: the generators and this driver."""
        return sum(proc_times(g.proc.pid)[0] for g in self.gens) + proc_times(os.getpid())[0]

    async def group_stats(self, group):
        evs = await self.stats()
        out = {"deliveries": 0, "messages": 0, "bytes": 0, "open": 0, "per_gen_open": []}
        for e in evs:
            s = e["groups"].get(group, {})
            for k in ("deliveries", "messages", "bytes", "open"):
                out[k] += s.get(k, 0)
            out["per_gen_open"].append(s.get("open", 0))
        out["lost"] = sum(e["lost"] for e in evs)
        return out

    async def latencies(self, group):
        arrays = []
        for g in self.gens:
            path = os.path.join(self.tmp, f"lat-{g.index}.npy")
            await g.call("dumped", 60, cmd="dump", group=group, path=path)
            arrays.append(np.load(path))
            os.unlink(path)
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)

    async def resync(self):
        self.expected = [e["total"] for e in await self.stats()]

    async def wait_reached(self, targets, timeout):
        for g, t in zip(self.gens, targets):
            g.drain("reached")
            g.send(cmd="notify", target=t)
        ok = True
        for g in self.gens:
            try:
                await g.expect("reached", timeout)
            except asyncio.TimeoutError:
                ok = False
        return ok

    async def connect(self, srv, n, mid0, group, label):
        parts = self.split(n, mid0)
        for g, c, m in parts:
            g.authed_progress = 0
            g.send(cmd="connect", host="127.0.0.1", port=srv.ws_port, src=srv.src, path="/sub", n=c, mid0=m,
                   room=ROOM, group=group, conc=self.conc, timeout=self.args.connect_timeout)
        pending = [asyncio.ensure_future(g.expect("connected", self.args.connect_timeout + 30)) for g, _, _ in parts]
        while True:
            done, _ = await asyncio.wait(pending, timeout=0.5)
            authed = sum(g.authed_progress for g in self.gens)
            P.update(f"{srv.name:<10} {label}: {authed:,}/{n:,} in")
            if len(done) == len(pending):
                break
        return [f.result() for f in pending]

    async def wait_quiet(self, srv=None):
        """Best effort against a shared machine: wait (at most --quiet-wait s) until processes other than
        ours use less than --quiet-threshold of a core and the hypervisor steals less than --quiet-steal
        of it, over one second. The noise that remains is recorded per phase."""
        deadline = time.monotonic() + self.args.quiet_wait
        warned = False
        while True:
            m0, s0, l0, st0 = machine_busy(), proc_times(srv.pid)[0] if srv else 0.0, self.load_cpu(), machine_steal()
            await asyncio.sleep(1.0)
            others = (machine_busy() - m0) - ((proc_times(srv.pid)[0] if srv else 0.0) - s0) - (self.load_cpu() - l0)
            steal = machine_steal() - st0
            quiet = others < self.args.quiet_threshold and steal < self.args.quiet_steal
            if quiet or time.monotonic() > deadline:
                if warned:
                    P.log(f"other processes use {others:.2f} cores, steal {steal:.2f}; going on")
                return others
            if not warned:
                P.log(f"other processes use {others:.2f} cores, steal {steal:.2f}: waiting up to "
                      f"{self.args.quiet_wait:.0f} s for a quieter machine")
                warned = True
            P.update(f"waiting for a quieter machine: other processes use {others:.2f} cores, steal {steal:.2f}")

    # -- profiling (--profile)

    def profile(self, srv, scenario):
        """Record a profile of one server during a scenario: py-spy for the Python servers (collapsed
        stacks), or perf (--profile-with perf: `perf record -g`, then `perf report` as text)."""
        if scenario not in self.args.profile or (self.args.profile_servers and
                                                 srv.name not in self.args.profile_servers):
            return None
        tool = self.args.profile_with
        if tool == "py-spy" and isinstance(srv, CPeer):
            return None
        if tool == "perf":
            data = os.path.join(self.tmp, f"perf-{srv.name}-{scenario}.data")
            out = os.path.join(RESULTS_DIR, f"profile-{srv.name}-{scenario}-perf.txt")
            cmd = ["perf", "record", "-F", "1999", "-g", "-p", str(srv.pid), "-o", data]
        else:
            spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
            data = None
            out = os.path.join(RESULTS_DIR, f"profile-{srv.name}-{scenario}.txt")
            cmd = [spy, "record", "--pid", str(srv.pid), "--format", "raw", "--rate", "250", "--output", out]
            # native frames need the process paused while sampling; without them, sample without pausing
            cmd.append("--native" if self.args.profile_native else "--nonblocking")
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it attach
        return p, out, data

    def profiles(self, servers, scenario):
        return [x for x in (self.profile(s, scenario) for s in servers) if x]

    def profile_end(self, profs):
        for p, out, data in profs or []:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
            if data:
                with open(out, "w") as f:
                    for sort, limit in (("dso", "0"), ("dso,symbol", "0.1")):
                        f.flush()
                        subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--percent-limit",
                                        limit, "--sort", sort, "-g", "none"], stdout=f, stderr=subprocess.DEVNULL)
                os.unlink(data)
            P.log(f"profile written to {os.path.relpath(out, ROOT)}")

    def body(self):
        self.seq += 1
        return make_body(self.seq, time.monotonic_ns())

    # -- bringing a server up: connect storm and idle memory

    async def bring_up(self, srv, res):
        P.log(f"{srv.name:<10} starting (clients from {srv.src})")
        srv.start()
        if self.args.pin:
            os.sched_setaffinity(srv.pid, self.server_cpus)
        try:
            await srv.wait_ready()
            await asyncio.sleep(1.0)
            res["pid"] = srv.pid
            await self.wait_quiet(srv)
            await self.storm_and_idle(srv, res)
            return True
        except Exception as e:
            res["error"] = f"{type(e).__name__}: {e}"
            P.log(f"{srv.name:<10} FAILED: {res['error']}\n{srv.tail()}")
            await self.shut(srv, res)
            return False

    async def storm_and_idle(self, srv, res):
        rss0 = proc_rss(srv.pid)
        m = Meter(self, srv)
        prof = self.profiles([srv], "storm")
        m.start()
        results = await self.connect(srv, self.n_room, 1, srv.name, "connect storm")
        m.stop()
        self.profile_end(prof)
        authed = sum(r["authed"] for r in results)
        failed = sum(r["failed"] for r in results)
        t_start = min(r["t_start"] for r in results)
        t_end = max(r["t_end"] for r in results)
        times = np.sort(np.concatenate([np.asarray(r["auth_times"], dtype=float) for r in results])) - t_start
        wall = max(t_end - t_start, 1e-9)
        cpu = m.cpu
        picks = np.unique(np.linspace(0, len(times) - 1, min(len(times), 200)).astype(int)) if len(times) else []
        res["storm"] = dict(m.record(), **{
            "n": self.n_room, "authed": authed, "failed": failed, "wall_s": wall,
            "conns_per_s": authed / wall,
            "server_cpu_us_per_conn": cpu / max(authed, 1) * 1e6,
            "conns_per_server_cpu_s": authed / cpu if cpu > 0 else None,
            "curve": [[round(float(times[i]), 4), int(i) + 1] for i in picks],
        })
        P.log(f"{srv.name:<10} connect storm: {authed:,} in ({failed} failed) in {wall:.2f} s = "
              f"{authed / wall:,.0f}/s; server {cpu:.2f} CPU-s = {cpu / max(authed, 1) * 1e6:.0f} us/conn" + m.noise())
        # idle memory: the rest up to n_idle, then the RSS growth per connection
        extra = self.n_idle - self.n_room
        results = await self.connect(srv, extra, self.n_room + 1, srv.name + "-idle", "idle connections")
        authed_extra = sum(r["authed"] for r in results)
        await asyncio.sleep(1.0)
        m = Meter(self, srv)
        prof = self.profiles([srv], "idle")
        m.start()
        await asyncio.sleep(self.args.settle)
        m.stop()
        self.profile_end(prof)
        rss1 = proc_rss(srv.pid)
        conns = authed + authed_extra
        res["idle"] = dict(m.record(), **{
            "connections": conns, "rss_before": rss0, "rss_after": rss1, "threads": proc_threads(srv.pid),
            "bytes_per_conn": (rss1 - rss0) / max(conns, 1),
            "kb_per_conn": (rss1 - rss0) / max(conns, 1) / 1024,
            "idle_cpu_percent": m.cpu / m.wall * 100,
        })
        P.log(f"{srv.name:<10} idle: {conns:,} connections, RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
              f"= {(rss1 - rss0) / max(conns, 1) / 1024:.2f} KB/conn; idle CPU {m.cpu / m.wall * 100:.1f}%")
        await self.all_call("closed", cmd="close", group=srv.name + "-idle")
        await asyncio.sleep(1.0)
        st = await self.group_stats(srv.name)
        srv.share = st["per_gen_open"]
        res["room_clients"] = st["open"]

    async def shut(self, srv, res):
        if srv.down:
            return
        srv.down = True
        if srv.pusher is not None:
            srv.pusher.close()
        if srv.proc is not None and srv.proc.poll() is None:
            res["rss_end"] = proc_rss(srv.pid)
            res["server_cpu_total_s"] = proc_times(srv.pid)[0]
        for group in (srv.name, srv.name + "-idle"):
            await self.all_call("closed", cmd="close", group=group)
        await asyncio.sleep(0.5)
        srv.stop()
        tail = srv.tail(600).strip()
        if tail:
            res["server_log_tail"] = tail

    # -- pushes, interleaved over the servers

    async def push_and_wait(self, srv, count, timeout):
        """`count` room pushes in one write, then wait for every delivery and every HTTP response."""
        if srv.pusher is None or srv.pusher.lost:
            # (re)connect: a server may close an idle keep-alive connection (imgate's HTTP idle timeout)
            srv.pusher = await Pusher.open(srv.ctl_port)
        targets = [e + s * count for e, s in zip(self.expected, srv.share)]
        want = srv.pusher.responses + count
        srv.pusher.write(b"".join(http_post(srv.room_path, self.body(), api_key=srv.api_key) for _ in range(count)))
        ok = await self.wait_reached(targets, timeout)
        try:
            await srv.pusher.wait_responses(want, timeout)
        except asyncio.TimeoutError:
            ok = False
        if ok:
            self.expected = targets
        else:
            # something was lost (a connection closed by the server?): count what is there and go on
            srv.timeouts += 1
            await self.resync()
            srv.share = (await self.group_stats(srv.name))["per_gen_open"]
        return ok

    async def rounds(self, live, res, scenario, count, n_rounds, timeout):
        """Round r pushes `count` messages to each server in turn (the order rotates every round), each
        once the previous push reached every client; every server is measured in its own windows."""
        await self.wait_quiet()
        for srv in live:
            srv.timeouts = 0
        await self.resync()
        meters, profs = {s.name: Meter(self, s) for s in live}, []
        for r in range(-1, n_rounds):                    # round -1: warm-up, not measured
            if r == 0:
                await self.all_call("reset", cmd="reset")
                await self.resync()
                meters = {s.name: Meter(self, s) for s in live}
                profs = self.profiles(live, scenario)
            for srv in rotate(live, r):
                if r >= 0:
                    meters[srv.name].start()
                try:
                    await self.push_and_wait(srv, count, timeout)
                except (OSError, RuntimeError) as e:      # the push connection failed: note it, go on
                    srv.timeouts += 1
                    res[srv.name].setdefault("push_errors", []).append(f"{scenario}: {type(e).__name__}: {e}")
                    await self.resync()
                if r >= 0:
                    meters[srv.name].stop()
                P.update(f"{scenario}: round {r + 1}/{n_rounds}, {srv.name}", force=count > 1)
        self.profile_end(profs)
        for srv in live:
            m = meters[srv.name]
            st = await self.group_stats(srv.name)
            lat = latency_summary(await self.latencies(srv.name))
            cpu = m.cpu
            expected = sum(srv.share) * count * n_rounds
            res[srv.name][scenario] = dict(m.record(), **{
                "rounds": n_rounds, "messages_per_round": count, "timeouts": srv.timeouts,
                "room": sum(srv.share), "deliveries": st["deliveries"], "expected": expected,
                "ws_messages": st["messages"], "bytes": st["bytes"],
                "deliveries_per_cpu_s": st["deliveries"] / cpu if cpu > 0 else None,
                "deliveries_per_wall_s": st["deliveries"] / m.wall if m.wall > 0 else None,
                "server_cpu_us_per_delivery": cpu / max(st["deliveries"], 1) * 1e6,
                "latency": lat,
            })
            P.log(f"{srv.name:<10} {scenario}: {st['deliveries']:,} deliveries in {st['messages']:,} WebSocket messages, "
                  f"server {cpu:.2f} CPU-s = {st['deliveries'] / max(cpu, 1e-9):,.0f}/CPU-s; latency "
                  f"p50 {lat.get('p50_us', 0) / 1000:.1f} ms p99 {lat.get('p99_us', 0) / 1000:.1f} ms" + m.noise())

    # -- unicast (imgate): pushes by mid at a fixed rate

    async def unicast_rounds(self, srvs, res):
        """Unicast in interleaved rounds (the servers take turns, the order rotating), so that every
        server meets the same moods of the machine; the figures are over all rounds together."""
        rounds = max(1, self.args.unicast_rounds)
        seconds = self.unicast_seconds / rounds
        parts = {srv.name: [] for srv in srvs}
        for r in range(rounds):
            for srv in rotate(list(srvs), r):
                if srv.down:
                    continue
                await self.wait_quiet(srv)
                parts[srv.name].append(await self.unicast(srv, seconds, r, f"{r + 1}/{rounds}"))
        for srv in srvs:
            if parts[srv.name]:
                res[srv.name]["unicast"] = self.unicast_total(srv, parts[srv.name])

    def unicast_total(self, srv, parts):
        raw = np.concatenate([p.pop("raw") for p in parts])
        rtts = np.concatenate([p.pop("rtt_raw") for p in parts])
        if self.args.save_latencies:
            # in arrival order per generator and round: where the slow ones cluster (a pause) or spread
            os.makedirs(self.args.save_latencies, exist_ok=True)
            path = os.path.join(self.args.save_latencies, f"unicast-latencies-{srv.name}.npy")
            np.save(path, raw)
            P.log(f"{srv.name:<10} unicast latencies (us) saved to {path}")
        total = sum(p["pushes"] for p in parts)
        cpu = sum(p["server_cpu_s"] for p in parts)
        send_wall = sum(p["send_wall_s"] for p in parts)
        lat = latency_summary(raw)
        rtt = latency_summary(rtts * 1e6)
        rtt.pop("quantiles_us", None)
        out = {k: sum(p[k] for p in parts) for k in (
            "server_cpu_s", "wall_s", "windows", "server_runqueue_wait_s", "load_cpu_s", "other_processes_cpu_s",
            "steal_s", "pushes", "send_wall_s", "pushes_sent_late", "deliveries", "http_responses", "http_errors")}
        out.update({
            "rate_target": self.unicast_rate, "rate_achieved": total / send_wall, "complete": all(p["complete"] for p in parts),
            "first_error": next((p["first_error"] for p in parts if p["first_error"]), None),
            "http_response_time": rtt, "server_cpu_us_per_push": cpu / total * 1e6, "latency": lat,
            "rounds": parts,
        })
        P.log(f"{srv.name:<10} unicast, {len(parts)} rounds: {total:,} pushes, {out['deliveries']:,} delivered; latency "
              f"p50 {lat.get('p50_us', 0) / 1000:.2f} ms p99 {lat.get('p99_us', 0) / 1000:.2f} ms "
              f"p99.9 {lat.get('p999_us', 0) / 1000:.2f} ms (p99 per round: "
              + ", ".join(f"{p['latency'].get('p99_us', 0) / 1000:.2f}" for p in parts)
              + f" ms); server {cpu / total * 1e6:.0f} CPU-us/push; steal {out['steal_s']:.2f} s")
        return out

    async def unicast(self, srv, seconds, round_no, label):
        share = srv.share
        n = sum(share)
        if n == 0:  # an earlier scenario (a burst the generators fell behind on) closed every client
            raise RuntimeError(f"{srv.name}: unicast has no connected clients to push to")
        pushers = [await Pusher.open(srv.ctl_port) for _ in range(self.args.unicast_connections)]
        rnd = random.Random(7 + round_no)
        for p in pushers:  # warm-up: one push per connection
            p.write(http_post(srv.unicast_path(1), self.body(), api_key=srv.api_key))
        for p in pushers:
            await p.wait_responses(1)
        await asyncio.sleep(0.2)
        for p in pushers:
            p.track()
        await self.all_call("reset", cmd="reset")
        await self.resync()
        # mids were shared out in order: generator i holds mids [first_i, first_i + share_i)
        bounds = []
        m = 1
        for s in share:
            bounds.append((m, m + s))
            m += s
        per_gen = list(self.expected)
        rate = self.unicast_rate
        total = int(rate * seconds)
        mids = [rnd.randint(1, n) for _ in range(total)]
        for mid in mids:
            for gi, (lo, hi) in enumerate(bounds):
                if lo <= mid < hi:
                    per_gen[gi] += 1
                    break
        paths = [srv.unicast_path(mid) for mid in mids]
        meter = Meter(self, srv)
        prof = self.profiles([srv], "unicast")
        # The rate is the load under test: the driver must not lose its core to the generators (their
        # backlog would come out as a burst, which is another test). Nor the server: on a gateway's
        # machine nothing like 10,000 client emulators competes with it for its core; the generators
        # measure. Root only, else unchanged; the C floor gets the same.
        nice0 = os.getpriority(os.PRIO_PROCESS, 0)
        reniced = False
        if self.args.unicast_nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, self.args.unicast_nice)
            except OSError:
                pass
            reniced = srv.renice(self.args.unicast_nice)
        meter.start()
        t0 = time.monotonic()
        sent = k = 0
        last_report = 0.0
        late = 0
        while sent < total:
            # Evenly spaced: push i is due at t0 + i / rate. uvloop timers tick in whole milliseconds
            # (at 5,000/s that would send bursts of 5+ at once), so the last stretch before a due time
            # is a blocking sleep (clock_nanosleep: tens of us late at most); the loop still runs
            # between pushes to read the responses.
            due_t = t0 + sent / rate
            now = time.monotonic()
            if due_t > now:
                if due_t - now > 0.0015:
                    await asyncio.sleep(due_t - now - 0.001)
                else:
                    time.sleep(due_t - now)
                continue
            if now - due_t > 0.001:
                late += 1
            pushers[k].write(http_post(paths[sent], self.body(), api_key=srv.api_key))
            k = (k + 1) % len(pushers)
            sent += 1
            if now - last_report > 0.5:
                last_report = now
                P.update(f"{srv.name:<10} unicast {label}: {sent:,}/{total:,} pushes at {rate:,}/s")
            await asyncio.sleep(0)
        send_wall = time.monotonic() - t0
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice0)
        except OSError:
            pass
        ok = await self.wait_reached(per_gen, 15)
        meter.stop()
        if reniced:
            srv.renice(0)
        self.profile_end(prof)
        cpu = meter.cpu
        responses = 0
        for p in pushers:
            try:
                await p.wait_responses(total // len(pushers), 15)
            except asyncio.TimeoutError:
                pass
            responses += p.responses - 1
        errors = sum(p.errors for p in pushers)
        rtt_raw = np.asarray([x for p in pushers for x in p.rtt])
        first_error = next((p.first_error for p in pushers if p.first_error), None)
        for p in pushers:
            p.close()
        st = await self.group_stats(srv.name)
        raw = await self.latencies(srv.name)
        lat = latency_summary(raw)
        lat.pop("quantiles_us", None)
        part = dict(meter.record(), **{
            "pushes": total, "send_wall_s": send_wall, "rate_achieved": total / send_wall,
            "pushes_sent_late": late, "deliveries": st["deliveries"], "complete": ok, "http_responses": responses,
            "http_errors": errors, "first_error": first_error, "server_cpu_us_per_push": cpu / total * 1e6,
            "latency": lat, "raw": raw, "rtt_raw": rtt_raw,
        })
        P.log(f"{srv.name:<10} unicast {label}: {total:,} pushes at {total / send_wall:,.0f}/s, {st['deliveries']:,} delivered; "
              f"latency p50 {lat.get('p50_us', 0) / 1000:.2f} ms p99 {lat.get('p99_us', 0) / 1000:.2f} ms "
              f"p99.9 {lat.get('p999_us', 0) / 1000:.2f} ms; server {cpu / total * 1e6:.0f} CPU-us/push" + meter.noise())
        return part

    # -- the whole run

    async def run(self):
        cap = raise_nofile()
        self.gc_path = os.path.join(self.tmp, "gc-imgate.json") if self.args.imgate_gc_trace else None
        servers = make_servers(self.args.servers, self.tmp, self.gc_path, self.args.variants)
        if any(isinstance(s, CPeer) for s in servers):
            build_c_peer()
        t0 = time.monotonic()
        # every server keeps its room clients until the interleaved rounds are over: enough generator
        # processes that none nears the open-files cap (one descriptor per client)
        fds = len(servers) * self.n_room + (self.n_idle - self.n_room)
        n_gens = max(self.args.generators, -(-fds // max(cap - 5000, 1000)))
        self.gens = [Generator(i) for i in range(n_gens)]
        for g in self.gens:
            await g.start()
        cpus = sorted(os.sched_getaffinity(0))
        if self.args.pin and len(cpus) >= 2:
            # the server alone on the last core; generators and this driver on the others
            self.server_cpus = {cpus[-1]}
            for pid in [0] + [g.proc.pid for g in self.gens]:
                os.sched_setaffinity(pid, set(cpus[:-1]))
        else:
            self.args.pin = False
        P.log(f"{len(self.gens)} generators up (open-files limit {cap:,}); {self.n_room:,} room clients per server, "
              f"{self.n_idle:,} for idle memory; fan-out {self.fanout_msgs} rounds, burst {self.bursts} rounds of {BURST}")
        res = {s.name: {"label": s.label} for s in servers}
        live = []
        try:
            for i, srv in enumerate(servers):
                srv.src = f"127.0.0.{11 + i}"
                if await self.bring_up(srv, res[srv.name]):
                    live.append(srv)
            if live and self.args.poll_ms:
                await self.all_call("poll", cmd="poll", ms=self.args.poll_ms)
            if live and "fanout" in self.args.scenarios:
                await self.rounds(live, res, "fanout", 1, self.fanout_msgs, self.args.step_timeout)
            if live and "burst" in self.args.scenarios:
                await self.rounds(live, res, "burst", BURST, self.bursts, self.args.burst_timeout)
            await self.all_call("poll", cmd="poll", ms=0)
            for srv in live:          # unicast: only the servers it measures stay up (idle but one)
                if "unicast" not in srv.kinds:
                    await self.shut(srv, res[srv.name])
            uni = [s for s in live if "unicast" in s.kinds and not s.down]
            if uni and "unicast" in self.args.scenarios:
                await self.unicast_rounds(uni, res)
        finally:
            for srv in servers:
                await self.shut(srv, res[srv.name])
            for g in self.gens:
                await g.stop()
        if self.gc_path and os.path.exists(self.gc_path) and "imgate" in res:
            with open(self.gc_path) as f:
                res["imgate"]["gc_pauses"] = json.load(f)
            P.log(f"imgate GC pauses: {json.dumps(res['imgate']['gc_pauses']['summary'])}")
        return res, time.monotonic() - t0


# ------------------------------------------------------------------ report


def ratios(servers: dict) -> dict:
    def get(name, *path):
        v = servers.get(name)
        for p in path:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v

    def div(a, b):
        return a / b if a is not None and b else None

    r = {}
    fan = lambda n: get(n, "fanout", "deliveries_per_cpu_s")  # noqa: E731
    bur = lambda n: get(n, "burst", "deliveries_per_cpu_s")  # noqa: E731
    for peer in ("c1", "c20", "websockets", "picows"):
        r[f"fanout_vs_{peer}"] = div(fan("imgate"), fan(peer))
        r[f"burst_vs_{peer}"] = div(bur("imgate"), bur(peer))
    r["idle_kb_per_conn"] = get("imgate", "idle", "kb_per_conn")
    p99 = get("imgate", "unicast", "latency", "p99_us")
    r["unicast_p99_ms"] = p99 / 1000 if p99 is not None else None
    floor = get("c1", "unicast", "latency", "p99_us")
    r["unicast_floor_p99_ms"] = floor / 1000 if floor is not None else None   # the C server, same harness
    return r


def judge(r: dict) -> list:
    out = []
    for key, desc, op, thr in TARGETS:
        v = r.get(key)
        met = None if v is None else (v >= thr if op == ">=" else v <= thr)
        out.append({"key": key, "what": desc, "target": f"{op} {thr:g}", "value": v, "met": met})
    return out


def machine_info():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "nofile": raise_nofile()}


def git_commit():
    def run(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    commit = run("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", "src"))
    return commit, dirty


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=float(os.environ.get("BENCH_SCALE") or 1.0),
                    help="fraction of the full load (connections, unicast time); env BENCH_SCALE")
    ap.add_argument("--servers", default=os.environ.get("BENCH_SERVERS", DEFAULT_SERVERS),
                    help="comma-separated, from imgate,websockets,picows,c1,c20 (and c1mt: c1 with 4 idle "
                         "threads; c1w<N>: c1 spending N CPU-us more per unicast push; --variant names)")
    ap.add_argument("--generators", type=int, default=int(os.environ.get("BENCH_GENERATORS", 2)))
    ap.add_argument("--concurrency", type=int, default=200, help="connects in flight per generator")
    ap.add_argument("--fanout-messages", type=int, default=100, help="fan-out rounds (one message per server)")
    ap.add_argument("--bursts", type=int, default=4, help="burst rounds (100 messages per server)")
    ap.add_argument("--unicast-rate", type=int, default=5000)
    ap.add_argument("--unicast-seconds", type=float, default=0.0, help="default: 10 s x scale, at least 3")
    ap.add_argument("--unicast-connections", type=int, default=4, help="HTTP connections of the pusher")
    ap.add_argument("--unicast-rounds", type=int, default=4,
                    help="unicast time split into this many rounds, the servers taking turns")
    ap.add_argument("--save-latencies", default="", metavar="DIR",
                    help="save each server's unicast latencies (us, numpy .npy, arrival order) into DIR")
    ap.add_argument("--scenarios", default="fanout,burst,unicast",
                    help="which of fanout,burst,unicast to run (storm and idle always run: they connect)")
    ap.add_argument("--profile", default="", help="record a profile of the servers during these scenarios "
                    "(storm,idle,fanout,burst,unicast) into benchmarks/results/profile-<server>-<scenario>*.txt")
    ap.add_argument("--profile-servers", default="", help="only these servers (default: all)")
    ap.add_argument("--profile-native", action="store_true", help="py-spy --native (Cython/C frames)")
    ap.add_argument("--profile-with", choices=["py-spy", "perf"], default="py-spy")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=SRC_DIR",
                    help="also run imgate from another source tree (its src/ directory, extensions built) "
                         "as server NAME: A/B measurement of a proposed change; add NAME to --servers")
    ap.add_argument("--imgate-gc-trace", action="store_true",
                    help="run imgate under benchmarks/load/gc_trace.py: its GC pauses go into the result")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds of idle CPU measurement before the idle RSS is read")
    ap.add_argument("--poll-ms", type=float, default=float(os.environ.get("BENCH_POLL_MS", 2.0)),
                    help="generators poll every N ms during fan-out and burst instead of sleeping in epoll "
                         "(0: off): a server's send() then never pays for waking a generator up")
    ap.add_argument("--unicast-nice", type=int, default=int(os.environ.get("BENCH_UNICAST_NICE", "-10")),
                    help="nice value of the driver and of the server being measured while unicast runs "
                         "(root only; 0: leave both alone): both ahead of the generators for a core")
    ap.add_argument("--pin", action="store_true", default=os.environ.get("BENCH_PIN", "") not in ("", "0"),
                    help="pin the server to the last core and the load processes to the others")
    ap.add_argument("--quiet-wait", type=float, default=float(os.environ.get("BENCH_QUIET_WAIT", 60)),
                    help="seconds to wait at most, before each scenario, for other processes to calm down")
    ap.add_argument("--quiet-threshold", type=float, default=0.3, help="cores used by other processes")
    ap.add_argument("--quiet-steal", type=float, default=0.03,
                    help="cores taken by the hypervisor (steal) under which the machine counts as quiet")
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--step-timeout", type=float, default=20.0)
    ap.add_argument("--burst-timeout", type=float, default=120.0)
    ap.add_argument("--md", dest="md", action="store_true", default=None, help="update benchmarks/RESULTS.md")
    ap.add_argument("--no-md", dest="md", action="store_false")
    ap.add_argument("--no-charts", action="store_true")
    args = ap.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.profile = [s.strip() for s in args.profile.split(",") if s.strip()]
    args.profile_servers = [s.strip() for s in args.profile_servers.split(",") if s.strip()]
    args.variants = dict(v.split("=", 1) for v in args.variant)

    partial = (set(args.servers) != set(DEFAULT_SERVERS.split(",")) or
               set(args.scenarios) != {"fanout", "burst", "unicast"})
    if args.md is None:
        args.md = args.scale >= 1.0 and not partial
    started = datetime.datetime.now(datetime.timezone.utc)
    commit, dirty = git_commit()
    bench = Bench(args)
    try:
        servers, elapsed = uvloop.run(bench.run())
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    r = ratios(servers)
    result = {
        "kind": "imgate load benchmark (make bench)",
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit, "src_dirty": dirty,
        "machine": machine_info(),
        "scale": args.scale,
        "params": {"room_clients": bench.n_room, "idle_connections": bench.n_idle,
                   "fanout_messages": bench.fanout_msgs, "bursts": bench.bursts, "burst_size": BURST,
                   "unicast_rate": bench.unicast_rate, "unicast_seconds": bench.unicast_seconds,
                   "unicast_rounds": args.unicast_rounds,
                   "generators": len(bench.gens), "pinned": bool(args.pin), "unicast_nice": args.unicast_nice, "poll_ms": args.poll_ms, "body_bytes": len(make_body(0, 0))},
        "elapsed_s": elapsed,
        "servers": servers,
        "ratios": r,
        "targets": judge(r),
    }
    os.makedirs(RESULTS_DIR, exist_ok=True)
    suffix = "" if args.scale == 1.0 else f"-s{args.scale:g}"
    if partial:
        suffix += "-partial"      # a subset of servers or scenarios: not the figures of `make bench`
    stem = f"load-{started.strftime('%Y%m%d-%H%M%S')}-{commit}{suffix}"
    path = os.path.join(RESULTS_DIR, stem + ".json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if not suffix:
        # the tree keeps the latest full run only: the one RESULTS.md cites
        for old in glob.glob(os.path.join(RESULTS_DIR, "load-*.json")):
            if old != path and re.fullmatch(r"load-\d{8}-\d{6}-[0-9a-f]+\.json", os.path.basename(old)):
                os.remove(old)
    import report

    print(report.text_table(result))
    charts = [] if (args.no_charts or partial) else report.charts(result, RESULTS_DIR, suffix)
    P.log(f"wrote {os.path.relpath(path, ROOT)}" + (f" and {len(charts)} charts" if charts else ""))
    if args.md:
        md = os.path.join(BENCH, "RESULTS.md")
        report.update_results_md(md, result, os.path.basename(path), charts)
        P.log(f"updated {os.path.relpath(md, ROOT)}")
    P.log(f"done in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
