"""Upstream RPC: what a client sends with op 4 (or a business op 100-999) goes to the business's HTTP
service, and the service's answer comes back to the client as the reply op (op + 1) with the same seq.

Each message is one ``POST`` to the route's URL, chosen by the client's op (``upstream_routes``, else
``upstream_url``). The request body is the frame's body, unchanged; who sent it travels in headers:

    X-Imgate-User: 42            X-Imgate-Key: 5f1c...       X-Imgate-Conn-Id: 7
    X-Imgate-Platform: web       X-Imgate-Room: live://1000  X-Imgate-Server: node-1
    X-Imgate-Op: 4               X-Imgate-Seq: 12

A 2xx answer's body is the reply's body. Anything else (a refused connection, a timeout, a non-2xx
status, an answer over ``max_body``, the bounds below) gives the client an error body instead, and the
connection stays open (:func:`error_body`)::

    {"ok": false, "code": "timeout", "error": "upstream did not answer within 3.0 s"}

Bounds: at most ``total`` requests of this logic in flight; a request past it is answered ``busy`` at
once rather than queued. (The proxy bounds each connection's: ``upstream_conn_limit``.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import quote

from imgate.httpclient import HttpClient

log = logging.getLogger("imgate.logic.upstream")

__all__ = ["Upstream", "error_body", "ERROR_CODES"]

# header values stay printable ASCII: anything else (and "%") is percent-encoded as UTF-8
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")

#: every ``code`` an error body may carry
ERROR_CODES = ("busy", "timeout", "unavailable", "status", "too_large", "no_route")


def error_body(code: str, message: str, **extra) -> bytes:
    """The reply body the client gets when its message did not get an answer from the business."""
    return json.dumps({"ok": False, "code": code, "error": message, **extra}).encode()


class Upstream:
    """The HTTP client pool to the business's services (one aiohttp session, keep-alive)."""

    def __init__(self, url: str = "", routes: dict | None = None, *, timeout: float = 3.0,
                 total: int = 1024, max_body: int = 65536, pool: int = 100):
        self.default_url = url
        self.routes = {int(op): u for op, u in (routes or {}).items()}
        self.timeout = timeout
        self.total = total
        self.max_body = max_body
        self.pool = pool
        self._in_flight = 0
        # the pool's size bounds sockets; our own counters bound requests (no queue behind the pool
        # grows past ``total``)
        self._http = HttpClient(timeout, pool=pool, decompress=False)
        self.counters = {"upstream_requests": 0, "upstream_errors": 0, "upstream_busy": 0}

    def url_for(self, op: int) -> str:
        return self.routes.get(op) or self.default_url

    async def close(self) -> None:
        await self._http.close()

    async def call(self, server: str, conn_id: int, mid: int, op: int, seq: int, body: bytes, *,
                   key: str = "", room_id: str = "", platform: str = "") -> bytes:
        url = self.url_for(op)
        if not url:
            return error_body("no_route", f"no upstream service for op {op}")
        if self._in_flight >= self.total:
            self.counters["upstream_busy"] += 1
            return error_body("busy", f"the gateway has too many upstream requests in flight (limit {self.total})")
        self._in_flight += 1
        self.counters["upstream_requests"] += 1
        try:
            reply = await self._post(url, server, conn_id, mid, op, seq, body, key, room_id, platform)
        finally:
            self._in_flight -= 1
        return reply

    async def _post(self, url, server, conn_id, mid, op, seq, body, key, room_id, platform) -> bytes:
        import aiohttp

        headers = {
            "Content-Type": "application/octet-stream",
            "X-Imgate-User": str(mid), "X-Imgate-Conn-Id": str(conn_id), "X-Imgate-Key": quote(key, _HEADER_SAFE),
            "X-Imgate-Platform": quote(platform, _HEADER_SAFE), "X-Imgate-Room": quote(room_id, _HEADER_SAFE),
            "X-Imgate-Server": quote(server, _HEADER_SAFE),
            "X-Imgate-Op": str(op), "X-Imgate-Seq": str(seq),
        }
        try:
            async with self._http.session().post(url, data=bytes(body), headers=headers) as resp:
                if not 200 <= resp.status < 300:
                    return self._error("status", f"upstream answered HTTP {resp.status}", status=resp.status)
                if resp.content_length is not None and resp.content_length > self.max_body:
                    return self._error("too_large", f"upstream answer is {resp.content_length} bytes, "
                                                    f"the limit is {self.max_body}")
                if resp.content_length is not None:
                    data = await resp.read()
                else:  # chunked: read up to the bound
                    data = await _read_bounded(resp.content, self.max_body)
                    if data is None:
                        return self._error("too_large", f"upstream answer is over {self.max_body} bytes")
                return data
        except asyncio.TimeoutError:  # the session's total timeout, connect to last byte
            return self._error("timeout", f"upstream did not answer within {self.timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as e:  # ValueError: a URL aiohttp refuses
            log.warning("upstream %s: %s", url, e)
            return self._error("unavailable", "upstream service unavailable")

    def _error(self, code: str, message: str, **extra) -> bytes:
        self.counters["upstream_errors"] += 1
        return error_body(code, message, **extra)

    def stats(self) -> dict:
        return {**self.counters, "upstream_in_flight": self._in_flight}


async def _read_bounded(stream, limit: int) -> bytes | None:
    """The whole stream, or None once it passes ``limit`` bytes."""
    parts, size = [], 0
    while True:
        chunk = await stream.readany()
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
