from typing import Any

class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    remote: Any
    version: str
    keep_alive: bool
    route: str | None
    def __init__(
        self,
        method: str,
        path: str,
        query_string: str = "",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        remote: Any = None,
        version: str = "1.1",
        keep_alive: bool = True,
    ) -> None: ...
    @property
    def query_list(self) -> list[tuple[str, str]]: ...
    @property
    def query(self) -> dict[str, str]: ...

class Handler: ...
