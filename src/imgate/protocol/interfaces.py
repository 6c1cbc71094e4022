"""The interfaces between roles. Each has an in-process implementation (the embedded node) and a
network one (the cluster); both sides import them from here, below either of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Connected:
    """Logic's answer to a successful auth."""

    conn_id: int
    mid: int
    key: str
    room_id: str
    accepts: tuple
    platform: str
    inbox_seq: int | None = None  # the user's newest inbox seq, when logic has an IM service
    rooms: tuple = ()  # more rooms to join besides room_id (an auth service may name them)


class LogicAPI(Protocol):
    """What a proxy calls on logic: the Logic object itself in one process, an RPC client in a cluster."""

    async def connect(self, server: str, body: bytes) -> Connected: ...
    async def disconnect(self, server: str, conn_id: int, mid: int) -> None: ...
    async def heartbeat(self, server: str, conn_id: int, mid: int) -> bool: ...
    async def receive(self, server: str, conn_id: int, mid: int, op: int, seq: int, body: bytes, *,
                      key: str = "", room_id: str = "", platform: str = "") -> bytes: ...
    async def renew_online(self, server: str, rooms: dict, conns: int, ips: int, addr: str = "",
                           draining: bool = False) -> dict[str, int]: ...
    async def room_event(self, server: str, conn_id: int, mid: int, action: str, room_id: str) -> None: ...
    async def restore(self, server: str, epoch: str, sessions: list, done: bool) -> None: ...


class ProxyAPI:
    """What push calls on a proxy: the proxy object itself in one process, an RPC client in a cluster.

    Every implementation answers the awaitable methods. One in this process (``nowait`` True) also
    delivers at once through the ``*_nowait`` methods, which the awaitable ones then call; the embedded
    node's push uses those. Each returns how many connections the push was queued for.
    """

    server_id: str
    nowait = False

    async def push_conns(self, conn_ids: list[int], op: int, body: bytes) -> int:
        """To connections of this proxy (``conn_ids``), filtered by each one's accepted operations."""
        return self.push_conns_nowait(conn_ids, op, body)

    async def push_room(self, room_id: str, op: int, body: bytes) -> int:
        """To every member of a room here."""
        return self.push_room_nowait(room_id, op, body)

    async def push_room_batch(self, room_id: str, frames: bytes) -> int:
        """To every member of a room here: goim frames already encoded, back to back."""
        return self.push_room_batch_nowait(room_id, frames)

    async def push_all(self, op: int, body: bytes, speed: int = 0) -> int:
        """To every connection here; ``speed`` caps connections per second (0: at once)."""
        return self.push_all_nowait(op, body, speed)

    def push_conns_nowait(self, conn_ids: list[int], op: int, body: bytes) -> int:
        raise NotImplementedError(f"{type(self).__name__} delivers only through the awaitable methods")

    def push_room_nowait(self, room_id: str, op: int, body: bytes) -> int:
        raise NotImplementedError(f"{type(self).__name__} delivers only through the awaitable methods")

    def push_room_batch_nowait(self, room_id: str, frames: bytes) -> int:
        raise NotImplementedError(f"{type(self).__name__} delivers only through the awaitable methods")

    def push_all_nowait(self, op: int, body: bytes, speed: int = 0) -> int:
        raise NotImplementedError(f"{type(self).__name__} delivers only through the awaitable methods")
