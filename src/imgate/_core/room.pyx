"""Room connection table: the proxy's hot path. This file is membership and the sends; the output
queues (one per connection, bounded, written once per loop iteration) are :mod:`imgate._core.output`.

Connections are registered with an id and the socket the table may write to. Rooms map to C arrays of
members, so a broadcast walks its room in C: per member it only takes a reference to the frame that was
encoded once for its transport kind and appends it to the member's queue. Room pushes (`push_room`)
gather per room into one op-9 batch until the flush, or until anything else is queued for a
connection, whichever comes first: so every connection gets what was pushed to it in the order it was
pushed.
"""

cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free

from .includes.debug cimport IMGATE_DEBUG, IMGATE_ASSERT
from .frame cimport frame_pack
from .output cimport (
    KIND_STREAM, KIND_TRANSPORT, KIND_WEBSOCKET, Conn, OutputTable, RoomSlot, as_bytes, grow, ws_wrap,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from imgate._core.output import DEF_MAX_PENDING

cdef enum:
    OP_BATCH = 9            # goim's raw op: a body of whole frames


@cython.final
cdef class Room:
    """A room's members as a C array; O(1) join and leave by swap-remove."""

    def __dealloc__(self):
        PyMem_Free(self.members)


@cython.final
cdef class RoomTable(OutputTable):
    """Connections, rooms, users and the sends, over :class:`~imgate._core.output.OutputTable`'s
    coalesced, bounded output. See docs/core.md."""

    def __init__(self, loop=None, *, Py_ssize_t max_pending=DEF_MAX_PENDING, double merge_window=0.0,
                 Py_ssize_t max_rooms_per_conn=64, on_overflow=None, on_error=None):
        if max_rooms_per_conn <= 0:
            raise ValueError(f"max_rooms_per_conn must be positive, got {max_rooms_per_conn}")
        OutputTable.__init__(self, loop, max_pending=max_pending, merge_window=merge_window,
                             on_overflow=on_overflow, on_error=on_error)
        self._rooms = {}
        self._users = {}
        self._batches = {}
        self._max_rooms_per_conn = max_rooms_per_conn

    def stats(self):
        """Counters for metrics."""
        return dict(OutputTable.stats(self), rooms=len(self._rooms))

    # ------------------------------------------------------------------ registration



    def add(self, conn_id, sock, *, bint websocket=False):
        """Register a connection whose socket the table writes to directly.

        `sock` is a connected stream socket (socket object or file descriptor) that the caller owns and
        keeps open until `remove(conn_id)`. With `websocket=True` each payload is sent as one binary
        WebSocket message. Writes never block: output waits in the connection's bounded queue.
        """
        cdef Conn c = self._new_conn(conn_id)
        c.fd = sock if isinstance(sock, int) else sock.fileno()
        if c.fd < 0:
            raise ValueError(f"socket for connection {conn_id!r} is closed")
        c.sock = sock
        c.kind = KIND_WEBSOCKET if websocket else KIND_STREAM
        c.ws_framing = websocket
        self._conns[conn_id] = c

    def add_transport(self, conn_id, transport, *, bint websocket=False):
        """Register a connection served by an asyncio transport (TLS, or a gateway's own protocol).

        Output is still coalesced per loop iteration and bounded (queue plus the transport's buffer),
        but goes out through `transport.write()`: one Python call per connection per flush.
        """
        cdef Conn c = self._new_conn(conn_id)
        c.fd = -1
        c.transport = transport
        c.kind = KIND_TRANSPORT
        c.ws_framing = websocket
        self._conns[conn_id] = c


    def _new_conn(self, conn_id):
        if conn_id in self._conns:
            raise KeyError(f"connection {conn_id!r} is already registered")
        cdef Conn c = Conn.__new__(Conn)
        c.conn_id = conn_id
        return c

    def remove(self, conn_id):
        """Unregister a connection: it leaves every room and its queued output is dropped.

        The socket is not closed; the caller closes it afterwards. Returns False if unknown.
        """
        c = self._conns.get(conn_id)
        if c is None:
            return False
        cdef Conn conn = <Conn>c
        while conn.n_slots:
            self._unlink(conn, <Room>conn.slots[conn.n_slots - 1].room, conn.n_slots - 1)
        self._unset_user(conn)
        return OutputTable.remove(self, conn_id)

    # ------------------------------------------------------------------ users

    def set_user(self, conn_id, user):
        """Name the user the connection belongs to (None: none), for :meth:`send_users`. A user may
        have several connections; a connection has at most one user."""
        cdef Conn c = self._get(conn_id)
        self._unset_user(c)
        if user is not None:
            # a user's one connection is stored as it is, several as a list: most users have one,
            # and a list each would cost idle connections ~90 bytes
            held = self._users.get(user)
            if held is None:
                self._users[user] = c
            elif type(held) is Conn:
                self._users[user] = [held, c]
            else:
                (<list>held).append(c)
            c.user = user

    cdef int _unset_user(self, Conn c) except -1:
        if c.user is None:
            return 0
        held = self._users[c.user]
        if type(held) is Conn:
            del self._users[c.user]
        else:
            (<list>held).remove(c)
            if len(<list>held) == 1:
                self._users[c.user] = (<list>held)[0]
        c.user = None
        return 0

    def user_of(self, conn_id):
        """The connection's user, None when not set."""
        return self._get(conn_id).user

    def user_conns(self, user):
        """The ids of the user's connections."""
        held = self._users.get(user)
        if held is None:
            return []
        if type(held) is Conn:
            return [(<Conn>held).conn_id]
        return [(<Conn>c).conn_id for c in <list>held]

    def users(self):
        """How many users have a connection here."""
        return len(self._users)

    def send_users(self, users, data, int op=-1, ws_data=None):
        """Queue `data` for every connection of each of `users` (each connection once) whose accepted
        operations include `op`, encoded once per transport kind. Returns how many connections. Like
        :meth:`send_many`, what finds a connection with nothing queued is written at once."""
        cdef bytes raw = as_bytes(data)
        cdef bytes ws = None
        cdef Py_ssize_t count = 0, first
        cdef set seen = None
        if self._held:
            self._release_batches()
        first = self._n_dirty
        if len(users) > 1:
            seen = set()
            users = [u for u in users if not (u in seen or seen.add(u))]
        for user in users:
            held = self._users.get(user)
            if held is not None:
                ws = self._queue_held(held, raw, ws, ws_data, op, &count)
        self._finish_unicast(first, count)
        return count



    cdef bytes _queue_held(self, object held, bytes raw, bytes ws, object ws_data, int op,
                           Py_ssize_t* count):
        """Queue for a user's connections (``held``: a Conn or a list of them) that accept ``op``,
        adding them to ``count``; returns the WebSocket message as :meth:`_queue_kind` does."""
        cdef Conn c
        cdef list several = None
        cdef Py_ssize_t i, n = 1
        if type(held) is not Conn:
            several = <list>held
            n = len(several)
        for i in range(n):
            c = <Conn>(held if several is None else several[i])
            if c.dead or not c.accepts_op(op):
                continue
            ws = self._queue_kind(c, raw, ws, ws_data)
            count[0] += 1
        return ws

    # ------------------------------------------------------------------ rooms

    def join(self, conn_id, room_id):
        """Add the connection to a room. Returns False if it was already a member."""
        cdef Conn c = self._get(conn_id)
        cdef Room r
        cdef Py_ssize_t i
        cdef RoomSlot* slots
        ro = self._rooms.get(room_id)
        if ro is not None:
            r = <Room>ro
            for i in range(c.n_slots):
                if c.slots[i].room == <void*>r:
                    return False
        if c.n_slots >= self._max_rooms_per_conn:
            raise ValueError(
                f"connection {conn_id!r} is already in {c.n_slots} rooms (max_rooms_per_conn)")
        if ro is None:
            r = Room.__new__(Room)
            r.room_id = room_id
            self._rooms[room_id] = r
        if r.n == r.cap:
            grow(&r.members, &r.cap, 8)
        if c.n_slots == c.slots_cap:
            slots = <RoomSlot*>PyMem_Realloc(c.slots, (c.slots_cap * 2 if c.slots_cap else 1) * sizeof(RoomSlot))
            if slots is NULL:
                raise MemoryError()
            c.slots = slots
            c.slots_cap = c.slots_cap * 2 if c.slots_cap else 1
        r.members[r.n] = <void*>c
        c.slots[c.n_slots].room = <void*>r
        c.slots[c.n_slots].index = r.n
        c.n_slots += 1
        r.n += 1
        if c.ws_framing:
            r.n_ws += 1
        return True

    def leave(self, conn_id, room_id):
        """Remove the connection from a room. Returns False if it was not a member."""
        cdef Conn c = self._get(conn_id)
        cdef Py_ssize_t i
        ro = self._rooms.get(room_id)
        if ro is None:
            return False
        for i in range(c.n_slots):
            if c.slots[i].room == <void*>ro:
                self._unlink(c, <Room>ro, i)
                return True
        return False

    def move(self, conn_id, old_room, new_room):
        """Leave `old_room` (if a member; None for none) and join `new_room` (goim's change room)."""
        self._get(conn_id)
        if old_room is not None and old_room != new_room:
            self.leave(conn_id, old_room)
        if new_room is not None:
            self.join(conn_id, new_room)

    cdef int _unlink(self, Conn c, Room r, Py_ssize_t slot_i) except -1:
        cdef Py_ssize_t idx = c.slots[slot_i].index
        cdef Py_ssize_t last = r.n - 1
        cdef Conn moved
        cdef Py_ssize_t j
        if IMGATE_DEBUG:
            IMGATE_ASSERT(r.members[idx] == <void*>c)
        if idx != last:
            # swap-remove: the last member takes the freed place; fix its slot for this room
            moved = <Conn>r.members[last]
            r.members[idx] = <void*>moved
            for j in range(moved.n_slots):
                if moved.slots[j].room == <void*>r:
                    moved.slots[j].index = idx
                    break
        r.n = last
        if c.ws_framing:
            r.n_ws -= 1
        c.n_slots -= 1
        if slot_i != c.n_slots:
            c.slots[slot_i] = c.slots[c.n_slots]
        if c.n_slots == 0 and c.slots_cap > 4:
            PyMem_Free(c.slots)
            c.slots = NULL
            c.slots_cap = 0
        if r.n == 0:
            del self._rooms[r.room_id]
        return 0

    def room_count(self, room_id):
        """Members of a room (0 for an unknown room)."""
        ro = self._rooms.get(room_id)
        return 0 if ro is None else (<Room>ro).n

    def room_members(self, room_id):
        """Ids of the room's members."""
        ro = self._rooms.get(room_id)
        if ro is None:
            return []
        cdef Room r = <Room>ro
        cdef Py_ssize_t i
        return [(<Conn>r.members[i]).conn_id for i in range(r.n)]

    def rooms(self):
        """{room_id: online count} for every non-empty room."""
        return {room_id: (<Room>r).n for room_id, r in self._rooms.items()}

    def rooms_of(self, conn_id):
        """Rooms the connection is in, in no particular order."""
        cdef Conn c = self._get(conn_id)
        cdef Py_ssize_t i
        return [(<Room>c.slots[i].room).room_id for i in range(c.n_slots)]

    def connections(self):
        """Ids of every registered connection."""
        return list(self._conns)

    def set_accepts(self, conn_id, ops):
        """Restrict the push operations the connection receives (None: all of them).

        Applies to sends and broadcasts given an `op`; sends with op=-1 are never filtered.
        """
        cdef Conn c = self._get(conn_id)
        cdef list values
        cdef int* arr
        cdef Py_ssize_t i
        if ops is None:
            PyMem_Free(c.accepts)
            c.accepts = NULL
            c.n_accepts = 0
            return
        values = sorted({int(op) for op in ops})
        arr = <int*>PyMem_Malloc((len(values) or 1) * sizeof(int))
        if arr is NULL:
            raise MemoryError()
        for i in range(len(values)):
            arr[i] = values[i]
        PyMem_Free(c.accepts)
        c.accepts = arr
        c.n_accepts = len(values)

    def accepts(self, conn_id):
        """The accepted operations, or None when every operation is accepted."""
        cdef Conn c = self._get(conn_id)
        cdef Py_ssize_t i
        if c.accepts is NULL:
            return None
        return [c.accepts[i] for i in range(c.n_accepts)]

    # ------------------------------------------------------------------ output


    def send(self, conn_id, data, int op=-1, ws_data=None):
        """Queue `data` for one connection. Returns False if it was filtered out or dropped.

        `ws_data`, when given, is what a WebSocket connection gets instead of `data` (goim sends an
        op-9 batch as its inner frames over TCP but as one op-9 frame over WebSocket).
        """
        cdef Conn c = self._get(conn_id)
        cdef bytes raw = as_bytes(data)
        if self._held:
            self._release_batches()
        if c.dead or not c.accepts_op(op):
            return False
        self._queue(c, ws_wrap(raw if ws_data is None else as_bytes(ws_data)) if c.ws_framing else raw)
        self._schedule()
        self._report()
        return not c.dead

    def send_raw(self, conn_id, data):
        """Queue bytes exactly as given, even for a WebSocket connection (its own control frames)."""
        cdef Conn c = self._get(conn_id)
        if self._held:
            self._release_batches()
        if c.dead:
            return False
        self._queue(c, as_bytes(data))
        self._schedule()
        self._report()
        return not c.dead


    def send_many(self, conn_ids, data, int op=-1, ws_data=None):
        """Queue `data` for several connections, encoded once per transport kind; unknown ids are
        skipped. Returns how many connections it was queued for. What finds a connection with nothing
        queued is written at once (see :meth:`_write_fresh`)."""
        cdef bytes raw = as_bytes(data)
        cdef bytes ws = None
        cdef Conn c
        cdef Py_ssize_t count = 0, first
        if self._held:
            self._release_batches()
        first = self._n_dirty
        for conn_id in conn_ids:
            co = self._conns.get(conn_id)
            if co is None:
                continue
            c = <Conn>co
            if c.dead or not c.accepts_op(op):
                continue
            ws = self._queue_kind(c, raw, ws, ws_data)
            count += 1
        self._finish_unicast(first, count)
        return count

    cdef Py_ssize_t send_one(self, object conn_id, bytes raw, int op) except -1:
        """:meth:`send_many` for one connection, called from C (a unicast's last step): no sequence to
        walk, nothing to box."""
        co = self._conns.get(conn_id)
        if co is None:
            if self._held:
                self._release_batches()
            return 0
        return self.send_conn(<Conn>co, raw, op)

    cdef Py_ssize_t send_conn(self, Conn c, bytes raw, int op) except -1:
        """:meth:`send_one` to a connection its caller holds (one removed since is dead: nothing)."""
        cdef Py_ssize_t count = 0, first
        if self._held:
            self._release_batches()
        first = self._n_dirty
        if not c.dead and c.accepts_op(op):
            self._queue_kind(c, raw, None, None)
            count = 1
        self._finish_unicast(first, count)
        return count

    def broadcast(self, room_id, data, int op=-1, ws_data=None):
        """Queue `data` for every member of a room, encoded once per transport kind.

        The walk over members is a C loop. Returns how many connections it was queued for.
        """
        cdef Py_ssize_t count
        if self._held:
            self._release_batches()
        ro = self._rooms.get(room_id)
        if ro is None:
            return 0
        count = self._broadcast_room(<Room>ro, as_bytes(data), ws_data, op)
        if count:
            self._schedule()
        self._report()
        return count

    cdef Py_ssize_t _broadcast_room(self, Room r, bytes raw, object ws_data, int op) except -1:
        """Queue ``raw`` (its WebSocket message: ``ws_data`` or ``raw``, wrapped once) for the members."""
        cdef bytes ws = ws_wrap(raw if ws_data is None else as_bytes(ws_data)) if r.n_ws else None
        cdef Py_ssize_t i, count = 0
        cdef Conn c
        for i in range(r.n):
            c = <Conn>r.members[i]
            if c.dead or not c.accepts_op(op):
                continue
            self._queue(c, ws if c.ws_framing else raw)
            count += 1
        return count

    def push_room(self, room_id, frames):
        """Add goim frames (encoded, back to back) to the room's batch. The batch is released at the
        flush (end of the loop iteration or merge window), or as soon as anything else is queued for a
        connection, whichever comes first: every member gets it as one piece, the inner frames over
        TCP and one op-9 frame over WebSocket (goim's raw batch). Returns the room's member count; 0
        (nothing kept) for a room without members here."""
        ro = self._rooms.get(room_id)
        cdef bytes raw = as_bytes(frames)
        if ro is None or not raw:
            return 0
        parts = self._batches.get(room_id)
        if parts is None:
            self._batches[room_id] = [raw]
        else:
            (<list>parts).append(raw)
        self._held = True
        self._schedule()
        return (<Room>ro).n

    cdef int _release_batches(self) except -1:
        """Queue every room's batch for its members, in one piece each; the caller reports."""
        cdef dict batches = self._batches
        cdef list parts
        cdef bytes inner
        cdef Room r
        self._batches = {}
        self._held = False
        for room_id, po in batches.items():
            ro = self._rooms.get(room_id)
            if ro is None:
                continue  # emptied since
            r = <Room>ro
            parts = <list>po
            inner = <bytes>parts[0] if len(parts) == 1 else b"".join(parts)
            self._broadcast_room(r, inner, frame_pack(OP_BATCH, 0, PyBytes_AS_STRING(inner),
                                                      PyBytes_GET_SIZE(inner), 1) if r.n_ws else None, -1)
        return 0

    cdef int _release_held(self) except -1:
        return self._release_batches()

    def broadcast_all(self, data, int op=-1, ws_data=None):
        """Queue `data` for every registered connection. Returns how many it was queued for."""
        cdef bytes raw = as_bytes(data)
        cdef bytes ws = None
        cdef Conn c
        cdef Py_ssize_t count = 0
        if self._held:
            self._release_batches()
        for co in self._conns.values():
            c = <Conn>co
            if c.dead or not c.accepts_op(op):
                continue
            ws = self._queue_kind(c, raw, ws, ws_data)
            count += 1
        if count:
            self._schedule()
        self._report()
        return count















