"""The receive path: bytes in -> goim frames -> ``Client._dispatch``, over TCP or WebSocket."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from imgate.client.errors import ClientError
from imgate.client.websocket import MAX_RESPONSE_HEAD, check_upgrade_response
from imgate.core import (
    WS_OP_BINARY, WS_OP_TEXT, FrameDecoder, ProtocolError, WebSocketError, WebSocketParser, ws_accept_key,
)

if TYPE_CHECKING:
    from imgate.client.connection import Client


class _Protocol(asyncio.Protocol):
    """Bytes in -> frames -> Client._dispatch. TCP, or WebSocket (handshake, then frames)."""

    def __init__(self, client: Client, max_body: int, ws_key: str | None):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(max_body)
        self.failed = False
        # WebSocket state (ws_key is None over TCP)
        self.ws = ws_key is not None
        self.ws_expected_accept = ws_key and ws_accept_key(ws_key)
        self.ws_head: bytearray | None = bytearray() if self.ws else None
        self.ws_parser = WebSocketParser(max_body + 16, client=True) if self.ws else None
        self.ws_closed = False
        # resolved once the 101 is checked (made here: the response may come with connection_made)
        self.handshake: asyncio.Future | None = client._loop.create_future() if self.ws else None

    # asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.failed:
            return
        if not self.ws:
            try:
                frames = self.decoder.feed(data)
            except ProtocolError as e:
                self.fail(f"protocol error: {e}")
                return
            if frames:
                self.client._dispatch(frames)
            return
        if self.ws_head is not None:
            data = self._handshake_data(data)
            if not data:
                return
        if not self.ws_closed:
            self._ws_feed(data)

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc):
        hs = self.handshake
        if hs is not None and not hs.done():
            hs.set_exception(ClientError("connection closed during the websocket upgrade"
                                         + (f": {exc}" if exc else "")))
        self.client._on_lost(exc)

    def pause_writing(self):
        self.client._write_paused = True

    def resume_writing(self):
        self.client._resume_writing()

    # failure -------------------------------------------------------------------------------
    def fail(self, reason: str):
        """A violation by the server: the stream cannot be trusted any more; drop it."""
        if self.failed:
            return
        self.failed = True
        self.client._fail_reason = reason
        hs = self.handshake
        if hs is not None and not hs.done():
            hs.set_exception(ClientError(reason))
        if self.transport is not None:
            self.transport.abort()

    # WebSocket -----------------------------------------------------------------------------
    def _handshake_data(self, data: bytes) -> bytes:
        head = self.ws_head
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_RESPONSE_HEAD:
                self.fail(f"websocket upgrade: response head is over {MAX_RESPONSE_HEAD} bytes")
            return b""
        self.ws_head = None
        rest = bytes(head[end + 4:])
        error = check_upgrade_response(bytes(head[:end]), rest, self.ws_expected_accept)
        if error:
            self.fail(error)
            return b""
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_result(None)
        return rest


    def _ws_feed(self, data) -> None:
        """The server's frames, parsed by the core codec; data messages go to the frame decoder."""
        parser = self.ws_parser
        try:
            messages = parser.feed(data)
        except WebSocketError as e:
            self.fail(f"websocket: {e}")
            return
        for opcode, payload in messages:
            if opcode == WS_OP_BINARY or opcode == WS_OP_TEXT:
                self._on_message(payload)
                if self.failed:
                    return
        replies = parser.take_output()  # pongs, and the echo of a close
        if replies and not self.client._ws_close_sent:
            self.client._ws_close_sent = parser.closed
            self.transport.write(replies)
        if parser.closed:
            self._on_close()

    def _on_message(self, payload) -> None:
        """One WebSocket message: exactly one goim frame."""
        try:
            frames = self.decoder.feed(payload)
        except ProtocolError as e:
            self.fail(f"protocol error: {e}")
            return
        if len(frames) != 1 or self.decoder.buffered:
            self.fail(f"protocol error: a websocket message must carry exactly one frame "
                      f"({len(payload)} bytes gave {len(frames)} whole frames)")
            return
        self.client._dispatch(frames)

    def _on_close(self) -> None:
        self.ws_closed = True
        client = self.client
        parser = self.ws_parser
        client.ws_close_code = parser.close_code if parser.close_code is not None else 1005
        client.ws_close_reason = parser.close_reason
        # the server closes the TCP connection first (RFC 6455 7.1.1); don't wait for it
        self.transport.close()
