"""``auth = "http"``: the business's own auth service decides who a connection is.

Each op-7 body (checked by :func:`imgate.auth.parse_auth_body` first) is POSTed as it came to
``auth_url`` (``Content-Type: application/json``, ``X-Imgate-Server``: the proxy). The service answers
JSON:

- ``{"accept": true, "mid": 42, "room_id": "live://1", "rooms": ["team://7"], "accepts": [1000],
  "key": "..."}``: accepted as user 42 (``mid`` is required); ``room_id``, ``accepts``, ``key`` and
  ``platform`` are optional and default to the body's own; ``rooms`` are joined too.
- ``{"accept": false, "reason": "banned"}``, or HTTP 401/403 with such a body: refused; the client gets
  op 6 ``{"reason": "auth failed: banned", "reconnect": false}``.

Anything else (no answer within ``timeout``, a refused connection, another status, a body that is not
such JSON) makes the service unavailable: :class:`AuthUnavailable`, and the proxy tells the client
op 6 ``{"reason": "auth unavailable", "reconnect": true}``. Connections already open are not asked again.

Answers (accepts and refusals) are kept per token for ``cache_ttl`` seconds, at most ``cache_size`` of
them (the oldest goes first), and one token's concurrent auths share one request, so a reconnect storm
does not become an auth storm. A body without a token is always asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from imgate.auth import MAX_ROOM_ID_LEN, AuthError, Authenticator, Identity, parse_auth_body
from imgate.httpclient import HttpClient

log = logging.getLogger("imgate.auth.http")

__all__ = ["AuthUnavailable", "HttpAuth"]


#: rooms an answer may name besides room_id
MAX_ROOMS = 64


class AuthUnavailable(Exception):
    """The auth service could not answer; the client is told to reconnect later."""


@dataclass(frozen=True)
class HttpIdentity(Identity):
    rooms: tuple[str, ...] = ()  # more rooms the connection joins at once


class HttpAuth(Authenticator):
    mode = "http"

    def __init__(self, url: str, *, timeout: float = 2.0, cache_ttl: float = 10.0, cache_size: int = 100000,
                 server: str = ""):
        self.url = url
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.server = server
        self._cache: OrderedDict[str, tuple[float, dict]] = OrderedDict()  # token -> (expiry, answer)
        self._asking: dict[str, asyncio.Future] = {}
        self._http = HttpClient(timeout)
        self.counters = {"auth_requests": 0, "auth_cache_hits": 0, "auth_unavailable": 0}

    def __repr__(self) -> str:
        return f"HttpAuth({self.url!r}, cache_ttl={self.cache_ttl})"

    async def authenticate(self, body: bytes) -> Identity:
        fields = parse_auth_body(body)
        token = fields["token"]
        answer = self._cached(token) if token else None
        if answer is None:
            if token and token in self._asking:  # the same token is being asked right now
                shared = self._asking[token]
                try:
                    answer = await asyncio.shield(shared)
                except asyncio.CancelledError:
                    if shared.cancelled():  # the asker went away, not this auth
                        raise AuthUnavailable("auth service request abandoned") from None
                    raise
            else:
                answer = await self._ask_once(token, bytes(body))
        return self._identity(answer, fields)

    def _cached(self, token: str) -> dict | None:
        hit = self._cache.get(token)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self._cache[token]
            return None
        self.counters["auth_cache_hits"] += 1
        return hit[1]

    async def _ask_once(self, token: str, body: bytes) -> dict:
        if not token:
            return await self._ask(body)
        fut = asyncio.get_running_loop().create_future()
        self._asking[token] = fut
        try:
            answer = await self._ask(body)
        except asyncio.CancelledError:
            fut.cancel()  # the others waiting on this token see a cancelled ask and are refused
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._asking.pop(token, None)
        fut.set_result(answer)
        if self.cache_ttl > 0:
            self._cache[token] = (time.monotonic() + self.cache_ttl, answer)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return answer

    async def close(self) -> None:
        await self._http.close()

    async def _ask(self, body: bytes) -> dict:
        """The service's answer as ``{"accept": bool, ...}``; AuthUnavailable when there is none."""
        import aiohttp

        self.counters["auth_requests"] += 1
        try:
            async with self._http.session().post(self.url, data=body, headers={
                    "Content-Type": "application/json", "X-Imgate-Server": self.server}) as resp:
                status = resp.status
                raw = await resp.read() if (resp.content_length or 0) <= 65536 else b""
        except asyncio.TimeoutError:
            return self._unavailable(f"no answer within {self.timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as e:  # ValueError: a URL aiohttp refuses
            return self._unavailable(str(e) or type(e).__name__)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = None
        if status in (401, 403):
            reason = answer.get("reason") if isinstance(answer, dict) else None
            return {"accept": False, "reason": str(reason or "refused by the auth service")}
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("accept"), bool):
            return self._unavailable(f"HTTP {status} without an accept field")
        return answer

    def _unavailable(self, why: str):
        self.counters["auth_unavailable"] += 1
        log.warning("auth service %s unavailable: %s", self.url, why)
        raise AuthUnavailable(f"auth service unavailable: {why}")

    @staticmethod
    def _identity(answer: dict, fields: dict) -> Identity:
        if not answer["accept"]:
            raise AuthError(str(answer.get("reason") or "refused by the auth service"))
        # the answer is the service's, but it goes into the session registry: the same checks as a body
        try:
            checked = parse_auth_body(json.dumps({
                "mid": answer.get("mid"),
                "key": answer.get("key", fields["key"]),
                "room_id": answer.get("room_id", fields["room_id"]),
                "platform": answer.get("platform", fields["platform"]),
                "accepts": answer.get("accepts", list(fields["accepts"])),
            }).encode())
        except AuthError as e:
            raise AuthUnavailable(f"auth service answer is wrong: {e}") from None
        if answer.get("mid") is None:
            raise AuthUnavailable("auth service accepted without a mid")
        rooms = answer.get("rooms") or []
        if not isinstance(rooms, list) or len(rooms) > MAX_ROOMS or not all(
                isinstance(r, str) and len(r) <= MAX_ROOM_ID_LEN and _room_ok(r) for r in rooms):
            raise AuthUnavailable(f"auth service answer is wrong: rooms must be a list of at most {MAX_ROOMS} "
                                  f"room ids (type://id)")
        return HttpIdentity(mid=checked["mid"], key=checked["key"], room_id=checked["room_id"],
                            platform=checked["platform"], accepts=checked["accepts"],
                            rooms=tuple(dict.fromkeys(rooms)))

    def stats(self) -> dict:
        return dict(self.counters)


def _room_ok(room_id: str) -> bool:
    kind, sep, rid = room_id.partition("://")
    return bool(sep and kind and rid)
