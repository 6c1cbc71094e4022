"""The proxies' RPC to the im roles (imgate.rpc.im) over real loopback sockets: IM frames go to the first
live im, fail over to the next, and acks go to every im."""

from __future__ import annotations

import asyncio

import pytest

from helpers import free_port, run
from polling import wait_until_async

from imgate import client as imclient
from imgate.auth import NoAuth
from imgate.cache import MemoryCache
from imgate.client import ImRejected
from imgate.config import Config
from imgate.logic import Logic
from imgate.protocol.ops import OP_MSG_ACK, OP_MSG_SEND, OP_SYNC
from imgate.proxy import Proxy
from imgate.push import MemoryBus, PushRouter
from imgate.rpc.im import ImClient, ImRpcService


class FakeIm:
    """What the im role's service is asked: (op, conn_id, body) per frame, conn ids forgotten."""

    def __init__(self, name: str):
        self.name = name
        self.frames: list = []
        self.closed: list = []

    async def receive(self, server, conn_id, mid, op, seq, body, quiet=False):
        self.frames.append((op, conn_id, body) + (("quiet",) if quiet else ()))
        return b"" if op == OP_MSG_ACK else f'{{"by":"{self.name}"}}'.encode()

    def on_disconnect(self, server, conn_id):
        self.closed.append(conn_id)


def test_frames_go_to_the_first_live_im_acks_to_every_im_and_a_dead_one_is_skipped():
    async def main():
        ims = [FakeIm("one"), FakeIm("two")]
        svcs = [ImRpcService(im) for im in ims]
        for svc in svcs:
            await svc.start("127.0.0.1", 0)
        client = ImClient([svc.addr for svc in svcs], pool_size=2)
        try:
            assert await client.start()
            await wait_until_async(lambda: all(p.healthy for p in client.pools), what="both pools up")
            assert await client.receive("A", 7, 1, OP_MSG_SEND, 1, b'{"cmid":"c"}') == b'{"by":"one"}'
            assert await client.receive("A", 7, 1, OP_SYNC, 2, b"{}") == b'{"by":"one"}'
            assert await client.receive("A", 7, 1, OP_MSG_ACK, 3, b'{"seq":1}') == b""
            assert ims[0].frames[2] == (OP_MSG_ACK, 7, b'{"seq":1}')  # checked by the first: its reply is read
            assert [f[0] for f in ims[0].frames] == [OP_MSG_SEND, OP_SYNC, OP_MSG_ACK]
            # the ack reached the other im too, quiet: nobody reads that reply, so it checks nothing
            assert ims[1].frames == [(OP_MSG_ACK, 7, b'{"seq":1}', "quiet")]
            await svcs[0].stop()  # im one dies
            await wait_until_async(lambda: not client.pools[0].healthy, what="the client to see it")
            for i in range(10):
                assert await client.receive("A", 7, 1, OP_MSG_SEND, 10 + i, b"{}") == b'{"by":"two"}'
            assert await client.receive("A", 7, 1, OP_MSG_ACK, 30, b'{"seq":2}') == b""
            assert ims[1].frames[-1] == (OP_MSG_ACK, 7, b'{"seq":2}')  # the only one left: checked
            assert len(ims[1].frames) == 12 and len(ims[0].frames) == 3
            await client.disconnect("A", 7, 1)
            assert ims[1].closed == [7]
            svcs[0] = ImRpcService(ims[0])  # one comes back: a disconnect reaches both
            await svcs[0].start("127.0.0.1", int(client.addrs[0].rpartition(":")[2]))
            await wait_until_async(lambda: client.pools[0].healthy, what="the client to reconnect to one")
            await client.disconnect("A", 8, 1)
            assert (ims[0].closed, ims[1].closed) == ([8], [7, 8])
        finally:
            await client.close()
            for svc in svcs:
                await svc.stop()

    run(main())


class StallingIm(FakeIm):
    """An im that takes the frame (as if it committed the message) and then never answers."""

    def __init__(self):
        super().__init__("stalling")
        self.release = asyncio.Event()

    async def receive(self, server, conn_id, mid, op, seq, body, quiet=False):
        self.frames.append((op, conn_id, body))
        await self.release.wait()
        return b"{}"


def test_a_send_the_im_may_have_stored_is_never_answered_nothing_stored():
    """The 503 a client gets when its im does not answer says what is true: an im that is down
    refused the request before it was written (nothing stored); an im that took it and stalled, or
    died holding it, may have stored it: resend with the same cmid."""
    async def go():
        logic = Logic(MemoryCache(), MemoryBus(PushRouter()), NoAuth(), session_ttl=60)
        cfg = Config(tcp="127.0.0.1:0", ws="127.0.0.1:0", auth="none", heartbeat_timeout=60).validate()
        proxy = Proxy(cfg, logic, asyncio.get_running_loop())
        await proxy.start()
        im = StallingIm()
        svc = ImRpcService(im)
        await svc.start("127.0.0.1", 0)
        down = ImClient([f"127.0.0.1:{free_port()}"], pool_size=1, timeout=2.0, connect_timeout=0.5)
        # fail-over to a second im that is down: its "not sent" must not hide that the first may have it
        stalls = ImClient([svc.addr, f"127.0.0.1:{free_port()}"], pool_size=1, timeout=2.0, connect_timeout=0.5)
        conn = await imclient.connect(f"tcp://127.0.0.1:{proxy.tcp_port}", mid=11, heartbeat=None, timeout=30)

        async def refused(cmid: str) -> dict:
            with pytest.raises(ImRejected) as e:
                await conn.send_message(12, "hi", cmid=cmid, timeout=30)
            assert e.value.code == 503
            return e.value.reply

        try:
            proxy.im_api = down
            reply = await refused("to-the-down-im")
            assert "nothing stored" in reply["error"] and reply["cmid"] == "to-the-down-im"

            proxy.im_api = stalls
            reply = await refused("to-the-stalled-im")
            assert [b for _, _, b in im.frames if b"to-the-stalled-im" in b], "the im never got the send"
            assert "nothing stored" not in reply["error"], reply
            assert "may be stored" in reply["error"] and "same cmid" in reply["error"]
            assert reply["cmid"] == "to-the-stalled-im"

            # the im dies holding the request: tried again where nothing listens (its pool, then the other im)
            dying = asyncio.ensure_future(refused("to-the-dying-im"))
            await wait_until_async(lambda: len(im.frames) == 2, what="the im to take the second send")
            await svc.stop()
            reply = await dying
            assert "nothing stored" not in reply["error"] and "may be stored" in reply["error"], reply
        finally:
            im.release.set()
            await conn.close()
            await down.close()
            await stalls.close()
            await svc.stop()
            await proxy.stop(0)

    run(go())
