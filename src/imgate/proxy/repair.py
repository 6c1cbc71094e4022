"""Part of :class:`~imgate.proxy.server.Proxy`: putting its connections back into a cache that lost
them, without closing any client.

Logic answers each online report with the cache's epoch (``imgate.cache.epoch``). When it changes,
the cache was emptied (a Redis restarted without its data, a flush, a fail-over that lost writes):
the proxy sends logic every open connection again, in batches, the last one marked done, so that
logic knows this proxy is whole again and stops refusing pushes by mid or key. A heartbeat renewal
that finds its session gone puts that one session back the same way.
"""

from __future__ import annotations

import logging

from imgate.cache.base import Session
from imgate.proxy.channel import S_OPEN

log = logging.getLogger("imgate.proxy")

_BATCH = 1000  # sessions per restore call


class Repair:
    _epoch = ""          # the epoch this proxy's sessions are registered under
    _repairing = False

    def _session_of(self, ch) -> Session:
        return Session(conn_id=ch.conn_id, mid=ch.mid, key=ch.key, server=self.server_id, room_id=ch.room_id)

    def _after_report(self) -> None:
        epoch = getattr(self.logic, "epoch", "")
        if epoch and epoch != self._epoch and not self._repairing:
            self._repairing = True
            self._spawn(self._reregister(epoch))

    async def _reregister(self, epoch: str) -> None:
        try:
            chans = [ch for ch in self._by_conn_id.values() if ch.state == S_OPEN]
            if self._epoch:
                log.warning("the cache lost its data (epoch %s -> %s): re-registering %d connections",
                            self._epoch, epoch, len(chans))
            for i in range(0, max(len(chans), 1), _BATCH):
                batch = [self._session_of(ch) for ch in chans[i:i + _BATCH] if ch.conn_id]
                await self.logic.restore(self.server_id, epoch, batch, done=i + _BATCH >= len(chans))
            self._epoch = epoch
            self.stats_counters["reregistered"] = self.stats_counters.get("reregistered", 0) + len(chans)
        except Exception as e:  # tried again after the next report
            log.warning("re-registering connections failed: %s", e)
        finally:
            self._repairing = False

    async def _restore_one(self, ch) -> None:
        try:
            await self.logic.restore(self.server_id, "", [self._session_of(ch)], done=False)
        except Exception as e:
            log.warning("re-registering conn %s failed: %s", ch.conn_id, e)
