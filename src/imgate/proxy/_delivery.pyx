"""Delivery's push to connections, compiled: every unicast and multicast of this proxy takes it.
``Delivery`` binds it as its ``push_conns_nowait`` method (``ProxyAPI``'s)."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from imgate._core.frame cimport frame_pack

from imgate.core import encode_frame


cdef object _frame(int op, object body):
    if type(body) is bytes:  # the usual body: one allocation, no call
        return frame_pack(op, 0, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), 1)
    return encode_frame(op, 0, body)


def push_conns_nowait(self, conn_ids, int op, body):
    """Unicast/multicast to connections of this proxy, filtered by each one's accepted ops."""
    cdef dict counters = self.stats_counters
    cdef dict by_conn_id = self._by_conn_id
    cdef Py_ssize_t n
    counters["pushes"] += 1
    if len(conn_ids) == 1:  # the usual unicast: no list to build
        ch = by_conn_id.get(conn_ids[0])
        if ch is None:
            return 0
        n = self.table.send_many((ch,), _frame(op, body), op)
        if not n:
            counters["drops"] += 1
        return n
    cdef list chs = []
    for cid in conn_ids:
        ch = by_conn_id.get(cid)
        if ch is not None:
            chs.append(ch)
    if not chs:
        return 0
    n = self.table.send_many(chs, _frame(op, body), op)
    counters["drops"] += len(chs) - n
    return n
