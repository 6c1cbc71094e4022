"""Running a request's handler, for the connection of imgate.http (``_protocol.pyx``).

The handler is found in the router's table without a Python call and started at once. A coroutine
handler is driven by hand (``send(None)``): when it finishes without waiting (an in-memory push does),
its Response comes back here and no task is ever created for it; when it waits, the connection gets a
:class:`Resume` to hand to a task. Every answer is counted in the observer, errors become the JSON
envelope of :mod:`imgate.http.messages`.
"""

cimport cython

import asyncio
import logging

from imgate.http._reply cimport Response
from imgate.http._request cimport Handler, Request

from imgate.http.messages import HttpError, error

log = logging.getLogger("imgate.http")

# Route label used for requests that match no route (keeps metric label cardinality bounded).
UNMATCHED = "unmatched"

cdef object _CancelledError = asyncio.CancelledError


# ---------------------------------------------------------------------------------------------------------
# Handing a started coroutine to a task


cdef object _FRESH = object()


@cython.final
cdef class Resume:
    """Awaitable that goes on driving a coroutine already started by hand (``send(None)``) and now
    waiting on ``waiting``: the task awaiting it first gets ``waiting``, then everything it sends or
    throws goes to the coroutine (what Python 3.12's eager tasks do inside the task)."""

    def __cinit__(self, coro, waiting):
        self.coro = coro
        self.waiting = waiting

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        w = self.waiting
        if w is not _FRESH:
            self.waiting = _FRESH
            return w
        return self.coro.send(value)   # its StopIteration ends the await with the handler's result

    def throw(self, typ, val=None, tb=None):
        self.waiting = _FRESH
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        return self.coro.throw(val)

    def close(self):
        self.coro.close()



async def _await(awaitable):
    return await awaitable


# ---------------------------------------------------------------------------------------------------------
# The dispatcher


@cython.final
cdef class Dispatcher:
    """What one connection answers its requests with: ``router``'s handlers, counted in ``observer``
    (read once, when the connection is made)."""

    def __cinit__(self, router, observer):
        self.router = router
        paths = getattr(router, "paths", None)
        self.paths = paths if type(paths) is dict else None
        self.observer = None if isinstance(observer, dict) else observer
        self.counts = observer if isinstance(observer, dict) else None

    cdef object start(self, Request req):
        """Run ``req``'s handler as far as it goes without waiting: its Response, or a ``Resume`` to
        await when it waits."""
        handler = self._resolve(req.method, req.path)
        if handler is None:
            return self._no_route(req)
        req.route = req.path
        try:
            if isinstance(handler, Handler):  # a compiled handler: called in C, no argument tuple
                result = (<Handler>handler).handle(req)
            else:
                result = handler(req)
            if isinstance(result, Response):
                return self.done(req, result)
            if not hasattr(result, "send"):
                if not hasattr(result, "__await__"):
                    return self.done(req, result)   # not a Response: done() answers 500
                result = _await(result)              # an awaitable that is not a coroutine
            try:
                waiting = result.send(None)
            except StopIteration as stop:
                return self.done(req, stop.value)
        except _CancelledError:
            raise
        except Exception as exc:
            return self.failed(req, exc)
        return Resume(result, waiting)

    cdef object _resolve(self, str method, str path):
        """``router.resolve(method, path)``: exact path, HEAD falling back to GET."""
        if self.paths is None:
            return self.router.resolve(method, path)
        methods = self.paths.get(path)
        if methods is None:
            return None
        handler = (<dict>methods).get(method)
        if handler is None and method == "HEAD":
            handler = (<dict>methods).get("GET")
        return handler

    cdef object _no_route(self, Request req):
        allowed = self.router.allowed(req.path)
        if allowed:
            resp = error(405, f"method {req.method} not allowed for {req.path}; allowed: {', '.join(allowed)}")
            resp.headers["Allow"] = ", ".join(allowed)
            self.observe(req.path, resp.status)
        else:
            resp = error(404, f"no route for {req.method} {req.path}")
            self.observe(UNMATCHED, resp.status)
        return resp

    cdef object done(self, Request req, object resp):
        if not isinstance(resp, Response):
            try:
                raise TypeError(f"handler for {req.method} {req.path} returned {type(resp).__name__}, not Response")
            except TypeError as exc:
                return self.failed(req, exc)
        self.observe(req.route, (<Response>resp).status)
        return resp

    cdef object failed(self, Request req, object exc):
        if isinstance(exc, HttpError):
            resp = exc.response()
        else:
            log.error("handler for %s %s failed", req.method, req.path, exc_info=exc)
            resp = error(500, "internal error")
        self.observe(req.route if req.route is not None else UNMATCHED, resp.status)
        return resp

    cdef void observe(self, object route, int status):
        cdef dict counts
        if self.counts is not None:
            # a connection answers the same route and status over and over (a pusher's): one key
            # tuple, whose route string keeps its hash, instead of a new tuple per answer
            key = self.last_key
            if (key is None or <int>key[1] != status or type(route) is not str
                    or type(key[0]) is not str or <str>key[0] != <str>route):
                key = (route, status)
                self.last_key = key
            if type(self.counts) is dict:
                counts = <dict>self.counts
                counts[key] = counts.get(key, 0) + 1
            else:  # a Counter, a defaultdict...: the mapping's own methods
                self.counts[key] = self.counts.get(key, 0) + 1
        elif self.observer is not None:
            try:
                self.observer(route, status)
            except Exception:  # metrics must never break serving
                log.exception("HTTP observer failed")
