"""Accepting connections and reading them: the listening sockets, the raw goim frames of TCP.

WebSocket connections are read here too and handed to :class:`~imgate.proxy.websocket.WebSocketSide`
once bytes arrive; decoded frames go to :class:`~imgate.proxy.operations.Operations`.
"""

from __future__ import annotations

import json
import logging
import socket
import time

from imgate.core import FrameDecoder, ProtocolError, WebSocketHandshake, encode_frame
from imgate.protocol.ops import OP_DISCONNECT_REPLY
from imgate.proxy.channel import S_CLOSING, S_OPEN, Channel
from imgate.proxy.limits import TOO_MANY_CONNECTIONS

log = logging.getLogger("imgate.proxy")


class Listener:
    """Part of :class:`~imgate.proxy.server.Proxy`: accept and read."""

    def _listen(self, host: str, port: int, ws: bool) -> int:
        # workers share the port; the kernel spreads the connections among them
        sock = socket.create_server((host, port), backlog=4096, reuse_port=self.config.reuse_port)
        sock.setblocking(False)
        self._listeners.append(sock)
        self.loop.add_reader(sock.fileno(), self._on_accept, sock, ws)
        return sock.getsockname()[1]

    def _on_accept(self, lsock: socket.socket, ws: bool) -> None:
        now = time.monotonic()
        for _ in range(128):  # bounded per callback so a storm cannot starve the loop
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE/ENFILE: the listener stays readable, so pause it instead of spinning;
                # the kernel's backlog holds the waiting clients meanwhile
                log.warning("accept failed: %s; pausing accepts for 0.5 s", e)
                self.loop.remove_reader(lsock.fileno())
                self.loop.call_later(0.5, self._resume_accept, lsock, ws)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ip = addr[0] if isinstance(addr, tuple) else ""
            if not self.limits.admit(ip, self._ips.get(ip, 0)):
                self._refuse(sock, ws)
                continue
            self._adopt(sock, ws, ip, now)

    def _adopt(self, sock: socket.socket, ws: bool, ip: str, now: float) -> None:
        """Serve an accepted, non-blocking socket (or the plaintext end of a TLS connection, see
        ``imgate.proxy.tls``) as a client connection from ``ip``."""
        ch = Channel(sock, ws, ip, now + self.config.handshake_timeout)
        if ws:
            ch.hs = WebSocketHandshake()
        else:
            ch.decoder = FrameDecoder(self.config.max_frame_body)
            self.table.add(ch, sock)
            self.table.set_accepts(ch, ())  # no pushes before auth; replies (op -1) still pass
        self._channels.add(ch)
        self._unopened.add(ch)
        self._ips[ip] = self._ips.get(ip, 0) + 1
        self.stats_counters["accepted"] += 1
        self.loop.add_reader(ch.fd, self._on_readable, ch)

    @staticmethod
    def _refusal(ws: bool) -> bytes:
        """What a connection over the per-address limit is told: op 6, or HTTP 429 for WebSocket."""
        body = json.dumps({"reason": TOO_MANY_CONNECTIONS, "reconnect": False}).encode()
        if ws:
            return (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        return encode_frame(OP_DISCONNECT_REPLY, 0, body)

    def _refuse(self, sock: socket.socket, ws: bool) -> None:
        """A connection over the per-address limit: the refusal into the fresh (empty) socket buffer,
        then close; it never becomes a channel."""
        self.stats_counters["ip_limit_refusals"] += 1
        try:
            sock.send(self._refusal(ws))
        except OSError:
            pass
        sock.close()

    def _resume_accept(self, lsock: socket.socket, ws: bool) -> None:
        if not self._stopping and lsock.fileno() >= 0:
            self.loop.add_reader(lsock.fileno(), self._on_accept, lsock, ws)

    def _on_readable(self, ch: Channel) -> None:
        try:
            n = ch.sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if n == 0:
            self._lost(ch)
            return
        self.stats_counters["bytes_in"] += n
        data = self._rview[:n]
        if ch.state == S_CLOSING:
            return  # draining: the peer's last bytes are discarded
        ch.last_seen = time.monotonic()
        if ch.ws:
            self._on_ws_data(ch, data)
        else:
            self._on_tcp_data(ch, data)

    def _on_tcp_data(self, ch: Channel, data) -> None:
        try:
            frames = ch.decoder.feed(data)
        except ProtocolError as e:
            self.stats_counters["protocol_errors"] += 1
            if e.frames and ch.state == S_OPEN:
                self._on_frames(ch, e.frames)  # what came before the bad header still counts
            self.close(ch, f"protocol error: {e}", reconnect=False)
            return
        self._on_frames(ch, frames)
