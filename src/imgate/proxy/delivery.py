"""Delivery: what push calls on a proxy (the proxy's side of ``ProxyAPI``)."""

from __future__ import annotations

import asyncio

from imgate.core import encode_frame
from imgate.protocol import room_batch
from imgate.proxy.channel import S_OPEN


class Delivery:
    """Part of :class:`~imgate.proxy.server.Proxy`: pushes to connections, users, rooms and everyone."""

    def push_conns(self, conn_ids: list[int], op: int, body: bytes) -> int:
        """Unicast/multicast to connections of this proxy, filtered by each one's accepted ops."""
        self.stats_counters["pushes"] += 1
        lids = []
        for cid in conn_ids:
            ch = self._by_conn_id.get(cid)
            if ch is not None:
                lids.append(ch.lid)
        if not lids:
            return 0
        n = self.table.send_many(lids, encode_frame(op, 0, body), op)
        self.stats_counters["drops"] += len(lids) - n
        return n

    def push_mids(self, mids: list[int], op: int, body: bytes) -> int:
        """Unicast/multicast by user id to this proxy's connections (the table's user index), filtered
        by each one's accepted ops: the embedded node's logic resolves pushes by mid here."""
        self.stats_counters["pushes"] += 1
        return self.table.send_users(mids, encode_frame(op, 0, body), op)

    def push_room(self, room_id: str, op: int, body: bytes) -> int:
        """Room broadcast. Pushes to one room within an event-loop iteration (or the merge window)
        travel together as one op-9 batch: inner frames over TCP, one op-9 frame over WebSocket."""
        return self.push_room_batch(room_id, encode_frame(op, 0, body))

    def push_room_batch(self, room_id: str, frames: bytes) -> int:
        """Room broadcast of frames already encoded and merged by push (inner frames back to back)."""
        self.stats_counters["pushes"] += 1
        count = self.table.room_count(room_id)
        if not count or not frames:
            return 0
        self._room_frames.setdefault(room_id, []).append(frames)
        if not self._room_flush_scheduled:
            self._room_flush_scheduled = True
            if self.config.merge_window > 0:
                self.loop.call_later(self.config.merge_window, self._flush_rooms)
            else:
                self.loop.call_soon(self._flush_rooms)
        return count

    def rooms(self) -> dict:
        """This proxy's rooms and their online counts (push absorbs these periodically)."""
        return self.table.rooms()

    def _flush_rooms(self) -> None:
        self._room_flush_scheduled = False
        batches, self._room_frames = self._room_frames, {}
        for room_id, frames in batches.items():
            inner, op9 = room_batch(frames)
            self.table.broadcast(room_id, inner, ws_data=op9)

    def push_all(self, op: int, body: bytes, speed: int = 0) -> int:
        """Broadcast to every connection, filtered by accepted ops; `speed` caps connections per second."""
        self.stats_counters["pushes"] += 1
        frame = encode_frame(op, 0, body)
        if speed <= 0:
            return self.table.broadcast_all(frame, op)
        lids = [ch.lid for ch in self._channels.values() if ch.state == S_OPEN]
        self._spawn(self._paced(lids, frame, op, speed))
        return len(lids)

    async def _paced(self, lids: list[int], frame: bytes, op: int, speed: int) -> None:
        step = max(1, speed // 10)  # ten slices per second
        for i in range(0, len(lids), step):
            self.table.send_many([lid for lid in lids[i : i + step] if lid in self.table], frame, op)
            await asyncio.sleep(0.1)
