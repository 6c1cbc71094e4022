from typing import Any, Mapping

class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    def __init__(self, status: int = 200, body: bytes | str = b"", content_type: str = "application/octet-stream",
                 headers: Mapping[str, str] | None = None) -> None: ...
    def json(self) -> Any: ...

def encode_response(resp: Response, keep_alive: bool, head_only: bool, http10: bool) -> bytes: ...
