"""The proxies' RPC to the im roles (imgate.rpc.im) over real loopback sockets: IM frames go to the first
live im, fail over to the next, and acks go to every im."""

from __future__ import annotations



from helpers import run
from polling import wait_until_async

from imgate.protocol.ops import OP_MSG_ACK, OP_MSG_SEND, OP_SYNC
from imgate.rpc.im import ImClient, ImRpcService


class FakeIm:
    """What the im role's service is asked: (op, conn_id, body) per frame, conn ids forgotten."""

    def __init__(self, name: str):
        self.name = name
        self.frames: list = []
        self.closed: list = []

    async def receive(self, server, conn_id, mid, op, seq, body):
        self.frames.append((op, conn_id, body))
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
            assert [f[0] for f in ims[0].frames] == [OP_MSG_SEND, OP_SYNC, OP_MSG_ACK]
            assert ims[1].frames == [(OP_MSG_ACK, 7, b'{"seq":1}')]  # the ack reached the other im too
            await svcs[0].stop()  # im one dies
            await wait_until_async(lambda: not client.pools[0].healthy, what="the client to see it")
            for i in range(10):
                assert await client.receive("A", 7, 1, OP_MSG_SEND, 10 + i, b"{}") == b'{"by":"two"}'
            assert await client.receive("A", 7, 1, OP_MSG_ACK, 30, b'{"seq":2}') == b""
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
