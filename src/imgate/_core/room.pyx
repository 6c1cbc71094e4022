"""Room connection table: the proxy's hot path.

Connections are registered with an id and the socket the table may write to. Rooms map to C arrays of
members, so a broadcast walks its room in C: per member it only takes a reference to the frame that was
encoded once for its transport kind and appends it to the member's queue. Room pushes (`push_room`)
gather per room into one op-9 batch until the flush, or until anything else is queued for a connection,
whichever comes first: so every connection gets what was pushed to it in the order it was pushed. Queues are written out once
per event-loop iteration (or merge window): one send()/sendmsg() per connection for everything queued,
straight to the socket, and `loop.add_writer` only for the few whose kernel buffer is full. Each queue
is bounded by `max_pending` bytes; a connection past it is dropped from delivery and reported through
`on_overflow` so its owner can send op 6 and close it.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.string cimport memcpy, memmove

from .includes.system cimport (
    iovec, msghdr, send, sendmsg, MSG_DONTWAIT, MSG_NOSIGNAL, errno, EAGAIN, EWOULDBLOCK, EINTR,
    timespec, clock_gettime, CLOCK_MONOTONIC_COARSE,
)
from .includes.debug cimport IMGATE_DEBUG, IMGATE_ASSERT
from .includes.system cimport IMGATE_PREFETCH
from .frame cimport frame_pack
from .websocket cimport ws_header_size, ws_write_header

import logging
import os

_log = logging.getLogger("imgate.core.room")

DEF_MAX_PENDING = 256 * 1024
# sendmsg() takes at most IOV_MAX (1024 on Linux) buffers; larger queues go out in several calls.
cdef enum:
    IOV_BATCH = 512
    OUT_MIN_CAP = 4
    OUT_KEEP_CAP = 32       # queues larger than this are freed once drained: idle conns stay small
    SCRATCH_SIZE = 65536    # small multi-piece queues are copied here and sent with one send()
    WS_OPCODE_BINARY = 2
    OP_BATCH = 9            # goim's raw op: a body of whole frames


cdef bytes _ws_wrap(bytes raw):
    """One binary WebSocket message carrying `raw`, in one allocation."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t h = ws_header_size(n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef char* p = PyBytes_AS_STRING(out)
    ws_write_header(p, n, WS_OPCODE_BINARY, True)
    memcpy(p + h, PyBytes_AS_STRING(raw), n)
    return out


cdef inline bytes _as_bytes(object data):
    if type(data) is bytes:
        return <bytes>data
    if isinstance(data, str):
        return (<str>data).encode("utf-8")
    return bytes(data)


cdef inline void _release_queue(Conn c) noexcept:
    """Drop the queued payloads' references and free the queue."""
    cdef Py_ssize_t i
    if c.out is not NULL:
        for i in range(c.out_head, c.out_n):
            Py_DECREF(<object>c.out[i])
        PyMem_Free(c.out)
        c.out = NULL
    c.out_head = c.out_n = c.out_cap = 0


@cython.final
cdef class Conn:
    """One registered connection (internal; the public handle is its id)."""

    def __dealloc__(self):
        _release_queue(self)
        PyMem_Free(self.slots)
        PyMem_Free(self.accepts)

    cdef bint accepts_op(self, int op) noexcept:
        cdef Py_ssize_t lo = 0, hi = self.n_accepts, mid
        if self.accepts is NULL or op < 0:
            return True
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.accepts[mid] < op:
                lo = mid + 1
            else:
                hi = mid
        return lo < self.n_accepts and self.accepts[lo] == op


@cython.final
cdef class Room:
    """A room's members as a C array; O(1) join and leave by swap-remove."""

    def __dealloc__(self):
        PyMem_Free(self.members)


