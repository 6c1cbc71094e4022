"""Delivery: the proxy's side of ``ProxyAPI``, what push calls to reach this proxy's connections.

All of it goes through the room table, which keeps one output queue per connection: a room push is
added to the room's batch there (one op-9 batch per room per flush), and anything queued for a
connection after it releases the batches first, so a connection gets its pushes in the order they
were accepted, whatever the mix.
"""

from __future__ import annotations

import asyncio
import logging

from imgate.core import encode_frame
from imgate.protocol.interfaces import ProxyAPI
from imgate.proxy._delivery import push_conns_nowait, push_packed_nowait
from imgate.proxy.channel import S_OPEN

log = logging.getLogger("imgate.proxy")


class Delivery(ProxyAPI):
    """Part of :class:`~imgate.proxy.server.Proxy`: pushes to connections, rooms and everyone."""

    nowait = True  # in this process: push calls the *_nowait methods

    # unicast/multicast to connections of this proxy, filtered by each one's accepted ops: the proxy's
    # ConnsDelivery (compiled, proxy/_delivery.pyx), which counts them
    push_conns_nowait = push_conns_nowait
    # the pushes of one PUSH_CONNS_PACKED body (imgate.rpc.packed), each as push_conns_nowait would
    push_packed_nowait = push_packed_nowait

    def join_conns_nowait(self, conn_ids: list[int], room_id: str) -> int:
        """Connections of this proxy join a room (the IM service: a large group's members); one that
        already has max_rooms_per_conn rooms is skipped (it learns the group's news from SYNC)."""
        n = 0
        for cid in conn_ids:
            ch = self._by_conn_id.get(cid)
            if ch is None:
                continue
            try:
                self.table.join(ch, room_id)
                n += 1
            except ValueError as e:
                log.warning("conn %s could not join %s: %s", cid, room_id, e)
        return n

    def leave_conns_nowait(self, conn_ids: list[int], room_id: str) -> int:
        n = 0
        for cid in conn_ids:
            ch = self._by_conn_id.get(cid)
            if ch is not None:
                self.table.leave(ch, room_id)
                n += 1
        return n

    async def join_conns(self, conn_ids: list[int], room_id: str) -> int:
        return self.join_conns_nowait(conn_ids, room_id)

    async def leave_conns(self, conn_ids: list[int], room_id: str) -> int:
        return self.leave_conns_nowait(conn_ids, room_id)

    def push_room_nowait(self, room_id: str, op: int, body: bytes) -> int:
        """Room broadcast. Pushes to one room within an event-loop iteration (or the merge window)
        travel together as one op-9 batch: inner frames over TCP, one op-9 frame over WebSocket."""
        return self.push_room_batch_nowait(room_id, encode_frame(op, 0, body))

    def push_room_batch_nowait(self, room_id: str, frames: bytes) -> int:
        """Room broadcast of frames already encoded and merged by push (inner frames back to back)."""
        self.stats_counters["pushes"] += 1
        return self.table.push_room(room_id, frames)

    def push_all_nowait(self, op: int, body: bytes, speed: int = 0) -> int:
        """Broadcast to every connection, filtered by accepted ops; `speed` caps connections per second."""
        self.stats_counters["pushes"] += 1
        frame = encode_frame(op, 0, body)
        if speed <= 0:
            return self.table.broadcast_all(frame, op)
        chs = [ch for ch in self._channels if ch.state == S_OPEN]
        self._spawn(self._paced(chs, frame, op, speed))
        return len(chs)

    async def _paced(self, chs: list, frame: bytes, op: int, speed: int) -> None:
        step = max(1, speed // 10)  # ten slices per second
        for i in range(0, len(chs), step):
            self.table.send_many([ch for ch in chs[i : i + step] if ch in self.table], frame, op)
            await asyncio.sleep(0.1)
