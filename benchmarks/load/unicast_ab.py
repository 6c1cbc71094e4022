"""Unicast CPU per push of imgate trees side by side, one request in flight: robust to a busy machine.

    PYTHONPATH=src .venv/bin/python benchmarks/load/unicast_ab.py NAME=SRC_DIR NAME=SRC_DIR ... \
        [--clients 500] [--pushes 5000] [--rounds 4]

`run.py`'s unicast sends at a fixed rate; when other processes hold the cores, the server falls behind
and then reads many requests per wake-up, so its CPU per push measures the machine's load as much as
the server. Here one pusher sends a push by mid, waits for its reply, and sends the next: every push is
one read, one reply and one WebSocket send, whatever else runs. Each tree runs as its own
`imgate serve` (API key, `--auth none`) with the same WebSocket clients (a child process that reads
and counts); the trees take turns round by round, and each round's server CPU (the sum of its
threads' run time, /proc/<pid>/task/*/schedstat) is divided by the round's pushes. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import free_port, http_post  # noqa: E402

PY = sys.executable

# the WebSocket clients: connect, say "up", read and count until stdin closes, print the count
CLIENTS = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from imgate import client
async def main():
    url, n, first = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cs = []
    for i in range(0, n, 100):
        cs += await asyncio.gather(*[client.connect(url, mid=first + j, heartbeat=None, timeout=60)
                                     for j in range(i, min(n, i + 100))])
    got = [0]
    async def drain(c):
        while True:
            await c.recv(timeout=None)
            got[0] += 1
    tasks = [asyncio.create_task(drain(c)) for c in cs]
    print("up", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(got[0], flush=True)
asyncio.run(main())
"""


def cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


class Tree:
    def __init__(self, name: str, src: str, clients: int, logdir: str):
        self.name, self.src = name, os.path.abspath(src)
        env = dict(os.environ, PYTHONPATH=self.src)
        data = tempfile.mkdtemp(prefix=f"{name}-", dir=logdir)
        made = subprocess.run([PY, "-m", "imgate", "apikey", "create", "--scope", "push", "--name", "ab",
                               "--data-dir", data], capture_output=True, text=True, env=env)
        self.key = made.stdout.strip() if made.returncode == 0 else ""  # a tree before API keys: open
        conf = os.path.join(data, "serve.toml")
        with open(conf, "w") as f:  # what run.py writes: no admission rate, idle clients kept
            f.write("heartbeat_timeout = 900.0\n")
            if self.key:
                f.write("max_auths_per_second = 0\n")
        self.http = free_port()
        self.ws = ws = free_port()
        self.clients = self.sock = None
        self.log = open(os.path.join(logdir, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "imgate", "serve", "--auth", "none", "--config", conf, "--tcp", f"127.0.0.1:{free_port()}",
             "--ws", f"127.0.0.1:{ws}", "--http", f"127.0.0.1:{self.http}", "--data-dir", data,
             "--log-level", "WARNING"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def start(self, clients: int) -> None:
        self.sock = self._connect()
        self.clients = subprocess.Popen([PY, "-c", CLIENTS, self.src, f"ws://127.0.0.1:{self.ws}/sub", str(clients), "1"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.clients.stdout.readline().strip() != "up":
            raise RuntimeError(f"{self.name}: clients did not connect")

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 30
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", self.http))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return s
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} did not listen")
                time.sleep(0.05)

    def push(self, mid: int) -> None:
        self.sock.sendall(http_post(f"/goim/push/mids?operation=1000&mids={mid}", b"ab-push", api_key=self.key))
        buf = b""
        while True:  # the reply: head, then Content-Length bytes
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"{self.name} closed the connection")
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    if b" 200 " not in head.split(b"\r\n")[0]:
                        raise RuntimeError(f"{self.name} answered {buf[:300]!r}")
                    return

    def round(self, pushes: int, clients: int, perf: str = "") -> float:
        rec = None
        if perf:  # `perf record` of the server for this round (the last round's file stays)
            rec = subprocess.Popen(["perf", "record", "-q", "-F", "4999", "-p", str(self.proc.pid), "-o",
                                    os.path.join(perf, f"{self.name}.data")], stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        before = cpu_ns(self.proc.pid)
        for i in range(pushes):
            self.push(1 + i % clients)
        used = (cpu_ns(self.proc.pid) - before) / pushes / 1000
        if rec is not None:
            rec.send_signal(signal.SIGINT)
            rec.wait(60)
        return used

    def stop(self) -> int:
        got = 0
        if self.clients is not None:
            self.clients.stdin.close()
            got = int(self.clients.stdout.readline() or 0)
            self.clients.wait(30)
        if self.sock is not None:
            self.sock.close()
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", help="NAME=SRC_DIR")
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--pushes", type=int, default=5000, help="per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--perf", default="", help="a directory: perf record each server's rounds into NAME.data")
    args = ap.parse_args()
    logdir = tempfile.mkdtemp(prefix="unicast-ab-")
    trees: list[Tree] = []
    table: dict[str, list[float]] = {}
    try:
        for spec in args.trees:
            name, src = spec.split("=", 1)
            table[name] = []
            trees.append(Tree(name, src, args.clients, logdir))
            trees[-1].start(args.clients)
        for t in trees:
            t.round(min(500, args.pushes), args.clients)  # warm-up, not counted
        for r in range(args.rounds):
            order = trees[r % len(trees):] + trees[:r % len(trees)]
            for t in order:
                table[t.name].append(t.round(args.pushes, args.clients, args.perf))
                print(f"round {r + 1} {t.name}: {table[t.name][-1]:.1f} CPU-us/push", flush=True)
    finally:
        delivered = {t.name: t.stop() for t in trees}
    print("| tree | " + " | ".join(f"r{i + 1}" for i in range(args.rounds)) + " | mean | delivered |")
    print("|---|" + "---:|" * (args.rounds + 2))
    for name, us in table.items():
        print(f"| {name} | " + " | ".join(f"{u:.1f}" for u in us) + f" | {sum(us) / len(us):.1f} | {delivered[name]} |")


if __name__ == "__main__":
    main()
