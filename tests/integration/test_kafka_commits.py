"""PushConsumer's offset commits against a real Kafka: at most one per ``commit_interval``, never past a
job not handled yet, and always one when the consumer stops (imgate.push.kafka)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from imgate.push.kafka import KafkaBus, PushConsumer, ensure_topic

from helpers import run
from polling import wait_until_async

pytestmark = pytest.mark.cluster

PARTITIONS = 2
JOBS = 20


def committed(bootstrap: str, topic: str, group: str) -> int:
    """The group's committed offsets of every partition added up (what Kafka says, not the consumer)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=15)
        return sum(max(0, p.offset) for p in parts)  # no commit yet: a negative "invalid" offset
    finally:
        c.close()


async def feed(bootstrap: str, commit_interval: float, *, block_at: int | None = None):
    """A fresh topic with JOBS records, and a started consumer handing them to a list; with ``block_at``
    the handler stops at that job (setting ``blocked``) until ``release`` is set."""
    topic, group = f"commits-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: ensure_topic(bootstrap, topic, partitions=PARTITIONS))
    bus = KafkaBus(bootstrap, topic)
    for i in range(JOBS):
        await bus.produce(str(i).encode(), str(i % PARTITIONS).encode())
    await bus.close()
    got: list[int] = []
    release, blocked = asyncio.Event(), asyncio.Event()

    async def handler(jobs):
        for job in jobs:
            if job == block_at:
                blocked.set()
                await release.wait()
            got.append(job)

    consumer = PushConsumer(bootstrap, topic, handler, group=group, batch=1, decode=int,
                            commit_interval=commit_interval)
    consumer.start(loop)
    return topic, group, consumer, got, release, blocked


def test_no_commit_before_the_interval_and_everything_handled_is_committed_on_stop(kafka_bootstrap):
    async def go():
        topic, group, consumer, got, _, _ = await feed(kafka_bootstrap, commit_interval=3600)
        loop = asyncio.get_running_loop()
        await wait_until_async(lambda: len(got), equals=JOBS, what="every job handled")
        # an hour between commits: Kafka has nothing committed for the group yet
        assert await loop.run_in_executor(None, committed, kafka_bootstrap, topic, group) == 0
        await loop.run_in_executor(None, consumer.stop)
        assert await loop.run_in_executor(None, committed, kafka_bootstrap, topic, group) == JOBS

    run(go())


def test_commits_follow_the_handled_jobs_while_running_and_never_pass_one_in_progress(kafka_bootstrap):
    async def go():
        topic, group, consumer, got, release, blocked = await feed(kafka_bootstrap, commit_interval=0.1,
                                                                   block_at=JOBS // 2)
        loop = asyncio.get_running_loop()
        try:
            await wait_until_async(blocked.is_set, what="the handler at the blocked job")
            # every job handled before it is committed while the consumer waits (no stop), that one is not
            await wait_until_async(lambda: committed(kafka_bootstrap, topic, group) >= len(got),
                                   what="the handled jobs committed while the consumer runs")
            assert await loop.run_in_executor(None, committed, kafka_bootstrap, topic, group) == len(got) < JOBS
            release.set()
            await wait_until_async(lambda: len(got), equals=JOBS, what="every job handled")
            await wait_until_async(lambda: committed(kafka_bootstrap, topic, group), equals=JOBS,
                                   what="every job committed without a stop")
        finally:
            release.set()
            await loop.run_in_executor(None, consumer.stop)

    run(go())
