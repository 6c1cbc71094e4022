"""The client side of an inbox: messages in seq order, each once, gaps filled by SYNC, acks sent.

``Client.messages(after)`` returns a :class:`MessageStream`; iterate it with ``async for``.
"""

from __future__ import annotations

import json
from collections import deque

from imgate.im.protocol import OP_MSG_PUSH
from imgate.protocol import IM_ROOM_PREFIX


def _in_group_rooms(client) -> bool:
    """Whether the auth (op 8) put the connection in a read-mode group's room: that group may have
    news the inbox does not show, so the stream starts with a SYNC (its ``groups``)."""
    try:
        rooms = json.loads(getattr(client, "auth_reply", "") or "{}").get("rooms", [])
    except (ValueError, AttributeError):
        return False
    return any(isinstance(r, str) and r.startswith(IM_ROOM_PREFIX) for r in rooms)


class MessageStream:
    """Yields msg dicts of the client's inbox with seq ``after + 1, after + 2, ...`` and no gap.

    A pushed message whose seq jumps past the next expected one makes the stream SYNC what is
    missing first; a seq already seen is dropped (a server resend, or a push that raced a sync).
    Everything handed out by one push or one sync page is acked (op 25) before the stream waits
    for the network again. Pushes of other operations are kept in :attr:`others` (the newest 1,000).

    Groups in either mode, without the caller knowing: a write-mode group's messages are inbox
    entries like any other. A read-mode group's message has ``seq`` 0 and lives in the group's
    timeline only: it is handed out when its ``gseq`` follows the last one handed out for that group
    (a jump is pulled with op 28 first, an old one dropped); the groups SYNC reports with news are
    pulled up to the ``max_gseq`` it gave. The read position is then moved with op 30.
    """

    def __init__(self, client, after: int, page: int = 100):
        self.client = client
        self.last = after
        self.page = page
        self.others: deque = deque(maxlen=1000)
        self.syncs = 0  # SYNC requests made to fill gaps (tests)
        self._ready: deque = deque()
        self._acked = after
        self._started = False
        self._gseq: dict[int, int] = {}  # read-mode group -> the last gseq handed out (or known read)
        self._gacked: dict[int, int] = {}

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        if not self._started:  # what the inbox and the read-mode groups got since `after`
            self._started = True
            if self.last < self.client.inbox_seq or _in_group_rooms(self.client):
                await self.fill(self.client.inbox_seq)
        while not self._ready:
            for group, gseq in self._gseq.items():
                if self._gacked.get(group, 0) < gseq:
                    self._gacked[group] = gseq
                    self.client.group_ack(group, gseq)
            if self._acked < self.last:
                self._acked = self.last
                self.client.ack(self.last)
            try:
                frame = await self.client.recv()
            except Exception as e:
                from imgate.client import ConnectionClosed
                if isinstance(e, ConnectionClosed):
                    raise StopAsyncIteration from None
                raise
            if frame.op != OP_MSG_PUSH:
                self.others.append(frame)
                continue
            for msg in json.loads(frame.body).get("msgs", []):
                seq = msg["seq"]
                if seq == 0 and "group" in msg:  # read mode: from the group's timeline
                    await self._timeline(msg)
                    continue
                if seq <= self.last:
                    continue
                if seq > self.last + 1:
                    await self.fill(seq - 1)
                    if seq <= self.last:
                        continue
                await self._switch(msg)
                self._take(msg)
        return self._ready.popleft()

    def _take(self, msg: dict) -> None:
        self._ready.append(msg)
        self.last = msg["seq"]

    async def fill(self, upto: int | None = None) -> None:
        """SYNC from the last seq handed out until ``upto`` (None: the newest); at least once, since
        read-mode groups may have news while the inbox has none."""
        while True:
            self.syncs += 1
            reply = await self.client.sync(self.last, self.page)
            await self._news(reply)  # first: a group's timeline part precedes its later entries
            for msg in reply["msgs"]:
                if msg["seq"] > self.last:
                    await self._switch(msg)
                    self._take(msg)
            if not reply["has_more"] or (upto is not None and self.last >= upto):
                break

    async def _news(self, reply: dict) -> None:
        for news in reply.get("groups", ()):
            group = news["group"]
            self._gseq[group] = max(self._gseq.get(group, 0), news["cursor"])
            await self._pull(group, news["max_gseq"])

    async def _switch(self, msg: dict) -> None:
        """An inbox entry announcing a mode switch: into read mode, the timeline goes on after it;
        back to write mode, what the timeline got meanwhile is pulled before it (SYNC says how far)."""
        if msg.get("type") != "mode" or "group" not in msg or not isinstance(msg.get("content"), dict):
            return
        if msg["content"].get("mode") == "read":
            self._gseq[msg["group"]] = max(self._gseq.get(msg["group"], 0), msg["gseq"])
        else:
            await self._news(await self.client.sync(self.last, 1))

    async def _timeline(self, msg: dict) -> None:
        group, gseq = msg["group"], msg["gseq"]
        last = self._gseq.setdefault(group, gseq - 1)  # first news of it: nothing older is owed
        if gseq > last + 1:
            await self._pull(group, gseq - 1)
        if gseq == self._gseq[group] + 1:
            self._ready.append(msg)
            self._gseq[group] = gseq

    async def _pull(self, group: int, upto: int) -> None:
        """Op 28 from the last gseq handed out for ``group`` until ``upto``."""
        from imgate.client import ImRejected

        while self._gseq.get(group, 0) < upto:
            self.syncs += 1
            before = self._gseq.get(group, 0)
            try:
                reply = await self.client.group_pull(group, before, self.page)
            except ImRejected:  # removed from the group meanwhile: nothing more of it is owed
                self._gseq[group] = upto
                break
            for msg in reply["msgs"]:
                if self._gseq.get(group, 0) < msg["gseq"] <= upto:
                    self._ready.append(msg)
                    self._gseq[group] = msg["gseq"]
            if not reply["has_more"] or self._gseq.get(group, 0) == before:
                # the rest is not for this member (before its join): nothing to wait for
                self._gseq[group] = max(self._gseq.get(group, 0), upto)
                break
