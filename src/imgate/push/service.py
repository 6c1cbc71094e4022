"""Push: routes jobs to proxies. Only the proxies that hold a target get a job."""

from __future__ import annotations

import abc
import logging

from imgate.protocol import KIND_ALL, KIND_CONNS, KIND_ROOM, PushJob
from imgate.protocol.interfaces import ProxyAPI

log = logging.getLogger("imgate.push")


class Push:
    def __init__(self):
        self._proxies: dict[str, ProxyAPI] = {}
        self.jobs = 0
        self.undeliverable = 0

    def add_proxy(self, proxy: ProxyAPI) -> None:
        self._proxies[proxy.server_id] = proxy

    def remove_proxy(self, server_id: str) -> None:
        self._proxies.pop(server_id, None)

    def handle(self, job: PushJob) -> int:
        """Deliver one job; returns how many connections it was queued for."""
        self.jobs += 1
        if job.kind == KIND_CONNS:
            proxy = self._proxies.get(job.server)
            if proxy is None:
                # the session registry points at a proxy we do not know (it died): nothing to do
                self.undeliverable += 1
                log.warning("push to unknown server %s dropped (%d conns)", job.server, len(job.conn_ids))
                return 0
            return proxy.push_conns(job.conn_ids, job.op, job.body)
        if job.kind == KIND_ROOM:
            return sum(p.push_room(job.room_id, job.op, job.body) for p in self._proxies.values())
        if job.kind == KIND_ALL:
            return sum(p.push_all(job.op, job.body, job.speed) for p in self._proxies.values())
        raise ValueError(f"unknown push job kind {job.kind!r}")


class BusUnavailable(Exception):
    """The bus could not take a push job; the HTTP API answers 503 and the caller retries."""


class Bus(abc.ABC):
    """Carries push jobs from logic to push. `publish` returns once the job is accepted."""

    @abc.abstractmethod
    async def publish(self, job: PushJob) -> None: ...

    async def close(self) -> None:
        return None


class MemoryBus(Bus):
    """In-process bus of the embedded node: the job is handed to push at once, in order.

    ``publish_nowait`` is the same without the coroutine: logic uses it when the bus has it (a bus to
    another process, Kafka, does not)."""

    def __init__(self, push: Push):
        self.push = push

    def publish_nowait(self, job: PushJob) -> int:
        return self.push.handle(job)

    async def publish(self, job: PushJob) -> None:
        self.publish_nowait(job)
