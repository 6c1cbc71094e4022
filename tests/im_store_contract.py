"""The `MessageStore` contract: one suite every message store passes, against a reference model (a few
Python dicts), so SqliteStore and MariaDbStore stay interchangeable. A store's test module imports the
tests (``from im_store_contract import *``) and defines a ``backend`` fixture (a :class:`StoreBackend`);
tests/unit/test_im_store.py (SQLite) and tests/integration/test_im_store_mariadb.py do that.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from imgate.im.protocol import E_CMID_CONFLICT, E_OUT_OF_RANGE, E_UNKNOWN_RECEIVER, ImError, single_conv
from imgate.im.store import MessageStore, NewMessage, digest_of
from helpers import run
from polling import wait_until_async


def new_message(sender, to, cmid, content, type_="text"):
    text = json.dumps(content)
    return NewMessage(sender, cmid, single_conv(sender, to), to, None, type_, text,
                      digest_of(to, None, type_, text), (sender, to))


class StoreBackend:
    """Opens the store under test. ``fresh=True``: an empty store; ``False``: the data of the last one
    (a restart). Keyword arguments are the store's retention options."""

    rounds = 50  # messages per (sender, receiver) pair in the concurrency test

    async def open(self, fresh: bool = True, **kw) -> MessageStore:
        raise NotImplementedError


async def all_msgs(store, uid):
    page = await store.sync(uid, 0, 100000)
    assert not page.has_more
    return [json.loads(m) for m in page.msgs]


class Model:
    """What the store must answer, written the obvious way."""

    def __init__(self):
        self.inbox: dict[int, list[dict]] = {}
        self.cmids: dict[tuple, tuple] = {}  # (sender, cmid) -> (body, msg_id, sender seq)
        self.next_id = 0
        self.read_seq: dict[tuple, int] = {}  # (owner, conv) -> read position; present once the conv exists

    def open(self, uid):
        self.inbox.setdefault(uid, [])
        return len(self.inbox[uid])

    def send(self, sender, to, cmid, content):
        body = (to, json.dumps(content))
        if (sender, cmid) in self.cmids:
            old, msg_id, seq = self.cmids[(sender, cmid)]
            if old != body:
                return ("error", E_CMID_CONFLICT)
            return ("dup", msg_id, seq)
        if to not in self.inbox:
            return ("error", E_UNKNOWN_RECEIVER)
        self.open(sender)
        self.next_id += 1
        self._append(sender, to, cmid, content, "text")
        seq = len(self.inbox[sender])
        self.cmids[(sender, cmid)] = (body, self.next_id, seq)
        return ("new", self.next_id, seq)

    def _append(self, sender, to, cmid, content, type_):
        conv = single_conv(sender, to)
        for owner in (sender, to):
            self.inbox[owner].append({"from": sender, "to": to, "cmid": cmid, "content": content, "conv": conv,
                                      "type": type_, "seq": len(self.inbox[owner]) + 1})
            if type_ != "read":
                self.read_seq.setdefault((owner, conv), 0)

    def read(self, uid, peer, seq):
        """(read position, whether a notice was stored) or ("error", code)."""
        conv = single_conv(uid, peer)
        if seq > len(self.inbox.get(uid, [])):
            return ("error", E_OUT_OF_RANGE)
        if (uid, conv) not in self.read_seq:
            return ("error", 400)
        old = self.read_seq[(uid, conv)]
        if seq <= old:
            return (old, False)
        self.read_seq[(uid, conv)] = seq
        if not any(e["conv"] == conv and e["from"] != uid and e["type"] != "read" and old < e["seq"] <= seq
                   for e in self.inbox[uid]):
            return (seq, False)   # only its own messages or notices passed: the peer is told nothing
        self.next_id += 1
        self._append(uid, peer, f"~read:{conv}:{seq}", None, "read")
        return (seq, True)

    def unread(self, uid):
        """conv -> unread count, for the conversations of ``uid``."""
        return {conv: sum(1 for e in self.inbox[uid] if e["conv"] == conv and e["from"] != uid
                          and e["type"] != "read" and e["seq"] > pos)
                for (owner, conv), pos in self.read_seq.items() if owner == uid}


ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(1, 4)),
        st.tuples(st.just("send"), st.integers(1, 4), st.integers(1, 4), st.sampled_from(["a", "b", "c", "d"]),
                  st.sampled_from(["hi", "yo", {"k": 1}])),
        # a read at a given seq, or (-1) at the reader's newest entry, which is what apps do
        st.tuples(st.just("read"), st.integers(1, 4), st.integers(1, 4), st.one_of(st.integers(0, 12), st.just(-1))),
    ),
    max_size=40,
)


