"""The HTTP/1.1 connection of imgate.http.server, compiled: the per-request path of the logic API.

Plain requests (what programs send) are parsed by ``_plain.pyx``; anything else goes to httptools
(llhttp), whose callbacks (``_httptools.pyx``, this type's base) collect it, so the request head is
collected without interpreted code either way. Then, per request:

- a handler is started at once when nothing is ahead of it on the connection (``_dispatch.pyx``);
  when it waits, it is handed to a task (``Resume``), and the requests behind it queue up and are
  answered in order by that task;
- the replies made while one chunk of input is parsed go out in one ``write`` (``_reply.pyx``
  encodes them), straight to the socket when the transport holds nothing unsent.

Everything else (limits, errors, pipelining, idle timeout, half-close) keeps the semantics described in
imgate/http/server.py, which owns the server object this protocol serves.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from imgate.cache._memory cimport clock_now
from imgate._core.includes.system cimport (
    send, MSG_DONTWAIT, MSG_NOSIGNAL, errno, EAGAIN, EWOULDBLOCK, EINTR,
)
from imgate.http._dispatch cimport Dispatcher, Resume
from imgate.http._httptools cimport HttptoolsCallbacks
from imgate.http._plain cimport PlainMemo, parse_plain
from imgate.http._reply cimport encode_response
from imgate.http._request cimport Request

import asyncio
import logging
import time
from collections import deque

import httptools

from imgate.http import _reply, _request
from imgate.http._dispatch import UNMATCHED
from imgate.http.messages import error

__all__ = ["HttpProtocol", "Request", "UNMATCHED", "encode_response"]
# names defined here before the split, still importable from here (a cimported name is not a global)
globals().update(Request=_request.Request, encode_response=_reply.encode_response)

log = logging.getLogger("imgate.http")

# Pipelined requests waiting for their turn before the server stops reading from the connection.
DEF PIPELINE_HIGH = 32
DEF PIPELINE_LOW = 8
# Seconds an errored connection keeps discarding input before it closes (see _linger_close).
DEF LINGER = 2.0

cdef object _HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object _HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object _HttpParserError = httptools.HttpParserError
cdef object _CancelledError = asyncio.CancelledError
# last_activity's clock, read in C (the loop's time() is a Python call, twice per request)
cdef object _MONOTONIC = time.monotonic


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
cdef class HttpProtocol(HttptoolsCallbacks):
    """One HTTP connection of an :class:`imgate.http.server.HttpServer` (an ``asyncio.Protocol``)."""

    cdef object server
    cdef Dispatcher dispatch     # runs the handlers, counts the answers
    cdef object loop
    cdef object transport
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
    cdef bint _plain_ok          # the plain-request fast path is on (HttpServer(fast_path=...))
    cdef PlainMemo _memo         # its last path and header block, parsed
    cdef bint server_closing     # the server is stopping: replies say Connection: close
    cdef object _is_closing      # transport.is_closing, bound once
    # replies made while a chunk of input is parsed, written together at its end
    cdef bint _feeding
    cdef list _out
    cdef int fd                  # the plain TCP socket replies go straight to, or -1 (TLS, unknown)
    cdef bint via_transport      # the transport held unsent bytes at the last write: go through it

    def __init__(self, server):
        self.server = server
        self.dispatch = Dispatcher(server.router, server.observer)
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
        self.last_activity = clock_now(_MONOTONIC)
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
        self._memo = PlainMemo()
        self.server_closing = server._closing
        self._is_closing = None

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        self._is_closing = transport.is_closing
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
        cdef Py_ssize_t begun, used
        if self.stopped:
            return
        self.last_activity = clock_now(_MONOTONIC)
        self._feeding = True
        try:
            if self._plain_ok and self._messages_begun == self._messages_done:
                # httptools is between messages: take the plain requests at the front ourselves
                used = self._take_plain(data)
                if used == (PyBytes_GET_SIZE(data) if type(data) is bytes else len(data)):
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
            # (one answered at once already closed the connection: see on_message_complete, _httptools.pyx)
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
        """Dispatch the complete plain requests at the front of ``data`` (see ``_plain.pyx``); returns
        the bytes used. What is not plain (or not complete) is left to httptools, from its first byte."""
        cdef const unsigned char[:] view
        cdef const unsigned char* p
        cdef Py_ssize_t n, end, pos = 0
        cdef Request req
        if type(data) is bytes:  # what the loop hands over: no buffer view needed
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            view = data
            n = view.shape[0]
            p = &view[0] if n else NULL
        while pos < n and not self.stopped and not self.closed:
            req = parse_plain(p, n, pos, self.max_header_bytes, self.max_body, &end, self._memo)
            if req is None:
                break
            req.remote = self.remote
            self._received(req)
            pos = end
        return pos

    # -- a whole request, plain or by httptools

    cdef void _received(self, Request req) except *:
        """A whole request: answer it now when nothing is ahead of it, else queue it."""
        if self.worker is None and not self.queue and not self.closed:
            # nothing ahead of it: answer now
            result = self.dispatch.start(req)
            if isinstance(result, Resume):
                self.worker = self.loop.create_task(self._work(req, result))
            else:
                self._reply(req, result)
            return
        self.queue.append(req)
        if len(self.queue) >= PIPELINE_HIGH and not self.pipeline_paused and self.transport is not None:
            self.pipeline_paused = True
            self.transport.pause_reading()
        self._ensure_worker()

    cdef void _continue(self) except *:
        # the interim response only when nothing else is owed on this connection, so that it cannot
        # be taken for the reply to an earlier pipelined request
        if not self.queue and self.worker is None and self.transport is not None:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._flush_out()

    # -- answering

    cdef bint _reply(self, Request req, object resp):
        """Write the response to ``req``; False once the connection closes after it."""
        cdef bint keep_alive = req.keep_alive and not self.server_closing and not (self.stopped and not self.queue)
        self._write(encode_response(resp, keep_alive, req.method == "HEAD", req.version == "1.0"))
        if not self._feeding:  # (while a read is parsed, data_received has just set it)
            self.last_activity = clock_now(_MONOTONIC)
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
        if self.fd < 0 or self._is_closing() or (
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
        """Answer, in order, the request whose handler had to wait (``first``, its ``Resume``) and the
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
                        self.dispatch.observe(UNMATCHED, (<_Failure>item).status)
                        self.transport.write(encode_response(
                            error((<_Failure>item).status, (<_Failure>item).message), False, False, False))
                        self._linger_close()
                        return
                    req = <Request>item
                    result = self.dispatch.start(req)
                if isinstance(result, Resume):
                    try:
                        resp = await result
                    except _CancelledError:
                        raise
                    except Exception as exc:
                        resp = self.dispatch.failed(req, exc)
                    else:
                        resp = self.dispatch.done(req, resp)
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
        self.server_closing = True
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
        quiet = clock_now(_MONOTONIC) - self.last_activity
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
