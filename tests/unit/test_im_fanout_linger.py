"""The write-mode consumer's adaptive linger (imgate.im.groups): a job after a pause goes at once, and
while sends keep arriving the consumer waits ``fanout_linger`` so that the next jobs share its round."""

from __future__ import annotations

import asyncio

from imgate.im.service import ImService
from imgate.im.sqlite import SqliteStore
from imgate.im.store import GroupLimits

from test_im_service import Jobs, Sessions

from helpers import run
from polling import wait_until_async


async def _service(tmp_path, linger: float, busy_gap: float):
    store = SqliteStore(tmp_path / "im.db")
    await store.start()
    svc = ImService(store, Sessions({}), Jobs(), groups=GroupLimits(write_limit=50))
    svc.fanout_linger = linger
    svc.fanout_busy_gap = busy_gap
    rounds = []  # jobs each round of the consumer found
    fan_out_next = store.fan_out_next

    async def counted(limit):
        done = await fan_out_next(limit)
        if done:
            rounds.append(sum(1 + len(s.before) for s in done))
        return done

    store.fan_out_next = counted
    await svc.start()
    return svc, rounds


async def _outbox_empty(svc):
    return not await svc.store.fanout_jobs(1)


def test_a_lone_job_is_fanned_out_without_the_linger(tmp_path):
    """With a 60 s linger, a job after a pause (the first one, and one after a pause longer than the
    busy gap) is fanned out at once: lingering has nothing to gather then."""
    async def go():
        svc, rounds = await _service(tmp_path, linger=60.0, busy_gap=0.05)
        g = (await svc.create_group(1, {"members": [2, 3, 4]}))["group"]
        await wait_until_async(lambda: _outbox_empty(svc), what="the creation fanned out", timeout=20)
        await asyncio.sleep(0.2)  # the pause: longer than busy_gap since the last round with jobs
        await svc.send(1, {"cmid": "a", "group": g, "content": 1})
        await wait_until_async(lambda: _outbox_empty(svc), what="the lone message fanned out", timeout=20)
        assert rounds == [1, 1]
        await svc.stop()
        await svc.store.close()

    run(go())


def test_jobs_arriving_while_busy_share_one_round(tmp_path):
    """After a round with jobs, the next wake lingers: four sends made one after the other within the
    linger are fanned out by one round (one commit sharing their inbox pages), not four."""
    async def go():
        svc, rounds = await _service(tmp_path, linger=2.0, busy_gap=30.0)
        g = (await svc.create_group(1, {"members": [2, 3, 4]}))["group"]
        await wait_until_async(lambda: _outbox_empty(svc), what="the creation fanned out", timeout=20)
        assert rounds == [1]
        for i in range(4):
            await svc.send(1, {"cmid": f"b{i}", "group": g, "content": i})
        await wait_until_async(lambda: _outbox_empty(svc), what="the burst fanned out", timeout=20)
        assert rounds == [1, 4], rounds
        await svc.stop()
        await svc.store.close()

    run(go())
