"""The `Cache` contract (tests/cache_contract.py) against MemoryCache on a fake clock."""

import pytest

from cache_contract import *  # noqa: F401,F403 - the contract's tests, collected here
from cache_contract_anon import *  # noqa: F401,F403 - and its cases for anonymous sessions (mid 0)
from cache_contract import FakeClock, MemoryBackend, connect
from helpers import run
from imgate.cache import MemoryCache


@pytest.fixture
def backend():
    return MemoryBackend()


def test_anonymous_sessions_of_a_dead_proxy_do_not_pile_up():
    """Nobody renews or deletes a dead proxy's viewers, and no push by mid sweeps them (mid 0 is
    nobody): the anonymous index drops them as it grows, so it holds about twice the live ones."""
    clock = FakeClock()
    c = MemoryCache(clock=clock)

    async def go():
        for _ in range(6):  # six proxies that die one after the other, 3,000 viewers each
            made = [await connect(c, 0, ttl=1.0) for _ in range(3000)]
            clock.now += 2.0
        assert 0 not in c._by_mid, "mid 0 is no user"
        assert len(c._anon) <= 2 * 3000 and len(c._by_key) <= 2 * 3000, (len(c._anon), len(c._by_key))
        live = [await connect(c, 0, ttl=1.0) for _ in range(10)]
        assert sorted(s.conn_id for s in await c.list_sessions(100)) == sorted(s.conn_id for s in live)
        assert await c.sessions_by_keys([s.key for s in made]) == {}

    run(go())