def model_test(max_examples: int):
    """The model test with a store-specific number of examples (a networked store runs fewer)."""

    @settings(max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=ops)
    def test_store_matches_the_model(backend, ops):
        run(_check_against_model(backend, ops))

    return test_store_matches_the_model


test_store_matches_the_model = model_test(100)


async def _check_against_model(backend, ops):
    store = await backend.open()
    model = Model()
    msg_ids = {}  # model id -> store id
    try:
        for op in [("open", 1), ("open", 2), ("open", 3)] + ops:  # user 4 has no inbox until it opens one
            if op[0] == "open":
                assert await store.open_inbox(op[1]) == model.open(op[1])
                continue
            if op[0] == "read":
                _, uid, peer, seq = op
                if uid == peer:
                    continue
                if seq == -1:
                    seq = len(model.inbox.get(uid, []))
                want = model.read(uid, peer, seq)
                try:
                    got = await store.mark_read(uid, single_conv(uid, peer), seq)
                except ImError as e:
                    assert want == ("error", e.code)
                    continue
                assert want == (got.read_seq, got.notice is not None)
                continue
            _, sender, to, cmid, content = op
            if sender == to:
                continue
            want = model.send(sender, to, cmid, content)
            try:
                got = await store.send(new_message(sender, to, cmid, content))
            except ImError as e:
                assert want == ("error", e.code)
                continue
            assert want[0] == ("dup" if got.duplicate else "new"), (want, got)
            assert got.seqs[sender] == want[2]
            if want[0] == "new":
                msg_ids[want[1]] = got.msg_id
            else:
                assert got.msg_id == msg_ids[want[1]], "a resend answers the original msg_id"
        for uid, entries in model.inbox.items():
            msgs = await all_msgs(store, uid)
            assert [m["seq"] for m in msgs] == list(range(1, len(entries) + 1))
            assert [(m["from"], m["to"], m["cmid"], m["type"], m["conv"]) for m in msgs] == \
                   [(e["from"], e["to"], e["cmid"], e["type"], e["conv"]) for e in entries]
            assert [m["content"] for m in msgs if m["type"] != "read"] == \
                   [e["content"] for e in entries if e["type"] != "read"]
            convs = json.loads(await store.conversations(uid, 100))
            assert {c["conv"]: c["unread"] for c in convs} == model.unread(uid)
            assert await store.max_seq(uid) == len(entries)
    finally:
        await store.close()


def test_paged_sync_and_range_errors(backend):
    async def go():
        store = await backend.open()
        await store.open_inbox(2)
        for i in range(25):
            await store.send(new_message(1, 2, f"c{i}", i))
        pages, after = [], 0
        while True:
            page = await store.sync(2, after, 10)
            pages.append([json.loads(m)["content"] for m in page.msgs])
            assert page.max_seq == 25
            if not page.has_more:
                break
            after = json.loads(page.msgs[-1])["seq"]
        assert pages == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
        with pytest.raises(ImError) as e:
            await store.sync(2, 26, 10)
        assert e.value.code == E_OUT_OF_RANGE
        assert (await store.sync(2, 25, 10)).msgs == []
        await store.close()

    run(go())


def test_unread_counts_and_read_notices(backend):
    async def go():
        store = await backend.open()
        await store.open_inbox(1)
        await store.open_inbox(2)
        for i in range(3):
            await store.send(new_message(1, 2, f"a{i}", i))  # user 2 seqs 1..3
        await store.send(new_message(2, 1, "b0", "back"))   # user 2 seq 4 (own: not unread)
        convs = json.loads(await store.conversations(2, 10))
        assert [(c["conv"], c["peer"], c["unread"], c["last"]["content"]) for c in convs] == [("u:1:2", 1, 3, "back")]
        r = await store.mark_read(2, "u:1:2", 2)
        assert r.read_seq == 2 and r.notice is not None and r.peer == 1
        assert json.loads(await store.conversations(2, 10))[0]["unread"] == 1
        notice = json.loads(r.notice.entries[1])
        assert notice["type"] == "read" and notice["from"] == 2
        assert notice["content"]["seq"] == 2
        # the message at user 2's seq 2 is the second one user 1 sent
        assert notice["content"]["msg_id"] == (await all_msgs(store, 1))[1]["msg_id"]
        # the read position never goes back; reading again changes nothing
        again = await store.mark_read(2, "u:1:2", 1)
        assert again.read_seq == 2 and again.notice is None
        # the sender's own unread counts are untouched by its read notice
        assert json.loads(await store.conversations(1, 10))[0]["unread"] == 1
        for bad, code in ((("u:1:3", 1), 400), (("u:1:2", 99), E_OUT_OF_RANGE), (("x", 1), 400)):
            with pytest.raises(ImError) as e:
                await store.mark_read(2, *bad)
            assert e.value.code == code
        await store.close()

    run(go())


