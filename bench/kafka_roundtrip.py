"""Produce→consume round trip on the local broker, with our client settings and aiokafka's.

Usage: ``uv run python bench/kafka_roundtrip.py [--messages 1000]``. One message at a time:
send, then wait until the consumer sees it; p50/p99 in milliseconds for each setting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from spine_contracts import topics
from spine_kafka.security import KafkaSecuritySettings
from spine_servicekit.kafka import (
    KafkaConfig,
    delete_topics_with_prefix,
    ensure_topics,
    make_consumer,
    make_producer,
)


async def measure(cfg: KafkaConfig, ours: bool, n: int, transactional: bool) -> list[float]:
    topic = cfg.topic(topics.USAGE)
    group = f"rt-{uuid.uuid4().hex[:8]}"
    txn_id = f"rt-{uuid.uuid4().hex[:8]}" if transactional else None
    isolation = "read_committed" if transactional else "read_uncommitted"
    if ours:
        producer = make_producer(cfg, transactional_id=txn_id)
        consumer = make_consumer(
            cfg, topic, group_id=group, auto_offset_reset="latest", isolation_level=isolation
        )
    else:
        # aiokafka's own defaults, on purpose: only the address and the login are ours
        producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers,
            transactional_id=txn_id,
            **cfg.security.client_kwargs(),
        )
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=cfg.bootstrap_servers,
            group_id=group,
            auto_offset_reset="latest",
            isolation_level=isolation,
            **cfg.security.client_kwargs(),
        )
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        for tp in consumer.assignment():
            await consumer.seek_to_end(tp)
        samples: list[float] = []
        for i in range(n + 20):
            t0 = time.perf_counter()
            if transactional:
                async with producer.transaction():
                    await producer.send_and_wait(topic, orjson.dumps({"i": i}), key=b"k")
            else:
                await producer.send_and_wait(topic, orjson.dumps({"i": i}), key=b"k")
            got = False
            while not got:
                batches = await consumer.getmany(timeout_ms=1000)
                got = any(
                    r.value and orjson.loads(r.value)["i"] == i
                    for recs in batches.values()
                    for r in recs
                )
            if i >= 20:  # warm-up excluded
                samples.append((time.perf_counter() - t0) * 1000)
        return samples
    finally:
        await consumer.stop()
        await producer.stop()


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    cfg = KafkaConfig(
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        prefix=prefix,
        partitions=1,
        security=KafkaSecuritySettings().kafka_security,
    )
    await ensure_topics(cfg, [topics.USAGE])
    try:
        for txn in (False, True):
            for label, ours in (("spine settings", True), ("aiokafka defaults", False)):
                s = await measure(cfg, ours, args.messages, txn)
                kind = "transactional+read_committed" if txn else "plain"
                print(
                    f"{kind:29s} {label:18s} n={len(s)} "
                    f"p50={pct(s, 50):.2f} ms  p99={pct(s, 99):.2f} ms"
                )
    finally:
        await delete_topics_with_prefix(cfg, prefix)


if __name__ == "__main__":
    asyncio.run(main())
