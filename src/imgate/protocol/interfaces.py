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


class LogicAPI(Protocol):
    """What a proxy calls on logic: the Logic object itself in one process, an RPC client in a cluster."""

    async def connect(self, server: str, body: bytes) -> Connected: ...
    async def disconnect(self, server: str, conn_id: int, mid: int) -> None: ...
    async def heartbeat(self, server: str, conn_id: int, mid: int) -> bool: ...
    async def receive(self, server: str, conn_id: int, mid: int, op: int, seq: int, body: bytes) -> bytes: ...
    async def renew_online(self, server: str, rooms: dict, conns: int, ips: int) -> None: ...


class ProxyAPI(Protocol):
    """What push calls on a proxy: the proxy object itself in one process, an RPC client in a cluster."""

    server_id: str

    def push_conns(self, conn_ids: list[int], op: int, body: bytes) -> int: ...
    def push_room(self, room_id: str, op: int, body: bytes) -> int: ...
    def push_all(self, op: int, body: bytes, speed: int = 0) -> int: ...
