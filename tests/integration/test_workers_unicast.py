"""`imgate serve --workers 2`: a stream of unicasts by mid, each answered 200 before the next is sent
(a business server's keep-alive connection), reaches every target once and in order on whichever
worker holds it, while the coordinator holds them up to ``worker_push_window`` and sends each worker
its share packed in one frame."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys

import uvloop

from helpers import stop_process
from polling import wait_until, wait_until_async
from test_workers import children, connect_one, spread_over_both


def test_unicasts_through_the_window_reach_each_target_once_in_order_on_both_workers(tmp_path):
    conf = tmp_path / "serve.toml"
    conf.write_text('api_auth = "none"\nim = false\nworker_push_window = 0.01\n')
    out_path = tmp_path / "serve.out"
    with open(out_path, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "imgate", "serve", "--workers", "2", "--config", str(conf), "--tcp", "127.0.0.1:0",
             "--ws", "127.0.0.1:0", "--http", "127.0.0.1:0", "--auth", "none", "--api-auth", "none",
             "--data-dir", str(tmp_path / "data")],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def output() -> str:
        return out_path.read_text(errors="replace")

    try:
        wait_until(lambda: "  HTTP API" in output() or serve.poll() is not None, what="imgate serve to start")
        assert serve.poll() is None, output()
        tcp = re.search(r"goim TCP\s+tcp://([\d.:]+)", output()).group(1)
        ws = re.search(r"WebSocket\s+ws://([\d.:]+)/sub", output()).group(1)
        host, port = re.search(r"HTTP API\s+http://([\d.:]+)/", output()).group(1).rsplit(":", 1)
        wait_until(lambda: len(children(serve.pid)) == 2, what="two workers")
        api = http.client.HTTPConnection(host, int(port), timeout=30)

        def call(method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
            api.request(method, path, body=body)
            r = api.getresponse()
            return r.status, json.loads(r.read())

        def stream(pushes: list[tuple[int, bytes]]) -> list[int]:
            """One keep-alive connection, each push answered before the next: the statuses."""
            return [call("POST", f"/goim/push/mids?operation=1000&mids={mid}", body)[0] for mid, body in pushes]

        async def go():
            loop = asyncio.get_running_loop()
            n = 16
            clients = {}

            async def join(i: int):
                clients[i] = await connect_one(tcp, ws, i, 7000 + i, "live://1")

            await asyncio.gather(*(join(i) for i in range(n)))

            async def both_hold():
                _, reply = await loop.run_in_executor(None, call, "GET", "/count?type=server")
                return spread_over_both(reply["data"], n)

            await wait_until_async(both_hold, what="both workers to report their connections")
            rounds = 20
            pushes = [(7000 + i, f"{i}:{k}".encode()) for k in range(rounds) for i in range(n)]
            assert await loop.run_in_executor(None, stream, pushes) == [200] * len(pushes)
            for i, c in clients.items():
                got = [(await c.recv(timeout=30)).body for _ in range(rounds)]
                assert got == [f"{i}:{k}".encode() for k in range(rounds)], (i, got)
            # nothing more behind them: a duplicate would arrive before this marker
            assert await loop.run_in_executor(None, stream, [(7000 + i, b"end") for i in range(n)]) == [200] * n
            for i, c in clients.items():
                assert (await c.recv(timeout=30)).body == b"end", i
            for c in clients.values():
                await c.close()

        uvloop.run(go())
        api.close()
    finally:
        stop_process(serve)
    assert serve.returncode == 0, output()