def test_reads_cannot_grow_the_peers_inbox(backend):
    """A read notice lands in the reader's inbox too: reading up to it again and again must not store
    one more notice each time (a READ flood would grow the peer's inbox without end)."""
    async def go():
        store = await backend.open()
        await store.open_inbox(1)
        await store.open_inbox(2)
        await store.send(new_message(1, 2, "a0", "hi"))        # user 2 seq 1
        assert (await store.mark_read(2, "u:1:2", 1)).notice is not None   # passes user 1's message: told
        for _ in range(10):
            top = await store.max_seq(2)
            r = await store.mark_read(2, "u:1:2", top)         # only its own notices passed
            assert r.read_seq == top and r.notice is None
        assert await store.max_seq(1) == 2, "user 1 holds its message and one read notice"
        await store.send(new_message(1, 2, "a1", "again"))
        assert (await store.mark_read(2, "u:1:2", await store.max_seq(2))).notice is not None
        await store.close()

    run(go())


def test_concurrent_sends_stay_gapless(backend):
    async def go():
        store = await backend.open()
        for u in range(1, 11):
            await store.open_inbox(u)
        sends = [store.send(new_message(s, r, f"{s}-{r}-{i}", i))
                 for i in range(backend.rounds) for s in range(1, 11) for r in range(1, 11) if s != r]
        results = await asyncio.gather(*sends)
        assert len(results) == 90 * backend.rounds and not any(r.duplicate for r in results)
        for u in range(1, 11):
            seqs = [json.loads(m)["seq"] for m in (await store.sync(u, 0, 100000)).msgs]
            assert seqs == list(range(1, 18 * backend.rounds + 1))
        # every sender's reply seq is the seq of its own entry
        own = {(r.msg_id, s): r.seqs[s] for r in results for s in r.seqs}
        for u in range(1, 11):
            for m in await all_msgs(store, u):
                assert own[(int(m["msg_id"]), u)] == m["seq"]
        await store.close()

    run(go())


def test_concurrent_resends_of_one_cmid_store_it_once(backend):
    async def go():
        store = await backend.open()
        await store.open_inbox(2)
        results = await asyncio.gather(*(store.send(new_message(1, 2, "same", "x")) for _ in range(20)))
        assert sum(not r.duplicate for r in results) == 1
        assert len({r.msg_id for r in results}) == 1 and {r.seqs[1] for r in results} == {1}
        assert [m["cmid"] for m in await all_msgs(store, 2)] == ["same"]
        await store.close()

    run(go())


def test_restart_keeps_everything(backend):
    async def go():
        store = await backend.open()
        await store.open_inbox(2)
        first = await store.send(new_message(1, 2, "x", "hello"))
        await store.close()
        store = await backend.open(fresh=False)
        again = await store.send(new_message(1, 2, "x", "hello"))
        assert again.duplicate and (again.msg_id, again.seqs[1]) == (first.msg_id, first.seqs[1])
        with pytest.raises(ImError) as e:
            await store.send(new_message(1, 2, "x", "changed"))
        assert e.value.code == E_CMID_CONFLICT
        assert len(await all_msgs(store, 2)) == 1
        with pytest.raises(ImError) as e:
            await store.send(new_message(1, 99, "y", "nobody"))
        assert e.value.code == E_UNKNOWN_RECEIVER
        await store.close()

    run(go())


def test_retention_by_entries_says_what_is_gone(backend):
    async def go():
        store = await backend.open(retention_entries=5)
        await store.open_inbox(2)
        for i in range(12):
            await store.send(new_message(1, 2, f"c{i}", i))
        page = await store.sync(2, 0, 100)
        assert [json.loads(m)["seq"] for m in page.msgs] == list(range(8, 13))
        assert page.min_seq == 8 and page.truncated(0) and not page.truncated(7)
        assert (await store.send(new_message(1, 2, "c0", 0))).duplicate, "a resend still finds its original"
        await store.close()

    run(go())


def test_retention_by_age_sweeps_old_entries_and_says_so(backend):
    async def go():
        store = await backend.open(retention_days=0.5 / 86400, prune_interval=0.05)  # half a second
        await store.open_inbox(2)
        for i in range(3):
            await store.send(new_message(1, 2, f"old{i}", i))

        async def swept():
            page = await store.sync(2, 0, 100)
            return page if not page.msgs else None

        page = await wait_until_async(swept, what="the sweep to remove the old entries")
        assert page.min_seq == 4 and page.max_seq == 3 and page.truncated(0)
        await store.send(new_message(1, 2, "new", "fresh"))
        page = await store.sync(2, 0, 100)
        assert [json.loads(m)["seq"] for m in page.msgs] in ([4], [])  # the new one, unless it aged already
        assert (await store.send(new_message(1, 2, "old0", 0))).duplicate, "the cmid outlives the content"
        await store.close()

    run(go())
