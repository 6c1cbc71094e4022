"""The HTTP/1.1 connection of imgate.http.server, compiled: the per-request path of the logic API.

httptools (llhttp) parses; the callbacks it makes land in this extension type, so the request head is
collected without interpreted code. Then, per request:

- a handler is started at once when nothing is ahead of it on the connection; a coroutine handler is
  driven by hand (``send(None)``) and, when it finishes without waiting (an in-memory push does), no
  task is ever created for it. A handler that does wait is handed to a task (``_Resume``), and the
  requests behind it queue up and are answered in order by that task;
- the replies made while one chunk of input is parsed go out in one ``write``;
- the common reply (2xx on a keep-alive HTTP/1.1 connection, no extra headers) is encoded from a
  cached head.

Everything else (limits, errors, pipelining, idle timeout, half-close) keeps the semantics described in
imgate/http/server.py, which owns the server object this protocol serves.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcmp, memcpy

from imgate._core.includes.system cimport (
    send, MSG_DONTWAIT, MSG_NOSIGNAL, errno, EAGAIN, EWOULDBLOCK, EINTR,
)

import asyncio
import logging
from collections import deque
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

import httptools

from imgate.http.messages import HttpError, Response, error

log = logging.getLogger("imgate.http")

# Pipelined requests waiting for their turn before the server stops reading from the connection.
DEF PIPELINE_HIGH = 32
DEF PIPELINE_LOW = 8
# Seconds an errored connection keeps discarding input before it closes (see _linger_close).
DEF LINGER = 2.0
# Route label used for requests that match no route (keeps metric label cardinality bounded).
UNMATCHED = "unmatched"

cdef object _HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object _HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object _HttpParserError = httptools.HttpParserError
cdef object _HttpParserInvalidURLError = httptools.HttpParserInvalidURLError
cdef object _parse_url = httptools.parse_url
cdef object _CancelledError = asyncio.CancelledError


# ---------------------------------------------------------------------------------------------------------
# Requests


cdef class Request:
    """One parsed HTTP request. ``headers`` keys are lower case (repeated headers joined with ", ")."""

    cdef public str method
    cdef public str path
    cdef public str query_string
    cdef public dict headers
    cdef public bytes body
    cdef public object remote
    cdef public str version
    cdef public bint keep_alive
    cdef public object route   # the matched route path, set by the server
    cdef list _query_list
    cdef dict _query

    def __init__(self, str method, str path, str query_string="", dict headers=None, bytes body=b"",
                 remote=None, str version="1.1", bint keep_alive=True):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers if headers is not None else {}
        self.body = body
        self.remote = remote
        self.version = version
        self.keep_alive = keep_alive
        self.route = None

    @property
    def query_list(self):
        """All query parameters in order, repeated names kept."""
        cdef str qs, item, k, v
        cdef list out
        cdef Py_ssize_t eq
        if self._query_list is None:
            qs = self.query_string
            if "%" in qs or "+" in qs or ";" in qs:
                self._query_list = parse_qsl(qs, keep_blank_values=True)
            else:
                # nothing to unquote (the usual machine-made query): split it directly
                out = []
                for item in qs.split("&"):
                    if not item:
                        continue
                    eq = item.find("=")
                    if eq < 0:
                        out.append((item, ""))
                    else:
                        out.append((item[:eq], item[eq + 1:]))
                self._query_list = out
        return self._query_list

    @property
    def query(self):
        """Query parameters; the last value wins for a repeated name."""
        if self._query is None:
            self._query = dict(self.query_list)
        return self._query

    def __repr__(self):
        q = f"?{self.query_string}" if self.query_string else ""
        return f"<Request {self.method} {self.path}{q} body={len(self.body)}B from {self.remote}>"


# ---------------------------------------------------------------------------------------------------------
# Responses on the wire


cdef dict _HEAD_CACHE = {}


cdef str _reason(int status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


cdef bytes _join_reply(bytes prefix, bytes body):
    """``prefix + b"%d\\r\\n\\r\\n" % len(body) + body`` in one allocation."""
    cdef char digits[24]
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(body), np = PyBytes_GET_SIZE(prefix), nd = 0, v = nb, k
    while True:
        digits[nd] = <char>(48 + v % 10)   # ASCII digit, least significant first
        nd += 1
        v //= 10
        if v == 0:
            break
    cdef bytes out = PyBytes_FromStringAndSize(NULL, np + nd + 4 + nb)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, PyBytes_AS_STRING(prefix), np)
    o += np
    for k in range(nd):
        o[k] = digits[nd - 1 - k]
    o += nd
    memcpy(o, b"\r\n\r\n", 4)
    memcpy(o + 4, PyBytes_AS_STRING(body), nb)
    return out


cpdef bytes encode_response(object resp, bint keep_alive, bint head_only, bint http10):
    """``resp`` as bytes on the wire: status line, headers, body."""
    cdef int status = resp.status
    cdef bytes body = resp.body
    cdef object headers = resp.headers
    cdef bytes prefix
    if not headers and keep_alive and not http10 and not head_only and 200 <= status < 300 and status != 204:
        # the common reply (a push's): a cached head up to Content-Length
        key = (status, resp.content_type)
        prefix = _HEAD_CACHE.get(key)
        if prefix is None:
            prefix = (f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: "
                      f"{resp.content_type}\r\nContent-Length: ").encode("latin-1")
            _HEAD_CACHE[key] = prefix
        return _join_reply(prefix, body)
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    no_body = status < 200 or status in (204, 304)
    if not no_body:
        lines.append(f"Content-Type: {resp.content_type}")
        lines.append(f"Content-Length: {len(body)}")
    for k, v in headers.items():
        if k.lower() in ("content-length", "connection", "transfer-encoding"):
            continue
        lines.append(f"{k}: {v}")
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if head_only or no_body:
        return head
    return head + body


# ---------------------------------------------------------------------------------------------------------
# Handing a started coroutine to a task


cdef object _FRESH = object()


@cython.final
cdef class _Resume:
    """Awaitable that goes on driving a coroutine already started by hand (``send(None)``) and now
    waiting on ``waiting``: the task awaiting it first gets ``waiting``, then everything it sends or
    throws goes to the coroutine (what Python 3.12's eager tasks do inside the task)."""

    cdef object coro
    cdef object waiting

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


# ---------------------------------------------------------------------------------------------------------
# The connection protocol


@cython.final
cdef class _Failure:
    """A protocol-level error answered in order after the requests before it, then the connection closes."""

    cdef readonly int status
    cdef readonly str message

    def __cinit__(self, int status, str message):
        self.status = status
        self.message = message


class _Abort(Exception):
    """Raised inside an httptools callback to stop parsing; the error is already queued."""


@cython.final
cdef class HttpProtocol:
    """One HTTP connection of an :class:`imgate.http.server.HttpServer` (an ``asyncio.Protocol``)."""

    cdef object server
    cdef object router
    cdef dict paths              # the router's path -> {method: handler}, resolved here without a call
    cdef object observer         # fn(route, status), or None
    cdef object counts           # ... or the (route, status) -> count dict it is, bumped here
    cdef object loop
    cdef object transport
    cdef object parser
    cdef object remote
    cdef object queue            # deque of Request | _Failure waiting behind the worker
    cdef object worker           # the task answering requests that had to wait, or None
    cdef object drain_waiter
    cdef object idle_handle
    cdef object deadline_handle  # a request is partly received: its head and body are due by then
    cdef public bint stopped     # no more requests are read from this connection
    cdef public bint closed
    cdef bint pipeline_paused
    cdef bint write_paused
    cdef double last_activity
    cdef Py_ssize_t max_body
    cdef Py_ssize_t max_header_bytes
    # the message being parsed
    cdef bytes _url
    cdef dict _headers
    cdef list _body
    cdef Py_ssize_t _body_len
    cdef bint _in_head
    cdef Py_ssize_t _head_bytes
    cdef Py_ssize_t _head_chunk_bytes
    cdef Py_ssize_t _messages_begun
    cdef Py_ssize_t _messages_done
    cdef bint _keep_alive
    cdef bint _plain_ok          # the plain-request fast path is on (HttpServer(fast_path=...))
    # replies made while a chunk of input is parsed, written together at its end
    cdef bint _feeding
    cdef list _out
    cdef int fd                  # the plain TCP socket replies go straight to, or -1 (TLS, unknown)
    cdef bint via_transport      # the transport held unsent bytes at the last write: go through it

    def __init__(self, server):
        self.server = server
        self.router = server.router
        paths = getattr(self.router, "paths", None)
        self.paths = paths if type(paths) is dict else None
        observer = server.observer
        self.observer = None if isinstance(observer, dict) else observer
        self.counts = observer if isinstance(observer, dict) else None
        self.max_body = server.max_body
        self.max_header_bytes = server.max_header_bytes
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote = None
        self.queue = deque()
        self.worker = None
        self.stopped = False
        self.closed = False
        self.pipeline_paused = False
        self.write_paused = False
        self.drain_waiter = None
        self.last_activity = self.loop.time()
        self.idle_handle = None
        self.deadline_handle = None
        self._feeding = False
        self._out = []
        self.fd = -1
        self.via_transport = False
        self._reset_message()
        self._messages_begun = 0
        self._messages_done = 0
        self._plain_ok = getattr(server, "fast_path", True)

    cdef void _reset_message(self):
        self._url = None
        self._headers = {}
        self._body = []
        self._body_len = 0
        self._in_head = False
        self._head_bytes = 0
        self._head_chunk_bytes = 0
        self._keep_alive = True

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        self.remote = transport.get_extra_info("peername")
        if transport.get_extra_info("sslcontext") is None:
            sock = transport.get_extra_info("socket")
            try:
                self.fd = sock.fileno() if sock is not None else -1
            except Exception:
                self.fd = -1
        self.server._conns.add(self)
        self._arm_idle(self.server.idle_timeout)

    def connection_lost(self, exc):
        self.closed = True
        self.server._conns.discard(self)
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        self._wake_writer()

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        self._wake_writer()

    cdef void _wake_writer(self):
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        self.drain_waiter = None

    def eof_received(self):
        # The peer will send nothing more: answer what was already received, then close.
        self.stopped = True
        return self.worker is not None or bool(self.queue)

    def data_received(self, data):
        cdef bint was_in_head
        cdef Py_ssize_t begun
        if self.stopped:
            return
        self.last_activity = self.loop.time()
        self._feeding = True
        try:
            if self._plain_ok and self._messages_begun == self._messages_done:
                # httptools is between messages: take the plain requests at the front ourselves
                used = self._take_plain(data)
                if used == len(data):
                    return
                if used:
                    data = memoryview(data)[used:]
            was_in_head = self._in_head
            begun = self._messages_begun
            self.parser.feed_data(data)
        except _HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Abort):
                log.exception("HTTP parser callback failed", exc_info=exc.__context__ or exc)
                self._fail(400, "malformed HTTP request")
        except _HttpParserUpgrade:
            # An Upgrade request (for instance a WebSocket handshake sent to the API port): it is
            # answered like any request, then the connection closes; bytes after it are not HTTP.
            # (one answered at once already closed the connection: see on_message_complete)
            last = self.queue[len(self.queue) - 1] if self.queue else None
            if isinstance(last, Request):
                (<Request>last).keep_alive = False
            self._stop()
        except _HttpParserError:
            self._fail(400, "malformed HTTP request")
        else:
            if self._in_head and was_in_head and begun == self._messages_begun:
                # The whole chunk belongs to the header section of one message.
                self._head_chunk_bytes += len(data)
                self._check_head_size(False)
        finally:
            self._feeding = False
            self._flush_out()
            # a request begun and not complete (a trickling client): it has request_timeout in all
            if self._messages_begun != self._messages_done:
                if self.deadline_handle is None and not self.stopped:
                    self.deadline_handle = self.loop.call_later(self.server.request_timeout, self._on_deadline)
            elif self.deadline_handle is not None:
                self.deadline_handle.cancel()
                self.deadline_handle = None

    def _on_deadline(self):
        self.deadline_handle = None
        if self.closed or self.stopped or self._messages_begun == self._messages_done:
            return
        self.server.request_timeouts += 1
        self._fail(408, f"request head and body not received within {self.server.request_timeout:g} s")

    # -- plain requests, without httptools

    cdef Py_ssize_t _take_plain(self, object data) except -1:
        """Parse and dispatch the complete *plain* requests at the front of ``data``; returns the
        bytes used. Whatever is not plain (or not complete) is left to httptools, from its first byte.

        Plain: ``GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS /target HTTP/1.1``, the target printable ASCII
        without ``%`` or ``#``; header names of token characters, values printable ASCII (or tab);
        at most one Content-Length (digits, within ``max_body``); no Transfer-Encoding, Expect or
        Upgrade, Connection only ``keep-alive``; the head within ``max_header_bytes``; the body all
        here. What a program sends, in short: every other request, and every error, is httptools'.
        """
        cdef const unsigned char[:] view
        cdef const unsigned char* p
        cdef Py_ssize_t n
        cdef Py_ssize_t pos = 0, end
        if type(data) is bytes:  # what the loop hands over: no buffer view needed
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            view = data
            n = view.shape[0]
            p = &view[0] if n else NULL
        if n == 0:
            return 0
        while pos < n and not self.stopped and not self.closed:
            end = self._plain_one(p, n, pos, data)
            if end < 0:
                break
            pos = end
        return pos

    cdef Py_ssize_t _plain_one(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t start,
                               object data) except -2:
        """One plain request at ``p[start:]``: dispatched, and its end returned; -1 when it is not
        plain or not all here (nothing was consumed then)."""
        cdef Py_ssize_t i = start, j, k, m, name0, name1, val0, val1, head_end
        cdef Py_ssize_t limit = start + self.max_header_bytes
        cdef Py_ssize_t clen = -1, method_len, target0, target1, q = -1
        cdef unsigned char c
        cdef bint keep_alive = True
        cdef dict headers = {}
        cdef str key, val, prev
        cdef Request req
        if limit > n:
            limit = n
        # request line: METHOD SP target SP HTTP/1.1 CRLF
        while i < limit and b'A' <= p[i] <= b'Z':
            i += 1
        method_len = i - start
        if method_len < 3 or method_len > 7 or i >= limit or p[i] != b' ':
            return -1
        method = _plain_method(p + start, method_len)
        if method is None:
            return -1
        i += 1
        target0 = i
        if i >= limit or p[i] != b'/':
            return -1
        while i < limit:
            c = p[i]
            if c == b' ':
                break
            if c <= 0x20 or c >= 0x7f or c == b'%' or c == b'#':
                return -1
            if c == b'?' and q < 0:
                q = i
            i += 1
        target1 = i
        if i + 11 > limit or memcmp(p + i, b" HTTP/1.1\r\n", 11) != 0:
            return -1
        i += 11
        # header fields, up to the empty line
        while True:
            if i + 1 >= limit:
                return -1                       # not all here, or too big: httptools decides
            if p[i] == b'\r':
                if p[i + 1] != b'\n':
                    return -1
                head_end = i + 2
                break
            name0 = i
            while i < limit and _is_tchar(p[i]):
                i += 1
            name1 = i
            if name1 == name0 or i >= limit or p[i] != b':':
                return -1
            i += 1
            while i < limit and (p[i] == b' ' or p[i] == b'\t'):
                i += 1
            val0 = i
            while i < limit:
                c = p[i]
                if c == b'\r':
                    break
                if (c < 0x20 and c != b'\t') or c >= 0x7f:
                    return -1
                i += 1
            if i + 1 >= limit or p[i + 1] != b'\n':
                return -1
            val1 = i                            # trailing blanks kept, as httptools keeps them
            i += 2
            key = _lower_ascii(p + name0, name1 - name0)
            val = (<const char*>p)[val0:val1].decode("latin-1")
            if key == "content-length":
                if clen >= 0 or val1 == val0 or val1 - val0 > 18:
                    return -1
                clen = 0
                for k in range(val0, val1):
                    if not (b'0' <= p[k] <= b'9'):
                        return -1
                    clen = clen * 10 + (p[k] - 48)   # ASCII digit
                if clen > self.max_body:
                    return -1
            elif key == "transfer-encoding" or key == "expect" or key == "upgrade":
                return -1
            elif key == "connection":
                if val.lower() != "keep-alive":
                    return -1
            prev = headers.get(key)
            headers[key] = val if prev is None else f"{prev}, {val}"
        if clen < 0:
            clen = 0
        if head_end + clen > n:
            return -1                           # the body is still on its way
        req = Request.__new__(Request)
        req.method = method
        if q < 0:
            req.path = (<const char*>p)[target0:target1].decode("ascii")
            req.query_string = ""
        else:
            req.path = (<const char*>p)[target0:q].decode("ascii")
            req.query_string = (<const char*>p)[q + 1:target1].decode("ascii")
        req.headers = headers
        req.body = (<const char*>p)[head_end:head_end + clen] if clen else b""
        req.remote = self.remote
        req.version = "1.1"
        req.keep_alive = keep_alive
        req.route = None
        self._received(req)
        return head_end + clen

    # -- httptools callbacks

    def on_message_begin(self):
        self._messages_begun += 1
        self._reset_message()
        self._in_head = True

    def on_url(self, bytes url):
        self._url = url if self._url is None else self._url + url
        self._head_bytes += len(url)
        self._check_head_size(True)

    def on_header(self, bytes name, bytes value):
        self._head_bytes += len(name) + len(value) + 4
        self._check_head_size(True)
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        prev = self._headers.get(key)
        self._headers[key] = val if prev is None else f"{prev}, {val}"

    def on_headers_complete(self):
        self._in_head = False
        self._keep_alive = self.parser.should_keep_alive()
        cl = self._headers.get("content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                self._fail(400, "malformed HTTP request", True)
            if n > self.max_body:
                self._fail(413, f"request body exceeds {self.max_body} bytes", True)
        expect = self._headers.get("expect")
        if expect is not None and expect.lower() == "100-continue":
            # Answer the interim response only when nothing else is owed on this connection,
            # so that it cannot be taken for the reply to an earlier pipelined request.
            if not self.queue and self.worker is None and self.transport is not None:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._flush_out()

    def on_body(self, bytes body):
        self._body_len += len(body)
        if self._body_len > self.max_body:
            self._fail(413, f"request body exceeds {self.max_body} bytes", True)
        self._body.append(body)

    def on_message_complete(self):
        cdef bytes url = self._url if self._url is not None else b""
        cdef str path, query
        cdef Request req
        if _plain_target(url):
            # "/path?query" of printable ASCII without escapes: split here, no URL parser needed
            q = url.find(b"?")
            if q < 0:
                path = url.decode("ascii")
                query = ""
            else:
                path = url[:q].decode("ascii")
                query = url[q + 1:].decode("ascii")
        else:
            try:
                parsed = _parse_url(url)
            except _HttpParserInvalidURLError:
                self._fail(400, f"malformed request target {url[:200].decode('latin-1')!r}", True)
            path = unquote((parsed.path or b"/").decode("latin-1"), encoding="utf-8", errors="replace")
            query = (parsed.query or b"").decode("latin-1")
        body = self._body
        req = Request(
            self.parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
            self.remote,
            self.parser.get_http_version(),
            self._keep_alive,
        )
        if self.parser.should_upgrade():
            req.keep_alive = False  # answered, then the connection closes: what follows is not HTTP
        self._reset_message()
        self._messages_done += 1
        self._received(req)

    cdef void _received(self, Request req) except *:
        """A whole request: answer it now when nothing is ahead of it, else queue it."""
        if self.worker is None and not self.queue and not self.closed:
            # nothing ahead of it: answer now
            result = self._start(req)
            if isinstance(result, _Resume):
                self.worker = self.loop.create_task(self._work(req, result))
            else:
                self._reply(req, result)
            return
        self.queue.append(req)
        if len(self.queue) >= PIPELINE_HIGH and not self.pipeline_paused and self.transport is not None:
            self.pipeline_paused = True
            self.transport.pause_reading()
        self._ensure_worker()

    # -- answering

    cdef object _start(self, Request req):
        """Run ``req``'s handler as far as it goes without waiting: its Response, or a ``_Resume`` to
        await when it waits."""
        handler = self._resolve(req.method, req.path)
        if handler is None:
            return self._no_route(req)
        req.route = req.path
        try:
            result = handler(req)
            if isinstance(result, Response):
                return self._done(req, result)
            if not hasattr(result, "send"):
                if not hasattr(result, "__await__"):
                    return self._done(req, result)   # not a Response: _done answers 500
                result = _await(result)              # an awaitable that is not a coroutine
            try:
                waiting = result.send(None)
            except StopIteration as stop:
                return self._done(req, stop.value)
        except _CancelledError:
            raise
        except Exception as exc:
            return self._failed(req, exc)
        return _Resume(result, waiting)

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
            self._observe(req.path, resp.status)
        else:
            resp = error(404, f"no route for {req.method} {req.path}")
            self._observe(UNMATCHED, resp.status)
        return resp

    cdef object _done(self, Request req, object resp):
        if not isinstance(resp, Response):
            try:
                raise TypeError(f"handler for {req.method} {req.path} returned {type(resp).__name__}, not Response")
            except TypeError as exc:
                return self._failed(req, exc)
        self._observe(req.route, resp.status)
        return resp

    cdef object _failed(self, Request req, object exc):
        if isinstance(exc, HttpError):
            resp = exc.response()
        else:
            log.error("handler for %s %s failed", req.method, req.path, exc_info=exc)
            resp = error(500, "internal error")
        self._observe(req.route if req.route is not None else UNMATCHED, resp.status)
        return resp

    cdef void _observe(self, object route, int status):
        cdef dict counts
        if self.counts is not None:
            key = (route, status)
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

    cdef bint _reply(self, Request req, object resp):
        """Write the response to ``req``; False once the connection closes after it."""
        cdef bint keep_alive = req.keep_alive and not self.server._closing and not (self.stopped and not self.queue)
        self._write(encode_response(resp, keep_alive, req.method == "HEAD", req.version == "1.0"))
        self.last_activity = self.loop.time()
        if not keep_alive:
            self.queue.clear()
            self.stopped = True
            self._flush_out()
            self.transport.close()
            return False
        return True

    cdef void _write(self, bytes data):
        if self._feeding:
            self._out.append(data)
        elif self.transport is not None and not self.closed:
            self._send(data)

    cdef void _flush_out(self):
        cdef list out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None and not self.closed:
            self._send(data)

    cdef void _send(self, bytes data):
        """Write ``data``: straight to the socket when the transport holds nothing unsent (a reply is
        one small write: uvloop's write path costs more than the send() itself), the rest through the
        transport, which then owns the order until it has drained. Never once the transport is closing:
        its descriptor may already be closed and its number handed to another connection."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), r
        transport = self.transport
        if self.fd < 0 or transport.is_closing() or (
                self.via_transport and transport.get_write_buffer_size() != 0):
            transport.write(data)
            return
        self.via_transport = False
        while True:
            r = send(self.fd, PyBytes_AS_STRING(data), n, MSG_DONTWAIT | MSG_NOSIGNAL)
            if r >= 0 or errno != EINTR:
                break
        if r == n:
            return
        self.via_transport = True
        if r < 0:
            if errno != EAGAIN and errno != EWOULDBLOCK:
                # a reset or closed peer: the transport meets the error itself and closes its way
                transport.write(data)
                return
            r = 0
        transport.write(data[r:])

    async def _work(self, Request first_req=None, first=None):
        """Answer, in order, the request whose handler had to wait (``first``, its ``_Resume``) and the
        ones queued behind it."""
        cdef Request req = first_req
        result = first
        try:
            while not self.closed:
                if req is None:
                    if not self.queue:
                        break
                    item = self.queue.popleft()
                    if self.pipeline_paused and len(self.queue) <= PIPELINE_LOW and not self.stopped:
                        self.pipeline_paused = False
                        self.transport.resume_reading()
                    if isinstance(item, _Failure):
                        self._observe(UNMATCHED, (<_Failure>item).status)
                        self.transport.write(encode_response(
                            error((<_Failure>item).status, (<_Failure>item).message), False, False, False))
                        self._linger_close()
                        return
                    req = <Request>item
                    result = self._start(req)
                if isinstance(result, _Resume):
                    try:
                        resp = await result
                    except _CancelledError:
                        raise
                    except Exception as exc:
                        resp = self._failed(req, exc)
                    else:
                        resp = self._done(req, resp)
                else:
                    resp = result
                if self.closed or not self._reply(req, resp):
                    return
                req = None
                if self.write_paused:
                    self.drain_waiter = self.loop.create_future()
                    await self.drain_waiter
        except _CancelledError:
            raise
        except Exception:  # defensive: never leave a connection hanging
            log.exception("HTTP connection worker failed")
            if self.transport is not None:
                self.transport.abort()
        finally:
            self.worker = None

    # -- helpers

    cdef void _check_head_size(self, bint raise_) except *:
        cdef Py_ssize_t limit = self.max_header_bytes
        if self._head_bytes > limit or self._head_chunk_bytes > limit:
            self._fail(431, f"request header section exceeds {limit} bytes", raise_)

    cdef void _fail(self, int status, str message, bint raise_=False) except *:
        if not self.stopped:
            self.queue.append(_Failure(status, message))
            self._stop()
            self._ensure_worker()
        if raise_:
            raise _Abort()

    cdef void _stop(self):
        """Read nothing more from this connection."""
        self.stopped = True
        if self.transport is not None and not self.closed:
            try:
                self.transport.pause_reading()
            except RuntimeError:  # already closing
                pass

    def shutdown(self):
        """The server is stopping: close now when nothing is owed, else read nothing more and close
        after the last reply."""
        if self.worker is None and not self.queue and self.transport is not None:
            self.transport.close()
        else:
            self._stop()

    def abort(self):
        if self.transport is not None:
            self.transport.abort()

    cdef void _ensure_worker(self):
        if self.worker is None and self.queue and not self.closed:
            self.worker = self.loop.create_task(self._work())

    cdef void _arm_idle(self, double delay):
        if self.server.idle_timeout and self.server.idle_timeout > 0:
            self.idle_handle = self.loop.call_later(delay, self._on_idle)

    def _on_idle(self):
        self.idle_handle = None
        if self.closed:
            return
        if self.worker is not None or self.queue:
            self._arm_idle(self.server.idle_timeout)
            return
        quiet = self.loop.time() - self.last_activity
        if quiet >= self.server.idle_timeout:
            self.transport.close()
        else:
            self._arm_idle(self.server.idle_timeout - quiet)

    cdef void _linger_close(self):
        """Close after an error while the peer may still be sending (a big body, garbage).

        Closing a socket with unread input makes the kernel send RST, and the peer may lose the error
        response; so shut down our side, discard what still arrives, and close on the peer's EOF or
        after a short delay.
        """
        t = self.transport
        if t is None or self.closed:
            return
        self.queue.clear()
        self.stopped = True
        if t.can_write_eof():
            t.write_eof()
            try:
                t.resume_reading()
            except RuntimeError:
                pass
            self.loop.call_later(LINGER, t.close)
        else:  # TLS transports cannot half-close
            t.close()



async def _await(awaitable):
    return await awaitable


cdef bint _plain_target(bytes url):
    """An origin-form target ("/...") of printable ASCII with no percent-escape and no fragment."""
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(url)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(url)
    cdef unsigned char c
    if n == 0 or p[0] != b'/':
        return False
    for i in range(n):
        c = p[i]
        if c <= 0x20 or c >= 0x7f or c == b'%' or c == b'#':
            return False
    return True


cdef str _M_GET = "GET", _M_HEAD = "HEAD", _M_POST = "POST", _M_PUT = "PUT"
cdef str _M_DELETE = "DELETE", _M_PATCH = "PATCH", _M_OPTIONS = "OPTIONS"


cdef str _plain_method(const unsigned char* m, Py_ssize_t n):
    """The method's interned name, None for one the fast path leaves to httptools."""
    if n == 3 and memcmp(m, b"GET", 3) == 0:
        return _M_GET
    if n == 4 and memcmp(m, b"POST", 4) == 0:
        return _M_POST
    if n == 4 and memcmp(m, b"HEAD", 4) == 0:
        return _M_HEAD
    if n == 3 and memcmp(m, b"PUT", 3) == 0:
        return _M_PUT
    if n == 6 and memcmp(m, b"DELETE", 6) == 0:
        return _M_DELETE
    if n == 5 and memcmp(m, b"PATCH", 5) == 0:
        return _M_PATCH
    if n == 7 and memcmp(m, b"OPTIONS", 7) == 0:
        return _M_OPTIONS
    return None


cdef inline bint _is_tchar(unsigned char c):
    # RFC 9110 token characters
    if b'a' <= c <= b'z' or b'A' <= c <= b'Z' or b'0' <= c <= b'9':
        return True
    return c in b"!#$%&'*+-.^_`|~"


cdef dict _LOWER_CACHE = {}


cdef str _lower_ascii(const unsigned char* s, Py_ssize_t n):
    """A header name in lower case; the names a client repeats on every request are made once."""
    cdef bytes raw = (<const char*>s)[:n]
    cdef object hit = _LOWER_CACHE.get(raw)
    if hit is not None:
        return <str>hit
    name = raw.decode("latin-1").lower()
    if len(_LOWER_CACHE) < 256:
        _LOWER_CACHE[raw] = name
    return name
