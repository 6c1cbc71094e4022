"""A reconnect storm beyond a proxy's max_auths_per_second: the excess is told "busy" with a
retry_ms, and every client is back by honouring it (imgate.client.connect_with_retry)."""

from __future__ import annotations

import asyncio

import uvloop

from imgate import client as imclient
from nodeutil import NodeThread
from polling import wait_until_async


def test_a_storm_beyond_the_rate_gets_busy_and_every_client_is_back():
    rate, n = 40, 160
    node = NodeThread(max_auths_per_second=rate).start()
    try:
        busy: list[dict] = []

        async def storm():
            urls = (node.tcp_url, node.ws_url)
            clients = await asyncio.gather(*(
                imclient.connect_with_retry(urls[i % 2], mid=9000 + i, heartbeat=None, timeout=30,
                                            deadline=600, on_busy=busy.append)
                for i in range(n)))
            assert sorted(c.mid for c in clients) == list(range(9000, 9000 + n))
            await wait_until_async(lambda: node.stats()["connections"], equals=n, what="every client authenticated")
            # the bucket holds one second's worth: at least the rest of the first wave was turned away
            assert len(busy) >= n - 2 * rate, len(busy)
            # back within the time the rate implies: told their place in the line, the refused come back
            # spread at about the rate, so hardly any is refused twice (coming back all together again,
            # each would be refused over and over: several times n notices)
            assert len(busy) <= n, len(busy)
            assert node.stats()["busy"] == len(busy)
            for notice in busy:
                assert notice["reason"] == "busy" and notice["reconnect"] is True
                # a place in a line never longer than the clients refused: n / rate seconds, jittered
                assert 0 < notice["retry_ms"] <= 2 * n / rate * 1000 * 1.2 + 51, notice
            for c in clients:
                await c.close()

        uvloop.run(storm())
    finally:
        node.stop()
