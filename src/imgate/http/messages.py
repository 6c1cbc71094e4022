"""What handlers of the HTTP API return: :class:`Response`, :class:`HttpError` and the JSON envelope.

Kept apart from the server so that the compiled connection (``_dispatch.pyx``, ``_protocol.pyx``) and
the server module can both import them. :class:`Response` itself is compiled, in ``_reply.pyx``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from imgate.http._reply import Response
from imgate.protocol.envelope import envelope

__all__ = ["HttpError", "Response", "error", "json_response", "ok"]


class HttpError(Exception):
    """Raise from a handler to answer ``status`` with the JSON error envelope."""

    def __init__(self, status: int, message: str, code: int | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.code = code
        self.headers = dict(headers) if headers else None

    def response(self) -> Response:
        resp = error(self.status, self.message, self.code)
        if self.headers:
            resp.headers.update(self.headers)
        return resp


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``data`` serialised as JSON, as it is (no envelope)."""
    return Response(status, _dumps(data), "application/json", headers)


def ok(data: Any = None) -> Response:
    """200 with the envelope ``{"code": 0, "message": "", "data": data}``."""
    return Response(200, envelope(data), "application/json")


def error(status: int, message: str, code: int | None = None) -> Response:
    """``status`` with ``{"code": code or -status, "message": message, "data": null}``."""
    if not code:
        code = -int(status)
    return Response(status, envelope(None, code, message), "application/json")
