# Cython contract of the parsed HTTP request (imgate.http._request): the connection and the plain
# parser fill its fields directly, without a Python-level call.

cdef class Request:
    cdef public str method
    cdef public str path
    cdef public str query_string
    cdef public dict headers
    cdef public bytes body
    cdef public object remote
    cdef public str version
    cdef public bint keep_alive
    cdef public object route   # the matched route path, set by the dispatcher
    cdef list _query_list
    cdef dict _query


# A handler the dispatcher (and a guard in front of another) calls in C: handle(req) is what calling
# it with req returns (a Response, or a coroutine to drive). Its __call__ stays for everyone else;
# a subclass overrides both (final: a Python subclass's __call__ would not be what handle runs).
cdef class Handler:
    cdef object handle(self, Request req)
