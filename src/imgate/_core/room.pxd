# Public Cython contract of the room connection table (imgate._core.room), the proxy's hot path.
#
# Ownership: the table holds a strong reference to every Conn (in `_conns`) and every non-empty Room
# (in `_rooms`). Rooms and conns point at each other with borrowed pointers; a conn leaves all its
# rooms before the table drops it, and a room is dropped only when empty, so no pointer dangles.
# Connections and their output queues are declared in output.pxd.

from imgate._core.output cimport Conn, OutputTable


cdef class Room:
    cdef readonly object room_id
    cdef void** members        # borrowed Conn pointers
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef Py_ssize_t n_ws       # members that need WebSocket framing


cdef class RoomTable(OutputTable):
    cdef dict _rooms
    cdef dict _users           # user -> its Conn, or a list of them (RoomTable.set_user / send_users)
    cdef dict _batches         # room id -> frames pushed to it since the last release (push_room)
    cdef Py_ssize_t _max_rooms_per_conn

    cdef Py_ssize_t send_one(self, object conn_id, bytes raw, int op) except -1
    cdef Py_ssize_t send_conn(self, Conn c, bytes raw, int op) except -1
    cdef bytes _queue_held(self, object held, bytes raw, bytes ws, object ws_data, int op, Py_ssize_t* count)
    cdef int _unlink(self, Conn c, Room r, Py_ssize_t slot_i) except -1
    cdef int _unset_user(self, Conn c) except -1
    cdef int _release_batches(self) except -1
    cdef Py_ssize_t _broadcast_room(self, Room r, bytes raw, object ws_data, int op) except -1
