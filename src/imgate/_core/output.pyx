"""The output side of the room table: registered connections, each with one bounded queue, written
out once per event-loop iteration (or merge window).

Everything queued for a connection within one iteration goes out in one send()/sendmsg(), straight
to the socket; `loop.add_writer` is armed only for the few whose kernel buffer is full. Each queue is
bounded by `max_pending` bytes; a connection past it is dropped from delivery and reported through
`on_overflow` so its owner can send op 6 and close it. A connection with nothing queued may be written
at once (`_write_fresh`). Rooms, users and the sends are :mod:`imgate._core.room`'s.
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


cdef bytes ws_wrap(bytes raw):
    """One binary WebSocket message carrying `raw`, in one allocation."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t h = ws_header_size(n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef char* p = PyBytes_AS_STRING(out)
    ws_write_header(p, n, WS_OPCODE_BINARY, True)
    memcpy(p + h, PyBytes_AS_STRING(raw), n)
    return out


cdef int grow(void*** array, Py_ssize_t* cap, Py_ssize_t first) except -1:
    """Double a pointer array's capacity (``first`` entries when it has none)."""
    cdef Py_ssize_t new_cap = cap[0] * 2 if cap[0] else first
    cdef void** grown = <void**>PyMem_Realloc(array[0], new_cap * sizeof(void*))
    if grown is NULL:
        raise MemoryError()
    array[0] = grown
    cap[0] = new_cap
    return 0


cdef inline void _rewind(Conn c) noexcept:
    """Every queued entry is written: the queue starts over, and a large array is freed (idle
    connections stay small)."""
    c.out_head = c.out_n = 0
    c.head_off = 0
    if c.out_cap > OUT_KEEP_CAP:
        PyMem_Free(c.out)
        c.out = NULL
        c.out_cap = 0


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


cdef class OutputTable:
    """Registered connections and their coalesced, bounded output. :class:`~imgate._core.room.RoomTable`
    adds rooms, users and the sends on top; see docs/core.md."""

    def __init__(self, loop=None, *, Py_ssize_t max_pending=DEF_MAX_PENDING, double merge_window=0.0,
                 on_overflow=None, on_error=None):
        if max_pending <= 0:
            raise ValueError(f"max_pending must be positive, got {max_pending}")
        if merge_window < 0:
            raise ValueError(f"merge_window must be >= 0, got {merge_window}")
        self._loop = loop
        self._conns = {}
        self._max_pending = max_pending
        self._merge_window = merge_window
        self._on_overflow = on_overflow
        self._on_error = on_error
        self._overflowed = []
        self._failed = []

    def __dealloc__(self):
        PyMem_Free(self._dirty)
        PyMem_Free(self._scratch)

    def remove(self, conn_id):
        """Unregister a connection and drop its queued output (the socket is not closed). Returns
        False if unknown. RoomTable's also takes it out of its rooms first."""
        c = self._conns.get(conn_id)
        if c is None:
            return False
        self._drop_output(<Conn>c)
        (<Conn>c).dead = True
        del self._conns[conn_id]
        return True

    cdef int _release_held(self) except -1:
        """Queue what a subclass holds back until the flush (RoomTable: its room batches)."""
        self._held = False
        return 0

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

    cdef Conn _get(self, object conn_id):
        c = self._conns.get(conn_id)
        if c is None:
            raise KeyError(f"unknown connection {conn_id!r}")
        return <Conn>c

    cdef int _finish_unicast(self, Py_ssize_t first, Py_ssize_t count) except -1:
        """After a unicast or multicast was queued: write at once the connections that were idle
        (:meth:`_write_fresh`), then schedule the flush and report, even if that write raised."""
        try:
            if self._n_dirty > first:
                self._write_fresh(first)
        finally:
            if count:
                self._schedule()
            self._report()
        return 0

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

    def pending(self, conn_id):
        """Bytes queued for the connection and not yet accepted by its socket."""
        return self._get(conn_id).pending

    cdef bytes _queue_kind(self, Conn c, bytes raw, bytes ws, object ws_data):
        """Queue ``raw`` for ``c``, or its WebSocket message for a WebSocket conn: ``ws``, built here on
        first need from ``ws_data`` (or ``raw``) and returned for the next conn of the same send."""
        if c.ws_framing:
            if ws is None:
                ws = ws_wrap(raw if ws_data is None else as_bytes(ws_data))
            self._queue(c, ws)
        else:
            self._queue(c, raw)
        return ws

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
                grow(&self._dirty, &self._dirty_cap, 64)
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
        if self._flush_scheduled or self._loop is None or (self._n_dirty == 0 and not self._held):
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
        if self._held:
            self._release_held()
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
            _rewind(c)
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
        _rewind(c)
        c.pending = 0
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
        without blocking, and remove the connection. Returns the bytes the socket did not take (b""
        when all went out, or the connection is broken): a slow consumer's kernel buffer is full, so
        the caller writes them when the socket is writable, then closes it.

        If a frame was half written, its rest goes first so the client can still parse `data`.
        With `raw=True` the bytes go out as given (a WebSocket caller adds its own close frame).
        """
        cdef Conn c = self._get(conn_id)
        cdef bytes raw_data = as_bytes(data)
        cdef bytes tail = b""
        cdef object head
        if c.head_off and c.out_head < c.out_n:
            head = <object>c.out[c.out_head]
            tail = head[c.head_off:]
        payload = tail + (ws_wrap(raw_data) if c.ws_framing and raw_data and not raw else raw_data)
        self.remove(conn_id)
        if not payload:
            return b""
        if c.kind == KIND_TRANSPORT:
            if not c.transport.is_closing():
                c.transport.write(payload)  # the transport buffers what the socket does not take
            return b""
        try:
            sent = _send_nowait(c.fd, payload)
        except OSError:
            return b""
        return payload[sent:]

    def stats(self):
        """Counters for metrics."""
        return {
            "connections": len(self._conns),
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "write_calls": self.write_calls,
            "overflows": self.overflows,
        }


cdef Py_ssize_t _send_nowait(int fd, bytes payload) except -1:
    """Bytes written (0 when the socket buffer is full); OSError when the connection is broken."""
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
