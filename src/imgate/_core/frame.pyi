from typing import Iterable

OP_HANDSHAKE: int
OP_HANDSHAKE_REPLY: int
OP_HEARTBEAT: int
OP_HEARTBEAT_REPLY: int
OP_SEND_MSG: int
OP_SEND_MSG_REPLY: int
OP_DISCONNECT_REPLY: int
OP_AUTH: int
OP_AUTH_REPLY: int
OP_RAW: int
OP_PROTO_READY: int
OP_PROTO_FINISH: int
OP_CHANGE_ROOM: int
OP_CHANGE_ROOM_REPLY: int
OP_SUB: int
OP_SUB_REPLY: int
OP_UNSUB: int
OP_UNSUB_REPLY: int
OP_JOIN_ROOM: int
OP_JOIN_ROOM_REPLY: int
OP_LEAVE_ROOM: int
OP_LEAVE_ROOM_REPLY: int
HEADER_SIZE: int
DEFAULT_MAX_BODY: int

class ProtocolError(ValueError):
    frames: list[Frame]

def encode_frame(op: int, seq: int, body: bytes | bytearray | memoryview | str = b"", ver: int = 1) -> bytes: ...
def encode_batch(frames: Iterable[bytes | bytearray | memoryview], seq: int = 0, ver: int = 1) -> bytes: ...

class Frame:
    @property
    def ver(self) -> int: ...
    @property
    def op(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    def __init__(self, op: int, seq: int = 0, body: bytes = b"", ver: int = 1) -> None: ...
    def encode(self) -> bytes: ...

class FrameDecoder:
    def __init__(self, max_body: int = 65536) -> None: ...
    @property
    def max_body(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]: ...
