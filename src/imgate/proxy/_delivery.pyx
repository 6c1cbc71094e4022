"""Delivery's push to connections, compiled: every unicast and multicast of this proxy takes it.

A proxy owns one :class:`ConnsDelivery`; ``Delivery.push_conns_nowait`` (``ProxyAPI``'s) calls it, and
the embedded node's unicast (``imgate.logic._push.UnicastPath``) calls its C method ``push_one`` for
the proxy it found, so its pushes and drops are counted here, in C, and added to the proxy's
``stats_counters`` when its stats are read (:meth:`ConnsDelivery.settle`). ``push_packed_nowait``
delivers a worker's packed pushes (``imgate.rpc.packed``), counting in ``stats_counters``."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from imgate._core.frame cimport frame_pack
from imgate._core.output cimport Conn
from imgate._core.room cimport RoomTable

from imgate.core import encode_frame


cdef bytes _frame(int op, object body):
    if type(body) is bytes:  # the usual body: one allocation, no call
        return frame_pack(op, 0, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), 1)
    return encode_frame(op, 0, body)


cdef class ConnsDelivery:
    """Pushes to connections of one proxy: its conn id -> channel map and its room table."""

    def __init__(self, dict by_conn_id not None, RoomTable table not None):
        self.by_conn_id = by_conn_id
        self.table = table
        self.conns = {}

    def bind(self, conn_id, ch):
        """``conn_id`` is now the authenticated connection ``ch`` (in the table): a unicast to it
        finds the table's connection in one lookup (not channel, then table entry: two cold ones)."""
        self.conns[conn_id] = self.table._get(ch)

    def unbind(self, conn_id):
        """``conn_id`` is gone (the proxy forgot its channel)."""
        self.conns.pop(conn_id, None)

    cdef Py_ssize_t push_one(self, object conn_id, int op, object body) except -1:
        """A unicast to one connection: 1 when queued, 0 when it is gone or does not take ``op``."""
        cdef Py_ssize_t n
        self.pushes += 1
        co = self.conns.get(conn_id)
        if co is None:
            return 0
        n = self.table.send_conn(<Conn>co, _frame(op, body), op)
        if not n:
            self.drops += 1
        return n

    def push_conns(self, conn_ids, int op, body):
        """Unicast/multicast to connections of this proxy, filtered by each one's accepted ops."""
        cdef Py_ssize_t n
        cdef list chs
        if type(conn_ids) is list and len(<list>conn_ids) == 1:  # the usual unicast
            return self.push_one((<list>conn_ids)[0], op, body)
        self.pushes += 1
        chs = []
        for cid in conn_ids:
            ch = self.by_conn_id.get(cid)
            if ch is not None:
                chs.append(ch)
        if not chs:
            return 0
        n = self.table.send_many(chs, _frame(op, body), op)
        self.drops += len(chs) - n
        return n

    def settle(self, dict counters not None):
        """Add the pushes and drops counted since the last call to ``counters`` (the proxy's)."""
        counters["pushes"] += self.pushes
        counters["drops"] += self.drops
        self.pushes = self.drops = 0


def push_conns_nowait(self, conn_ids, int op, body):
    """``ProxyAPI.push_conns_nowait`` of a Proxy: its :class:`ConnsDelivery`'s."""
    return (<ConnsDelivery?>self.conns_delivery).push_conns(conn_ids, op, body)


cdef inline uint32_t _u32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline int64_t _i64(const unsigned char* p) noexcept nogil:
    return <int64_t>((<uint64_t>_u32(p) << 32) | <uint64_t>_u32(p + 4))


def push_packed_nowait(self, data):
    """Every push of a ``PUSH_CONNS_PACKED`` body (layout: imgate.rpc.packed), in order, as
    ``push_conns_nowait`` would deliver each; the body is checked whole first (ValueError: nothing
    delivered). Returns the connections the pushes were queued for."""
    cdef const unsigned char[:] view = data
    cdef const unsigned char* p = &view[0] if view.shape[0] else NULL
    cdef Py_ssize_t end = view.shape[0], pos = 0, need, n, i, pushes = 0
    cdef uint32_t size
    while pos < end:  # check: a malformed body is refused whole, never half delivered
        if end - pos < 4:
            raise ValueError(f"packed pushes: {end - pos} stray bytes at offset {pos}")
        n = _u32(p + pos)
        need = 4 + 8 * n + 8
        if n == 0 or end - pos < need:
            raise ValueError(f"packed pushes: a push at offset {pos} names {n} connections "
                             f"and has {end - pos} bytes left")
        size = _u32(p + pos + need - 4)
        if end - pos - need < size:
            raise ValueError(f"packed pushes: a body of {size} bytes at offset {pos + need} has "
                             f"{end - pos - need} left")
        pos += need + size
        pushes += 1
    cdef dict counters = self.stats_counters
    cdef dict by_conn_id = self._by_conn_id
    cdef list chs
    cdef Py_ssize_t sent = 0, k, body_at
    cdef int op
    table = self.table
    counters["pushes"] += pushes
    pos = 0
    while pos < end:
        n = _u32(p + pos)
        op = <int32_t>_u32(p + pos + 4 + 8 * n)
        size = _u32(p + pos + 8 + 8 * n)
        body_at = pos + 4 + 8 * n + 8
        if n == 1:  # the usual unicast: no list to build
            ch = by_conn_id.get(_i64(p + pos + 4))
            chs = None if ch is None else [ch]
        else:
            chs = []
            for i in range(n):
                ch = by_conn_id.get(_i64(p + pos + 4 + 8 * i))
                if ch is not None:
                    chs.append(ch)
        pos = body_at + size
        if not chs:
            continue
        k = table.send_many(chs, frame_pack(op, 0, <const char*>(p + body_at), size, 1), op)
        counters["drops"] += len(chs) - k
        sent += k
    return sent
