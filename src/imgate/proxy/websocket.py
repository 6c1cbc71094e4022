"""The WebSocket transport of the proxy: the upgrade on ``/sub``, messages to goim frames, closing."""

from __future__ import annotations

from imgate.core import FrameDecoder, ProtocolError, WebSocketError, WebSocketParser, encode_ws_close
from imgate.proxy.channel import S_AUTH, S_CLOSING, S_HTTP, WS_BINARY, Channel, ws_binary
from imgate.protocol import notice


class WebSocketSide:
    """Part of :class:`~imgate.proxy.server.Proxy`: what differs for a WebSocket connection."""

    def _on_ws_data(self, ch: Channel, data) -> None:
        if ch.state == S_HTTP:
            if not ch.hs.feed(bytes(data)):
                return
            hs, ch.hs = ch.hs, None
            if hs.ok and hs.path != "/sub":
                body = f"no WebSocket endpoint at {hs.path}; use /sub".encode()
                self._send_direct(ch, b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                                  b"Connection: close\r\n\r\n%s" % (len(body), body))
                self._close_now(ch)
                return
            self._send_direct(ch, hs.response)
            if not hs.ok:
                self.stats_counters["protocol_errors"] += 1
                self._close_now(ch)
                return
            ch.state = S_AUTH
            ch.decoder = FrameDecoder(self.config.max_frame_body)
            ch.parser = WebSocketParser(self.config.max_frame_body + 16)
            self.table.add(ch, ch.sock, websocket=True)
            self.table.set_accepts(ch, ())  # no pushes before auth
            if not hs.leftover:
                return
            data = hs.leftover
        try:
            messages = ch.parser.feed(data)
        except WebSocketError as e:
            self.stats_counters["protocol_errors"] += 1
            self._close_ws(ch, f"protocol error: {e}", e.close_frame())
            return
        out = ch.parser.take_output()
        if out:
            self.table.send_raw(ch, out)
        frames = []
        for opcode, payload in messages:
            if opcode != WS_BINARY:
                self.stats_counters["protocol_errors"] += 1
                self._close_ws(ch, "protocol error: text messages are not supported; send binary goim frames",
                               encode_ws_close(1003, "binary frames only"))
                return
            try:
                frames.extend(ch.decoder.feed(payload))
            except ProtocolError as e:
                self.stats_counters["protocol_errors"] += 1
                self._close_ws(ch, f"protocol error: {e}", encode_ws_close(1002, "bad frame"))
                return
            if ch.decoder.buffered:
                self.stats_counters["protocol_errors"] += 1
                self._close_ws(ch, "protocol error: a WebSocket message must carry whole goim frames",
                               encode_ws_close(1002, "partial frame"))
                return
        if frames:
            self._on_frames(ch, frames)
        if ch.parser is not None and ch.parser.closed and ch.state != S_CLOSING:
            # the client said goodbye; its close was echoed through take_output above
            self.table.flush()
            self._lost(ch)

    def _close_ws(self, ch: Channel, reason: str, close_frame: bytes, reconnect: bool = False,
                  extra: dict | None = None) -> None:
        rest = b""
        if ch in self.table:
            rest = self.table.send_final(ch, ws_binary(notice(reason, reconnect, **(extra or {}))) + close_frame,
                                         raw=True)
        self._half_close(ch, rest)

    def _send_direct(self, ch: Channel, data: bytes) -> None:
        try:
            ch.sock.send(data)
        except OSError:
            pass
