# Public Cython contract of the room connection table (imgate._core.room), the proxy's hot path.
#
# Ownership: the table holds a strong reference to every Conn (in `_conns`) and every non-empty Room
# (in `_rooms`). Rooms and conns point at each other with borrowed pointers; a conn leaves all its
# rooms before the table drops it, and a room is dropped only when empty, so no pointer dangles.

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
    # the coarse clock (ms) at its last write made at once (RoomTable.send_user)
    cdef unsigned int direct_ms

    cdef bint accepts_op(self, int op) noexcept


cdef class Room:
    cdef readonly object room_id
    cdef void** members        # borrowed Conn pointers
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef Py_ssize_t n_ws       # members that need WebSocket framing


cdef class RoomTable:
    cdef object _loop
    cdef dict _conns
    cdef dict _rooms
    cdef dict _users           # user -> its Conn, or a list of them (RoomTable.set_user / send_users)
    cdef dict _batches         # room id -> frames pushed to it since the last release (push_room)
    cdef Py_ssize_t _max_pending
    cdef Py_ssize_t _max_rooms_per_conn
    cdef double _merge_window
    cdef object _on_overflow
    cdef object _on_error
    cdef object _flush_handle
    cdef bint _flush_scheduled
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

    # send_users([user], data, op) without a list or a Python call: for compiled callers
    cdef Py_ssize_t send_user(self, object user, bytes data, int op) except -1

    cdef Conn _get(self, object conn_id)
    cdef int _queue(self, Conn c, bytes data) except -1
    cdef bytes _queue_kind(self, Conn c, bytes raw, bytes ws, object ws_data)
    cdef bytes _queue_held(self, object held, bytes raw, bytes ws, object ws_data, int op, Py_ssize_t* count)
    cdef int _flush_conn(self, Conn c) except -1
    cdef int _write_fresh(self, Py_ssize_t first) except -1
    cdef int _flush_transport(self, Conn c) except -1
    cdef int _schedule(self) except -1
    cdef int _release_batches(self) except -1
    cdef Py_ssize_t _broadcast_room(self, Room r, bytes raw, object ws_data, int op) except -1
    cdef int _report(self) except -1
    cdef int _unlink(self, Conn c, Room r, Py_ssize_t slot_i) except -1
    cdef int _drop_output(self, Conn c) except -1
    cdef int _drop_unsent(self, Conn c) except -1
    cdef int _unschedule(self, Conn c) except -1
    cdef int _unset_user(self, Conn c) except -1
