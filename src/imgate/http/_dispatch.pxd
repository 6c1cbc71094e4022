# Cython contract of the request dispatcher (imgate.http._dispatch): the connection calls it at C level.

from imgate.http._request cimport Request


# A handler's coroutine, started by hand and now waiting: what the connection's task awaits.
cdef class Resume:
    cdef object coro
    cdef object waiting


cdef class Dispatcher:
    cdef object router
    cdef dict paths              # the router's path -> {method: handler}, resolved here without a call
    cdef object observer         # fn(route, status), or None
    cdef object counts           # ... or the (route, status) -> count dict it is, bumped here
    cdef tuple last_key          # the (route, status) key counted last, reused while they repeat

    cdef object start(self, Request req)
    cdef object done(self, Request req, object resp)
    cdef object failed(self, Request req, object exc)
    cdef void observe(self, object route, int status)
    cdef object _resolve(self, str method, str path)
    cdef object _no_route(self, Request req)
