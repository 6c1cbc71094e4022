# A proxy's push to its connections (imgate.proxy._delivery), for the embedded node's compiled unicast.

from imgate._core.room cimport RoomTable


cdef class ConnsDelivery:
    cdef dict by_conn_id            # the proxy's conn id -> channel (shared, not copied)
    cdef readonly dict conns        # conn id -> the table's Conn of that channel (bind / unbind)
    cdef RoomTable table            # the proxy's room table
    cdef public unsigned long long pushes  # counted since the last settle()
    cdef public unsigned long long drops

    cdef Py_ssize_t push_one(self, object conn_id, int op, object body) except -1
