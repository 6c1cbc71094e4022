"""imgate.proxy.eager.start: a coroutine that never waits finishes with no task; one that waits is
driven on by a task exactly as a task would have, outcomes and cancellation included."""

from __future__ import annotations

import asyncio

import pytest

from imgate.proxy.eager import start

from helpers import run


class Spawner:
    def __init__(self):
        self.tasks = []

    def __call__(self, coro):
        self.tasks.append(asyncio.get_running_loop().create_task(coro))


def test_a_coroutine_that_never_waits_runs_at_once_without_a_task():
    async def go():
        done = []

        async def ack():
            done.append(1)

        spawn = Spawner()
        start(ack(), spawn)
        assert done == [1], "ran before start() returned"
        assert spawn.tasks == []

    run(go())


def test_a_coroutine_that_waits_gets_its_futures_outcomes_and_finishes_in_a_task():
    async def go():
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        seen = []

        async def op():
            seen.append("started")
            seen.append(await first)
            try:
                await second
            except KeyError as e:
                seen.append(f"caught {e.args[0]}")
            await asyncio.sleep(0)  # a bare yield
            seen.append("end")

        spawn = Spawner()
        start(op(), spawn)
        assert seen == ["started"] and len(spawn.tasks) == 1
        first.set_result("r1")
        second.set_exception(KeyError("k"))
        await spawn.tasks[0]
        assert seen == ["started", "r1", "caught k", "end"]

    run(go())


def test_cancelling_the_task_reaches_the_coroutines_cleanup():
    async def go():
        never = asyncio.get_running_loop().create_future()
        cleaned = []

        async def op():
            try:
                await never
            finally:
                cleaned.append(1)

        spawn = Spawner()
        start(op(), spawn)
        await asyncio.sleep(0)  # the task is waiting on the future
        spawn.tasks[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await spawn.tasks[0]
        assert cleaned == [1]

    run(go())


def test_a_coroutine_that_fails_before_any_wait_is_logged_and_the_caller_goes_on(caplog):
    async def go():
        async def broken():
            raise ValueError("boom")

        spawn = Spawner()
        with caplog.at_level("ERROR", logger="imgate.proxy"):
            start(broken(), spawn)  # the proxy's loop over a read's frames must not see it
        assert spawn.tasks == []
        assert any("boom" in (r.exc_text or "") or (r.exc_info and "boom" in str(r.exc_info[1]))
                   for r in caplog.records)

    run(go())
