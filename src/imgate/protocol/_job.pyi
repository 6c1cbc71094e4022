KIND_CONNS: str
KIND_ROOM: str
KIND_ALL: str
KIND_JOIN: str
KIND_LEAVE: str

class PushJob:
    kind: str
    op: int
    body: bytes
    server: str
    conn_ids: list[int]
    room_id: str
    speed: int
    def __init__(self, kind: str, op: int, body: bytes, server: str = "", conn_ids: list[int] | None = None,
                 room_id: str = "", speed: int = 0) -> None: ...
    def ordering_key(self) -> str: ...
