"""PUSH_CONNS_PACKED bodies: the compiled reader a worker uses (``proxy._delivery.push_packed_nowait``)
against the layout written out by hand with ``struct`` here, and against the Python reader."""

from __future__ import annotations

import struct

import pytest

from imgate.core import encode_frame
from imgate.proxy._delivery import push_packed_nowait
from imgate.rpc.packed import pack_push, unpack_pushes


class Table:
    """The room table's send_many, recorded: (channels, frame, op) per call."""

    def __init__(self):
        self.calls = []

    def send_many(self, chs, frame, op):
        self.calls.append((list(chs), frame, op))
        return len([ch for ch in chs if ch != "slow"])  # a slow consumer's push is dropped


class Worker:
    """What push_packed_nowait reads of a proxy: its connections by id, its table, its counters."""

    def __init__(self, conns: dict):
        self._by_conn_id = conns
        self.table = Table()
        self.stats_counters = {"pushes": 0, "drops": 0}


def by_hand(conn_ids, op, body) -> bytes:
    """The documented layout, spelled out field by field."""
    out = struct.pack(">I", len(conn_ids))
    for cid in conn_ids:
        out += struct.pack(">q", cid)
    return out + struct.pack(">i", op) + struct.pack(">I", len(body)) + body


PUSHES = [([7], 1000, b"hello"), ([8, 9, 404], 1001, b""), ([1 << 40], -5, b"x" * 300), ([8], 1000, b"\x00\xff")]


def test_pack_push_writes_the_documented_layout_and_unpack_reads_it_back():
    body = b"".join(pack_push(*p) for p in PUSHES)
    assert body == b"".join(by_hand(*p) for p in PUSHES)
    assert unpack_pushes(body) == PUSHES
    with pytest.raises(ValueError):
        pack_push([], 1000, b"x")


def test_the_worker_delivers_every_packed_push_in_order_to_the_connections_it_holds():
    w = Worker({7: "a", 8: "b", 9: "slow", 1 << 40: "c"})  # 404 is not here (it left)
    n = push_packed_nowait(w, b"".join(by_hand(*p) for p in PUSHES))
    assert w.table.calls == [
        (["a"], encode_frame(1000, 0, b"hello"), 1000),
        (["b", "slow"], encode_frame(1001, 0, b""), 1001),
        (["c"], encode_frame(-5, 0, b"x" * 300), -5),
        (["b"], encode_frame(1000, 0, b"\x00\xff"), 1000),
    ]
    assert n == 4 and w.stats_counters == {"pushes": 4, "drops": 1}
    assert push_packed_nowait(w, b"") == 0


def test_a_malformed_body_is_refused_whole_and_nothing_of_it_is_delivered():
    good = b"".join(by_hand(*p) for p in PUSHES)
    for cut in range(1, len(good)):
        body = good[:cut]
        try:
            want = unpack_pushes(body)
        except ValueError:
            want = None
        w = Worker({7: "a", 8: "b", 9: "c", 404: "d", 1 << 40: "e"})
        if want is None:  # the Python reader refuses it: so does the compiled one, before any delivery
            with pytest.raises(ValueError, match="packed pushes"):
                push_packed_nowait(w, body)
            assert w.table.calls == [] and w.stats_counters["pushes"] == 0, cut
        else:  # a cut between two pushes is a shorter valid body
            push_packed_nowait(w, body)
            assert len(w.table.calls) == len(want), cut
    for bad in (struct.pack(">I", 0) + b"\x00" * 8,  # a push naming no connection
                struct.pack(">I", 0xFFFFFFFF) + b"\x00" * 16,  # more ids than bytes
                by_hand([7], 1000, b"abc")[:-1] + b""):  # a body shorter than its length
        w = Worker({7: "a"})
        with pytest.raises(ValueError):
            push_packed_nowait(w, bad)
        with pytest.raises(ValueError):
            unpack_pushes(bad)
        assert w.table.calls == []
