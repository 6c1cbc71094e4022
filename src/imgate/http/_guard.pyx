"""The API-key check in front of a handler, compiled (see :meth:`imgate.http.apikeys.ApiAuth.guard`).

A push is one such check: a Python closure there was one more interpreted frame, two dict lookups and
a clock call per request, and on a server that sleeps between requests (a unicast at 5,000/s) every
interpreted frame runs from cold caches. The logic is the closure's: a key seen before (the auth's
``verified`` dict, cleared when the key file changes), within the second since the key file was
checked, granting the scope, goes straight to the handler; anything else takes the full check, which
raises the 401 / 403. The server's dispatcher calls the guard in C (``Handler.handle``), and the guard
calls a compiled handler behind it the same way: no argument tuple, no generic call.
"""

cimport cython

from imgate.cache._memory cimport clock_now
from imgate.http._request cimport Handler, Request


@cython.final
cdef class ScopeGuard(Handler):
    """``guard(req)``: ``handler(req)`` once ``auth`` lets the request use a route of ``scope``."""

    cdef readonly object handler
    cdef Handler compiled     # handler, when it is a Handler (called in C); else None
    cdef object auth          # ApiAuth: check(headers, scope), _next_check
    cdef object check
    cdef object clock         # the auth's clock (time.monotonic is read in C)
    cdef dict verified        # "Bearer <key>" -> scopes (the auth's own dict, never replaced)
    cdef str scope
    cdef double next_check    # the auth's _next_check as of this guard's last full check
    cdef object granted_ok    # the last scopes (a frozenset: immutable) found to grant ``scope``

    def __init__(self, auth, handler, str scope):
        self.auth = auth
        self.handler = handler
        self.compiled = handler if isinstance(handler, Handler) else None
        self.scope = scope
        self.check = auth.check
        self.clock = auth._clock
        self.verified = auth._verified
        self.next_check = 0.0
        self.granted_ok = None

    @property
    def __wrapped__(self):
        return self.handler

    cdef object handle(self, Request req):
        self._admit(req.headers)
        if self.compiled is not None:
            return self.compiled.handle(req)
        return self.handler(req)

    def __call__(self, req):
        if type(req) is Request:
            return self.handle(<Request>req)
        self._admit(req.headers)  # a test's stand-in: its fields by name
        return self.handler(req)

    cdef int _admit(self, object headers) except -1:
        """Return when the request may go on; the full check raises the 401 / 403."""
        # a Request's headers are a dict: a C lookup, not a method call (a test's stand-in may be any mapping)
        credential = (<dict>headers).get("authorization") if type(headers) is dict else headers.get("authorization")
        granted = self.verified.get(credential)
        if granted is None or clock_now(self.clock) >= self.next_check:
            self._full(headers)
        elif granted is not self.granted_ok:
            if self.scope not in granted and "admin" not in granted:
                self._full(headers)
            else:
                self.granted_ok = granted
        return 0

    cdef int _full(self, object headers) except -1:
        # a revoked key leaves ``verified`` when the file is next checked (at most a second on);
        # another guard's check may come first, which only makes this copy older: checked sooner
        self.check(headers, self.scope)   # the full check: raises 401 / 403
        self.next_check = <double>self.auth._next_check
        return 0
