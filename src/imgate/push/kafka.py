"""Kafka between logic and push (cluster mode).

Logic produces push jobs with an idempotent producer (acks=all), keyed so that one room's pushes, or
one proxy's unicasts, stay in one partition and so in order. `publish` returns only once Kafka has the
job; if Kafka cannot take it within `timeout`, it raises `BusUnavailable`, which the HTTP API answers
with 503: the caller keeps the message and retries, nothing is dropped silently.

Push consumes with auto-commit off and commits an offset only after every job before it was handed to
the proxies (at least once; goim marks offsets before processing and can lose pushes on a crash). It
commits at most every `commit_interval` seconds, and always when it stops or loses a partition: an
offset commit is a request Kafka writes to its offsets topic, once per batch it cost about as much as
the push itself. A consumer killed between commits hands the jobs since its last commit to the next
one, which does them again (a push twice, a fan-out job found done).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from imgate.protocol import PushJob, decode_job, encode_job
from imgate.push.service import Bus, BusUnavailable

log = logging.getLogger("imgate.kafka")


def ensure_topic(bootstrap: str, topic: str, partitions: int = 8, timeout: float = 10.0) -> None:
    """Create the push topic if it does not exist (replication 1 on a single broker)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=timeout)
    if topic in md.topics:
        return
    replication = min(3, len(md.brokers)) or 1
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replication)])
    for fut in futures.values():
        try:
            fut.result(timeout)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class KafkaBus(Bus):
    def __init__(self, bootstrap: str, topic: str = "imgate-push", *, timeout: float = 5.0, client_id: str = "imgate-logic"):
        self.topic = topic
        self.timeout = timeout
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,  # implies acks=all and ordered retries
            "acks": "all",
            "linger.ms": 1,
            "message.timeout.ms": int(timeout * 1000),
            "error_cb": self._on_error,
        })
        self._closed = False
        # delivery callbacks run in this thread, then hop to the event loop
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _on_error(self, err) -> None:
        log.warning("kafka producer: %s", err)

    def _poll(self) -> None:
        while not self._closed:
            self._producer.poll(0.5)  # returns as soon as a delivery report is served: no need to spin

    async def publish(self, job: PushJob) -> None:
        await self.produce(encode_job(job), job.ordering_key().encode())

    async def produce(self, value: bytes, key: bytes) -> None:
        """One record on the topic; returns once Kafka has it (else BusUnavailable)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def delivered(err, msg):
            loop.call_soon_threadsafe(_settle, fut, err)

        try:
            self._producer.produce(self.topic, value=value, key=key, on_delivery=delivered)
        except BufferError:
            raise BusUnavailable("push queue to Kafka is full; retry later") from None
        except KafkaException as e:
            raise BusUnavailable(f"Kafka refused the push: {e}") from None
        err = await fut
        if err is not None:
            raise BusUnavailable(f"Kafka did not accept the push within {self.timeout:g}s: {err.str()}")

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, self.timeout)
        self._closed = True


def _settle(fut: asyncio.Future, err) -> None:
    if not fut.done():
        fut.set_result(err)


class PushConsumer:
    """Consumes push jobs and hands each batch to `handler(jobs)` (async; returns once the proxies
    accepted them).

    A consumer thread polls Kafka; each batch is delivered on the event loop, then its offsets are
    committed synchronously. A crash between delivery and commit re-delivers (at least once).
    """

    def __init__(self, bootstrap: str, topic: str, handler, *, group: str = "imgate-push", batch: int = 500,
                 merge_window: float = 0.0, decode=decode_job, commit_interval: float = 1.0):
        self.topic = topic
        self.decode = decode  # Kafka value -> what the handler takes (a push job, a fan-out job id)
        self.handler = handler
        self.batch = batch
        self.merge_window = merge_window
        self.commit_interval = commit_interval
        self._done: dict[tuple, int] = {}  # (topic, partition) -> the offset after the last job handled
        self._owned: set[tuple] = set()     # the partitions assigned to this consumer now
        self._last_commit = time.monotonic()
        self.commits = 0
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "session.timeout.ms": 10000,
            "error_cb": lambda err: log.warning("kafka consumer: %s", err),
        })
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.consumed = 0
        self.failed = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked)
        self._thread = threading.Thread(target=self._run, name="kafka-push-consumer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = self._take()
            except KafkaException as e:
                log.warning("kafka consume failed: %s", e)
                time.sleep(0.5)
                continue
            if not msgs:
                if time.monotonic() - self._last_commit >= self.commit_interval:
                    self._commit()
                continue
            jobs = []
            for m in msgs:
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("kafka message error: %s", m.error())
                    continue
                try:
                    jobs.append(self.decode(m.value()))
                except Exception as e:  # a corrupt job must not stop the partition
                    self.failed += 1
                    log.error("dropping undecodable push job at %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(), e)
            if jobs:
                fut = asyncio.run_coroutine_threadsafe(self.handler(jobs), self._loop)
                while True:
                    try:
                        fut.result(timeout=1.0)
                        self.consumed += len(jobs)
                        break
                    except concurrent.futures.TimeoutError:  # a slow batch (not the builtin before 3.11): the ones before it still get committed
                        if time.monotonic() - self._last_commit >= self.commit_interval:
                            self._commit()
                        if self._stop.is_set():
                            fut.cancel()
                            self._commit()  # what was handled before this batch
                            self._consumer.close()
                            return  # this batch is not committed: delivered again by the next consumer
                    except Exception as e:
                        log.error("push delivery failed: %s", e)
                        break
            for m in msgs:  # handled (or undecodable, or failed as before: not retried)
                if not m.error() and (m.topic(), m.partition()) in self._owned:  # (not taken away meanwhile)
                    self._done[(m.topic(), m.partition())] = m.offset() + 1
            if time.monotonic() - self._last_commit >= self.commit_interval:
                self._commit()
        self._commit()
        self._consumer.close()

    def _assigned(self, consumer, parts) -> None:
        self._owned.update((p.topic, p.partition) for p in parts)

    def _revoked(self, consumer, parts) -> None:
        """Before a partition goes to another consumer: commit what was done with it, then forget it."""
        self._commit()
        gone = {(p.topic, p.partition) for p in parts}
        self._owned -= gone
        for key in gone:
            self._done.pop(key, None)

    def _commit(self) -> None:
        """Commit the offsets after the jobs handled (in this thread: the consumer's callbacks run here)."""
        self._last_commit = time.monotonic()
        if not self._done:
            return
        done, self._done = self._done, {}
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in done.items()], asynchronous=False)
            self.commits += 1
        except KafkaException as e:  # kept for the next try, unless newer offsets came meanwhile
            for key, offset in done.items():
                self._done.setdefault(key, offset)
            log.warning("kafka commit failed (the jobs since the last commit may be delivered again): %s", e)

    def _take(self) -> list:
        """The first job as soon as it comes, then whatever is already there (or arrives within the
        merge window), up to `batch`: low latency when idle, batches under load."""
        first = self._consumer.poll(0.2)
        if first is None:
            return []
        msgs = [first]
        deadline = time.monotonic() + self.merge_window
        while len(msgs) < self.batch:
            more = self._consumer.consume(self.batch - len(msgs), max(0.0, deadline - time.monotonic()))
            if not more:
                break
            msgs.extend(more)
        return msgs

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
