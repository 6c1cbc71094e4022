"""The `Cache` contract for anonymous sessions (mid 0, goim's client without a user: a live room's
viewers). They are nobody: not indexed by mid, not a user, reached by key (and by room, which the
cache does not hold); renewed and deleted by conn id. Collected with tests/cache_contract.py by both
backends' modules (``from cache_contract_anon import *``)."""

from __future__ import annotations

import time

from imgate.cache import Session

from cache_contract import TTL, connect, ids

ANON = 40  # enough that a one-list-of-all index would show in every answer below


def test_anonymous_sessions_are_reached_by_key_never_by_mid(backend):
    async def body(c):
        user = await connect(c, 7, key="user-7")
        anon = [await connect(c, 0, key=f"anon-{i}") for i in range(ANON)]
        assert await c.sessions([0]) == {}
        found = await c.sessions([0, 7])
        assert list(found) == [7] and ids(found[7]) == [user.conn_id]
        by_key = await c.sessions_by_keys([s.key for s in anon])
        assert {k: (s.conn_id, s.mid) for k, s in by_key.items()} == {s.key: (s.conn_id, 0) for s in anon}
        assert ids(await c.list_sessions(1000)) == ids(anon + [user])
        assert len(await c.list_sessions(5)) == 5
        assert await c.user_count() == 1, "forty viewers and user 7 are one user"
    backend.run(body)


def test_anonymous_sessions_are_renewed_and_deleted_by_conn_id(backend):
    async def body(c):
        user = await connect(c, 7, key="user-7")
        anon = [await connect(c, 0, key=f"anon-{i}") for i in range(ANON)]
        # a (mid, conn_id) pair that does not match does nothing, either way round
        assert await c.renew_session(7, anon[0].conn_id, TTL) is False
        assert await c.del_session(7, anon[0].conn_id) is False
        assert await c.renew_session(0, user.conn_id, TTL) is False
        assert await c.del_session(0, user.conn_id) is False
        assert await c.renew_session(0, 999_999_999, TTL) is False
        # the even ones beat, the odd ones stop: only the even ones outlive their first TTL
        for _ in range(2):
            await backend.advance(TTL * 0.6)
            for s in anon[::2] + [user]:
                assert await c.renew_session(s.mid, s.conn_id, TTL) is True
        live = anon[::2]
        assert set(await c.sessions_by_keys([s.key for s in anon])) == {s.key for s in live}
        assert ids(await c.list_sessions(1000)) == ids(live + [user])
        for s in anon[1::2]:
            assert await c.renew_session(0, s.conn_id, TTL) is False
        # deleted one by one, in an order unlike the connects'
        for s in live[1::2] + live[::2]:
            assert await c.del_session(0, s.conn_id) is True
            assert await c.del_session(0, s.conn_id) is False
            assert await c.renew_session(0, s.conn_id, TTL) is False
        assert await c.sessions_by_keys([s.key for s in anon]) == {}
        assert ids(await c.list_sessions(1000)) == [user.conn_id]
        assert ids((await c.sessions([7]))[7]) == [user.conn_id] and await c.user_count() == 1
    backend.run(body)


def test_anonymous_keys(backend):
    async def body(c):
        user = await connect(c, 7, key="user-7")
        old = await connect(c, 0, key="viewer")
        new = await connect(c, 0, key="viewer", server="p2")  # a viewer's reconnect takes its key over
        assert (await c.sessions_by_keys(["viewer"]))["viewer"].conn_id == new.conn_id
        assert await c.del_session(0, old.conn_id) is True  # the old one leaving leaves the key be
        assert await c.renew_session(0, new.conn_id, TTL) is True
        assert (await c.sessions_by_keys(["viewer"]))["viewer"].conn_id == new.conn_id
        # neither takes the other's key: a user is not anonymous, nor anonymous a user
        thief = Session(conn_id=await c.alloc_conn_id(), mid=0, key="user-7", server="evil", connected_at=time.time())
        assert await c.add_session(thief, TTL) is False
        intruder = Session(conn_id=await c.alloc_conn_id(), mid=9, key="viewer", server="evil", connected_at=time.time())
        assert await c.add_session(intruder, TTL) is False
        assert (await c.sessions_by_keys(["user-7", "viewer"]))["user-7"].conn_id == user.conn_id
        assert await c.sessions([9]) == {} and ids(await c.list_sessions(10)) == sorted([user.conn_id, new.conn_id])
        # once the viewer is gone its key is anyone's
        assert await c.del_session(0, new.conn_id) is True
        assert await c.sessions_by_keys(["viewer"]) == {}
        assert await c.add_session(intruder, TTL) is True
        assert (await c.sessions_by_keys(["viewer"]))["viewer"].mid == 9
    backend.run(body)


def test_no_user_limit_for_anonymous_sessions(backend):
    async def body(c):
        for i in range(5):
            s = Session(conn_id=await c.alloc_conn_id(), mid=0, key=f"a{i}", server="p1", connected_at=time.time())
            assert await c.add_session(s, TTL, max_per_user=2) is True
        assert len(await c.sessions_by_keys([f"a{i}" for i in range(5)])) == 5
    backend.run(body)


def test_restored_anonymous_sessions(backend):
    async def body(c):
        anon = [Session(conn_id=await c.alloc_conn_id(), mid=0, key=f"r{i}", server="p1") for i in range(3)]
        user = Session(conn_id=await c.alloc_conn_id(), mid=8, key="r-user", server="p1")
        await c.restore_sessions(anon + [user], TTL)
        assert await c.sessions([0]) == {} and await c.user_count() == 1
        assert ids((await c.sessions_by_keys([s.key for s in anon])).values()) == ids(anon)
        assert await c.renew_session(0, anon[0].conn_id, TTL) is True
        assert await c.del_session(0, anon[1].conn_id) is True
        assert ids(await c.list_sessions(10)) == ids([anon[0], anon[2], user])
    backend.run(body)
