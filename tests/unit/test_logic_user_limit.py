"""Logic's admission of one user's connections (max_conns_per_user) on the embedded node's cache: the
connection past the limit is an auth refusal with its own counter, and it leaves no trace."""

from __future__ import annotations

import dataclasses
import json

import pytest

from imgate.auth import AuthError, NoAuth
from imgate.cache import MemoryCache
from imgate.logic import Logic
from imgate.push import MemoryBus, PushRouter

from helpers import run


class Hooks:
    """Stands in for the webhooks and the IM service: records which users they were told about."""

    def __init__(self):
        self.seen: list[int] = []

    def emit(self, event, **fields):
        self.seen.append(fields["mid"])

    async def on_connect(self, mid):
        self.seen.append(mid)
        return 0

    async def group_rooms(self, mid):
        return []

    def on_disconnect(self, server, conn_id):
        pass


def auth(mid: int, key: str = "") -> bytes:
    return json.dumps({"mid": mid, "key": key, "room_id": "live://1"}).encode()


def test_the_connection_past_the_limit_is_refused_and_counted():
    async def go():
        cache = MemoryCache()
        logic = Logic(cache, MemoryBus(PushRouter()), NoAuth(), session_ttl=60, max_conns_per_user=2)
        logic.webhooks = logic.im = hooks = Hooks()
        first = [await logic.connect("p1", auth(7, f"d{i}")) for i in range(2)]
        with pytest.raises(AuthError, match="^too many connections for this user$"):
            await logic.connect("p1", auth(7, "d2"))
        assert hooks.seen == [7, 7] * 2, "the refused one reached neither the webhook nor the IM service"
        assert [s.conn_id for s in cache.user_sessions_nowait(7)] == [c.conn_id for c in first]
        assert (await cache.sessions_by_keys(["d2"])) == {}
        c = logic.counters
        assert (c["connects"], c["auth_failures"], c["user_limit_refusals"], c["key_conflicts"]) == (2, 1, 1, 0)
        await logic.connect("p1", auth(8))  # another user
        await logic.connect("p2", auth(7, "d0"))  # one's own key again: a replacement (3 until d0 leaves)
        await logic.disconnect("p1", first[0].conn_id, 7)  # the replaced one leaves: 2, the limit
        with pytest.raises(AuthError):
            await logic.connect("p1", auth(7, "d3"))
        await logic.disconnect("p1", first[1].conn_id, 7)
        await logic.connect("p1", auth(7, "d3"))  # the freed slot
        assert logic.counters["user_limit_refusals"] == 2

    run(go())


def test_anonymous_clients_are_not_one_user():
    """mid 0 is what goim clients without a user send (a live room's viewers): not limited as a user."""
    async def go():
        logic = Logic(MemoryCache(), MemoryBus(PushRouter()), NoAuth(), session_ttl=60, max_conns_per_user=2)
        for _ in range(10):
            await logic.connect("p1", auth(0))
        assert (logic.counters["connects"], logic.counters["user_limit_refusals"]) == (10, 0)

    run(go())


def test_zero_means_no_limit():
    async def go():
        logic = Logic(MemoryCache(), MemoryBus(PushRouter()), NoAuth(), session_ttl=60)
        for _ in range(100):
            await logic.connect("p1", auth(9))
        assert logic.counters["connects"] == 100

    run(go())


class Returns(NoAuth):
    """A library user's own authenticator that answers whatever identity it is given."""

    def __init__(self, mid):
        self.mid = mid

    def authenticate(self, body):
        return dataclasses.replace(super().authenticate(body), mid=self.mid)


@pytest.mark.parametrize("mid", [-1, -(1 << 63), 1 << 63, True, 7.0, "7", None])
def test_an_authenticator_returning_a_user_id_out_of_int64_is_refused(mid):
    async def go():
        cache = MemoryCache()
        logic = Logic(cache, MemoryBus(PushRouter()), Returns(mid), session_ttl=60)
        logic.webhooks = logic.im = hooks = Hooks()
        with pytest.raises(AuthError, match="^the authenticator returned an invalid user id$"):
            await logic.connect("p1", auth(7))
        assert hooks.seen == [] and logic.counters["auth_failures"] == 1
        assert logic.counters["connects"] == 0
        for edge in (0, (1 << 63) - 1):  # the ends of the range are users (0: anonymous)
            logic.auth = Returns(edge)
            assert (await logic.connect("p1", auth(7))).mid == edge

    run(go())