@cython.final
cdef class RoomTable:
    """Connections, rooms and coalesced, bounded output. See docs/core.md."""

    def __init__(self, loop=None, *, Py_ssize_t max_pending=DEF_MAX_PENDING, double merge_window=0.0,
                 Py_ssize_t max_rooms_per_conn=64, on_overflow=None, on_error=None):
        if max_pending <= 0:
            raise ValueError(f"max_pending must be positive, got {max_pending}")
        if merge_window < 0:
            raise ValueError(f"merge_window must be >= 0, got {merge_window}")
        if max_rooms_per_conn <= 0:
            raise ValueError(f"max_rooms_per_conn must be positive, got {max_rooms_per_conn}")
        self._loop = loop
        self._conns = {}
        self._rooms = {}
        self._users = {}
        self._batches = {}
        self._max_pending = max_pending
        self._merge_window = merge_window
        self._max_rooms_per_conn = max_rooms_per_conn
        self._on_overflow = on_overflow
        self._on_error = on_error
        self._overflowed = []
        self._failed = []

    def __dealloc__(self):
        PyMem_Free(self._dirty)
        PyMem_Free(self._scratch)

    # ------------------------------------------------------------------ registration

    @property
    def max_pending(self):
        return self._max_pending

    @property
    def merge_window(self):
        return self._merge_window

    def __len__(self):
        return len(self._conns)

    def __contains__(self, conn_id):
        return conn_id in self._conns

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

    cdef Conn _get(self, object conn_id):
        c = self._conns.get(conn_id)
        if c is None:
            raise KeyError(f"unknown connection {conn_id!r}")
        return <Conn>c

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
        self._drop_output(conn)
        conn.dead = True
        del self._conns[conn_id]
        return True

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
        operations include `op`, encoded once per transport kind. Returns how many connections."""
        cdef bytes raw = _as_bytes(data)
        cdef bytes ws = None
        cdef Py_ssize_t count = 0
        cdef set seen = None
        if self._batches:
            self._release_batches()
        if len(users) > 1:
            seen = set()
            users = [u for u in users if not (u in seen or seen.add(u))]
        for user in users:
            held = self._users.get(user)
            if held is not None:
                ws = self._queue_held(held, raw, ws, ws_data, op, &count)
        if count:
            self._schedule()
        self._report()
        return count

    cdef Py_ssize_t send_user(self, object user, bytes data, int op) except -1:
        """``send_users([user], data, op)`` for compiled callers: no list, no Python call. What finds a
        connection with nothing queued is written at once (see :meth:`_write_fresh`)."""
        cdef Py_ssize_t count = 0, first
        if self._batches:
            self._release_batches()
        first = self._n_dirty
        held = self._users.get(user)
        try:
            if held is not None:
                self._queue_held(held, data, None, None, op, &count)
                if self._n_dirty > first:
                    self._write_fresh(first)
        finally:
            # whatever _write_fresh left listed is flushed, and failures are reported, even if it raised
            if count:
                self._schedule()
            self._report()
        return count

    cdef int _write_fresh(self, Py_ssize_t first) except -1:
        """Write now the connections that joined the dirty list at ``first`` or later, and take them
        off it: a unicast then costs no flush callback, and its latency no loop iteration. They had
        nothing queued and no writer armed (else they would not have joined), so nothing queued
        earlier is overtaken. A connection written at once in this tick of the coarse clock
        stays queued instead: pushes to one user in one read still leave in one send() at the flush.
        (The coarse clock ticks every 1-4 ms, by the kernel's HZ: at most one write at once per tick.)
        Not with a merge window (its point is to wait), nor without a loop (nothing would finish a
        short write)."""
        cdef timespec ts
        cdef unsigned int now
        cdef Py_ssize_t i = first, kept = first
        cdef Conn c
        if self._merge_window > 0 or self._loop is None:
            return 0
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        now = <unsigned int>(ts.tv_sec * 1000 + ts.tv_nsec // 1000000)
        try:
            while i < self._n_dirty:
                c = <Conn>self._dirty[i]
                i += 1
                if c.direct_ms == now or c.kind == KIND_TRANSPORT:
                    self._dirty[kept] = <void*>c     # kept < i: never over an entry not yet seen
                    kept += 1
                    continue
                c.direct_ms = now
                c.dirty = False
                self._flush_conn(c)
        finally:
            # the entries kept, then any not reached (an exception): the list stays exact
            if kept != i:
                memmove(self._dirty + kept, self._dirty + i, (self._n_dirty - i) * sizeof(void*))
                self._n_dirty -= i - kept
        return 0

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
        cdef void** members
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
            members = <void**>PyMem_Realloc(r.members, (r.cap * 2 if r.cap else 8) * sizeof(void*))
            if members is NULL:
                raise MemoryError()
            r.members = members
            r.cap = r.cap * 2 if r.cap else 8
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

    def pending(self, conn_id):
        """Bytes queued for the connection and not yet accepted by its socket."""
        return self._get(conn_id).pending

    def send(self, conn_id, data, int op=-1, ws_data=None):
        """Queue `data` for one connection. Returns False if it was filtered out or dropped.

        `ws_data`, when given, is what a WebSocket connection gets instead of `data` (goim sends an
        op-9 batch as its inner frames over TCP but as one op-9 frame over WebSocket).
        """
        cdef Conn c = self._get(conn_id)
        cdef bytes raw = _as_bytes(data)
        if self._batches:
            self._release_batches()
        if c.dead or not c.accepts_op(op):
            return False
        self._queue(c, _ws_wrap(raw if ws_data is None else _as_bytes(ws_data)) if c.ws_framing else raw)
        self._schedule()
        self._report()
        return not c.dead

    def send_raw(self, conn_id, data):
        """Queue bytes exactly as given, even for a WebSocket connection (its own control frames)."""
        cdef Conn c = self._get(conn_id)
        if self._batches:
            self._release_batches()
        if c.dead:
            return False
        self._queue(c, _as_bytes(data))
        self._schedule()
        self._report()
        return not c.dead

    cdef bytes _queue_kind(self, Conn c, bytes raw, bytes ws, object ws_data):
        """Queue ``raw`` for ``c``, or its WebSocket message for a WebSocket conn: ``ws``, built here on
        first need from ``ws_data`` (or ``raw``) and returned for the next conn of the same send."""
        if c.ws_framing:
            if ws is None:
                ws = _ws_wrap(raw if ws_data is None else _as_bytes(ws_data))
            self._queue(c, ws)
        else:
            self._queue(c, raw)
        return ws

    def send_many(self, conn_ids, data, int op=-1, ws_data=None):
        """Queue `data` for several connections, encoded once per transport kind; unknown ids are
        skipped. Returns how many connections it was queued for. Like :meth:`send_user`, what finds a
        connection with nothing queued is written at once."""
        cdef bytes raw = _as_bytes(data)
        cdef bytes ws = None
        cdef Conn c
        cdef Py_ssize_t count = 0, first
        if self._batches:
            self._release_batches()
        first = self._n_dirty
        try:
            for conn_id in conn_ids:
                co = self._conns.get(conn_id)
                if co is None:
                    continue
                c = <Conn>co
                if c.dead or not c.accepts_op(op):
                    continue
                ws = self._queue_kind(c, raw, ws, ws_data)
                count += 1
            if self._n_dirty > first:
                self._write_fresh(first)
        finally:
            if count:
                self._schedule()
            self._report()
        return count

    def broadcast(self, room_id, data, int op=-1, ws_data=None):
        """Queue `data` for every member of a room, encoded once per transport kind.

        The walk over members is a C loop. Returns how many connections it was queued for.
        """
        cdef Py_ssize_t count
        if self._batches:
            self._release_batches()
        ro = self._rooms.get(room_id)
        if ro is None:
            return 0
        count = self._broadcast_room(<Room>ro, _as_bytes(data), ws_data, op)
        if count:
            self._schedule()
        self._report()
        return count

    cdef Py_ssize_t _broadcast_room(self, Room r, bytes raw, object ws_data, int op) except -1:
        """Queue ``raw`` (its WebSocket message: ``ws_data`` or ``raw``, wrapped once) for the members."""
        cdef bytes ws = _ws_wrap(raw if ws_data is None else _as_bytes(ws_data)) if r.n_ws else None
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
        cdef bytes raw = _as_bytes(frames)
        if ro is None or not raw:
            return 0
        parts = self._batches.get(room_id)
        if parts is None:
            self._batches[room_id] = [raw]
        else:
            (<list>parts).append(raw)
        self._schedule()
        return (<Room>ro).n

    cdef int _release_batches(self) except -1:
        """Queue every room's batch for its members, in one piece each; the caller reports."""
        cdef dict batches = self._batches
        cdef list parts
        cdef bytes inner
        cdef Room r
        self._batches = {}
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

    def broadcast_all(self, data, int op=-1, ws_data=None):
        """Queue `data` for every registered connection. Returns how many it was queued for."""
        cdef bytes raw = _as_bytes(data)
        cdef bytes ws = None
        cdef Conn c
        cdef Py_ssize_t count = 0
        if self._batches:
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

    cdef int _queue(self, Conn c, bytes data) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef void** out
        cdef Py_ssize_t live
        if n == 0:
            return 0
        if c.pending + n > self._max_pending:
            # slow consumer: stop delivering, free its queue now (all but a half-written frame, whose
            # rest send_final still owes the client), report after the walk
            self._drop_unsent(c)
            c.dead = True
            self.overflows += 1
            self._overflowed.append(c.conn_id)
            return 0
        if c.out_n == c.out_cap:
            live = c.out_n - c.out_head
            if c.out_head and live < c.out_cap // 2:
                # reuse the space of entries already written
                memmove(c.out, c.out + c.out_head, live * sizeof(void*))
            else:
                out = <void**>PyMem_Realloc(c.out, (c.out_cap * 2 if c.out_cap else OUT_MIN_CAP) * sizeof(void*))
                if out is NULL:
                    raise MemoryError()
                c.out = out
                c.out_cap = c.out_cap * 2 if c.out_cap else OUT_MIN_CAP
                if c.out_head:
                    memmove(c.out, c.out + c.out_head, live * sizeof(void*))
            c.out_head = 0
            c.out_n = live
        Py_INCREF(data)
        c.out[c.out_n] = <void*>data
        c.out_n += 1
        c.pending += n
        if not c.dirty and not c.writer_armed:
            if self._n_dirty == self._dirty_cap:
                out = <void**>PyMem_Realloc(self._dirty, (self._dirty_cap * 2 if self._dirty_cap else 64) * sizeof(void*))
                if out is NULL:
                    raise MemoryError()
                self._dirty = out
                self._dirty_cap = self._dirty_cap * 2 if self._dirty_cap else 64
            # the table's strong ref to c (in _conns) outlives the dirty entry: remove() clears dirty
            self._dirty[self._n_dirty] = <void*>c
            self._n_dirty += 1
            c.dirty = True
        return 0

    cdef int _drop_unsent(self, Conn c) except -1:
        cdef Py_ssize_t i
        if not (c.head_off and c.out_head < c.out_n):
            return self._drop_output(c)
        for i in range(c.out_head + 1, c.out_n):
            Py_DECREF(<object>c.out[i])
            c.out[i] = NULL
        c.out_n = c.out_head + 1
        c.pending = PyBytes_GET_SIZE(<object>c.out[c.out_head]) - c.head_off
        return self._unschedule(c)

    cdef int _unschedule(self, Conn c) except -1:
        """Out of the dirty list and the loop's writers: nothing more is written for c by the table."""
        cdef Py_ssize_t i
        if c.dirty:
            # take it out of the dirty list so a flush never touches a removed conn
            for i in range(self._n_dirty):
                if self._dirty[i] == <void*>c:
                    self._dirty[i] = NULL
                    break
            c.dirty = False
        if c.writer_armed:
            c.writer_armed = False
            if self._loop is not None:
                self._loop.remove_writer(c.fd)
        return 0

    cdef int _drop_output(self, Conn c) except -1:
        _release_queue(c)
        c.head_off = 0
        c.pending = 0
        return self._unschedule(c)

    cdef int _schedule(self) except -1:
        if self._flush_scheduled or self._loop is None or (self._n_dirty == 0 and not self._batches):
            return 0
        self._flush_scheduled = True
        if self._merge_window > 0:
            self._flush_handle = self._loop.call_later(self._merge_window, self._flush_cb)
        else:
            self._flush_handle = self._loop.call_soon(self._flush_cb)
        return 0

    def _flush_cb(self):
        self._flush_scheduled = False
        self._flush_handle = None
        self.flush()

    def flush(self):
        """Write everything queued now: one send per connection, straight to its socket."""
        cdef Py_ssize_t i = 0
        cdef Conn c, ahead
        cdef void* p
        if self._batches:
            self._release_batches()
        # entries are cleared before their conn is flushed, so whatever happens the list never keeps
        # a pointer to a conn that believes it is not listed (and may be removed and freed)
        try:
            while i < self._n_dirty:
                # each conn and its queue are touched once, and are cold after a walk over thousands
                # of sockets: ask for them a few entries early
                if i + 8 < self._n_dirty and self._dirty[i + 8] is not NULL:
                    IMGATE_PREFETCH(self._dirty[i + 8])
                if i + 4 < self._n_dirty and self._dirty[i + 4] is not NULL:
                    ahead = <Conn>self._dirty[i + 4]
                    IMGATE_PREFETCH(ahead.out + ahead.out_head)
                p = self._dirty[i]
                self._dirty[i] = NULL
                i += 1
                if p is NULL:
                    continue
                c = <Conn>p
                c.dirty = False
                self._flush_conn(c)
        finally:
            if i < self._n_dirty:
                memmove(self._dirty, self._dirty + i, (self._n_dirty - i) * sizeof(void*))
                self._n_dirty -= i
            else:
                self._n_dirty = 0
        if self._dirty_cap > 4096:
            PyMem_Free(self._dirty)
            self._dirty = NULL
            self._dirty_cap = 0
        self._report()

    cdef int _flush_conn(self, Conn c) except -1:
        cdef iovec iov[IOV_BATCH]
        cdef msghdr msg
        cdef Py_ssize_t k, cnt, want, r, chunk
        cdef object obj
        cdef bint blocked = False
        if c.kind == KIND_TRANSPORT:
            return self._flush_transport(c)
        while c.out_head < c.out_n:
            cnt = c.out_n - c.out_head
            if cnt > IOV_BATCH:
                cnt = IOV_BATCH
            want = 0
            for k in range(cnt):
                obj = <object>c.out[c.out_head + k]
                iov[k].iov_base = PyBytes_AS_STRING(obj)
                iov[k].iov_len = PyBytes_GET_SIZE(obj)
                if k == 0:
                    iov[0].iov_base = <char*>iov[0].iov_base + c.head_off
                    iov[0].iov_len -= c.head_off
                want += iov[k].iov_len
            if cnt > 1 and want <= SCRATCH_SIZE:
                # the kernel charges per piece in sendmsg(); one memcpy into a scratch buffer is cheaper
                if self._scratch is NULL:
                    self._scratch = <char*>PyMem_Malloc(SCRATCH_SIZE)
                    if self._scratch is NULL:
                        raise MemoryError()
                chunk = 0
                for k in range(cnt):
                    memcpy(self._scratch + chunk, iov[k].iov_base, iov[k].iov_len)
                    chunk += iov[k].iov_len
                iov[0].iov_base = self._scratch
                iov[0].iov_len = want
                cnt = 1
            # MSG_DONTWAIT: the call never blocks, so the GIL stays held (releasing and re-taking it
            # around every send cost ~1% of a fan-out in `make bench`)
            if cnt == 1:
                r = send(c.fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL)
            else:
                msg.msg_name = NULL
                msg.msg_namelen = 0
                msg.msg_iov = iov
                msg.msg_iovlen = cnt
                msg.msg_control = NULL
                msg.msg_controllen = 0
                msg.msg_flags = 0
                r = sendmsg(c.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
            self.write_calls += 1
            if r < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN or errno == EWOULDBLOCK:
                    blocked = True
                    break
                err = OSError(errno, os.strerror(errno))
                self._drop_output(c)
                c.dead = True
                self._failed.append((c.conn_id, err))
                return 0
            self.bytes_out += r
            c.pending -= r
            blocked = r < want      # a short write: the kernel buffer is full
            # release every entry the kernel took whole; keep the offset into a half-written one
            r += c.head_off
            while c.out_head < c.out_n:
                chunk = PyBytes_GET_SIZE(<object>c.out[c.out_head])
                if r < chunk:
                    break
                r -= chunk
                Py_DECREF(<object>c.out[c.out_head])
                c.out[c.out_head] = NULL
                c.out_head += 1
                self.frames_out += 1
            c.head_off = r
            if blocked:
                break
        if c.out_head == c.out_n:
            c.out_head = c.out_n = 0
            c.head_off = 0
            if c.out_cap > OUT_KEEP_CAP:
                PyMem_Free(c.out)
                c.out = NULL
                c.out_cap = 0
            if c.writer_armed:
                c.writer_armed = False
                self._loop.remove_writer(c.fd)
        elif blocked and not c.writer_armed:
            if self._loop is None:
                return 0
            self._loop.add_writer(c.fd, self._on_writable, c)
            c.writer_armed = True   # only once armed: if add_writer raised, the conn stays unarmed
        return 0

    def _on_writable(self, Conn c):
        if c.dead or not c.writer_armed:
            return
        self._flush_conn(c)
        self._report()

    cdef int _flush_transport(self, Conn c) except -1:
        cdef Py_ssize_t i
        cdef list parts
        transport = c.transport
        if transport.is_closing():
            self._drop_output(c)
            c.dead = True
            self._failed.append((c.conn_id, ConnectionResetError("transport is closing")))
            return 0
        if c.out_n - c.out_head == 1:
            data = <object>c.out[c.out_head]
        else:
            parts = [<object>c.out[i] for i in range(c.out_head, c.out_n)]
            data = b"".join(parts)
        try:
            transport.write(data)
        except Exception as e:  # e.g. written after write_eof(): a failed write, not a crash
            self._drop_output(c)
            c.dead = True
            self._failed.append((c.conn_id, e if isinstance(e, OSError) else ConnectionError(str(e))))
            return 0
        self.write_calls += 1
        self.bytes_out += c.pending
        self.frames_out += c.out_n - c.out_head
        for i in range(c.out_head, c.out_n):
            Py_DECREF(<object>c.out[i])
            c.out[i] = NULL
        c.out_head = c.out_n = 0
        c.pending = 0
        if c.out_cap > OUT_KEEP_CAP:
            PyMem_Free(c.out)
            c.out = NULL
            c.out_cap = 0
        if transport.get_write_buffer_size() > self._max_pending:
            c.dead = True
            self.overflows += 1
            self._overflowed.append(c.conn_id)
        return 0

    cdef int _report(self) except -1:
        cdef list items
        if self._overflowed:
            items = self._overflowed
            self._overflowed = []
            if self._on_overflow is not None:
                for conn_id in items:
                    try:
                        self._on_overflow(conn_id)
                    except Exception:
                        _log.exception("on_overflow(%r) failed", conn_id)
        if self._failed:
            items = self._failed
            self._failed = []
            if self._on_error is not None:
                for conn_id, err in items:
                    try:
                        self._on_error(conn_id, err)
                    except Exception:
                        _log.exception("on_error(%r) failed", conn_id)
        return 0

    def send_final(self, conn_id, data=b"", *, bint raw=False):
        """Last words, then unregister: drop what is queued, write `data` (e.g. an op-6 frame) once
        without blocking, and remove the connection. Returns what the socket did not take (b"" when
        all of it went, or when a transport took it): the caller may write that rest when the socket
        drains (a peer that stopped reading has a full kernel buffer), then closes the socket.

        If a frame was half written, its rest goes first so the client can still parse `data`.
        With `raw=True` the bytes go out as given (a WebSocket caller adds its own close frame).
        """
        cdef Conn c = self._get(conn_id)
        cdef bytes raw_data = _as_bytes(data)
        cdef bytes tail = b""
        cdef object head
        if c.head_off and c.out_head < c.out_n:
            head = <object>c.out[c.out_head]
            tail = head[c.head_off:]
        payload = tail + (_ws_wrap(raw_data) if c.ws_framing and raw_data and not raw else raw_data)
        self.remove(conn_id)
        if not payload:
            return b""
        if c.kind == KIND_TRANSPORT:
            if not c.transport.is_closing():
                c.transport.write(payload)
            return b""
        try:
            sent = _send_nowait(c.fd, payload)
        except OSError:
            return b""   # the connection is broken: nothing more can reach it
        return payload[sent:] if sent < PyBytes_GET_SIZE(payload) else b""

    def stats(self):
        """Counters for metrics."""
        return {
            "connections": len(self._conns),
            "rooms": len(self._rooms),
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "write_calls": self.write_calls,
            "overflows": self.overflows,
        }


cdef Py_ssize_t _send_nowait(int fd, bytes payload) except -1:
    """Bytes of ``payload`` the socket took now (0 when its buffer is full)."""
    cdef ssize_t r
    cdef const char* buf = PyBytes_AS_STRING(payload)
    cdef size_t n = PyBytes_GET_SIZE(payload)
    with nogil:
        r = send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL)
    if r < 0:
        if errno != EAGAIN and errno != EWOULDBLOCK:
            raise OSError(errno, os.strerror(errno))
        return 0
    return r
