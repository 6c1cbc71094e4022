"""TLS for the client listeners: WebSocket over TLS (``wss://``, :3103) and goim TCP over TLS.

asyncio terminates TLS (``loop.create_server(ssl=...)``); each connection's plaintext then travels
through a socketpair whose other end the proxy serves exactly like an accepted socket
(``Proxy._adopt``). So the hot path (the room table writing straight to a socket, reading with
``add_reader``, the limits, the close notices) is one code for plain and TLS connections; TLS costs one
more copy and a pair of syscalls per read and per write, small beside the encryption itself.

Back-pressure runs end to end: while the TLS transport's buffer is full, the bridge stops taking bytes
from the socketpair, the pair fills, and the proxy sees a slow consumer as on a plain socket.

:class:`ServerTls` holds the certificate and key files and one ``SSLContext``; ``reload()`` (the node
calls it on SIGHUP) loads the files again into the same context: new handshakes use the new pair,
connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

log = logging.getLogger("imgate.tls")


class ServerTls:
    """A server certificate and key, loaded into one ``SSLContext`` (TLS 1.2 or newer)."""

    def __init__(self, cert: str, key: str):
        self.cert, self.key = cert, key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.reloads = 0
        self.context.load_cert_chain(cert, key)

    @classmethod
    def from_config(cls, config) -> "ServerTls | None":
        if not config.tls_cert:
            return None
        return cls(config.tls_cert, config.tls_key)

    def reload(self) -> bool:
        """Read the files again; on an error the old pair stays in use (and the error is logged)."""
        try:
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            log.error("TLS reload failed, keeping the old certificate: %s", e)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert)
        return True


class _Bridge(asyncio.Protocol):
    """One TLS connection: its transport on one side, the proxy's end of a socketpair on the other."""

    def __init__(self, proxy, ws: bool):
        self.proxy = proxy
        self.ws = ws
        self.loop = proxy.loop
        self.transport = None
        self.inner: socket.socket | None = None
        self.to_proxy = b""        # client bytes the full socketpair has not taken yet
        self.reading_inner = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else ""
        proxy = self.proxy
        if not proxy.limits.admit(ip, proxy._ips.get(ip, 0)):
            proxy.stats_counters["ip_limit_refusals"] += 1
            transport.write(proxy._refusal(self.ws))
            transport.close()
            return
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self.inner = ours
        proxy._adopt(theirs, self.ws, ip, time.monotonic())
        self._read_inner(True)

    def _read_inner(self, on: bool) -> None:
        if self.inner is None or on == self.reading_inner:
            return
        self.reading_inner = on
        if on:
            self.loop.add_reader(self.inner.fileno(), self._from_proxy)
        else:
            self.loop.remove_reader(self.inner.fileno())

    def _from_proxy(self) -> None:
        try:
            data = self.inner.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.transport.write(data)
            return
        # the proxy closed its side (after its op-6 notice): TLS cannot half-close, so close once
        # what is buffered has gone out
        self._close_inner()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.to_proxy:
            self.to_proxy += data
            return
        self._push(data)

    def _push(self, data: bytes) -> None:
        try:
            n = self.inner.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.transport.close()
            return
        if n < len(data):
            # the proxy is not reading (auth pending, or it is slow): hold the rest, stop reading TLS
            self.to_proxy = data[n:]
            self.transport.pause_reading()
            self.loop.add_writer(self.inner.fileno(), self._drain_to_proxy)

    def _drain_to_proxy(self) -> None:
        data, self.to_proxy = self.to_proxy, b""
        self.loop.remove_writer(self.inner.fileno())
        self._push(data)
        if not self.to_proxy and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._read_inner(False)   # the socketpair fills; the proxy sees a slow consumer

    def resume_writing(self) -> None:
        self._read_inner(True)

    def eof_received(self) -> bool:
        if self.inner is not None:
            try:
                self.inner.shutdown(socket.SHUT_WR)   # the proxy reads EOF: the client left
            except OSError:
                pass
        return True

    def connection_lost(self, exc) -> None:
        self._close_inner()

    def _close_inner(self) -> None:
        if self.inner is None:
            return
        self._read_inner(False)
        if self.to_proxy:
            self.loop.remove_writer(self.inner.fileno())
            self.to_proxy = b""
        self.inner.close()
        self.inner = None


async def listen(proxy, tls: ServerTls, host: str, port: int, ws: bool) -> asyncio.base_events.Server:
    """A TLS listener whose connections the proxy serves (WebSocket when ``ws``, else goim TCP)."""
    return await proxy.loop.create_server(lambda: _Bridge(proxy, ws), host, port, ssl=tls.context,
                                          reuse_address=True, backlog=4096)
