"""Run a coroutine up to its first wait at once, and hand it to a task only if it waits.

Most IM frames a client sends are acks (op 25) that the IM service settles without waiting: a task
each (made, scheduled, registered in asyncio's set of tasks, stepped, discarded) cost more than the
ack itself, 200 of them per message to a 200-member group. Python 3.12's eager task factory does the
same for every task; this is the one spot that needs it, on 3.11 too.
"""

from __future__ import annotations

import asyncio


def start(coro, spawn) -> None:
    """Step ``coro`` now; if it waits, ``spawn`` (which makes and keeps a task of a coroutine) gets a
    coroutine that drives it on from that wait, as a task would have."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    spawn(_resumed(coro, waiting))


async def _resumed(coro, waiting):
    """What a task does with ``coro``, from inside one: wait for what it yielded, then step it again.
    The coroutine sees its future's outcome (a result, an exception or its cancellation) itself, as
    under a task; a cancellation of this task is thrown into it, so its cleanup runs."""
    while True:
        try:
            if waiting is None:  # a bare yield: asyncio.sleep(0)
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # taken, as a task takes what it is yielded
                await waiting
        except BaseException as e:  # noqa: B036 - handed to the coroutine, which decides
            settled = waiting is not None and waiting.done()
            step = coro.send if settled else coro.throw
            arg = None if settled else e
        else:
            step, arg = coro.send, None
        try:
            waiting = step(arg)
        except StopIteration as stop:
            return stop.value
