"""Logic away while clients leave: each session end that cannot be reported is counted, and none
becomes an unhandled task exception (one traceback per client that leaves, a log flood)."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from imgate import client as imclient
from imgate.auth import NoAuth
from imgate.cache import MemoryCache
from imgate.config import Config
from imgate.logic import Logic
from imgate.proxy import Proxy
from imgate.push import MemoryBus, PushRouter
from imgate.rpc import RpcUnavailable
from polling import wait_until_async


def test_session_ends_logic_cannot_hear_are_counted_not_raised():
    async def go():
        loop = asyncio.get_running_loop()
        unhandled = []
        loop.set_exception_handler(lambda _, ctx: unhandled.append(ctx))
        logic = Logic(MemoryCache(), MemoryBus(PushRouter()), NoAuth(), session_ttl=60, online_interval=0.1)
        cfg = Config(tcp="127.0.0.1:0", ws="127.0.0.1:0", auth="none", heartbeat_timeout=60).validate()
        proxy = Proxy(cfg, logic, loop)
        await proxy.start()
        try:
            n = 5
            clients = [await imclient.connect(f"tcp://127.0.0.1:{proxy.tcp_port}", mid=500 + i, heartbeat=None,
                                              timeout=10) for i in range(n)]

            async def away(server, conn_id, mid):
                raise RpcUnavailable("no live connection to imgate.logic")

            logic.disconnect = away
            for c in clients:
                await c.close()
            await wait_until_async(lambda: proxy.stats()["disconnect_failures"], equals=n,
                                   what="every session end counted")
            await asyncio.sleep(0)
            gc.collect()  # an exception never retrieved is reported when its task is collected
            assert unhandled == []
        finally:
            await proxy.stop(0)

    uvloop.run(go())
