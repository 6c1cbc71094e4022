"""Logic's watch on the cache's epoch (``imgate.cache.epoch``): a push is delivered or refused, never
answered 200 and dropped because the cache lost its sessions.

When logic sees a new epoch where it knew another, the cache lost its data: the proxies still hold
their connections but the registry does not name them until each proxy has re-registered (every
proxy checks the epoch on each online report). Until every proxy that reported within the server TTL
has marked itself ready, or that TTL has passed (a proxy silent that long is dead), pushes by mid or
key raise :class:`CacheRecovering`, which the HTTP API answers with 503.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("imgate.logic")


class CacheRecovering(ConnectionError):
    """The cache lost its data and the proxies are re-registering: retry shortly (HTTP 503)."""


class EpochWatch:
    def __init__(self, cache, server_ttl: float, clock=time.monotonic):
        self.cache = cache
        self.server_ttl = server_ttl
        self.clock = clock
        self.epoch = ""
        self._recent: dict[str, float] = {}  # server -> when it last reported
        self.pending: set[str] = set()       # servers not yet re-registered for this epoch
        self._until = 0.0
        self.losses = 0

    def saw(self, servers) -> None:
        now = self.clock()
        for s in servers:
            self._recent[s] = now

    async def observe(self, seen: str | None) -> None:
        """Take note of the epoch a cache call returned (None: its key is gone)."""
        if seen == "" or seen == self.epoch:  # "": the cache has not looked yet
            return
        if seen is None:
            seen = await self.cache.epoch()  # makes the new one
            if seen == self.epoch:
                return
        old, self.epoch = self.epoch, seen
        if not old:
            return  # logic's first look
        now = self.clock()
        # the proxies alive when the cache was last reachable: during an outage nobody reports, so
        # the sightings are aged against the newest one, not against now
        newest = max(self._recent.values(), default=now)
        self._recent = {s: t for s, t in self._recent.items() if newest - t <= self.server_ttl}
        self.pending = set(self._recent)
        self._until = now + self.server_ttl
        self.losses += 1
        log.warning("the cache lost its data (epoch %s -> %s): refusing pushes by mid/key until %d proxies "
                    "re-registered (at most %.1fs)", old, seen, len(self.pending), self.server_ttl)

    async def check(self, seen: str | None) -> None:
        """After a session lookup: raise CacheRecovering while its answer may miss live connections."""
        await self.observe(seen)
        if not self.pending:
            return
        if self.clock() > self._until:
            log.warning("proxies %s did not re-register within %.1fs; taken for dead",
                        ", ".join(sorted(self.pending)), self.server_ttl)
            self.pending = set()
            return
        self.pending -= await self.cache.ready(self.epoch)
        if self.pending:
            raise CacheRecovering(f"the session cache lost its data and {len(self.pending)} proxies are "
                                  f"re-registering their connections; retry shortly")
