"""The IM routes of the HTTP API for backends: /im/send, /im/sync, /im/conversations (docs/im.md).

Same envelope and 4xx rules as the rest of the API (imgate.logic.http_api); an ImError's code is the
HTTP status (400, 404, 409, 413, 416), a store that cannot write answers 503.
"""

from __future__ import annotations


from imgate.http.server import HttpError, Request, Response, ok
from imgate.im.protocol import ImError, parse_body

DEFAULT_CONVERSATIONS = 100
MAX_CONVERSATIONS = 1000


def _raw_ok(data: bytes) -> Response:
    """The envelope around JSON text the service made already (no second encode)."""
    return Response(200, b'{"code":0,"message":"","data":' + data + b"}", "application/json")


def add_im_routes(add, logic) -> None:
    """Register the routes on a Router's ``add``; they answer 503 while ``logic.im`` is None."""
    from imgate.logic.http_api import param_int  # the API's parameter rules and messages

    def service():
        im = getattr(logic, "im", None)
        if im is None:
            raise HttpError(503, "the IM service is not enabled on this node")
        return im

    async def guarded(im, coro):
        try:
            return await coro
        except ImError as e:
            im.counters["errors"] += 1
            raise HttpError(e.code if 400 <= e.code < 500 else 503, e.message) from None

    async def send(req: Request) -> Response:
        im = service()
        uid = param_int(req, "uid", lo=1)
        if not req.body:
            raise HttpError(400, "empty body: expected a MSG_SEND object")
        try:
            body = parse_body(req.body)
        except ImError as e:
            raise HttpError(400, e.message) from None
        return ok(await guarded(im, im.send(uid, body)))

    async def sync(req: Request) -> Response:
        im = service()
        uid = param_int(req, "uid", lo=1)
        # any int64: the service checks the range and answers 416 like on the wire
        after = param_int(req, "after", required=False, default=0)
        limit = param_int(req, "limit", required=False, default=min(100, im.sync_max_limit))
        return _raw_ok(await guarded(im, im.sync(uid, {"after": after, "limit": limit})))

    async def conversations(req: Request) -> Response:
        im = service()
        uid = param_int(req, "uid", lo=1)
        limit = param_int(req, "limit", required=False, default=DEFAULT_CONVERSATIONS, lo=1, hi=MAX_CONVERSATIONS,
                          range_name=None)
        return _raw_ok((await guarded(im, im.conversations(uid, limit))).encode())

    add("POST", "/im/send", send, "im")
    add("GET", "/im/sync", sync, "im")
    add("GET", "/im/conversations", conversations, "im")


__all__ = ["add_im_routes"]
