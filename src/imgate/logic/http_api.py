"""The logic HTTP API: goim's push and online routes, the online queries,
``/openapi.json``, ``/metrics``, ``/healthz``, the demo page and its helpers.

``build_routes(logic, metrics=..., demo=...)`` returns a :class:`~imgate.http.server.Router` to hand to
:class:`~imgate.http.server.HttpServer`. Every reply is the envelope ``{"code": 0, "message": "",
"data": ...}``; a bad request gets HTTP 400 with a non-zero code and a message naming the parameter.
A ``ValueError`` raised by the logic service is a bad request too (400 with its message); a
:class:`~imgate.http.server.HttpError` raised by it is answered as it is.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from imgate.http.server import (
    PUBLIC,
    HttpError,
    Request,
    Response,
    Router,
    json_response,
    ok,
    static_handler,
)
from imgate.logic._push_routes import PushMidsRoute
from imgate.logic.openapi import openapi_document
from imgate.metrics import Metrics
from imgate.protocol.envelope import envelope, push_reply
from imgate.protocol.ops import OP_MSG_SEND, OP_READ_REPLY
from imgate.push.service import BusUnavailable

try:  # the cluster's cache; absent in a minimal install
    from redis.exceptions import ConnectionError as _RedisDown, TimeoutError as _RedisSlow

    _BACKEND_DOWN: tuple = (_RedisDown, _RedisSlow, ConnectionError)
except ImportError:  # pragma: no cover
    _BACKEND_DOWN = (ConnectionError,)

__all__ = ["build_routes", "MAX_LIMIT", "DEFAULT_TOP_LIMIT", "DEFAULT_LIST_LIMIT"]

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_LIMIT = 10000
DEFAULT_TOP_LIMIT = 20
DEFAULT_LIST_LIMIT = 1000


# ---------------------------------------------------------------------------------------------------------
# Query parameter parsing: every failure is a 400 whose message names the parameter.


def _bad(message: str) -> HttpError:
    return HttpError(400, message)


def _raw(req: Request, name: str, required: bool) -> str | None:
    q = req.query
    if name not in q:
        if required:
            raise _bad(f"missing parameter '{name}'")
        return None
    if len(q) != len(req.query_list) and sum(1 for k, _ in req.query_list if k == name) > 1:
        # one value per parameter (lists are comma-separated): never silently keep one of several
        raise _bad(f"parameter '{name}' is given more than once")
    return q[name]


def param_str(req: Request, name: str, *, required: bool = True, default: str | None = None) -> str | None:
    """A non-empty string parameter (surrounding blanks removed)."""
    value = _raw(req, name, required)
    if value is None:
        return default
    value = value.strip()
    if not value:
        if required:
            raise _bad(f"parameter '{name}' is empty")
        return default
    return value


def _to_int(name: str, text: str, lo: int, hi: int, range_name: str | None) -> int:
    t = text.strip()
    try:
        if not t.isascii() or "_" in t:  # int() also reads "１" and "1_0"; Go's ParseInt (goim) does not
            raise ValueError
        value = int(t, 10)
    except ValueError:
        raise _bad(f"parameter '{name}' must be an integer, got {text!r}") from None
    if not lo <= value <= hi:
        if range_name:
            raise _bad(f"parameter '{name}' is out of the {range_name} range [{lo}, {hi}]: {value}")
        raise _bad(f"parameter '{name}' must be between {lo} and {hi}, got {value}")
    return value


def param_int(
    req: Request,
    name: str,
    *,
    required: bool = True,
    default: int | None = None,
    lo: int = INT64_MIN,
    hi: int = INT64_MAX,
    range_name: str | None = "int64",
) -> int | None:
    """An integer parameter; one that is present must be an integer, even when optional (``limit=``
    is a 400, not the default)."""
    value = _raw(req, name, required)
    if value is None:
        return default
    return _to_int(name, value, lo, hi, range_name)


def param_list(req: Request, name: str) -> list[str]:
    """A required comma-separated list; blanks and empty items dropped, order kept, duplicates removed."""
    value = _raw(req, name, True)
    assert value is not None
    items = list(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    if not items:
        raise _bad(f"parameter '{name}' has no item (expected a comma-separated list)")
    return items


def param_int_list(req: Request, name: str) -> list[int]:
    value = _raw(req, name, True)
    if value.isascii() and value.isdigit() and len(value) < 19:  # one plain id (a unicast): nothing to split
        return [int(value)]
    items = param_list(req, name)
    out: list[int] = []
    for item in items:
        try:
            if not item.isascii() or "_" in item:  # as in _to_int
                raise ValueError
            v = int(item, 10)
        except ValueError:
            raise _bad(f"parameter '{name}' must be comma-separated integers, got {item!r}") from None
        if not INT64_MIN <= v <= INT64_MAX:
            raise _bad(f"parameter '{name}' has {v}, out of the int64 range")
        out.append(v)
    return list(dict.fromkeys(out))


def _operation(req: Request) -> int:
    value = param_int(req, "operation", lo=INT32_MIN, hi=INT32_MAX, range_name="int32")
    assert value is not None
    if OP_MSG_SEND <= value <= OP_READ_REPLY:  # a client takes an op 24 for an inbox entry
        raise _bad(f"operation {value} is reserved for IM ({OP_MSG_SEND}-{OP_READ_REPLY}): send messages with "
                   f"POST /im/send")
    return value


def _limit(req: Request, default: int) -> int:
    value = param_int(req, "limit", required=False, default=default, lo=1, hi=MAX_LIMIT, range_name=None)
    assert value is not None
    return value


def _message(req: Request) -> bytes:
    if not req.body:
        raise _bad("empty message body")
    return req.body


_Coroutine = types.CoroutineType


def _http_error(e: Exception) -> HttpError | None:
    """The HTTP answer to an exception raised by logic, None for a bug (answered 500)."""
    if isinstance(e, HttpError):
        return e
    if isinstance(e, ValueError):  # the client's fault
        return HttpError(400, str(e) or "bad request")
    if isinstance(e, BusUnavailable):
        # Kafka (or another bus) did not take the job: not accepted, the caller retries
        return HttpError(503, f"push not accepted: {e}")
    if isinstance(e, _BACKEND_DOWN):
        return HttpError(503, f"a backing service is unreachable: {e}")
    return None


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a logic method (sync or async); its ValueError is the client's fault: 400."""
    try:
        result = fn(*args)
        if type(result) is _Coroutine or inspect.isawaitable(result):
            result = await result
    except Exception as e:
        err = _http_error(e)
        if err is None:
            raise
        raise err from None
    return result


