"""Push jobs: what logic hands to push (over the in-process bus, or Kafka in the cluster; the job and
its kinds are compiled, in ``_job.pyx``), and their bytes on the Kafka bus (``PushJobMsg``)."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from imgate.protocol import imgate_pb2 as pb
from imgate.protocol._job import KIND_ALL, KIND_CONNS, KIND_JOIN, KIND_LEAVE, KIND_ROOM, PushJob

# rooms of this kind are joined and left by the server only (imgate.im: "im://g:G" of group G)
IM_ROOM_PREFIX = "im://"


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
