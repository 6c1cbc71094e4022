"""The one way tests wait for the system: poll for the state itself until a generous deadline.

    wait_until(lambda: node.stats()["conns"] == 0, what="the connection to be dropped")
    await wait_until_async(lambda: cache.user_count(), equals=0, what="...")   # inside a coroutine

No test sleeps to give the server time and no test asserts how long something took: on a busy 2-core
machine either one flakes. The deadline only bounds a hang; it is not a claim about speed (those belong
in benchmarks/). `IMGATE_TEST_DEADLINE` (seconds) overrides the default for very slow machines.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time

DEADLINE = float(os.environ.get("IMGATE_TEST_DEADLINE", "30"))
_MISSING = object()


class _Poll:
    """The state of one wait: the deadline and what the condition last said (for the failure message)."""

    def __init__(self, what, timeout, equals):
        self.what = what
        self.deadline = time.monotonic() + (DEADLINE if timeout is None else timeout)
        self.equals = equals
        self.last = _MISSING
        self.error = None

    def done(self, value) -> bool:
        self.last = value
        return bool(value) if self.equals is _MISSING else value == self.equals

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def fail(self):
        want = "" if self.equals is _MISSING else f" == {self.equals!r}"
        last = "never evaluated" if self.last is _MISSING else repr(self.last)
        err = f"; last error: {self.error!r}" if self.error is not None else ""
        raise AssertionError(f"timed out waiting for {self.what or 'a condition'}{want} "
                             f"(last value: {last}{err})")


def wait_until(cond, *, what: str = "", timeout: float | None = None, equals=_MISSING,
               interval: float = 0.01, ignore: tuple = ()):
    """Call `cond()` until it is truthy (or == `equals`) and return its last value; AssertionError with
    `what` and the last value at the deadline. Exceptions in `ignore` count as "not yet"."""
    p = _Poll(what, timeout, equals)
    while True:
        try:
            if p.done(cond()):
                return p.last
        except ignore as e:
            p.error = e
        if p.expired():
            p.fail()
        time.sleep(interval)


async def wait_until_async(cond, *, what: str = "", timeout: float | None = None, equals=_MISSING,
                           interval: float = 0.01, ignore: tuple = ()):
    """wait_until for coroutines: `cond()` may return a value or an awaitable; the loop keeps running
    between polls, so a server on the same loop makes progress."""
    p = _Poll(what, timeout, equals)
    while True:
        try:
            value = cond()
            if inspect.isawaitable(value):
                value = await value
            if p.done(value):
                return p.last
        except ignore as e:
            p.error = e
        if p.expired():
            p.fail()
        await asyncio.sleep(interval)
