import asyncio
from typing import Any

from imgate.http._dispatch import UNMATCHED as UNMATCHED
from imgate.http._reply import encode_response as encode_response
from imgate.http._request import Request as Request

class HttpProtocol(asyncio.Protocol):
    stopped: bool
    closed: bool
    def __init__(self, server: Any) -> None: ...
    def shutdown(self) -> None: ...
    def abort(self) -> None: ...
