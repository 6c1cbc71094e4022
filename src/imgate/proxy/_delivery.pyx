"""Delivery's push to connections, compiled: every unicast and multicast of this proxy takes it.

A proxy owns one :class:`ConnsDelivery`; ``Delivery.push_conns_nowait`` (``ProxyAPI``'s) calls it, and
the embedded node's unicast (``imgate.logic._push.UnicastPath``) calls its C method ``push_one`` for
the proxy it found, so its pushes and drops are counted here, in C, and added to the proxy's
``stats_counters`` when its stats are read (:meth:`ConnsDelivery.settle`)."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from imgate._core.frame cimport frame_pack
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

    cdef Py_ssize_t push_one(self, object conn_id, int op, object body) except -1:
        """A unicast to one connection: 1 when queued, 0 when it is gone or does not take ``op``."""
        cdef Py_ssize_t n
        self.pushes += 1
        ch = self.by_conn_id.get(conn_id)
        if ch is None:
            return 0
        n = self.table.send_one(ch, _frame(op, body), op)
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
