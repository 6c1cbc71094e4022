"""Push finds the proxies in the cache, without a discovery server.

Every proxy reports to logic each ``online_interval``, and logic stores the report in the cache with
the server TTL (``srv:{server}`` in Redis): room counts, connections, the proxy's RPC address and
whether it is draining. :class:`Discovery` reads those reports on the same period and keeps the
router's proxies in step: a new proxy is in service at the next read, one whose report is gone is
dropped once it has been missing for ``grace`` seconds (a cache that lost its data gets the reports
back within one interval, and its proxies must not vanish meanwhile). The static ``proxies`` of the
config are an override: always there, at the address given, whatever the cache says.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("imgate.push")


class Discovery:
    def __init__(self, cache, router, make_client, *, static: dict[str, str] | None = None,
                 interval: float = 1.0, grace: float = 3.0, clock=time.monotonic):
        self.cache = cache
        self.router = router
        self.make_client = make_client  # (server_id, "host:port") -> a ProxyAPI with close()
        self.static = dict(static or {})
        self.interval = interval
        self.grace = grace
        self.clock = clock
        self.addrs: dict[str, str] = {}       # discovered server -> address in use
        self._seen: dict[str, float] = {}     # discovered server -> when its report was last there
        self._task: asyncio.Task | None = None
        for sid, addr in self.static.items():
            router.proxies[sid] = make_client(sid, addr)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as e:  # the cache may be away: keep the proxies we know
                log.warning("discovering proxies failed: %s", e)
            await asyncio.sleep(self.interval)

    def note(self, sid: str, addr: str, draining: bool = False) -> None:
        """A report seen as it arrives (logic in this process): a proxy at a new address is used at once."""
        if not addr or sid in self.static:
            return
        self._seen[sid] = self.clock()
        if self.addrs.get(sid) != addr:
            old = self.router.proxies.get(sid) if sid in self.addrs else None
            self.addrs[sid] = addr
            self.router.proxies[sid] = self.make_client(sid, addr)
            log.info("proxy %s discovered at %s", sid, addr)
            if old is not None:
                asyncio.get_running_loop().create_task(old.close())

    async def refresh(self) -> None:
        reports = await self.cache.servers_online()
        now = self.clock()
        draining = {}
        for sid, info in reports.items():
            addr = info.get("addr") or ""
            if info.get("draining"):
                draining[sid] = set(info.get("rooms", ()))
            if not addr or sid in self.static:
                continue
            self._seen[sid] = now
            if self.addrs.get(sid) != addr:
                await self._drop(sid)
                self.addrs[sid] = addr
                self.router.proxies[sid] = self.make_client(sid, addr)
                log.info("proxy %s discovered at %s", sid, addr)
        self.router.draining = draining
        for sid in [s for s, t in self._seen.items() if now - t > self.grace]:
            log.info("proxy %s dropped: no report for %.1fs", sid, now - self._seen[sid])
            await self._drop(sid)

    async def _drop(self, sid: str) -> None:
        self._seen.pop(sid, None)
        if self.addrs.pop(sid, None) is None:
            return
        client = self.router.proxies.pop(sid, None)
        if client is not None:
            try:
                await client.close()
            except Exception as e:
                log.warning("closing the client of proxy %s failed: %s", sid, e)

    async def close(self) -> None:
        await self.stop()
        for sid in list(self.router.proxies):
            client = self.router.proxies.pop(sid)
            await client.close()
