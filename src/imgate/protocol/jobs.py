"""Push jobs: what logic hands to push (over the in-process bus, or Kafka in the cluster), and their
bytes on the Kafka bus (``PushJobMsg``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from imgate.protocol import imgate_pb2 as pb

KIND_CONNS = "conns"  # to connections on one proxy (logic resolved keys/mids to servers)
KIND_ROOM = "room"    # to every member of a room, on every proxy that has it
KIND_ALL = "all"      # to every connection
KIND_JOIN = "join"    # connections on one proxy join room_id (the IM service: a large group's members)
KIND_LEAVE = "leave"  # connections on one proxy leave room_id
# rooms of this kind are joined and left by the server only (imgate.im: "im://g:G" of group G)
IM_ROOM_PREFIX = "im://"


@dataclass(slots=True)
class PushJob:
    kind: str
    op: int
    body: bytes
    server: str = ""                                  # KIND_CONNS/JOIN/LEAVE: the proxy holding the conns
    conn_ids: list[int] = field(default_factory=list)  # KIND_CONNS/JOIN/LEAVE
    room_id: str = ""                                 # KIND_ROOM/JOIN/LEAVE
    speed: int = 0                                    # KIND_ALL: connections per second, 0 = unlimited

    def ordering_key(self) -> str:
        """Jobs with the same key must be delivered in order (one user's or one room's pushes)."""
        if self.kind in (KIND_ROOM, KIND_JOIN, KIND_LEAVE):  # a join comes before the room's next push
            return "room:" + self.room_id
        if self.kind == KIND_CONNS:
            return "server:" + self.server
        return "all"


_KINDS = (KIND_CONNS, KIND_ROOM, KIND_ALL, KIND_JOIN, KIND_LEAVE)


def encode_job(job: PushJob) -> bytes:
    """A PushJob as the bytes of a Kafka message (``PushJobMsg``)."""
    return pb.PushJobMsg(kind=job.kind, op=job.op, body=bytes(job.body), server=job.server,
                         conn_ids=job.conn_ids, room_id=job.room_id, speed=job.speed).SerializeToString()


def decode_job(data: bytes) -> PushJob:
    """The inverse of :func:`encode_job`; ValueError for bytes that are not a valid job."""
    try:
        m = pb.PushJobMsg.FromString(data)
    except DecodeError as e:
        raise ValueError(f"undecodable push job: {e}") from None
    if m.kind not in _KINDS:
        raise ValueError(f"push job kind must be one of {', '.join(_KINDS)}, got {m.kind!r}")
    return PushJob(m.kind, m.op, m.body, server=m.server, conn_ids=list(m.conn_ids), room_id=m.room_id,
                   speed=m.speed)
