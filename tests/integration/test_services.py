"""The real Redis and Kafka that scripts/services.sh runs for the tests (fixtures in tests/services.py)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest

from polling import wait_until
from services import (KafkaProcess, ServiceError, kafka_down, port_open, redis_down, run_script,
                      start_kafka, stop_kafka)


redis_asyncio = pytest.importorskip("redis.asyncio")
confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402


# -------------------------------------------------------------------------------------------------- redis

def test_redis_ping_and_roundtrip(redis_url):
    async def main():
        r = redis_asyncio.from_url(redis_url)
        try:
            assert await r.ping() is True
            await r.set("imgate:test:k", "v", ex=60)
            assert await r.get("imgate:test:k") == b"v"
        finally:
            await r.aclose()

    asyncio.run(main())


def test_redis_keeps_data_across_restart(redis_process):
    async def put():
        r = redis_asyncio.from_url(redis_process.url)
        try:
            await r.set("imgate:test:durable", "kept")
        finally:
            await r.aclose()

    async def get():
        r = redis_asyncio.from_url(redis_process.url)
        try:
            return await r.get("imgate:test:durable")
        finally:
            await r.aclose()

    asyncio.run(put())
    with redis_down():
        assert not redis_process.running
        assert not port_open(redis_process.port)
    assert redis_process.running
    assert asyncio.run(get()) == b"kept"


# -------------------------------------------------------------------------------------------------- kafka

def create_topic(bootstrap: str, partitions: int = 1) -> str:
    topic = f"imgate-test-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=15, request_timeout=15)
    futures[topic].result(timeout=30)
    # the new topic is in the metadata with a leader for every partition
    def led():
        md = admin.list_topics(topic, timeout=10).topics[topic]
        return md.error is None and len(md.partitions) == partitions and all(p.leader >= 0 for p in md.partitions.values())

    wait_until(led, what=f"topic {topic} to have a leader for each partition", interval=0.1)
    return topic


def producer(bootstrap: str, **conf) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 1, **conf})


def produce_all(p: Producer, topic: str, values: list[bytes], timeout: float = 30) -> None:
    errors = []
    for v in values:
        p.produce(topic, value=v, key=v, on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(timeout) == 0, "messages still undelivered"
    assert not errors, errors


def consume(bootstrap: str, topic: str, count: int, group: str | None = None, timeout: float = 30) -> list[bytes]:
    """Read `count` messages from the start as a fresh group; commit them synchronously (at-least-once)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    got = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(msg.error())
            got.append(msg.value())
            c.commit(message=msg, asynchronous=False)  # group commits work on one node
    finally:
        c.close()
    return got


def test_kafka_admin_produce_consume(kafka_bootstrap):
    topic = create_topic(kafka_bootstrap, partitions=2)
    values = [f"m{i}".encode() for i in range(20)]
    p = producer(kafka_bootstrap)
    produce_all(p, topic, values)
    group = f"g-{uuid.uuid4().hex[:8]}"
    got = consume(kafka_bootstrap, topic, len(values), group=group)
    assert sorted(got) == sorted(values)

    # the group's commits are stored: a second consumer of the same group starts after them
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [confluent_kafka.TopicPartition(topic, i) for i in range(2)]
        committed = c.committed(parts, timeout=15)
        assert sum(tp.offset for tp in committed if tp.offset >= 0) == len(values)
    finally:
        c.close()


def test_kafka_aio_producer_consumer(kafka_bootstrap):
    aio = pytest.importorskip("confluent_kafka.aio")
    topic = create_topic(kafka_bootstrap)

    async def main():
        p = aio.AIOProducer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        try:
            delivered = await asyncio.wait_for(await p.produce(topic, value=b"aio"), 30)
            assert delivered.error() is None and delivered.offset() == 0
        finally:
            await p.close()
        c = aio.AIOConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            await c.subscribe([topic])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = await c.poll(0.5)
                if msg is not None and not msg.error():
                    await c.commit(message=msg, asynchronous=False)
                    return msg.value()
        finally:
            await c.close()

    assert asyncio.run(main()) == b"aio"


def test_kafka_restart_keeps_messages_and_buffered_sends(kafka_process, kafka_bootstrap):
    """What the push API's failure test relies on: a broker stop loses nothing that was acknowledged, a
    producer's sends while Kafka is down fail fast when told to, and queued ones go out once it is back."""
    topic = create_topic(kafka_bootstrap)
    p = producer(kafka_bootstrap, **{"message.timeout.ms": 60000})
    produce_all(p, topic, [b"before"])

    fast = producer(kafka_bootstrap, **{"message.timeout.ms": 1500})
    fast.produce(topic, value=b"warmup")
    assert fast.flush(15) == 0

    t0 = time.monotonic()
    with kafka_down():
        stop_s = time.monotonic() - t0
        assert not kafka_process.running
        assert not port_open(kafka_process.port)
        # a short delivery timeout surfaces the outage (the cue for a 503)
        errors = []
        fast.produce(topic, value=b"lost", on_delivery=lambda err, msg: errors.append(err))
        fast.flush(10)
        assert errors and errors[0] is not None
        # a long one keeps the message queued until the broker is back
        p.produce(topic, value=b"during")
        p.poll(0.5)
        t1 = time.monotonic()
    start_s = time.monotonic() - t1
    assert kafka_process.running and kafka_process.bootstrap == kafka_bootstrap
    assert p.flush(60) == 0
    got = consume(kafka_bootstrap, topic, 3)
    assert got == [b"before", b"warmup", b"during"]
    print(f"kafka stop {stop_s:.1f}s, start {start_s:.1f}s")


def test_kafka_crash_keeps_acknowledged_messages(kafka_process, kafka_bootstrap):
    """SIGKILL (no clean shutdown): what the broker acknowledged (acks=all) is still there after a restart."""
    topic = create_topic(kafka_bootstrap)
    values = [f"acked-{i}".encode() for i in range(50)]
    produce_all(producer(kafka_bootstrap), topic, values)
    with kafka_down(hard=True):
        assert not kafka_process.running
    assert consume(kafka_bootstrap, topic, len(values)) == values


def test_stop_and_start_helpers(kafka_process):
    stop_kafka()
    try:
        assert not kafka_process.running
        assert "kafka: stopped" in run_script_status(kafka_process)
    finally:
        start_kafka()
    assert kafka_process.running
    assert "kafka: running" in run_script_status(kafka_process)


def run_script_status(proc) -> str:
    try:
        return run_script("status", str(proc.dir))
    except ServiceError as e:  # exit 1 when something is stopped
        return str(e)


# --------------------------------------------------------------------------------------- the script itself

def test_start_kafka_on_a_busy_port_fails_clearly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        k = KafkaProcess(tmp_path, port=busy)
        with pytest.raises(ServiceError, match="already in use"):
            k.start()
        assert not k.running


def test_status_and_stop_on_an_empty_dir(tmp_path):
    with pytest.raises(ServiceError, match="nothing was started"):
        run_script("status", str(tmp_path))
    run_script("stop", str(tmp_path))  # nothing to stop: fine
