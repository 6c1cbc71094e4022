"""Run a coroutine up to its first wait at once, and hand it to a task only if it waits.

Most IM frames a client sends are acks (op 25) that the IM service settles without waiting: a task
each (made, scheduled, registered in asyncio's set of tasks, stepped, discarded) cost more than the
ack itself, 200 of them per message to a 200-member group. The HTTP dispatcher does the same for its
handlers, and its :class:`~imgate.http._dispatch.Resume` drives a started coroutine on inside a task.
"""

from __future__ import annotations

import logging

from imgate.http._dispatch import Resume

log = logging.getLogger("imgate.proxy")


def start(coro, spawn) -> None:
    """Step ``coro`` now; if it waits, ``spawn`` (which makes and keeps a task of a coroutine) gets one
    that drives it on from that wait: its futures' outcomes and a cancellation reach it as in a task."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    except Exception:  # as a task's would be: said, and the caller's loop over frames goes on
        log.exception("operation failed")
        return
    spawn(_drive(Resume(coro, waiting)))


async def _drive(resume):
    return await resume
