"""The client's errors, and the timer that turns a silent server into :class:`ClientTimeout`."""

from __future__ import annotations

import asyncio


class ClientError(Exception):
    """Base of the client's errors."""


class AuthRejected(ClientError):
    """The server answered the auth frame with op 6, or closed, instead of op 8."""

    def __init__(self, reason: str, notice: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.notice = notice


class ConnectionClosed(ClientError):
    """The connection is closed; ``notice`` is the server's op-6 body (a dict) if it sent one."""

    def __init__(self, reason: str, notice: dict | None = None, ws_code: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.notice = notice
        self.ws_code = ws_code


class Refused(ClientError):
    """The server refused an operation (its reply says ``"ok": false``): an invalid room id, the
    connection's room limit, bad sub/unsub ops. The connection stays open; ``error`` is the server's
    reason, ``reply`` the reply's JSON body."""

    def __init__(self, op: int, error: str, reply: dict):
        super().__init__(f"op {op} refused: {error}")
        self.op = op
        self.error = error
        self.reply = reply


class ImRejected(ClientError):
    """The server answered an IM request with an error (``code``, ``error``); the connection stays."""

    def __init__(self, code: int, error: str, reply: dict):
        super().__init__(f"{code}: {error}")
        self.code = code
        self.error = error
        self.reply = reply


class ClientTimeout(ClientError, TimeoutError):
    """No answer within the timeout."""


def _expire(fut: asyncio.Future, what: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(ClientTimeout(f"no {what} within {timeout:g} s"))
