"""The client side of an inbox: messages in seq order, each once, gaps filled by SYNC, acks sent.

``Client.messages(after)`` returns a :class:`MessageStream`; iterate it with ``async for``.
"""

from __future__ import annotations

import json
from collections import deque

from imgate.im.protocol import OP_MSG_PUSH


class MessageStream:
    """Yields msg dicts of the client's inbox with seq ``after + 1, after + 2, ...`` and no gap.

    A pushed message whose seq jumps past the next expected one makes the stream SYNC what is
    missing first; a seq already seen is dropped (a server resend, or a push that raced a sync).
    Everything handed out by one push or one sync page is acked (op 25) before the stream waits
    for the network again. Pushes of other operations are kept in :attr:`others` (the newest 1,000).
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

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        if not self._started:  # what the inbox got since `after` before any push arrives
            self._started = True
            if self.last < self.client.inbox_seq:
                await self.fill(self.client.inbox_seq)
        while not self._ready:
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
                if seq <= self.last:
                    continue
                if seq > self.last + 1:
                    await self.fill(seq - 1)
                    if seq <= self.last:
                        continue
                self._take(msg)
        return self._ready.popleft()

    def _take(self, msg: dict) -> None:
        self._ready.append(msg)
        self.last = msg["seq"]

    async def fill(self, upto: int | None = None) -> None:
        """SYNC from the last seq handed out until ``upto`` (None: the newest)."""
        while upto is None or self.last < upto:
            self.syncs += 1
            reply = await self.client.sync(self.last, self.page)
            for msg in reply["msgs"]:
                if msg["seq"] > self.last:
                    self._take(msg)
            if not reply["has_more"]:
                break
