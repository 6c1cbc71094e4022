"""The push job and its kinds, compiled: logic makes one for every push (the embedded node's unicast
included), so it is one allocation with its fields in the object, made without interpreted code. Its
bytes on the Kafka bus are :mod:`imgate.protocol.jobs`'."""

KIND_CONNS = "conns"  # to connections on one proxy (logic resolved keys/mids to servers)
KIND_ROOM = "room"    # to every member of a room, on every proxy that has it
KIND_ALL = "all"      # to every connection
KIND_JOIN = "join"    # connections on one proxy join room_id (the IM service: a large group's members)
KIND_LEAVE = "leave"  # connections on one proxy leave room_id


cdef class PushJob:
    """What logic hands to push: ``kind`` (``jobs.KIND_*``), the push operation and its body, and the
    target: ``server`` + ``conn_ids`` (conns, join, leave), ``room_id`` (room, join, leave) or
    ``speed`` (all: connections per second, 0 = unlimited)."""

    def __init__(self, kind, op, body, server="", conn_ids=None, room_id="", speed=0):
        self.kind = kind
        self.op = op
        self.body = body
        self.server = server
        self.conn_ids = [] if conn_ids is None else conn_ids
        self.room_id = room_id
        self.speed = speed

    cdef tuple _fields(self):
        return (self.kind, self.op, self.body, self.server, self.conn_ids, self.room_id, self.speed)

    def __eq__(self, other):
        if type(other) is not PushJob:
            return NotImplemented
        return self._fields() == (<PushJob>other)._fields()

    __hash__ = None  # mutable, compared by value

    def __repr__(self):
        return ("PushJob(kind=%r, op=%r, body=%r, server=%r, conn_ids=%r, room_id=%r, speed=%r)"
                % self._fields())

    def ordering_key(self):
        """Jobs with the same key must be delivered in order (one user's or one room's pushes)."""
        if self.kind == KIND_ROOM or self.kind == KIND_JOIN or self.kind == KIND_LEAVE:
            return "room:" + self.room_id  # a join comes before the room's next push
        if self.kind == KIND_CONNS:
            return "server:" + self.server
        return "all"


cdef PushJob conns_job(object op, object body, object server, list conn_ids):
    """``PushJob(KIND_CONNS, op, body, server, conn_ids)`` without the call: a unicast's job."""
    cdef PushJob job = PushJob.__new__(PushJob)
    job.kind = KIND_CONNS
    job.op = op
    job.body = body
    job.server = server
    job.conn_ids = conn_ids
    job.room_id = ""
    job.speed = 0
    return job
