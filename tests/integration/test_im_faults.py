"""IM faults against a real `imgate serve` process: kill -9 around a send, a locked database."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from imgate import client as imclient

from helpers import run
from imutil import api, serve  # noqa: F401 (serve is a fixture)
from polling import wait_until_async


def lock_database(proc) -> sqlite3.Connection:
    """Another writer holds the node's database until the returned connection rolls back."""
    conn = sqlite3.connect(proc.config["data_dir"] + "/im.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


async def connect(proc, mid, transport="tcp"):
    return await imclient.connect(proc.tcp_url if transport == "tcp" else proc.ws_url, mid=mid, heartbeat=None)


async def inbox(proc, uid):
    status, reply = await asyncio.get_running_loop().run_in_executor(
        None, api, proc.http_base, "GET", f"/im/sync?uid={uid}&after=0&limit=1000")
    assert status == 200, reply
    return reply["data"]["msgs"]


@pytest.mark.parametrize("mode", ["writer-blocked", "racing", "committed"])
def test_kill_between_send_and_reply_then_resend_stores_one(serve, mode):
    """kill -9 while the 22 waits for the writer, races it, or has committed with its 23 unread."""
    proc = serve(im_busy_timeout=30.0)

    async def before():
        b = await connect(proc, 2)
        a = await connect(proc, 1, "ws")
        lock = lock_database(proc) if mode == "writer-blocked" else None  # the writer waits with the 22
        a.send_frame(22, json.dumps({"cmid": "k", "to": 2, "content": "survives"}))
        await a.heartbeat()  # the proxy has read the 22 (it answers frames in order)
        if mode == "committed":
            await wait_until_async(lambda: inbox(proc, 2), what="the message to be stored")
        for c in (a, b):
            c.abort()
        return lock

    lock = run(before())
    proc.kill()  # kill -9: the 22 was queued (or, racing, maybe committed), its 23 never sent
    if lock is not None:
        lock.execute("ROLLBACK")
        lock.close()
    proc.start()

    async def after():
        a = await connect(proc, 1)
        reply = await a.send_message(2, "survives", cmid="k")
        assert reply["seq"] == 1
        for uid in (1, 2):
            msgs = await inbox(proc, uid)
            assert [(m["cmid"], m["content"], m["seq"]) for m in msgs] == [("k", "survives", 1)], uid
        await a.close()

    run(after())


def test_kill_after_reply_keeps_the_message_in_both_inboxes(serve):
    proc = serve()

    async def before():
        await (await connect(proc, 2)).close()
        a = await connect(proc, 1)
        replies = [await a.send_message(2, i, cmid=f"m{i}") for i in range(5)]
        a.abort()
        return replies

    replies = run(before())
    proc.kill()  # right after the last 23
    proc.start()

    async def after():
        for uid in (1, 2):
            msgs = await inbox(proc, uid)
            assert [(m["msg_id"], m["seq"], m["content"]) for m in msgs] == \
                   [(r["msg_id"], r["seq"], i) for i, r in enumerate(replies)]
        b = await connect(proc, 2)
        assert b.inbox_seq == 5
        await b.close()

    run(after())


def test_full_store_refuses_the_send_and_keeps_serving(serve):
    proc = serve(im_max_bytes=160 * 1024)  # a "disk" of 160 KiB

    async def go():
        b = await connect(proc, 2)
        a = await connect(proc, 1)
        stored = []
        with pytest.raises(imclient.ImRejected) as e:
            for i in range(100):  # 100 x 8 KB does not fit
                stored.append((await a.send_message(2, "x" * 8000, cmid=f"big{i}"))["seq"])
        assert e.value.code == 503 and "full" in e.value.error, e.value.error
        assert stored and stored == list(range(1, len(stored) + 1))
        assert [m["cmid"] for m in await inbox(proc, 2)] == [f"big{i}" for i in range(len(stored))], \
            "acknowledged messages are all there, the refused one is not"
        assert await a.heartbeat() >= 0, "the connection stays open"
        await a.close()
        await b.close()

    run(go())


def test_locked_database_refuses_the_send_and_keeps_serving(serve):
    proc = serve(im_busy_timeout=0.3)

    async def go():
        b = await connect(proc, 2)
        a = await connect(proc, 1, "ws")
        lock = lock_database(proc)
        with pytest.raises(imclient.ImRejected) as e:
            await a.send_message(2, "refused", cmid="x")
        assert e.value.code == 503 and "nothing stored" in e.value.error
        assert await a.heartbeat() >= 0, "the connection stays open"
        lock.execute("ROLLBACK")
        lock.close()
        assert await inbox(proc, 2) == [], "a refused send left nothing behind"
        reply = await a.send_message(2, "refused", cmid="x")  # the client's resend now goes through
        assert reply["seq"] == 1
        assert [m["cmid"] for m in await inbox(proc, 2)] == ["x"]
        await a.close()
        await b.close()

    run(go())
