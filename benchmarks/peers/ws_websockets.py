"""Peer: a broadcast server on the `websockets` library (its asyncio API, on uvloop).

Client protocol and control port as in benchmarks/peers/README.md: a client's first binary message
joins it to the room (answered with a goim op-8 frame); `POST /push` on the control port sends the body,
wrapped in a goim op-1000 frame, to every joined client with `websockets.broadcast` (the library's own
fan-out: one frame encoding per connection, written at once).

    python benchmarks/peers/ws_websockets.py --ws 127.0.0.1:PORT --control 127.0.0.1:PORT
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from websockets.asyncio.server import broadcast, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from _control import AUTH_REPLY, OP_PUSH, goim_frame, hostport, run_peer, serve_control  # noqa: E402

CLIENTS = set()


async def handler(ws):
    try:
        await ws.recv()              # the join (goim auth frame); its content is not checked
        await ws.send(AUTH_REPLY)
    except ConnectionClosed:
        return
    CLIENTS.add(ws)
    try:
        async for _ in ws:           # later messages are ignored
            pass
    except ConnectionClosed:
        pass
    finally:
        CLIENTS.discard(ws)


def on_push(body: bytes) -> None:
    broadcast(CLIENTS, goim_frame(OP_PUSH, body))


async def main(args):
    loop = asyncio.get_running_loop()
    host, port = hostport(args.ws)
    chost, cport = hostport(args.control)
    await serve_control(loop, chost, cport, on_push)
    async with serve(handler, host, port, backlog=4096, ping_interval=None, compression=None,
                     max_size=1 << 16):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    run_peer(main)
