"""Connecting again and again: backoff with jitter, and the server's own pacing of busy refusals."""

from __future__ import annotations

import asyncio
import random
from typing import Callable

from imgate.client.connect import connect
from imgate.client.connection import Client
from imgate.client.errors import AuthRejected, ClientTimeout


async def connect_with_retry(url: str, *, deadline: float = 60.0, backoff: float = 0.1,
                             max_backoff: float = 10.0, on_busy: Callable[[dict], None] | None = None,
                             **kwargs) -> Client:
    """:func:`connect`, again and again until it succeeds or ``deadline`` seconds have passed.

    A server that is too busy to authenticate (op 6 ``{"reason": "busy", "reconnect": true,
    "retry_ms": N}``) is tried again after ``retry_ms``, which the server spreads so that a storm of
    returning clients arrives at the rate it can take; ``on_busy`` sees each such notice. Any other
    notice with ``"reconnect": true``, a timeout or a refused connection is retried with jittered
    exponential backoff from ``backoff`` to ``max_backoff`` seconds. A refusal without
    ``reconnect`` (a bad token) is raised at once, as is the last error once the deadline passes.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    delay = backoff
    while True:
        try:
            return await connect(url, **kwargs)
        except AuthRejected as e:
            notice = e.notice or {}
            if not notice.get("reconnect"):
                raise
            if notice.get("reason") == "busy" and isinstance(notice.get("retry_ms"), (int, float)):
                if on_busy is not None:
                    on_busy(notice)
                wait = max(0.0, notice["retry_ms"] / 1000)
            else:
                wait, delay = delay * random.uniform(0.5, 1.0), min(max_backoff, delay * 2)
            err: Exception = e
        except (ClientTimeout, ConnectionError, OSError) as e:
            wait, delay = delay * random.uniform(0.5, 1.0), min(max_backoff, delay * 2)
            err = e
        if loop.time() + wait >= end:
            raise err
        await asyncio.sleep(wait)
