"""The API-key check in front of a handler, compiled (see :meth:`imgate.http.apikeys.ApiAuth.guard`).

A push is one such check: a Python closure there was one more interpreted frame, two dict lookups and
a clock call per request, and on a server that sleeps between requests (a unicast at 5,000/s) every
interpreted frame runs from cold caches. The logic is the closure's: a key seen before (the auth's
``verified`` dict, cleared when the key file changes), within the second since the key file was
checked, granting the scope, goes straight to the handler; anything else takes the full check, which
raises the 401 / 403.
"""

from imgate.http._request cimport Request


cdef class ScopeGuard:
    """``guard(req)``: ``handler(req)`` once ``auth`` lets the request use a route of ``scope``."""

    cdef readonly object handler
    cdef object auth          # ApiAuth: check(headers, scope), _next_check
    cdef object check
    cdef object clock
    cdef dict verified        # "Bearer <key>" -> scopes (the auth's own dict, never replaced)
    cdef str scope

    def __init__(self, auth, handler, str scope):
        self.auth = auth
        self.handler = handler
        self.scope = scope
        self.check = auth.check
        self.clock = auth._clock
        self.verified = auth._verified

    @property
    def __wrapped__(self):
        return self.handler

    def __call__(self, req):
        headers = (<Request>req).headers if type(req) is Request else req.headers
        # a Request's headers are a dict: a C lookup, not a method call (a test's stand-in may be any mapping)
        credential = (<dict>headers).get("authorization") if type(headers) is dict else headers.get("authorization")
        granted = self.verified.get(credential)
        if (granted is None or self.clock() >= self.auth._next_check
                or (self.scope not in granted and "admin" not in granted)):
            self.check(headers, self.scope)   # everything else: the full check (raises 401 / 403)
        return self.handler(req)
