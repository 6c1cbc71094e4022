"""Peer: a naive broadcast server on `picows` (Cython WebSocket library, on uvloop).

Client protocol and control port as in benchmarks/peers/README.md. `POST /push` wraps the body in a
goim op-1000 frame and calls `transport.send()` once per joined client: the straightforward way to
broadcast with picows (each send frames the message and writes it to that client's socket).

    python benchmarks/peers/ws_picows.py --ws 127.0.0.1:PORT --control 127.0.0.1:PORT
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from picows import WSListener, WSMsgType, ws_create_server  # noqa: E402

from _control import AUTH_REPLY, OP_PUSH, goim_frame, hostport, run_peer, serve_control  # noqa: E402

CLIENTS = set()
BINARY = WSMsgType.BINARY


class Listener(WSListener):
    def __init__(self):
        self.joined = False

    def on_ws_frame(self, transport, frame):
        kind = frame.msg_type
        if kind == BINARY:
            if not self.joined:      # the join (goim auth frame); its content is not checked
                self.joined = True
                transport.send(BINARY, AUTH_REPLY)
                CLIENTS.add(transport)
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport):
        CLIENTS.discard(transport)


def on_push(body: bytes) -> None:
    frame = goim_frame(OP_PUSH, body)
    for t in CLIENTS:
        t.send(BINARY, frame)


async def main(args):
    loop = asyncio.get_running_loop()
    host, port = hostport(args.ws)
    chost, cport = hostport(args.control)
    await serve_control(loop, chost, cport, on_push)
    server = await ws_create_server(lambda request: Listener(), host, port, backlog=4096,
                                    websocket_handshake_timeout=30)
    print("ready", flush=True)
    async with server:
        await asyncio.Future()


if __name__ == "__main__":
    run_peer(main)
