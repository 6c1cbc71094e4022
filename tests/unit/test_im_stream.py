"""Client.messages() against a scripted server: order, duplicates, gaps, acks (no sockets)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings, strategies as st

from imgate.core import Frame
from imgate.im.stream import MessageStream


class ScriptedClient:
    """Pushes from a script; an inbox to sync from; records acks and syncs."""

    def __init__(self, inbox: list[int], pushes: list[list[int]], inbox_seq: int = 0):
        self.inbox = inbox
        self.pushes = [Frame(24, 0, json.dumps({"msgs": [{"seq": s} for s in p]}).encode()) for p in pushes]
        self.inbox_seq = inbox_seq
        self.acks: list[int] = []
        self.syncs: list[tuple[int, int]] = []

    async def recv(self):
        if not self.pushes:
            from imgate.client import ConnectionClosed
            raise ConnectionClosed("done")
        return self.pushes.pop(0)

    async def sync(self, after, limit):
        self.syncs.append((after, limit))
        rest = [s for s in self.inbox if s > after]
        return {"msgs": [{"seq": s} for s in rest[:limit]], "has_more": len(rest) > limit}

    def ack(self, seq):
        self.acks.append(seq)


async def collect(stream):
    return [m["seq"] async for m in stream]


def test_in_order_pushes_pass_through_and_are_acked():
    c = ScriptedClient(inbox=[1, 2, 3], pushes=[[1], [2, 3]])
    assert asyncio.run(collect(MessageStream(c, 0))) == [1, 2, 3]
    assert c.syncs == [] and c.acks == [1, 3]


def test_duplicates_are_dropped():
    c = ScriptedClient(inbox=[1, 2], pushes=[[1], [1], [2], [1, 2]])
    assert asyncio.run(collect(MessageStream(c, 0))) == [1, 2]


def test_a_gap_is_filled_by_paged_sync():
    inbox = list(range(1, 12))
    c = ScriptedClient(inbox=inbox, pushes=[[1], [11], [10, 11]])
    stream = MessageStream(c, 0, page=3)
    assert asyncio.run(collect(stream)) == inbox
    assert c.syncs == [(1, 3), (4, 3), (7, 3)], "synced from the last seq handed out, page by page"
    assert c.acks[-1] == 11


def test_catch_up_from_an_older_seq_before_live_pushes():
    c = ScriptedClient(inbox=[1, 2, 3, 4], pushes=[[5]], inbox_seq=4)
    c.inbox.append(5)
    assert asyncio.run(collect(MessageStream(c, 1))) == [2, 3, 4, 5]
    assert c.syncs[0] == (1, 100)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), data=st.data())
def test_any_pushes_yield_the_inbox_once_in_order(n, data):
    """Pushes lost, repeated or out of order: the stream still hands out 1..n once each, in order,
    provided the last entry is pushed at some point (a client learns of news only by a push)."""
    seqs = data.draw(st.lists(st.integers(1, n), max_size=3 * n))
    pushes = [[s] for s in seqs] + [[n]]
    c = ScriptedClient(inbox=list(range(1, n + 1)), pushes=pushes)
    assert asyncio.run(collect(MessageStream(c, 0, page=data.draw(st.integers(1, 10))))) == list(range(1, n + 1))
    assert c.acks == sorted(set(c.acks)) and c.acks[-1] == n, "acks only move forward, up to the newest"
