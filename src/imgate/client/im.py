"""The IM operations on a connection (docs/im.md): single and group messages, sync, acks, reads."""

from __future__ import annotations

import json
import os
from typing import Any

from imgate.client.errors import ImRejected
from imgate.core import Frame
from imgate.protocol.ops import (
    OP_GROUP_ACK, OP_GROUP_PULL, OP_GROUP_PULL_REPLY, OP_MSG_ACK, OP_MSG_PUSH, OP_MSG_SEND, OP_MSG_SEND_REPLY,
    OP_READ, OP_READ_REPLY, OP_SYNC, OP_SYNC_REPLY,
)


def _im_reply(body: bytes) -> dict:
    reply = json.loads(body)
    if reply.get("code"):
        raise ImRejected(reply["code"], reply.get("error", ""), reply)
    return reply


class ImOps:
    """Mixed into :class:`imgate.client.Client`, whose ``request`` and ``send_frame`` carry each
    operation and whose ``_dispatch`` takes the connection's own entries when ``messages()`` is in use."""

    @property
    def inbox_seq(self) -> int:
        """The newest seq of the user's inbox when the connection authenticated (op 8)."""
        try:
            return int(json.loads(self.auth_reply).get("inbox_seq", 0))
        except (ValueError, AttributeError):
            return 0

    async def send_message(self, to: int, content: Any, *, type: str = "text", cmid: str | None = None,
                           timeout: float | None = None) -> dict:
        """Op 22 -> 23: store a message for user ``to``; the reply ``{"cmid", "msg_id", "seq", "ts"}``
        once it is durable. Resending with the same ``cmid`` after a lost reply stores nothing new.
        Raises :class:`ImRejected` for an error reply."""
        req = {"cmid": cmid or os.urandom(12).hex(), "to": to, "type": type, "content": content}
        reply = _im_reply((await self.request(OP_MSG_SEND, json.dumps(req), OP_MSG_SEND_REPLY, timeout)).body)
        if self._own_entries:
            # the sending connection gets no op 24 for its own entry: hand it to messages() as if pushed
            lo, hi = sorted((self.mid, to))
            msg = dict(reply, conv=f"u:{lo}:{hi}", to=to, type=type, content=content)
            msg["from"] = self.mid
            self._dispatch([Frame(OP_MSG_PUSH, 0, json.dumps({"msgs": [msg]}).encode())])
        return reply

    async def send_group(self, group: int, content: Any, *, type: str = "text", cmid: str | None = None,
                         timeout: float | None = None) -> dict:
        """Op 22 -> 23 to a group: the reply ``{"cmid", "msg_id", "seq", "group", "gseq", "ts"}`` once the
        message (and in write mode its fan-out job) is durable. ``seq`` is the sender's own inbox entry
        in write mode, 0 in read mode (the message is in the group's timeline only, pushed to every
        online member, this connection too). Raises :class:`ImRejected` for an error reply."""
        req = {"cmid": cmid or os.urandom(12).hex(), "group": group, "type": type, "content": content}
        reply = _im_reply((await self.request(OP_MSG_SEND, json.dumps(req), OP_MSG_SEND_REPLY, timeout)).body)
        if self._own_entries and reply.get("seq"):
            # write mode: no op 24 of its own entry comes to this connection; hand it to messages()
            msg = dict(reply, conv=f"g:{group}", type=type, content=content)
            msg["from"] = self.mid
            self._dispatch([Frame(OP_MSG_PUSH, 0, json.dumps({"msgs": [msg]}).encode())])
        return reply

    async def group_pull(self, group: int, after: int = 0, limit: int = 100, timeout: float | None = None) -> dict:
        """Op 28 -> 29: a group's timeline after ``after`` (gseq), from the member's join on."""
        body = json.dumps({"group": group, "after": after, "limit": limit})
        return _im_reply((await self.request(OP_GROUP_PULL, body, OP_GROUP_PULL_REPLY, timeout)).body)

    def group_ack(self, group: int, gseq: int) -> None:
        """Op 30: the read position in a read-mode group moves up to ``gseq`` (no reply)."""
        self.send_frame(OP_GROUP_ACK, json.dumps({"group": group, "gseq": gseq}))

    async def sync(self, after: int = 0, limit: int = 100, timeout: float | None = None) -> dict:
        """Op 26 -> 27: inbox entries after seq ``after`` (``msgs`` are dicts)."""
        reply = await self.request(OP_SYNC, json.dumps({"after": after, "limit": limit}), OP_SYNC_REPLY, timeout)
        return _im_reply(reply.body)

    def ack(self, seq: int) -> None:
        """Op 25: every inbox entry up to ``seq`` has reached this connection (no reply)."""
        self.send_frame(OP_MSG_ACK, json.dumps({"seq": seq}))

    async def read(self, conv: str, seq: int, timeout: float | None = None) -> dict:
        """Op 32 -> 33: the read position in ``conv`` moves up to ``seq`` (the peer is told)."""
        reply = await self.request(OP_READ, json.dumps({"conv": conv, "seq": seq}), OP_READ_REPLY, timeout)
        return _im_reply(reply.body)

    def messages(self, after: int | None = None):
        """An async iterator of the inbox's messages (dicts) from seq ``after + 1`` (default: what
        arrives after the auth), in order, each once; it fills gaps with SYNC and acks. It takes the
        connection's pushes for itself (other operations go to its ``others``)."""
        from imgate.im.stream import MessageStream

        self._own_entries = True
        return MessageStream(self, self.inbox_seq if after is None else after)
