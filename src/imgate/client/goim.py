"""goim's own operations on a connection: heartbeat, rooms, sub/unsub, upstream messages."""

from __future__ import annotations

import json
from typing import Iterable

from imgate.client.errors import Refused
from imgate.protocol.ops import (
    OP_CHANGE_ROOM, OP_CHANGE_ROOM_REPLY, OP_HEARTBEAT, OP_HEARTBEAT_REPLY, OP_JOIN_ROOM, OP_JOIN_ROOM_REPLY,
    OP_LEAVE_ROOM, OP_LEAVE_ROOM_REPLY, OP_SEND_MSG, OP_SUB, OP_SUB_REPLY, OP_UNSUB, OP_UNSUB_REPLY,
)


def _ops_body(ops: Iterable[int]) -> bytes:
    return ",".join(str(int(op)) for op in ops).encode()


class GoimOps:
    """Mixed into :class:`imgate.client.Client`, whose ``request`` carries each operation."""

    async def heartbeat(self, timeout: float | None = None) -> int:
        """Op 2 -> op 3; returns the online count of the connection's room (int32 big-endian)."""
        reply = await self.request(OP_HEARTBEAT, b"", OP_HEARTBEAT_REPLY, timeout)
        body = reply.body
        return int.from_bytes(body[:4], "big", signed=True) if len(body) >= 4 else 0

    async def _checked(self, op: int, body: bytes, reply_op: int, timeout: float | None) -> None:
        """A request whose JSON reply carries ``ok``; ``"ok": false`` raises :class:`Refused`."""
        reply = await self.request(op, body, reply_op, timeout)
        try:
            fields = json.loads(reply.body) if reply.body else {}
        except (ValueError, UnicodeDecodeError):
            fields = None
        if not isinstance(fields, dict):  # a goim server answers with an empty or non-JSON body
            return
        if fields.get("ok") is False:
            raise Refused(op, str(fields.get("error") or "refused by the server"), fields)

    async def change_room(self, room_id: str, timeout: float | None = None) -> None:
        """Op 12 -> 13: move the connection to ``room_id`` (``""`` leaves every room).
        Raises :class:`Refused` if the server refuses (the connection stays where it was)."""
        await self._checked(OP_CHANGE_ROOM, room_id.encode(), OP_CHANGE_ROOM_REPLY, timeout)
        self.room_id = room_id

    async def join_room(self, room_id: str, timeout: float | None = None) -> None:
        """Op 18 -> 19: join one more room. Raises :class:`Refused` if the server refuses."""
        await self._checked(OP_JOIN_ROOM, room_id.encode(), OP_JOIN_ROOM_REPLY, timeout)

    async def leave_room(self, room_id: str, timeout: float | None = None) -> None:
        """Op 20 -> 21: leave one room. Raises :class:`Refused` if the server refuses."""
        await self._checked(OP_LEAVE_ROOM, room_id.encode(), OP_LEAVE_ROOM_REPLY, timeout)

    async def sub(self, ops: Iterable[int], timeout: float | None = None) -> None:
        """Op 14 -> 15: also accept these push operations. Raises :class:`Refused` if refused."""
        await self._checked(OP_SUB, _ops_body(ops), OP_SUB_REPLY, timeout)

    async def unsub(self, ops: Iterable[int], timeout: float | None = None) -> None:
        """Op 16 -> 17: stop accepting these push operations. Raises :class:`Refused` if refused."""
        await self._checked(OP_UNSUB, _ops_body(ops), OP_UNSUB_REPLY, timeout)

    async def send(self, body: bytes | str, op: int = OP_SEND_MSG,
                   timeout: float | None = None) -> bytes:
        """Send a message (op 4 by default) and return the body of its reply (op + 1, same seq)."""
        reply = await self.request(op, body, op + 1, timeout)
        return reply.body
