"""Push jobs: what logic hands to push (over the in-process bus, or Kafka in the cluster)."""

from __future__ import annotations

from dataclasses import dataclass, field

KIND_CONNS = "conns"  # to connections on one proxy (logic resolved keys/mids to servers)
KIND_ROOM = "room"    # to every member of a room, on every proxy that has it
KIND_ALL = "all"      # to every connection


@dataclass
class PushJob:
    kind: str
    op: int
    body: bytes
    server: str = ""                                  # KIND_CONNS: the proxy holding the conns
    conn_ids: list[int] = field(default_factory=list)  # KIND_CONNS
    room_id: str = ""                                 # KIND_ROOM
    speed: int = 0                                    # KIND_ALL: connections per second, 0 = unlimited

    def ordering_key(self) -> str:
        """Jobs with the same key must be delivered in order (one user's or one room's pushes)."""
        if self.kind == KIND_ROOM:
            return "room:" + self.room_id
        if self.kind == KIND_CONNS:
            return "server:" + self.server
        return "all"
