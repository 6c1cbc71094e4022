from collections.abc import Callable
from typing import Any

from imgate.http._request import Handler
from imgate.http.messages import HttpError, Response

class PushMidsRoute(Handler):
    general: Callable[[Any], Response]
    def __init__(
        self,
        push: Callable[[int, list[int], bytes], int],
        general: Callable[[Any], Response],
        http_error: Callable[[Exception], HttpError | None],
    ) -> None: ...
    def __call__(self, req: Any) -> Response: ...
