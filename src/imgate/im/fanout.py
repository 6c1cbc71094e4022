"""Group fan-out jobs between processes: the im role publishes them, the consumer role does them.

The outbox row the store writes in the group message's transaction is the truth; Kafka only carries
its id so that a consumer starts at once. Keyed by group, one group's jobs stay in one partition and
in order. Nothing is lost when an im dies between its commit and the publish, or Kafka refuses it:
every consumer also sweeps the outbox for jobs older than ``fanout_relay_after`` seconds and does them
itself (a job is done exactly once whatever does it: the store writes its entries and deletes it in
one transaction, and the second attempt finds it gone).

Order: a member's entries must follow gseq order, so the store does a group's older jobs still pending
before a job, in its transaction (a relayed one, or one a slower consumer holds: the store's row locks
or Galera's certification order the two). The Kafka offset is committed only once the batch's jobs are
durable; a consumer killed before that leaves them to the next one, which finds them done or does them.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("imgate.im.fanout")

RETRY_MAX = 2.0  # seconds between retries of a job the store refused (it stays in the outbox meanwhile)


class FanoutPublisher:
    """``await publisher(stored)`` after a write-mode group message committed (ImService.fanout_publish)."""

    def __init__(self, bootstrap: str, topic: str, *, timeout: float = 5.0, client_id: str = "imgate-im"):
        from imgate.push.kafka import KafkaBus

        self.bus = KafkaBus(bootstrap, topic, timeout=timeout, client_id=client_id)
        self.published = 0
        self.failed = 0

    async def __call__(self, stored) -> None:
        try:
            await self.bus.produce(str(stored.job).encode(), str(stored.group).encode())
            self.published += 1
        except Exception as e:  # stored: a consumer's outbox sweep does it after fanout_relay_after
            self.failed += 1
            log.warning("fan-out job %s not published (the outbox sweep does it): %s", stored.job, e)

    async def close(self) -> None:
        await self.bus.close()


def decode_job_id(value: bytes) -> int:
    job = int(value)
    if job <= 0:
        raise ValueError(f"fan-out job id {job} is not positive")
    return job


class FanoutWorker:
    """Does fan-out jobs through ``im`` (an ImService whose store has groups): those Kafka hands it
    (``handle``, the PushConsumer's handler) and those the outbox sweep finds."""

    def __init__(self, im, *, relay_after: float = 5.0, sweep_every: float | None = None):
        self.im = im
        self.relay_after = relay_after
        self.sweep_every = sweep_every or max(0.2, relay_after / 4)
        self.counters = {"fanout_kafka_jobs": 0, "fanout_relayed": 0, "fanout_retries": 0}
        self._sweeper: asyncio.Task | None = None

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def handle(self, jobs: list) -> None:
        """Returns once every job is durable (done now or before); retries the store until then."""
        for job in jobs:
            await self._do(job)
            self.counters["fanout_kafka_jobs"] += 1

    async def _do(self, job: int) -> None:
        delay = 0.05
        while True:
            try:
                await self.fan_out(job)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store is away: the job stays in the outbox, so wait and retry
                self.counters["fanout_retries"] += 1
                log.warning("fan-out job %d failed (retried): %s", job, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def fan_out(self, job: int) -> None:
        """One job through the store (with its group's older pending jobs), then the op-24 pushes."""
        im = self.im
        stored = await im.store.fan_out(job)
        if stored is None:
            return  # done before
        for done in stored.before + [stored]:
            im.counters["fanout_jobs"] += 1
            im.counters["fanout_entries"] += len(done.entries)
            await im._deliver(done, None)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            try:
                for job in await self.im.store.fanout_jobs_older(self.relay_after, 256):
                    await self._do(job)
                    self.counters["fanout_relayed"] += 1
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("outbox sweep failed (next period): %s", e)

    def stats(self) -> dict:
        return dict(self.counters)


__all__ = ["FanoutPublisher", "FanoutWorker", "decode_job_id"]
