"""Small helpers every kind of test uses: running a coroutine to its end, a free loopback port,
stopping a process."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess

import uvloop


#: the event loop run() makes: "uvloop" (what imgate runs on), or "asyncio" for a test that runs both
LOOP = "uvloop"


def run(coro, timeout: float = 180):
    """Run ``coro`` on a fresh event loop (:data:`LOOP`) and return what it returns. A coroutine still
    running after ``timeout`` seconds fails the test: the bound of a hang, not a claim about speed."""
    if LOOP == "uvloop":
        return uvloop.run(asyncio.wait_for(coro, timeout))
    return asyncio.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts with a fixed address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, up to ``timeout`` seconds for the process to end, then SIGKILL; its return code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
