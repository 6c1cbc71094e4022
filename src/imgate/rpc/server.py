"""The server end of the internal RPC: one service's methods on a TCP port."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from google.protobuf.message import DecodeError, Message

from imgate.core import FrameDecoder, ProtocolError, encode_frame
from imgate.protocol import pb
from imgate.rpc.wire import (
    DEFAULT_MAX_BODY, DEFAULT_WRITE_BATCH, ERROR_OP, REPLY_FLAG, REQUEST_TYPES,
    RpcError, error_body, method_name, tune,
)

log = logging.getLogger("imgate.rpc")

Handler = Callable[[Any], "Message | bytes | None | Awaitable[Message | bytes | None]"]


class _ServerConn(asyncio.Protocol):
    """One accepted connection of an RpcServer."""

    def __init__(self, server: "RpcServer"):
        self.server = server
        self.loop = server._loop
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(max_body=server.max_body)
        self.peer = "?"
        self.client_id = ""
        self.greeted = False
        self.closed = False
        self.wbuf: list[bytes] = []
        self.flush_scheduled = False
        self.tasks: set[asyncio.Task] = set()
        self.paused_write = False
        self.paused_busy = False
        self.hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = tune(transport)
        self.server._conns.add(self)
        self.hello_timer = self.loop.call_later(self.server.hello_timeout, self._hello_expired)

    def _hello_expired(self) -> None:
        self.hello_timer = None
        if not self.greeted:
            log.info("rpc %s: %s sent no HELLO within %ss", self.server.service, self.peer, self.server.hello_timeout)
            self.abort()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as e:
            # a byte stream cannot be resynchronised: drop this connection only
            self.server.protocol_errors += 1
            log.warning("rpc %s: protocol error from %s: %s; closing that connection", self.server.service, self.peer, e)
            self.abort()
            return
        for f in frames:
            if self.closed:
                return
            if not self.greeted:
                self._hello(f)
            else:
                self._dispatch(f)

    def _hello(self, f) -> None:
        srv = self.server
        if f.op != pb.HELLO:
            self._reject(f.seq, "bad_request", f"the first frame must be HELLO ({pb.HELLO}), got op {f.op}")
            return
        try:
            hello = pb.Hello.FromString(f.body)
        except DecodeError as e:
            self._reject(f.seq, "bad_request", f"undecodable HELLO: {e}")
            return
        if hello.service != srv.service:
            self._reject(f.seq, "wrong_service",
                         f"this port serves {srv.service!r}, not {hello.service!r}")
            return
        if hello.server_id and srv.server_id and hello.server_id != srv.server_id:
            self._reject(f.seq, "wrong_service",
                         f"this is server {srv.server_id!r}, the client expected {hello.server_id!r}")
            return
        self.greeted = True
        self.client_id = hello.client_id
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        self._write(encode_frame(pb.HELLO | REPLY_FLAG, f.seq, pb.HelloReply(
            service=srv.service, server_id=srv.server_id, max_body=srv.max_body).SerializeToString()))

    def _reject(self, seq: int, kind: str, message: str) -> None:
        self.server.rejected += 1
        log.warning("rpc %s: rejecting %s: %s", self.server.service, self.peer, message)
        self._write(encode_frame(ERROR_OP, seq, error_body(kind, message)))
        self._flush()
        self.closed = True
        self.transport.close()  # after the error reply is written

    def _dispatch(self, f) -> None:
        srv = self.server
        op = f.op
        seq = f.seq
        entry = srv._methods.get(op)
        if entry is None:
            self._write(encode_frame(ERROR_OP, seq, error_body(
                "unimplemented", f"{srv.service} has no {method_name(op)} (op {op})")))
            return
        handler, req_type = entry
        if req_type is not None:
            try:
                req = req_type.FromString(f.body)
            except DecodeError as e:
                self._write(encode_frame(ERROR_OP, seq, error_body(
                    "bad_request", f"undecodable {req_type.__name__}: {e}")))
                return
        else:
            req = f.body
        srv.requests += 1
        try:
            res = handler(req)
        except Exception as e:
            self._reply_exc(op, seq, e)
            return
        if res is None or isinstance(res, (Message, bytes)):
            self._reply(op, seq, res)
            return
        # a coroutine (async handler): run it as its own task, so replies may overtake each other
        task = self.loop.create_task(self._finish(op, seq, res))
        tasks = self.tasks
        tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(tasks) >= srv.max_concurrency and not self.paused_busy:
            self.paused_busy = True
            self.transport.pause_reading()

    def _task_done(self, task) -> None:
        self.tasks.discard(task)
        self.server._orphans.discard(task)
        if self.paused_busy and len(self.tasks) <= self.server.max_concurrency // 2:
            self.paused_busy = False
            if not self.paused_write and not self.closed:
                self.transport.resume_reading()

    async def _finish(self, op: int, seq: int, aw) -> None:
        try:
            res = await aw
        except asyncio.CancelledError:
            if not self.closed:
                self._write(encode_frame(ERROR_OP, seq, error_body("unavailable", "server shutting down")))
            raise
        except Exception as e:
            self._reply_exc(op, seq, e)
            return
        self._reply(op, seq, res)

    def _reply(self, op: int, seq: int, res) -> None:
        if res is None:
            body = b""
        elif isinstance(res, bytes):
            body = res
        else:
            body = res.SerializeToString()
        self._write(encode_frame(op | REPLY_FLAG, seq, body))

    def _reply_exc(self, op: int, seq: int, e: BaseException) -> None:
        srv = self.server
        if isinstance(e, RpcError):
            kind, code = e.kind, e.code
        else:
            kind, code = None, None
            for etype, k in srv.error_kinds:
                if isinstance(e, etype):
                    kind = k
                    break
            if kind is None:
                if isinstance(e, ValueError):
                    kind = "bad_request"
                else:
                    kind = "internal"
                    srv.handler_errors += 1
                    log.error("rpc %s: %s handler failed", srv.service, method_name(op), exc_info=e)
        self._write(encode_frame(ERROR_OP, seq, error_body(kind, str(e) or type(e).__name__, code)))

    def _write(self, frame: bytes) -> None:
        if self.closed:
            return
        wbuf = self.wbuf
        wbuf.append(frame)
        if len(wbuf) >= self.server.write_batch:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        buf = self.wbuf
        if not buf or self.transport is None:
            return
        self.wbuf = []
        if not self.transport.is_closing():
            self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def pause_writing(self) -> None:
        # the client is not reading its replies: stop reading its requests (TCP pushes back)
        self.paused_write = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused_write = False
        if not self.paused_busy and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.wbuf = []
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        self.server._conns.discard(self)
        # requests in progress run to completion (their replies are dropped): a batch of disconnects
        # sent by a proxy that then went away must still be applied, and a half-run handler could leave
        # state half-made. RpcServer.stop() cancels what is left after its grace period.
        if self.tasks:
            self.server._orphans.update(self.tasks)


class RpcServer:
    """Serves one service's methods on a TCP port.

    ``handlers`` maps a method id (``imgate_pb2.CONNECT``, ...) to a callable taking the decoded request
    message (raw bytes for a method absent from REQUEST_TYPES) and returning the reply message (or bytes,
    or None for an empty body) -- or a coroutine of it: async handlers run as tasks, so their replies may
    overtake each other; plain functions are answered inline. A handler's exception becomes an error reply
    (kind from RpcError.kind, else ``error_kinds``, else ``bad_request`` for ValueError, else
    ``internal``) and the connection keeps serving. A malformed frame closes only its connection.
    """

    def __init__(self, service: str, handlers: dict[int, Handler], *, server_id: str = "",
                 max_body: int = DEFAULT_MAX_BODY, max_concurrency: int = 4096, hello_timeout: float = 5.0,
                 write_batch: int = DEFAULT_WRITE_BATCH,
                 error_kinds: dict[type, str] | None = None, request_types: dict[int, type | None] | None = None):
        self.service = service
        self.server_id = server_id
        self.max_body = max_body
        self.max_concurrency = max_concurrency
        self.hello_timeout = hello_timeout
        self.write_batch = max(1, write_batch)
        self.error_kinds = list((error_kinds or {}).items())
        types = dict(REQUEST_TYPES)
        if request_types:
            types.update(request_types)
        self._methods: dict[int, tuple] = {}
        handlers = dict(handlers)
        handlers.setdefault(pb.PING, lambda req: pb.Empty())
        for method, handler in handlers.items():
            method = int(method)
            if method == pb.HELLO or method & (REPLY_FLAG | ERROR_OP) or method <= 0:
                raise ValueError(f"method id {method} is reserved")
            self._methods[method] = (handler, types.get(method))
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[_ServerConn] = set()
        self._orphans: set[asyncio.Task] = set()  # requests whose connection closed before the reply
        self.port = 0
        self.host = ""
        self.path = ""  # a unix socket's, when it listens on one
        self.requests = 0
        self.rejected = 0
        self.protocol_errors = 0
        self.handler_errors = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, reuse_port: bool = False,
                    ssl=None, path: str = "") -> "RpcServer":
        """Listen on host:port, or on the unix socket ``path`` (its directory decides who may connect);
        ``ssl``: a server ``SSLContext`` for TLS (``imgate.rpc.tls``)."""
        self._loop = asyncio.get_running_loop()
        if path:
            self._server = await self._loop.create_unix_server(lambda: _ServerConn(self), path, backlog=1024, ssl=ssl)
            self.path = path
            log.info("rpc %s listening on unix:%s", self.service, path)
            return self
        self._server = await self._loop.create_server(
            lambda: _ServerConn(self), host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024,
            ssl=ssl)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        log.info("rpc %s listening on %s:%d", self.service, self.host, self.port)
        return self

    @property
    def addr(self) -> str:
        if self.path:
            return "unix:" + self.path
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening and close every connection; with ``grace``, first wait up to that many seconds
        for requests in progress to be answered."""
        if self._server is not None:
            self._server.close()
        if grace > 0:
            tasks = [t for c in self._conns for t in c.tasks] + list(self._orphans)
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
        for t in list(self._orphans):
            t.cancel()
        self._orphans.clear()
        for c in list(self._conns):
            c._flush()
            c.closed = True
            for t in list(c.tasks):
                t.cancel()
            if c.transport is not None:
                c.transport.close()
        self._conns.clear()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
            self._server = None


class RpcService:
    """Base of a service exposed over RPC: subclasses set SERVICE and return their handlers."""

    SERVICE = ""
    server: RpcServer

    def handlers(self) -> dict:
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl=None, path: str = "") -> RpcServer:
        return await self.server.start(host, port, ssl=ssl, path=path)

    async def stop(self, grace: float = 0.0) -> None:
        await self.server.stop(grace)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def addr(self) -> str:
        return self.server.addr
