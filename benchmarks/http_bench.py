#!/usr/bin/env python3
"""CPU per push request through the embedded node's HTTP API, in one process, path against path.

    PYTHONPATH=src .venv/bin/python benchmarks/http_bench.py [--json out.json] [--requests 20000] [--rounds 5]

A real node (memory cache, in-process bus, the proxy's real sockets) with --clients TCP clients,
authenticated, one per mid. Requests are fed to the node's HTTP connection protocol by hand (a
transport that keeps nothing), one request per event-loop iteration as they arrive from a socket;
each push goes out to its client through the room table, and the clients are drained between batches
(outside the measured time). What is measured is the thread CPU time of the loop, per request: the
HTTP layer, the handler, logic, push, the proxy and the client's send() (the kernel's part of one
~64-byte loopback send is in it; the HTTP socket's read and write are not).

Rows, interleaved round by round (the machine is shared and noisy), the median shown:

  push/mids plain     POST /goim/push/mids, plain requests parsed by the compiled protocol
  push/mids httptools the same bytes with HttpServer(fast_path=False): every byte through httptools
  noop plain          POST to a route answering a fixed Response: the HTTP layer alone
  noop httptools
  push/mids open      push/mids plain with the API's credential check off (``api_auth = "none"``):
                      the difference to "push/mids plain" is what the check costs

Every request carries ``Authorization: Bearer <API key>`` (the node's API needs a credential).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
try:
    import imgate  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src"))

import uvloop  # noqa: E402

from imgate.config import Config  # noqa: E402
from imgate.core import encode_frame  # noqa: E402
from imgate.http._protocol import HttpProtocol  # noqa: E402
from imgate.http.server import Response  # noqa: E402
from imgate.node import Node  # noqa: E402

BODY = b"x" * 64
BATCH = 200


class NullTransport:
    def write(self, data):
        pass

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default

    def close(self):
        pass

    def abort(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


async def measure(args) -> dict:
    cfg = Config(tcp="127.0.0.1:0", ws="127.0.0.1:0", http="127.0.0.1:0", auth="none", server_id="bench",
                 heartbeat_timeout=900.0).validate()
    node = Node(cfg)
    await node.start()
    key = "imk_bench_" + "k" * 32
    node.api_auth.add_key(key, ["push", "admin"])
    guard = node.http.router.guard
    socks = []
    try:
        for i in range(args.clients):
            s = socket.create_connection(("127.0.0.1", node.proxy.tcp_port))
            s.sendall(encode_frame(7, 1, json.dumps({"mid": i + 1, "room_id": "live://1"}).encode(), 1))
            s.setblocking(False)
            socks.append(s)
        while len(node.proxy._by_conn_id) < args.clients:
            await asyncio.sleep(0.05)

        def drain():
            for s in socks:
                try:
                    while s.recv(65536):
                        pass
                except BlockingIOError:
                    pass

        fixed = Response(200, b'{"code":0,"message":"","data":null}', "application/json")
        node.http.router.add("POST", "/bench/noop", lambda req: fixed, "push")
        n = args.requests

        def requests(path):
            return [(f"POST {path}?operation=1000&mids={(i * 7919) % args.clients + 1} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                     f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY for i in range(n)]

        rows = {
            "push/mids plain": ("/goim/push/mids", True),
            "push/mids httptools": ("/goim/push/mids", False),
            "noop plain": ("/bench/noop", True),
            "noop httptools": ("/bench/noop", False),
            "push/mids open": ("/goim/push/mids", True),
        }
        data = {path: requests(path) for path, _ in rows.values()}
        results = {name: [] for name in rows}
        for r in range(args.rounds):
            order = list(rows)
            order = order[r % len(order):] + order[:r % len(order)]
            for name in order:
                path, fast = rows[name]
                node.http.fast_path = fast
                node.http.router.guard = None if name.endswith(" open") else guard
                proto = HttpProtocol(node.http)
                proto.connection_made(NullTransport())
                cpu = 0.0
                for k in range(0, n, BATCH):
                    t0 = time.thread_time()
                    for req in data[path][k:k + BATCH]:
                        proto.data_received(req)
                        await asyncio.sleep(0)  # the table's flush runs here, as after a socket read
                    await asyncio.sleep(0)
                    cpu += time.thread_time() - t0
                    drain()
                node.http._conns.discard(proto)
                results[name].append(cpu / n * 1e6)
        return results
    finally:
        node.http.fast_path = True
        for s in socks:
            s.close()
        await node.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    results = uvloop.run(measure(args))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'row':<22} {'CPU-us/request (median)':>24}  rounds")
    for k, v in results.items():
        print(f"{k:<22} {med[k]:>24.1f}  " + " ".join(f"{x:.1f}" for x in v))
    ratios = {
        "push plain / httptools": med["push/mids plain"] / med["push/mids httptools"],
        "noop plain / httptools": med["noop plain"] / med["noop httptools"],
    }
    for k, v in ratios.items():
        print(f"{k:<28} {v:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
                       "requests": args.requests, "rounds": args.rounds, "clients": args.clients,
                       "cpu_us_per_request": results, "median": med, "ratios": ratios}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
