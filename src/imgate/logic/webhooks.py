"""Webhooks: connection events POSTed to the business so that it can keep its own presence.

Events are JSON objects::

    {"id": "9f2c41d07a3e-1", "event": "connect", "mid": 42, "conn_id": 7, "key": "...", "server": "node-1",
     "room_id": "live://1", "rooms": [], "platform": "web", "ts": 1700000000123}
    {"id": ..., "event": "disconnect", "mid": 42, "conn_id": 7, "server": "node-1", "ts": ...}
    {"id": ..., "event": "room", "action": "change" | "join" | "leave", "mid": 42, "conn_id": 7,
     "server": "node-1", "room_id": "live://2", "ts": ...}

They are queued in this logic and sent in order, in batches of at most ``batch`` events: one ``POST``
with ``{"events": [...]}``. A batch is sent again, after 0.1 s, 0.2 s, 0.4 s ... (at most
``max_backoff``), until the service answers 2xx; only then is the next batch sent (at-least-once: a
batch whose 2xx was lost is sent again, so the service should de-duplicate on the event's ``id``,
unique across logic instances and restarts, if it cares). The queue holds at most ``queue`` events; an event past that is dropped and counted
(``imgate_webhook_dropped_total``), never queued without bound. At shutdown the queue has
``shutdown_grace`` seconds to empty; what is left then is lost with the process (and logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque

from imgate.httpclient import HttpClient

log = logging.getLogger("imgate.logic.webhooks")

__all__ = ["Webhooks"]

_FIRST_BACKOFF = 0.1


class Webhooks:
    def __init__(self, url: str, *, batch: int = 100, queue: int = 100000, timeout: float = 5.0,
                 max_backoff: float = 30.0):
        self.url = url
        self.batch = batch
        self.limit = queue
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._queue: deque[dict] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._http = HttpClient(timeout)
        # event ids: this sender's random prefix and a count, unique without any coordination
        self._prefix = os.urandom(6).hex()
        self._count = 0
        self.counters = {"webhook_events": 0, "webhook_dropped": 0, "webhook_posts": 0, "webhook_retries": 0}

    def emit(self, event: str, **fields) -> None:
        """Queue one event (never waits); past the bound it is dropped and counted."""
        if len(self._queue) >= self.limit:
            self.counters["webhook_dropped"] += 1
            if self.counters["webhook_dropped"] in (1, 1000) or self.counters["webhook_dropped"] % 100000 == 0:
                log.warning("webhook queue full (%d events): %d events dropped so far",
                            self.limit, self.counters["webhook_dropped"])
            return
        self._count += 1
        fields["id"] = f"{self._prefix}-{self._count}"
        fields["event"] = event
        fields["ts"] = int(time.time() * 1000)
        self._queue.append(fields)
        self.counters["webhook_events"] += 1
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        self._wake = asyncio.Event()
        if self._queue:
            self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float = 0.0) -> None:
        """Stop sending; first wait up to ``grace`` seconds for the queue to empty (the disconnects of
        a node shutting down)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        while self._queue and self._task is not None and loop.time() < end:
            await asyncio.sleep(0.05)
        if self._queue:
            log.warning("webhook: %d events not delivered at shutdown", len(self._queue))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._http.close()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                # the batch stays at the head of the queue until it is acknowledged
                n = min(self.batch, len(self._queue))
                body = json.dumps({"events": [self._queue[i] for i in range(n)]}).encode()
                await self._deliver(body)
                for _ in range(n):
                    self._queue.popleft()

    async def _deliver(self, body: bytes) -> None:
        """POST until a 2xx, with doubling pauses."""
        import aiohttp

        session = self._http.session()
        pause = _FIRST_BACKOFF
        while True:
            self.counters["webhook_posts"] += 1
            try:
                async with session.post(self.url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return
                    why = f"HTTP {resp.status}"
            except asyncio.TimeoutError:
                why = f"no answer within {self.timeout:g} s"
            except (aiohttp.ClientError, OSError, ValueError) as e:  # ValueError: a URL aiohttp refuses
                why = str(e) or type(e).__name__
            self.counters["webhook_retries"] += 1
            if self.counters["webhook_retries"] % 100 == 1:
                log.warning("webhook %s failed (%s); retrying in %.1f s", self.url, why, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.max_backoff)

    def stats(self) -> dict:
        return {**self.counters, "webhook_queue": len(self._queue)}
