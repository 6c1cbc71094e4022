"""Small helpers every kind of test uses: running a coroutine to its end, and a free loopback port."""

from __future__ import annotations

import asyncio
import socket

import uvloop


def run(coro, timeout: float = 180):
    """Run ``coro`` on a fresh uvloop event loop and return what it returns. A coroutine still running
    after ``timeout`` seconds fails the test: the bound of a hang, not a claim about speed."""
    return uvloop.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts with a fixed address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