def _call_now(fn: Callable[..., Any], *args: Any) -> Any:
    """:func:`_call` for a method that does not wait."""
    try:
        return fn(*args)
    except Exception as e:
        err = _http_error(e)
        if err is None:
            raise
        raise err from None


def _push_reply(result: Any) -> Response:
    if isinstance(result, bool) or not isinstance(result, int):
        return ok(None)
    return Response(200, push_reply(result), "application/json")


# ---------------------------------------------------------------------------------------------------------


def _loopback(req: Request) -> bool:
    remote = req.remote
    host = remote[0] if isinstance(remote, tuple) and remote else ""
    return host == "::1" or host.startswith("127.") or host.startswith("::ffff:127.")


def build_routes(logic: Any, *, metrics: Metrics | None = None, demo: Any = None,
                 api_auth: Any = None, metrics_scope: str = "metrics") -> Router:
    """Every route of the HTTP API, bound to ``logic``.

    ``metrics``: the node's :class:`~imgate.metrics.Metrics` (a private one is made when None); the
    router's observer counts requests in it. ``demo``: an object with ``config() -> dict`` and
    ``token(mid) -> str`` enabling ``GET /demo/config`` and ``POST /demo/token`` (answered to loopback
    peers only). ``api_auth``: the router's guard (:class:`~imgate.http.apikeys.ApiAuth`); each route
    below declares its scope. ``metrics_scope``: what ``/metrics`` needs (``PUBLIC`` to open it).
    """
    if metrics is None:
        metrics = Metrics()
    router = Router(api_auth)
    router.observer = metrics.http_counts  # counted in by the HTTP server itself (Metrics.observe_http's job)
    add = router.add

    # -- goim push routes (message = raw body)

    def keys_args(req: Request) -> tuple:
        return _operation(req), param_list(req, "keys"), _message(req)

    def mids_args(req: Request) -> tuple:
        return _operation(req), param_int_list(req, "mids"), _message(req)

    # A node whose cache and bus are in this process (the embedded node, ``pushes_wait`` False)
    # answers pushes by key and by mid without a coroutine: same checks and errors, logic's *_nowait
    # methods instead of an await.
    def push_route(args: Callable[[Request], tuple], method: str) -> Callable:
        if logic.pushes_wait:
            waiting = getattr(logic, method)

            async def push(req: Request) -> Response:
                return _push_reply(await _call(waiting, *args(req)))
        else:
            at_once = getattr(logic, method + "_nowait")

            def push(req: Request) -> Response:
                return _push_reply(_call_now(at_once, *args(req)))
        return push

    add("POST", "/goim/push/keys", push_route(keys_args, "push_keys"), "push")
    push_mids = push_route(mids_args, "push_mids")
    if not logic.pushes_wait:
        # one user, plain numbers: compiled (imgate/logic/_push_routes.pyx); the rest: push_mids
        push_mids = PushMidsRoute(logic.push_mids_nowait, push_mids, _http_error)
    add("POST", "/goim/push/mids", push_mids, "push")

    async def push_room(req: Request) -> Response:
        op = _operation(req)
        rtype = param_str(req, "type")
        room = param_str(req, "room")
        body = _message(req)
        return _push_reply(await _call(logic.push_room, op, f"{rtype}://{room}", body))

    async def push_all(req: Request) -> Response:
        op = _operation(req)
        speed = param_int(req, "speed", required=False, default=0, lo=0, hi=INT32_MAX, range_name=None)
        body = _message(req)
        return _push_reply(await _call(logic.push_all, op, speed, body))

    add("POST", "/goim/push/room", push_room, "push")
    add("POST", "/goim/push/all", push_all, "push")

    # -- goim online routes

    async def online_top(req: Request) -> Response:
        rtype = param_str(req, "type")
        limit = _limit(req, DEFAULT_TOP_LIMIT)
        return ok(await _call(logic.online_top, rtype, limit))

    async def online_room(req: Request) -> Response:
        rtype = param_str(req, "type")
        rooms = param_list(req, "rooms")
        return ok(await _call(logic.online_room, rtype, rooms))

    async def online_total(req: Request) -> Response:
        return ok(await _call(logic.online_total))

    add("GET", "/goim/online/top", online_top, "query")
    add("GET", "/goim/online/room", online_room, "query")
    add("GET", "/goim/online/total", online_total, "query")

    # -- the online queries

    async def session(req: Request) -> Response:
        uid = param_int(req, "uid")
        return ok(await _call(logic.session, uid))

    async def count(req: Request) -> Response:
        kind = param_str(req, "type")
        if kind not in ("room", "server"):
            raise _bad(f"parameter 'type' must be 'room' or 'server', got {kind!r}")
        return ok(await _call(logic.count, kind))

    async def room(req: Request) -> Response:
        rid = param_str(req, "rid")
        return ok(await _call(logic.room, rid))

    async def list_sessions(req: Request) -> Response:
        limit = _limit(req, DEFAULT_LIST_LIMIT)
        return ok(await _call(logic.list_sessions, limit))

    add("GET", "/session", session, "query")
    add("GET", "/count", count, "query")
    add("GET", "/room", room, "query")
    add("GET", "/list", list_sessions, "admin")  # every key of every session: admin only

    # -- IM for backends (imgate/im/http.py)

    from imgate.im.http import add_im_routes

    add_im_routes(add, logic)

    # -- service routes

    docs: list = []   # made on first request, once every route (and its scope) is in the router

    async def openapi_json(req: Request) -> Response:
        if not docs:
            docs.append(openapi_document(demo=demo is not None,
                                         scopes=router.scope if router.guard is not None else None))
        return json_response(docs[0])

    async def metrics_route(req: Request) -> Response:
        body, ctype = metrics.render()
        return Response(200, body, ctype)

    async def healthz(req: Request) -> Response:
        health = await _call(logic.health)
        if isinstance(health, dict) and health.get("ok") is False:
            return Response(503, envelope(health, -503, "unhealthy"), "application/json")
        return ok(health)

    add("GET", "/openapi.json", openapi_json, PUBLIC)
    add("GET", "/metrics", metrics_route, metrics_scope)
    add("GET", "/healthz", healthz, PUBLIC)

    # -- the demo page (static; it works without the demo helpers: the user types URL, token, mid)

    add("GET", "/", static_handler("index.html"), PUBLIC)
    add("GET", "/demo.js", static_handler("demo.js"), PUBLIC)
    add("GET", "/chat", static_handler("chat.html"), PUBLIC)  # the IM chat demo (docs/im.md "Web clients")
    add("GET", "/chat.js", static_handler("chat.js"), PUBLIC)
    add("GET", "/imgate-im.js", static_handler("imgate-im.js"), PUBLIC)

    if demo is not None:

        # the demo hands out tokens for any user and an API key: only to a browser on this machine
        def loopback_only(req: Request) -> None:
            if not _loopback(req):
                raise HttpError(403, "the demo helpers answer only on loopback (127.0.0.1, ::1)")

        async def demo_config(req: Request) -> Response:
            loopback_only(req)
            return ok(await _call(demo.config))

        async def demo_token(req: Request) -> Response:
            loopback_only(req)
            mid = param_int(req, "mid")
            token = await _call(demo.token, mid)
            return ok({"mid": mid, "token": token})

        add("GET", "/demo/config", demo_config, PUBLIC)
        add("POST", "/demo/token", demo_token, PUBLIC)

    return router

