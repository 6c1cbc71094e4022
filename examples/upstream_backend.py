"""A business backend for imgate's upstream routes, auth service and webhooks (docs/upstream.md).

Standard library only. Run it, then point a node at it:

    python examples/upstream_backend.py --port 8080
    imgate serve --config node.toml      # node.toml:
        auth = "http"
        auth_url = "http://127.0.0.1:8080/auth"
        upstream_url = "http://127.0.0.1:8080/upstream"
        webhook_url = "http://127.0.0.1:8080/events"

What it serves:

- ``POST /upstream``: answers each client message (op 4) with JSON naming who sent what:
  ``{"user", "key", "conn_id", "platform", "room", "op", "seq", "echo"}`` (``echo`` is the body as text).
- ``POST /auth``: the token decides. ``"user:42"`` is user 42; ``"user:42:live://7,team://3"`` is user
  42 in room live://7 (its main room) and team://3; anything else is refused with a reason.
- ``POST /events``: keeps the webhook events; ``GET /events`` lists them (and how many requests are
  held, below).
- For trying out the gateway's error handling: ``POST /status/503`` answers that status,
  ``POST /big/N`` answers N bytes (``/big/N/chunked``: in chunks),
  ``POST /hold`` answers only once ``POST /release`` is called (or after ``--hold-max`` seconds); a
  release lets go of the requests held then, not of later ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class Backend:
    def __init__(self, hold_max: float):
        self.events: list[dict] = []
        self.auth_calls = 0
        self.hold_max = hold_max
        self.lock = threading.Lock()
        self.release = threading.Condition(self.lock)
        self.generation = 0  # bumped by /release: every request held before it goes
        self.held = 0  # requests waiting in /hold now


def authorize(body: dict) -> dict:
    """The auth service's decision for one op-7 body."""
    parts = str(body.get("token") or "").split(":", 2)
    if len(parts) >= 2 and parts[0] == "user" and parts[1].isdigit():
        answer = {"accept": True, "mid": int(parts[1])}
        if len(parts) == 3:  # "user:42:live://7,team://3": the first room is the main one, all are joined
            rooms = parts[2].split(",")
            answer["room_id"], answer["rooms"] = rooms[0], rooms[1:]
        return answer
    return {"accept": False, "reason": "unknown token"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as imgate's client pool expects
    backend: Backend

    def log_message(self, fmt, *args):  # quiet; errors still reach stderr
        pass

    def _send(self, status: int, payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/events":
            with self.backend.lock:
                self._send(200, {"events": list(self.backend.events), "auth_calls": self.backend.auth_calls,
                                 "held": self.backend.held})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        b, h = self.backend, self.headers
        if self.path == "/upstream":
            self._send(200, {"user": int(h["X-Imgate-User"]), "key": unquote(h["X-Imgate-Key"]),
                             "conn_id": int(h["X-Imgate-Conn-Id"]), "platform": unquote(h["X-Imgate-Platform"]),
                             "room": unquote(h["X-Imgate-Room"]), "op": int(h["X-Imgate-Op"]),
                             "seq": int(h["X-Imgate-Seq"]), "echo": body.decode("utf-8", "replace")})
        elif self.path == "/auth":
            with b.lock:
                b.auth_calls += 1
            try:
                answer = authorize(json.loads(body))
            except ValueError:
                answer = {"accept": False, "reason": "auth body is not JSON"}
            self._send(200 if answer["accept"] else 403, answer)
        elif self.path == "/events":
            with b.lock:
                b.events.extend(json.loads(body)["events"])
            self._send(200, {"ok": True})
        elif self.path.startswith("/big/"):  # /big/N: N bytes; /big/N/chunked: the same, chunked
            n = int(self.path.split("/")[2])
            self.send_response(200)
            if self.path.endswith("/chunked"):
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, n, 1000):
                    part = b"x" * min(1000, n - i)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(n))
                self.end_headers()
                self.wfile.write(b"x" * n)
        elif self.path.startswith("/status/"):
            self._send(int(self.path.rsplit("/", 1)[1]), {"error": "as asked"})
        elif self.path == "/hold":
            with b.lock:
                mine = b.generation
                b.held += 1
                b.release.wait_for(lambda: b.generation != mine, b.hold_max)
                b.held -= 1
            self._send(200, {"held": body.decode("utf-8", "replace")})
        elif self.path == "/release":
            with b.lock:
                b.generation += 1
                b.release.notify_all()
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": "not found"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    ap.add_argument("--hold-max", type=float, default=60.0, help="seconds /hold waits for /release at most")
    args = ap.parse_args(argv)
    Handler.backend = Backend(args.hold_max)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
