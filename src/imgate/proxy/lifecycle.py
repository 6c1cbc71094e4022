"""A connection's end and the proxy's housekeeping: closing with a notice, deadlines, online reports,
and the proxy's own shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from imgate.proxy.channel import S_AUTHING, S_CLOSING, S_HTTP, S_OPEN, Channel, ws_binary
from imgate.protocol import notice
from imgate.core import encode_ws_close

log = logging.getLogger("imgate.proxy")

# Slow consumers closed per event-loop iteration (the rest wait for the next one).
_CLOSE_SLICE = 64
# Channels checked per event-loop iteration by the deadline sweep.
_SWEEP_SLICE = 1000
# Seconds between the sweeps over every channel (heartbeats), at the most.
_HEARTBEAT_SWEEP_MAX = 5.0


class Lifecycle:
    """Part of :class:`~imgate.proxy.server.Proxy`: closing connections and periodic work."""

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, tell every client (op 6 shutdown, reconnect), flush, close within `grace`."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.shutdown_grace if grace is None else grace
        for sock in self._listeners:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for server in self._tls_servers:
            server.close()   # no new TLS connections; the open ones close with their channels
        self._tls_servers.clear()
        for task in (self._sweeper, self._reporter):
            if task is not None:
                task.cancel()
        if self.advertise:  # tell push at once: no new room pushes for rooms it no longer holds
            try:
                await asyncio.wait_for(self._report(), min(1.0, grace))
            except Exception as e:
                log.warning("the draining report failed: %s", e)
        bye = notice("shutdown", True)
        ws_bye = None
        for ch in list(self._channels):
            if ch.state in (S_HTTP, S_CLOSING):
                continue
            if ch.ws:
                if ws_bye is None:
                    ws_bye = ws_binary(bye) + encode_ws_close(1001, "shutdown")
                self.table.send_raw(ch, ws_bye)
            else:
                self.table.send(ch, bye)
        self.table.flush()
        deadline = self.loop.time() + grace
        while self.loop.time() < deadline and any(
            self.table.pending(ch) for ch in self._channels if ch in self.table
        ):
            await asyncio.sleep(0.01)
        for ch in list(self._channels):
            self._close_now(ch)  # _forget queues each session's disconnect in _final_disconnects
        disconnects, self._final_disconnects = self._final_disconnects, []
        if disconnects:
            await asyncio.gather(*disconnects, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    def close(self, ch: Channel, reason: str, reconnect: bool, extra: dict | None = None) -> None:
        """op 6 with the reason (and ``extra`` fields), then close (the server decided: protocol
        error, kicked, slow, busy...)."""
        if ch not in self._channels or ch.state == S_CLOSING:
            return
        if ch.ws:
            if ch.state == S_HTTP:
                self._close_now(ch)
                return
            short = reason.encode()[:120].decode("utf-8", "ignore")  # a close reason is at most 123 bytes
            self._close_ws(ch, reason, encode_ws_close(1008 if not reconnect else 1001, short), reconnect, extra)
            return
        log.debug("closing conn %s (%s): %s", ch.conn_id or ch.fd, ch.ip, reason)
        rest = b""
        if ch in self.table:
            rest = self.table.send_final(ch, notice(reason, reconnect, **(extra or {})))
        self._half_close(ch, rest)

    def _half_close(self, ch: Channel, rest: bytes = b"") -> None:
        # FIN once the last words are out, then drain the peer briefly: closing with unread input
        # would reset the connection and could destroy the op-6 notice before the client reads it.
        self._forget(ch)
        was_authing = ch.state == S_AUTHING
        ch.state = S_CLOSING
        ch.deadline = time.monotonic() + self.config.close_grace
        self._unopened.add(ch)
        if was_authing:  # reading was paused for auth; drain again so the peer's close is seen
            self.loop.add_reader(ch.fd, self._on_readable, ch)
        if rest:  # the socket buffer is full (a slow consumer): finish when it drains, or at the deadline
            ch.owed = True
            self.loop.add_writer(ch.fd, self._write_last_words, ch, rest)
            return
        try:
            ch.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_now(ch)

    def _write_last_words(self, ch: Channel, rest: bytes) -> None:
        try:
            n = ch.sock.send(rest)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_now(ch)
            return
        if n < len(rest):
            self.loop.add_writer(ch.fd, self._write_last_words, ch, rest[n:])
            return
        self.loop.remove_writer(ch.fd)
        ch.owed = False
        self.stats_counters["close_notices_late"] += 1
        try:
            ch.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_now(ch)

    def _lost(self, ch: Channel) -> None:
        """The peer closed or reset the connection."""
        self._close_now(ch)

    def _forget(self, ch: Channel) -> None:
        """Unregister everywhere (table, session registry); the socket stays open."""
        if ch in self.table:
            self.table.remove(ch)
        if ch.conn_id and self._by_conn_id.get(ch.conn_id) is ch:
            del self._by_conn_id[ch.conn_id]
            self.conns_delivery.unbind(ch.conn_id)
            if self._stopping:
                self._final_disconnects.append(self.logic.disconnect(self.server_id, ch.conn_id, ch.mid))
            else:
                self._spawn(self._disconnect(ch.conn_id, ch.mid))
                if self.im_api is not self.logic:  # the im roles forget what it had not acked
                    self._spawn(self._im_closed(ch.conn_id, ch.mid))
            ch.conn_id = 0

    async def _im_closed(self, conn_id: int, mid: int) -> None:
        try:
            await self.im_api.disconnect(self.server_id, conn_id, mid)
        except Exception as e:  # they drop it after ack_retries resends anyway
            log.debug("im roles not told of closed conn %s: %s", conn_id, e)

    async def _disconnect(self, conn_id: int, mid: int) -> None:
        """Tell logic a session ended. With logic away, every client that leaves would fail here: counted,
        and said once per thousand (the session expires in the registry by itself)."""
        try:
            await self.logic.disconnect(self.server_id, conn_id, mid)
        except Exception as e:
            n = self.stats_counters["disconnect_failures"]
            self.stats_counters["disconnect_failures"] = n + 1
            if n % 1000 == 0:
                log.warning("session end of conn %s not reported to logic (%d so far): %s", conn_id, n + 1, e)

    def _close_now(self, ch: Channel) -> None:
        if ch not in self._channels:
            return
        self._channels.discard(ch)
        self._unopened.discard(ch)
        self._forget(ch)
        n = self._ips.get(ch.ip, 0) - 1
        if n > 0:
            self._ips[ch.ip] = n
        else:
            self._ips.pop(ch.ip, None)
        if ch.state != S_AUTHING:
            self.loop.remove_reader(ch.fd)
        self.loop.remove_writer(ch.fd)  # last words still owed to a slow consumer, if any
        if ch.owed:   # the peer never made room for its op-6 notice
            ch.owed = False
            self.stats_counters["close_notices_dropped"] += 1
        ch.state = S_CLOSING
        ch.sock.close()

    def _on_overflow(self, ch: Channel) -> None:
        # The table already stopped delivering to it; the close (notice, FIN, logic's disconnect)
        # waits for the next loop iterations, _CLOSE_SLICE at a time, so that a thousand slow
        # consumers overflowing in one broadcast do not hold every healthy client's push behind them.
        self._overflowed.append(ch)
        if len(self._overflowed) == 1:
            self.loop.call_soon(self._close_overflowed)

    def _close_overflowed(self) -> None:
        batch = self._overflowed[:_CLOSE_SLICE]
        del self._overflowed[:_CLOSE_SLICE]
        if self._overflowed:
            self.loop.call_soon(self._close_overflowed)
        for ch in batch:
            if ch in self._channels:
                self.stats_counters["slow_consumer_closes"] += 1
                self.close(ch, "slow consumer", reconnect=True)

    def _on_write_error(self, ch: Channel, exc: OSError) -> None:
        if ch in self._channels:
            self._close_now(ch)

    # ------------------------------------------------------------------ housekeeping

    async def _sweep_loop(self) -> None:
        """Handshake, close and heartbeat deadlines, checked in passes instead of a timer per connection.

        The channels not open yet (or closing) are few and due within seconds: checked every
        ``period``. A heartbeat is due after ``heartbeat_timeout``, so all channels are walked only every
        ``heartbeat_timeout / 8`` (at most 5 s): a pass over 10,000 idle channels each second was most of
        an idle proxy's CPU, and a missed heartbeat is still acted on within an eighth of its timeout."""
        hb = self.config.heartbeat_timeout
        period = min(1.0, self.config.handshake_timeout / 2, hb / 2)
        full_every = max(1, int(min(hb / 8, _HEARTBEAT_SWEEP_MAX) / period))
        n = 0
        while True:
            await asyncio.sleep(period)
            n += 1
            channels = list(self._channels if n % full_every == 0 else self._unopened)
            for i, ch in enumerate(channels):
                if i % _SWEEP_SLICE == 0:
                    if i:
                        # let the loop serve between slices: a pass over 10,000 channels in one go
                        # held every push behind it for a millisecond or two, once a second
                        await asyncio.sleep(0)
                    now = time.monotonic()
                if ch not in self._channels:
                    continue  # gone while we yielded
                st = ch.state
                if st == S_OPEN:
                    if now - ch.last_seen > hb:
                        self.close(ch, "heartbeat timeout", reconnect=True)
                elif st == S_CLOSING:
                    if now > ch.deadline:
                        self._close_now(ch)
                elif st != S_AUTHING and now > ch.deadline:
                    self.stats_counters["handshake_timeouts"] += 1
                    self.close(ch, "auth timeout: the first frame must be auth (op 7)", reconnect=False)

    async def _report_loop(self) -> None:
        """Report room counts to logic periodically (counters are absorbed, not queried)."""
        while True:
            try:
                await self._report()
            except Exception as e:
                log.warning("renew online failed: %s", e)
            await asyncio.sleep(self.config.online_interval)

    async def _report(self) -> None:
        rooms = self.table.rooms()
        # advertise: where push reaches this proxy (set by the proxy role once its RPC listens)
        counts = await self.logic.renew_online(self.server_id, rooms, len(self._by_conn_id), len(self._ips),
                                               self.advertise, self._stopping)
        # what the other proxies hold; heartbeats add this proxy's live count to it
        self._remote_online = {r: max(0, counts.get(r, n) - n) for r, n in rooms.items()} if counts else {}
        self._after_report()  # a new cache epoch: put the connections back
