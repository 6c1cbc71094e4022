"""Push's discovery (imgate/push/discovery.py) over the in-memory cache, with a hand-driven clock:
proxies appear from their reports, move, drop out after the grace, static ones stay, and a draining
proxy gets room pushes only for rooms it still holds."""

from __future__ import annotations

import asyncio

from imgate.cache import MemoryCache
from imgate.protocol import KIND_ROOM, PushJob
from imgate.push.discovery import Discovery
from imgate.push.router import PushRouter


class FakeClient:
    def __init__(self, sid, addr):
        self.server_id, self.addr, self.closed = sid, addr, False

    async def close(self):
        self.closed = True


def test_discovery_follows_the_reports():
    async def go():
        now = [0.0]
        cache = MemoryCache(clock=lambda: now[0])
        router = PushRouter()
        made = []

        def make(sid, addr):
            made.append(FakeClient(sid, addr))
            return made[-1]

        d = Discovery(cache, router, make, static={"S": "10.0.0.9:3109"}, grace=3.0, clock=lambda: now[0])
        assert set(router.proxies) == {"S"}
        await cache.set_server_online("A", {"live://1": 2}, 2, 1, 3.0, addr="10.0.0.1:3109")
        await cache.set_server_online("S", {}, 0, 0, 3.0, addr="10.0.0.99:1")  # the static address wins
        await cache.set_server_online("X", {}, 0, 0, 3.0)  # no address: not a push target (embedded node)
        await d.refresh()
        assert {sid: c.addr for sid, c in router.proxies.items()} == {"S": "10.0.0.9:3109", "A": "10.0.0.1:3109"}
        # A restarts elsewhere: the old client is closed, the new address used
        old_a = router.proxies["A"]
        await cache.set_server_online("A", {"live://1": 2}, 2, 1, 3.0, addr="10.0.0.1:4109")
        await d.refresh()
        assert router.proxies["A"].addr == "10.0.0.1:4109" and old_a.closed
        # A drains, holding live://1 only: room pushes for other rooms skip it
        await cache.set_server_online("A", {"live://1": 1}, 1, 1, 3.0, addr="10.0.0.1:4109", draining=True)
        await d.refresh()
        plan = router.plan([PushJob(KIND_ROOM, 1000, b"x", room_id="live://1"),
                            PushJob(KIND_ROOM, 1000, b"y", room_id="live://2")])
        rooms_for = {sid: [args[0] for _, args in calls] for sid, calls in plan.items()}
        assert rooms_for == {"S": ["live://1", "live://2"], "A": ["live://1"]}
        # A dies: its last report (t=0, TTL 3 s) is seen at t=2, gone at t=4; A is dropped once it has
        # been missing for the grace (3 s) after t=2
        now[0] = 2.0
        await d.refresh()
        now[0] = 4.0
        await d.refresh()
        assert "A" in router.proxies
        now[0] = 5.5
        await d.refresh()
        assert set(router.proxies) == {"S"}
        assert made[-1].closed

    asyncio.run(go())
