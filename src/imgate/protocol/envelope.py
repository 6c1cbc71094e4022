"""The HTTP API's reply envelope: ``{"code": 0, "message": "", "data": ...}`` (code != 0 on errors)."""

from __future__ import annotations

import json
from typing import Any


def envelope(data: Any = None, code: int = 0, message: str = "") -> bytes:
    """The envelope as compact UTF-8 JSON."""
    return json.dumps({"code": code, "message": message, "data": data}, separators=(",", ":"),
                      ensure_ascii=False).encode()


def push_reply(targets: int) -> bytes:
    """``envelope({"targets": targets})`` without a JSON encoder: a push is answered this way."""
    return b'{"code":0,"message":"","data":{"targets":%d}}' % targets
