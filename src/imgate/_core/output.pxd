# Public Cython contract of the room table's output side (imgate._core.output): connections and their
# bounded queues. Ownership: the table holds a strong reference to every Conn (in `_conns`).

cdef enum ConnKind:
    KIND_STREAM = 0      # raw socket: payloads are written as they are (goim over TCP)
    KIND_WEBSOCKET = 1   # raw socket: each payload goes out as one binary WebSocket message
    KIND_TRANSPORT = 2   # an asyncio transport (e.g. TLS): output goes through transport.write()


cdef struct RoomSlot:
    void* room           # borrowed Room
    Py_ssize_t index     # this conn's position in room.members


cdef class Conn:
    cdef readonly object conn_id
    cdef object sock           # keeps the socket object alive while registered
    cdef object transport      # KIND_TRANSPORT only
    cdef int fd
    cdef int kind
    cdef bint ws_framing       # wrap payloads in WebSocket frames
    cdef bint dirty            # queued in the table's dirty list
    cdef bint writer_armed     # loop.add_writer() is registered for fd
    cdef bint dead             # overflowed or failed: nothing more is queued
    # pending output: strong refs to bytes objects, out[head:n], first one written up to head_off
    cdef void** out
    cdef Py_ssize_t out_head
    cdef Py_ssize_t out_n
    cdef Py_ssize_t out_cap
    cdef Py_ssize_t head_off
    cdef Py_ssize_t pending
    # room memberships
    cdef RoomSlot* slots
    cdef Py_ssize_t n_slots
    cdef Py_ssize_t slots_cap
    # accepted push operations (sorted); NULL = every operation
    cdef int* accepts
    cdef Py_ssize_t n_accepts
    # the user this connection belongs to (RoomTable.set_user), None when not set
    cdef object user
    # the coarse clock (ms) at its last write made at once (OutputTable._write_fresh)
    cdef unsigned int direct_ms

    cdef bint accepts_op(self, int op) noexcept


cdef class OutputTable:
    cdef object _loop
    cdef dict _conns
    cdef Py_ssize_t _max_pending
    cdef double _merge_window
    cdef object _on_overflow
    cdef object _on_error
    cdef object _flush_handle
    cdef bint _flush_scheduled
    cdef bint _held             # a subclass holds output back until the flush (_release_held)
    cdef void** _dirty         # borrowed Conn pointers with queued output (each once)
    cdef Py_ssize_t _n_dirty
    cdef Py_ssize_t _dirty_cap
    cdef char* _scratch         # table-wide staging for coalesced small writes
    cdef list _overflowed      # conn ids to report after the current walk
    cdef list _failed          # (conn id, OSError) to report after the current walk
    cdef readonly unsigned long long frames_out
    cdef readonly unsigned long long bytes_out
    cdef readonly unsigned long long overflows
    cdef readonly unsigned long long write_calls

    cdef Conn _get(self, object conn_id)
    cdef int _release_held(self) except -1
    cdef int _queue(self, Conn c, bytes data) except -1
    cdef bytes _queue_kind(self, Conn c, bytes raw, bytes ws, object ws_data)
    cdef int _flush_conn(self, Conn c) except -1
    cdef int _write_fresh(self, Py_ssize_t first) except -1
    cdef int _finish_unicast(self, Py_ssize_t first, Py_ssize_t count) except -1
    cdef int _flush_transport(self, Conn c) except -1
    cdef int _schedule(self) except -1
    cdef int _report(self) except -1
    cdef int _drop_output(self, Conn c) except -1
    cdef int _drop_unsent(self, Conn c) except -1
    cdef int _unschedule(self, Conn c) except -1


# One binary WebSocket message carrying raw, in one allocation.
cdef bytes ws_wrap(bytes raw)

# Double a pointer array's capacity (first entries when it has none).
cdef int grow(void*** array, Py_ssize_t* cap, Py_ssize_t first) except -1


cdef inline bytes as_bytes(object data):
    if type(data) is bytes:
        return <bytes>data
    if isinstance(data, str):
        return (<str>data).encode("utf-8")
    return bytes(data)
