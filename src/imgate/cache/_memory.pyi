from typing import Any

FIELDS: tuple[str, ...]

class Session:
    conn_id: int
    mid: int
    key: str
    server: str
    room_id: str
    platform: str
    connected_at: float
    expires_at: float
    def __init__(self, conn_id: int, mid: int, key: str, server: str, room_id: str = "", platform: str = "",
                 connected_at: float = 0.0, expires_at: float = 0.0) -> None: ...
    def to_dict(self) -> dict[str, Any]: ...

def sweep_user(self: Any, mid: int) -> list[Session]: ...
