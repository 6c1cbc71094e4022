"""The bus between logic and push: logic publishes jobs, push's router takes them to the proxies."""

from __future__ import annotations

import abc

from imgate.protocol import PushJob
from imgate.push.router import PushRouter


class BusUnavailable(Exception):
    """The bus could not take a push job; the HTTP API answers 503 and the caller retries."""


class Bus(abc.ABC):
    """Carries push jobs from logic to push. ``publish`` returns once the job is accepted.

    A bus in this process (``nowait`` True) also hands a job over at once with ``publish_nowait``,
    which returns the connections it was queued for; logic then answers pushes without a coroutine.
    """

    nowait = False

    @abc.abstractmethod
    async def publish(self, job: PushJob) -> None: ...

    def publish_nowait(self, job: PushJob) -> int:
        raise NotImplementedError(f"{type(self).__name__} publishes only through publish()")

    async def close(self) -> None:
        return None


class MemoryBus(Bus):
    """In-process bus of the embedded node: the job is handed to the router at once, in order."""

    nowait = True

    def __init__(self, router: PushRouter):
        self.router = router
        self.publish_nowait = router.route_nowait  # the same call, one frame less per push

    def publish_nowait(self, job: PushJob) -> int:
        return self.router.route_nowait(job)

    async def publish(self, job: PushJob) -> None:
        self.router.route_nowait(job)
