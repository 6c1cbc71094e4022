"""`imgate serve --workers 2`: two proxy processes share the client ports (SO_REUSEPORT) behind one
coordinator; a room push reaches every member exactly once whichever worker holds it, and a worker
killed is started again while its clients come back."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import uvloop

from imgate import client as imclient
from imgate.http.apikeys import KeyStore
from helpers import stop_process
from polling import wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> set[int]:
    try:
        return {int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def listeners(pid: int) -> tuple[set[int], set[str]]:
    """(TCP ports, unix socket paths) that process ``pid`` listens on, read from /proc/net."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[9]) in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and int(f[3], 16) & 0x10000 and int(f[6]) in inodes:  # __SO_ACCEPTCON: listening
            paths.add(f[7])
    return ports, paths


def ready(workers: set[int], client_ports: set[int]) -> bool:
    """Every worker has bound its RPC socket and the client ports (one after the other, as it starts)."""
    return all(listeners(w)[1] and listeners(w)[0] >= client_ports for w in workers)


def assert_internal_rpc_on_private_unix_sockets(coordinator: int, workers: set[int], client_ports: set[int],
                                                http_port: int) -> None:
    """The coordinator and its workers reach each other over unix sockets in one directory of mode
    0700; no process listens on a TCP port beyond the client ports and the HTTP API."""
    ports, paths = listeners(coordinator)
    assert ports == {http_port}, ports
    assert len(paths) == 1 and paths.pop().endswith("/logic.sock")
    directory = os.path.dirname(next(iter(listeners(coordinator)[1])))
    assert os.stat(directory).st_mode & 0o777 == 0o700
    for w in workers:
        ports, paths = listeners(w)
        assert ports == client_ports, (w, ports)
        assert len(paths) == 1 and os.path.dirname(next(iter(paths))) == directory, paths


async def connect_one(tcp: str, ws: str, i: int, mid: int, room_id: str):
    """Client i: over TCP when i is odd, WebSocket when even (both transports on both workers)."""
    url = f"tcp://{tcp}" if i % 2 else f"ws://{ws}/sub"
    return await imclient.connect_with_retry(url, mid=mid, room_id=room_id, heartbeat=None, timeout=10, deadline=120)


def spread_over_both(counts: dict, n: int) -> bool:
    """/count?type=server says both workers hold some of the n clients (the kernel spreads them)."""
    return len([c for c in counts.values() if c > 0]) == 2 and sum(counts.values()) == n


def test_two_workers_share_the_ports_deliver_room_pushes_once_and_survive_a_killed_worker(tmp_path):
    out_path = tmp_path / "serve.out"
    api_key = KeyStore(str(tmp_path / "data")).create("tests", ["admin"])[1]
    with open(out_path, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "imgate", "serve", "--workers", "2", "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0",
             "--http", "127.0.0.1:0", "--auth", "none", "--data-dir", str(tmp_path / "data")],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def output() -> str:
        return out_path.read_text(errors="replace")

    try:
        wait_until(lambda: "  HTTP API" in output() or serve.poll() is not None, what="imgate serve to start")
        assert serve.poll() is None, output()
        tcp = re.search(r"goim TCP\s+tcp://([\d.:]+)", output()).group(1)
        ws = re.search(r"WebSocket\s+ws://([\d.:]+)/sub", output()).group(1)
        http = re.search(r"HTTP API\s+http://([\d.:]+)/", output()).group(1)

        def api(method: str, path: str, body: bytes | None = None):
            req = urllib.request.Request(f"http://{http}{path}", data=body, method=method,
                                         headers={"Authorization": f"Bearer {api_key}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())["data"]

        workers = wait_until(lambda: children(serve.pid) if len(children(serve.pid)) == 2 else None,
                             what="two workers")
        client_ports = {int(tcp.rsplit(":", 1)[1]), int(ws.rsplit(":", 1)[1])}
        http_port = int(http.rsplit(":", 1)[1])
        wait_until(lambda: ready(workers, client_ports), what="the workers' listeners")
        assert_internal_rpc_on_private_unix_sockets(serve.pid, workers, client_ports, http_port)

        async def go():
            loop = asyncio.get_running_loop()
            n = 24
            clients = {}

            async def join(i: int):
                clients[i] = await connect_one(tcp, ws, i, 6000 + i, "live://42")

            await asyncio.gather(*(join(i) for i in range(n)))
            # both workers hold some of them (the kernel spreads connections over the listeners)
            async def both_hold():
                counts = await loop.run_in_executor(None, api, "GET", "/count?type=server")
                return counts if spread_over_both(counts, n) else None
            servers = await wait_until_async(both_hold, what="both workers to report their connections")

            async def room_push_once_each(tag: str):
                bodies = [f"{tag}-{k}".encode() for k in range(3)]
                for b in bodies:
                    await loop.run_in_executor(None, api, "POST", "/goim/push/room?operation=1000&type=live&room=42", b)
                for i, c in clients.items():
                    got = [(await c.recv(timeout=30)).body for _ in bodies]
                    assert got == bodies, (i, got)
                # nothing more: a duplicate would be queued behind them by now, before this marker
                marker = f"{tag}-end".encode()
                await loop.run_in_executor(None, api, "POST", "/goim/push/room?operation=1000&type=live&room=42", marker)
                for i, c in clients.items():
                    assert (await c.recv(timeout=30)).body == marker, i

            await room_push_once_each("first")
            assert len(servers) == 2

            # kill one worker: its clients lose their connection and come back; it is started again
            victim = sorted(workers)[0]
            os.kill(victim, signal.SIGKILL)
            await wait_until_async(lambda: len(children(serve.pid) - {victim}) == 2, what="the worker to be restarted")
            assert serve.poll() is None

            async def reconnect_the_lost():
                for i, c in list(clients.items()):
                    if c.closed:
                        clients[i] = await connect_one(tcp, ws, i, 6000 + i, "live://42")
                counts = await loop.run_in_executor(None, api, "GET", "/count?type=server")
                return sum(counts.values()) == n and len(counts) == 2 and not any(c.closed for c in clients.values())

            await wait_until_async(reconnect_the_lost, what="every client back, on the two live workers")
            # the restarted worker listens on its socket again (the dead one's file was in the way)
            await wait_until_async(lambda: ready(children(serve.pid), client_ports), what="the restarted worker's listeners")
            assert_internal_rpc_on_private_unix_sockets(serve.pid, children(serve.pid), client_ports, http_port)
            await room_push_once_each("second")
            for c in clients.values():
                await c.close()

        uvloop.run(go())
    finally:
        stop_process(serve)
    assert serve.returncode == 0, output()
