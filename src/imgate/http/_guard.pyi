from typing import Any

from imgate.http._request import Handler

class ScopeGuard(Handler):
    handler: Any
    def __init__(self, auth: Any, handler: Any, scope: str) -> None: ...
    def __call__(self, req: Any) -> Any: ...
