"""auth = "http" without a network: what an answer means (HttpAuth._identity), the per-token cache and
its bound (the service replaced by a recording stub), and the config's checks."""

from __future__ import annotations

import asyncio
import json

import pytest

from imgate.auth import AuthError
from imgate.auth.http import AuthUnavailable, HttpAuth
from imgate.config import Config, ConfigError

from helpers import run

BODY = {"mid": 0, "key": "kb", "room_id": "live://1", "platform": "web", "accepts": [1000], "token": "t"}


def fields(**kw):
    return dict(BODY, accepts=tuple(BODY["accepts"]), **kw)


def test_accept_takes_the_answer_and_falls_back_to_the_body():
    ident = HttpAuth._identity({"accept": True, "mid": 42, "rooms": ["team://3", "team://3"]}, fields())
    assert (ident.mid, ident.key, ident.room_id, ident.platform, ident.accepts, ident.rooms) == (
        42, "kb", "live://1", "web", (1000,), ("team://3",))
    ident = HttpAuth._identity({"accept": True, "mid": "7", "room_id": "live://9", "accepts": [], "key": "ks"},
                               fields())
    assert (ident.mid, ident.key, ident.room_id, ident.accepts) == (7, "ks", "live://9", ())


def test_refusal_says_why():
    with pytest.raises(AuthError, match="^banned$"):
        HttpAuth._identity({"accept": False, "reason": "banned"}, fields())
    with pytest.raises(AuthError, match="refused by the auth service"):
        HttpAuth._identity({"accept": False}, fields())


@pytest.mark.parametrize("answer, why", [
    ({"accept": True}, "without a mid"),
    ({"accept": True, "mid": -1}, "mid must be >= 0"),
    ({"accept": True, "mid": 1, "room_id": "nope"}, "room_id must look like type://id"),
    ({"accept": True, "mid": 1, "rooms": ["nope"]}, "rooms must be a list"),
    ({"accept": True, "mid": 1, "rooms": "team://1"}, "rooms must be a list"),
    ({"accept": True, "mid": 1, "rooms": [f"r://{i}" for i in range(65)]}, "at most 64"),
])
def test_a_wrong_answer_is_the_service_failing_not_the_client(answer, why):
    with pytest.raises(AuthUnavailable, match=why):
        HttpAuth._identity(answer, fields())


def stub(auth: HttpAuth, answers: dict):
    """The service as a function of the token; records every question."""
    asked = []

    async def ask(body: bytes) -> dict:
        token = json.loads(body)["token"]
        asked.append(token)
        await asyncio.sleep(0)  # let concurrent auths of the same token meet
        if answers.get(token) is None:
            raise AuthUnavailable("down")
        return answers[token]

    auth._ask = ask
    return asked


def body(token):
    return json.dumps(dict(BODY, token=token)).encode()


def test_cache_per_token_bounded_and_unavailable_never_cached():
    auth = HttpAuth("http://unused", cache_ttl=60, cache_size=2)
    answers = {"a": {"accept": True, "mid": 1}, "b": {"accept": True, "mid": 2}, "c": {"accept": False}}
    asked = stub(auth, answers)

    async def go():
        same = await asyncio.gather(*[auth.authenticate(body("a")) for _ in range(5)])
        assert [i.mid for i in same] == [1] * 5 and asked == ["a"]   # one request for five auths
        await auth.authenticate(body("b"))
        with pytest.raises(AuthError):
            await auth.authenticate(body("c"))                        # refusals are cached too ...
        with pytest.raises(AuthError):
            await auth.authenticate(body("c"))
        assert asked == ["a", "b", "c"]
        await auth.authenticate(body("a"))                            # ... in 2 entries: a went first
        assert asked == ["a", "b", "c", "a"] and len(auth._cache) == 2
        answers["d"] = None
        for _ in range(2):
            with pytest.raises(AuthUnavailable):
                await auth.authenticate(body("d"))
        assert asked[-2:] == ["d", "d"]                               # never cached
        for _ in range(2):                                            # no token: asked every time
            assert (await auth.authenticate(body(""))).mid == 5
        assert asked[-2:] == ["", ""]

    answers[""] = {"accept": True, "mid": 5}
    run(go())


def test_config_checks():
    with pytest.raises(ConfigError, match="auth_url"):
        Config(auth="http").validate()
    with pytest.raises(ConfigError, match="upstream_routes: op '5'"):
        Config(upstream_routes={"5": "http://x"}).validate()
    with pytest.raises(ConfigError, match="upstream_routes.101: expected an http:// or https:// URL"):
        Config(upstream_routes={"101": "ftp://x"}).validate()
    with pytest.raises(ConfigError, match="webhook_url: expected an http"):
        Config(webhook_url="localhost:8080").validate()
    with pytest.raises(ConfigError, match="upstream_conn_limit"):
        Config(upstream_conn_limit=0).validate()
    Config(auth="http", auth_url="http://x", upstream_routes={"4": "http://a", "999": "http://b"}).validate()
