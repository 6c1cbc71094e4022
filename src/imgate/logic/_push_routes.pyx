"""The push-by-mid route, compiled, for a node whose pushes need not wait (the embedded node).

``POST /goim/push/mids?operation=N&mids=M`` with a body is what a business server sends most: one user,
two plain numbers. :class:`PushMidsRoute` answers exactly that request without interpreted code of its
own: the query is read in C, the push is logic's ``push_mids_nowait``, the reply is the usual envelope
(made once per target count). Every other request (several mids, escapes, a missing or odd parameter,
an empty body) goes to the route's general handler, which does the full checks and owns every error
message: the two can only differ in speed. An exception from the push is mapped the same way the
general handler maps it.
"""

cimport cython
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcmp

from imgate.http._request cimport Handler, Request
from imgate.logic._push cimport UnicastPath

from imgate.http._reply import Response
from imgate.protocol.envelope import push_reply

cdef str _JSON = "application/json"
cdef Py_ssize_t _CACHED_REPLIES = 8   # replies for 0..7 targets are made once (a user has a few devices)


@cython.final
cdef class PushMidsRoute(Handler):
    """``route(req)``: the reply to a plain push by one mid, else whatever ``general(req)`` returns."""

    cdef object push        # push_mids_nowait(op, [mid], body) -> connections reached
    cdef UnicastPath path   # the same push called in C, when push is a UnicastPath's (else None)
    cdef readonly object general  # the interpreted handler: every other request, every error
    cdef object http_error  # exception from logic -> HttpError to raise, or None (a bug: re-raised)
    cdef list replies       # the reply for n targets, n < _CACHED_REPLIES (never mutated)

    def __init__(self, push, general, http_error):
        self.push = push
        owner = getattr(push, "__self__", None)
        if isinstance(owner, UnicastPath) and getattr(push, "__name__", "") == "push_mids_nowait":
            self.path = <UnicastPath>owner
        self.general = general
        self.http_error = http_error
        self.replies = [_reply(n) for n in range(_CACHED_REPLIES)]

    cdef object handle(self, Request req):
        return self._answer(req, req.body, req.query_string)

    def __call__(self, req):
        if type(req) is Request:  # the server's: its fields read in C (a test's stand-in by name)
            return self.handle(<Request>req)
        return self._answer(req, req.body, req.query_string)

    cdef object _answer(self, object req, object body, object qs):
        cdef long long op = -1, mid = -1
        cdef Py_ssize_t n
        # ops 22-33 are IM's (refused by the general handler's operation check)
        if type(body) is bytes and body and _plain_query(qs, &op, &mid) and not 22 <= op <= 33:
            try:
                if self.path is not None:
                    n = self.path.push_mid(<int>op, mid, body)
                else:
                    n = self.push(<int>op, [mid], body)
            except Exception as exc:
                err = self.http_error(exc)
                if err is None:
                    raise
                raise err from None
            return self.replies[n] if 0 <= n < _CACHED_REPLIES else _reply(n)
        return self.general(req)


cdef object _reply(Py_ssize_t n):
    return Response(200, push_reply(n), _JSON)


cdef bint _plain_query(str qs, long long* op, long long* mid) except -1:
    """``operation=<1-9 digits>&mids=<1-18 digits>``, in either order and nothing else."""
    cdef Py_ssize_t n, i = 0, start
    cdef const char* p = PyUnicode_AsUTF8AndSize(qs, &n)
    cdef long long* target
    cdef long long value
    cdef int fields = 0, limit
    while i < n:
        if n - i > 10 and memcmp(p + i, b"operation=", 10) == 0:
            if op[0] >= 0:
                return False
            target, limit, i = op, 9, i + 10
        elif n - i > 5 and memcmp(p + i, b"mids=", 5) == 0:
            if mid[0] >= 0:
                return False
            target, limit, i = mid, 18, i + 5
        else:
            return False
        start = i
        value = 0
        while i < n and b'0' <= p[i] <= b'9':
            value = value * 10 + (p[i] - 48)   # ASCII digit
            i += 1
        if i == start or i - start > limit:
            return False
        target[0] = value
        fields += 1
        if i < n:
            if p[i] != b'&' or i + 1 == n:
                return False
            i += 1
    return fields == 2
