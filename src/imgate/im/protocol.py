"""The IM wire contract (docs/im.md "Wire protocol"): error codes and request parsing; the
operation numbers live with the other ones in imgate.protocol.ops.

Bodies are UTF-8 JSON objects. Replies carry the request's frame seq; an error reply is
``{"code": int != 0, "error": str}`` (plus ``cmid`` for a send) and the connection stays open.
"""

from __future__ import annotations

import json

from imgate.protocol.ops import (  # noqa: F401  (the numbers live with the other wire contracts)
    IM_OPS, IM_REPLY_OP as REPLY_OP, OP_GROUP_ACK, OP_GROUP_PULL, OP_GROUP_PULL_REPLY, OP_MSG_ACK, OP_MSG_PUSH,
    OP_MSG_SEND, OP_MSG_SEND_REPLY, OP_READ, OP_READ_REPLY, OP_SYNC, OP_SYNC_REPLY,
)

# error codes (HTTP-like, so the HTTP API answers with the same number as its status)
E_BAD_REQUEST = 400        # not JSON, a field missing or of the wrong type
E_FORBIDDEN = 403          # the connection has no user id (mid 0, anonymous): it has no inbox
E_UNKNOWN_RECEIVER = 404   # the receiver has no inbox
E_CMID_CONFLICT = 409      # the cmid was used before with a different body
E_CONFLICT = 409           # beyond a group's member cap (group_max_members)
E_TOO_LARGE = 413          # content over max_message_bytes
E_OUT_OF_RANGE = 416       # sync/ack/read beyond the inbox, or a negative or huge range
E_BUSY = 429              # the connection has im_max_inflight requests unanswered (the proxy answers)
E_RATE_LIMITED = 429       # the user sends or reads faster than im_user_rate, across its connections
E_UNAVAILABLE = 503        # the store refused the write (locked, disk full, overloaded): nothing stored;
                           # after an attempt that may have committed, or from a proxy whose RPC call
                           # timed out or broke: the error says it may be stored (resend the same cmid)

MAX_CMID = 128             # characters of a client's cmid

INT64_MAX = (1 << 63) - 1


class ImError(Exception):
    """A request the service refuses; ``code`` is one of the E_* numbers."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def single_conv(a: int, b: int) -> str:
    """The conversation id of a single chat: ``u:A:B`` with A < B."""
    lo, hi = (a, b) if a < b else (b, a)
    return f"u:{lo}:{hi}"


def conv_members(conv: str) -> tuple[int, int] | None:
    """(A, B) of a single-chat conversation id, None if it is not one."""
    parts = conv.split(":")
    if len(parts) != 3 or parts[0] != "u":
        return None
    try:
        a, b = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not 0 < a < b <= INT64_MAX or conv != f"u:{a}:{b}":
        return None
    return a, b


def parse_body(body: bytes) -> dict:
    """A request body: a JSON object, or ImError(400)."""
    try:
        obj = json.loads(str(body, "utf-8"))  # not json.loads(bytes): it would take UTF-16 and UTF-32 too
    except (ValueError, UnicodeDecodeError) as e:
        raise ImError(E_BAD_REQUEST, f"body is not UTF-8 JSON: {e}") from None
    except RecursionError:
        raise ImError(E_BAD_REQUEST, "body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ImError(E_BAD_REQUEST, f"body must be a JSON object, got {type(obj).__name__}")
    return obj


def get_int(obj: dict, name: str, *, lo: int = 0, hi: int = INT64_MAX, default: int | None = None) -> int:
    v = obj.get(name, default)
    if v is None:
        raise ImError(E_BAD_REQUEST, f"missing field '{name}'")
    if type(v) is float and v.is_integer():
        v = int(v)   # 5.0 is the integer 5 in JSON (and in JSON Schema): a client's encoder may write it so
    if isinstance(v, bool) or not isinstance(v, int):
        raise ImError(E_BAD_REQUEST, f"field '{name}' must be an integer, got {json.dumps(v)[:40]}")
    if not lo <= v <= hi:
        raise ImError(E_OUT_OF_RANGE, f"field '{name}' must be between {lo} and {hi}, got {v}")
    return v


def error_body(code: int, message: str, **extra) -> bytes:
    return json.dumps(dict(extra, code=code, error=message)).encode()
