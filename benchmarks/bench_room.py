"""Room broadcast over real loopback TCP: RoomTable against the plain C send loop, same sockets.

2,000 client sockets are connected to 2,000 accepted server sockets in this process. The server ends
are registered in a RoomTable without an event loop (``loop=None``: nothing is scheduled, the benchmark
calls ``flush()`` itself) and joined to one room. Each round is ``broadcast(room, frame); flush()`` for
imgate, one call of ``send_loop`` (benchmarks/csrc/send_loop.c) over the very same descriptors for the
baseline. Between rounds, outside the measured region, every client socket is drained so the kernel
buffers never fill and every round does the same work.

The per-send kernel cost dominates both sides (the BRIEF's ~7 us per small send over loopback), so the
interesting number is the ratio within a group, not the absolute time. Timings are CPU time of the
benchmarking thread (``time.thread_time``), user + system.

The ``LoopbackRoom`` harness is shared with benchmarks/ratios.py.
"""

import resource
import socket
import struct
import time

import pytest

from _baseline import SendLoop

try:
    from imgate.core import RoomTable, encode_frame
except ImportError:  # websocket (which room cimports) not built yet: the baseline still runs
    RoomTable = None
    from imgate._core.frame import encode_frame

MEMBERS = 2000
COALESCE = 20
ROOM = "live://bench"
OP_SEND_MSG = 4
# 16-byte header + 48-byte body: one small 64-byte push
FRAME = encode_frame(OP_SEND_MSG, 0, b'{"room":"live://bench","msg":"hello, everyone"}'.ljust(48, b" "))
assert len(FRAME) == 64


def raise_nofile_limit(needed):
    """Bump RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        raise RuntimeError(f"need {needed} file descriptors, RLIMIT_NOFILE allows {soft} (hard limit {hard})")
    return soft


class LoopbackRoom:
    """n connected loopback TCP pairs in this process, all non-blocking.

    ``servers[i]`` is the accepted end of ``clients[i]``; the servers are what a gateway writes to.
    """

    def __init__(self, n=MEMBERS):
        self.n = n
        self.clients = []
        self.servers = []
        self._buf = bytearray(1 << 16)
        raise_nofile_limit(2 * n + 64)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            addr = listener.getsockname()
            for _ in range(n):
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.clients.append(client)
                # RST on close: no TIME_WAIT pile-up across repeated runs
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.connect(addr)
                server, peer = listener.accept()
                self.servers.append(server)
                if peer != client.getsockname():
                    raise RuntimeError("accept() returned an unexpected peer")
                server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                server.setblocking(False)
                client.setblocking(False)
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()
        self.fds = [s.fileno() for s in self.servers]

    def drain(self):
        """Read and discard whatever the clients have received; returns the byte count."""
        buf = self._buf
        size = len(buf)
        total = 0
        for client in self.clients:
            while True:
                try:
                    got = client.recv_into(buf)
                except BlockingIOError:
                    break
                total += got
                if got < size:
                    break
        return total

    def drain_quietly(self):
        """drain() returning None: a pytest-benchmark ``pedantic(setup=...)`` hook."""
        self.drain()

    def expect_each(self, expected, timeout=5.0):
        """Assert every client received exactly `expected`, nothing more (waits up to `timeout`
        for stragglers: loopback normally delivers within the send call, but not always)."""
        got = [bytearray() for _ in self.clients]
        deadline = time.monotonic() + timeout
        want = len(expected)
        while True:
            short = 0
            for client, data in zip(self.clients, got):
                while True:
                    try:
                        piece = client.recv(1 << 16)
                    except BlockingIOError:
                        break
                    if not piece:
                        break
                    data += piece
                if len(data) < want:
                    short += 1
            if not short or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        bad = [i for i, data in enumerate(got) if data != expected]
        if bad:
            i = bad[0]
            raise AssertionError(
                f"{len(bad)} of {self.n} clients got the wrong bytes; client {i} got {len(got[i])} "
                f"bytes, expected {want}")

    def make_table(self, room=ROOM, **kwargs):
        """A RoomTable (no loop) with every server end registered and joined to `room`."""
        if RoomTable is None:
            raise RuntimeError("imgate.core.RoomTable is not importable (extensions not built?)")
        table = RoomTable(None, **kwargs)
        for i, server in enumerate(self.servers):
            table.add(i, server)
            table.join(i, room)
        return table

    def close(self):
        for s in self.servers + self.clients:
            try:
                s.close()
            except OSError:
                pass
        self.servers = []
        self.clients = []


def imgate_round(table, room=ROOM, frame=FRAME, k=1):
    """The function a benchmark round runs: k broadcasts, then one flush."""
    broadcast = table.broadcast
    flush = table.flush
    if k == 1:
        def run():
            broadcast(room, frame)
            flush()
    else:
        def run():
            for _ in range(k):
                broadcast(room, frame)
            flush()
    return run


# ------------------------------------------------------------------ pytest-benchmark

ROUNDS = 60


@pytest.fixture(scope="module")
def loopback():
    lo = LoopbackRoom(MEMBERS)
    yield lo
    lo.close()


@pytest.fixture(scope="module")
def table(loopback):
    if RoomTable is None:
        pytest.skip("imgate.core.RoomTable is not importable (extensions not built?)")
    t = loopback.make_table()
    yield t
    for i in range(loopback.n):
        t.remove(i)


@pytest.fixture(scope="module")
def send_loop(loopback):
    return SendLoop(loopback.fds)


def _check_table(table, loopback):
    stats = table.stats()
    assert stats["overflows"] == 0
    assert all(table.pending(i) == 0 for i in range(0, loopback.n, 97))


@pytest.mark.benchmark(group="room-broadcast-2000x1", timer=time.thread_time)
def test_broadcast_imgate(benchmark, loopback, table):
    loopback.drain()
    run = imgate_round(table)
    run()
    loopback.expect_each(FRAME)
    benchmark.pedantic(run, setup=loopback.drain_quietly, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    _check_table(table, loopback)
    loopback.drain()


@pytest.mark.benchmark(group="room-broadcast-2000x1", timer=time.thread_time)
def test_broadcast_c_send_loop(benchmark, loopback, send_loop):
    loopback.drain()
    assert send_loop.send_each(FRAME) == loopback.n
    loopback.expect_each(FRAME)
    benchmark.pedantic(send_loop.send_each, args=(FRAME,), setup=loopback.drain_quietly, rounds=ROUNDS,
                       iterations=1, warmup_rounds=2)
    loopback.drain()


@pytest.mark.benchmark(group="room-broadcast-2000x20-coalesced", timer=time.thread_time)
def test_broadcast_coalesced_imgate(benchmark, loopback, table):
    loopback.drain()
    run = imgate_round(table, k=COALESCE)
    before = table.stats()["write_calls"]
    run()
    assert table.stats()["write_calls"] - before == loopback.n  # one sendmsg per member
    loopback.expect_each(FRAME * COALESCE)
    benchmark.pedantic(run, setup=loopback.drain_quietly, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    _check_table(table, loopback)
    loopback.drain()


@pytest.mark.benchmark(group="room-broadcast-2000x20-coalesced", timer=time.thread_time)
def test_broadcast_coalesced_c_send_loop_batched(benchmark, loopback, send_loop):
    batch = FRAME * COALESCE
    loopback.drain()
    assert send_loop.send_each_batched(batch, len(FRAME), COALESCE) == loopback.n
    loopback.expect_each(batch)
    benchmark.pedantic(send_loop.send_each_batched, args=(batch, len(FRAME), COALESCE),
                       setup=loopback.drain_quietly, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    loopback.drain()
