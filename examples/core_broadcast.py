"""A tiny room-broadcast gateway on imgate.core alone (no other imgate role).

Clients connect over TCP, every line they send is broadcast as a goim frame to the room "lobby".
Run:  python examples/core_broadcast.py  then  nc 127.0.0.1 7000  in two terminals.
With --selftest it starts, connects three clients, checks the broadcast and exits 0.
"""

import asyncio
import socket
import sys

import uvloop

from imgate.core import FrameDecoder, RoomTable, encode_frame


class LineGateway:
    def __init__(self, loop, host="127.0.0.1", port=7000):
        self.loop = loop
        self.table = RoomTable(loop, max_pending=256 * 1024, on_overflow=self.drop)
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.sock.setblocking(False)
        self.socks = {}
        self.next_id = 0

    def start(self):
        # the table writes straight to the sockets, so the gateway owns them (no asyncio transports)
        self.loop.add_reader(self.sock.fileno(), self.on_accept)

    def on_accept(self):
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.next_id += 1
        cid = self.next_id
        self.socks[cid] = conn
        self.table.add(cid, conn)
        self.table.join(cid, "lobby")
        self.loop.add_reader(conn.fileno(), self.on_readable, cid)

    def on_readable(self, cid):
        conn = self.socks[cid]
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(cid)
            return
        for n, line in enumerate(data.splitlines()):
            # encoded once; the table hands the same bytes to every member
            self.table.broadcast("lobby", encode_frame(1000, n, line))

    def drop(self, cid):
        conn = self.socks.pop(cid, None)
        if conn is None:
            return
        self.loop.remove_reader(conn.fileno())
        self.table.remove(cid)  # unregister first: the table must never write to a closed fd
        conn.close()


async def selftest():
    loop = asyncio.get_running_loop()
    gw = LineGateway(loop, port=0)
    gw.start()
    port = gw.sock.getsockname()[1]
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    while len(gw.table) < 3:
        await asyncio.sleep(0.01)
    clients[0][1].write(b"hello room\n")
    for reader, _ in clients:
        frame = FrameDecoder().feed(await reader.readexactly(16 + len(b"hello room")))[0]
        assert (frame.op, frame.body) == (1000, b"hello room"), frame
    for _, writer in clients:
        writer.close()
    print("ok: 3 clients got the broadcast")


if __name__ == "__main__":
    if "--selftest" in sys.argv:
        uvloop.run(selftest())
    else:
        loop = uvloop.new_event_loop()
        LineGateway(loop).start()
        print("listening on 127.0.0.1:7000")
        loop.run_forever()
