"""Typing stubs for imgate._core.websocket (RFC 6455 server-side codec)."""
from collections.abc import Iterable, Mapping
from typing import Final

from typing_extensions import Buffer

WS_OP_CONT: Final[int]
WS_OP_TEXT: Final[int]
WS_OP_BINARY: Final[int]
WS_OP_CLOSE: Final[int]
WS_OP_PING: Final[int]
WS_OP_PONG: Final[int]
WS_GUID: Final[str]

class WebSocketError(ValueError):
    code: int
    messages: list[tuple[int, bytes]]
    def __init__(self, message: str, code: int = 1002) -> None: ...
    def close_frame(self) -> bytes: ...

class WebSocketParser:
    client: bool
    max_message: int
    closed: bool
    close_code: int | None
    close_reason: str
    last_pong: bytes | None
    pongs_received: int
    def __init__(self, max_message: int = 1048576, client: bool = False) -> None: ...
    @property
    def failed(self) -> bool: ...
    def feed(self, data: Buffer) -> list[tuple[int, bytes]]: ...
    def take_output(self) -> bytes: ...

class WebSocketHandshake:
    max_header_bytes: int
    complete: bool
    ok: bool
    status: int
    error: str | None
    response: bytes
    leftover: bytes
    method: str
    url: str
    path: str
    query: str
    http_version: str
    headers: dict[str, str]
    subprotocol: str | None
    def __init__(
        self,
        max_header_bytes: int = 8192,
        extra_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        subprotocols: Iterable[str] = (),
    ) -> None: ...
    def feed(self, data: Buffer) -> bool: ...

def ws_accept_key(key: str | bytes) -> str: ...
def encode_ws_frame(payload: Buffer | str, opcode: int = 2, fin: bool = True, mask: bytes | None = None) -> bytes: ...
def encode_ws_close(code: int | None = 1000, reason: str | bytes = "", mask: bytes | None = None) -> bytes: ...
def ws_unmask(data: Buffer, mask: Buffer, offset: int = 0) -> bytes: ...
def _copy_bytes(data: Buffer) -> bytes: ...
def _utf8_valid(data: Buffer) -> bool: ...
