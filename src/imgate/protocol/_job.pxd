# The push job's layout (imgate.protocol._job): Cython code of the push path may cimport it.

cdef class PushJob:
    cdef public object kind
    cdef public object op
    cdef public object body
    cdef public object server
    cdef public object conn_ids
    cdef public object room_id
    cdef public object speed

    cdef tuple _fields(self)


# PushJob(KIND_CONNS, op, body, server, conn_ids), made without interpreted code
cdef PushJob conns_job(object op, object body, object server, list conn_ids)
