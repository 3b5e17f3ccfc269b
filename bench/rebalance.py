"""How long a killed consumer's partitions stand still: two members of one group on a fresh
topic, the project's consumer settings (``make_consumer`` with the ``SPINE_KAFKA_*`` group
timing of the environment), one member ``kill -9``-ed; the time from the kill until the
survivor is assigned every partition.

Usage (the broker of ``make infra``; on the secured one with the operator's login)::

    set -a; . .spine/infra.env; set +a
    uv run python -m bench.rebalance                         # the defaults
    SPINE_KAFKA_SESSION_TIMEOUT_MS=10000 uv run python -m bench.rebalance   # other timing
    uv run python -m bench.rebalance --stop term             # a clean stop (SIGTERM) instead

Each round uses a new group and kills at a random moment of the victim's heartbeat cycle,
so the rounds spread over what a real crash sees. Prints one line per round, then one JSON
line with every figure. The figures are in docs/operations.md ("Consumer groups").
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition
from spine_contracts import topics
from spine_kafka.settings import KafkaSettings, load_settings
from spine_servicekit.kafka import (
    KafkaConfig,
    delete_topics_with_prefix,
    ensure_topics,
    make_consumer,
)

TOPIC = topics.USAGE  # any topic spec: only its name (under a fresh prefix) is used


def _say(**fields: Any) -> None:
    sys.stdout.write(orjson.dumps({**fields, "t": time.time()}).decode() + "\n")
    sys.stdout.flush()


class _Report(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        _say(revoked=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        _say(assigned=sorted(tp.partition for tp in assigned))


async def member(topic: str, group: str) -> None:
    """One group member: consume until SIGTERM, saying every assignment on stdout."""
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # "Heartbeat failed ... rebalancing"
    cfg = KafkaConfig.from_settings(load_settings(KafkaSettings), client_id="bench-rebalance")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    consumer = make_consumer(cfg, group_id=group)
    consumer.subscribe([topic], listener=_Report())
    await consumer.start()
    try:
        while not stopping.is_set():
            await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()  # dynamic membership: LeaveGroup


@dataclass
class _Child:
    proc: asyncio.subprocess.Process
    changed: asyncio.Event  # shared by the round's children
    assigned: list[int] = field(default_factory=list)
    at: float = 0.0
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            said = orjson.loads(line)
            if "assigned" in said:
                self.assigned, self.at = said["assigned"], said["t"]
            elif "revoked" in said:
                self.assigned = []
            self.changed.set()


async def _spawn(topic: str, group: str, changed: asyncio.Event) -> _Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.rebalance",
        "--member",
        topic,
        group,
        stdout=asyncio.subprocess.PIPE,
    )
    child = _Child(proc, changed)
    child.reader = asyncio.create_task(child.read())
    return child


async def _until(changed: asyncio.Event, done: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            changed.clear()
            if done():
                return
            await changed.wait()


async def one_round(topic: str, group: str, partitions: int, hb_s: float, stop: str) -> float:
    everything = list(range(partitions))
    changed = asyncio.Event()
    victim, survivor = await _spawn(topic, group, changed), await _spawn(topic, group, changed)
    children = [victim, survivor]
    try:
        await _until(
            changed,
            lambda: (
                bool(victim.assigned and survivor.assigned)
                and sorted(victim.assigned + survivor.assigned) == everything
            ),
            within=120,
        )
        await asyncio.sleep(1.0 + random.uniform(0, hb_s))  # a random point of the beat cycle
        killed_at = time.time()
        if stop == "kill":
            victim.proc.kill()
        else:
            victim.proc.terminate()
        await _until(changed, lambda: survivor.assigned == everything, within=120)
        return survivor.at - killed_at
    finally:
        for c in children:
            if c.proc.returncode is None:
                c.proc.terminate()
            await c.proc.wait()
            if c.reader is not None:
                c.reader.cancel()


async def run(partitions: int, rounds: int, stop: str) -> dict[str, Any]:
    settings = load_settings(KafkaSettings)
    prefix = f"benchrb{uuid.uuid4().hex[:6]}."
    cfg = dataclasses.replace(
        KafkaConfig.from_settings(settings, client_id="bench-rebalance"),
        prefix=prefix,
        partitions=partitions,
    )
    await ensure_topics(cfg, [TOPIC])
    timing = {
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.kafka_rebalance_timeout_ms,
    }
    print(f"group timing {timing}, {partitions} partitions, stop: {stop}", flush=True)
    samples: list[float] = []
    try:
        for i in range(rounds):
            took = await one_round(
                cfg.topic(TOPIC),
                f"{prefix}rebalance-{i}",
                partitions,
                settings.kafka_heartbeat_interval_ms / 1000,
                stop,
            )
            samples.append(took)
            print(f"round {i + 1}: the survivor had every partition {took:.2f} s after", flush=True)
    finally:
        await delete_topics_with_prefix(cfg, prefix)
    return {
        **timing,
        "partitions": partitions,
        "stop": stop,
        "seconds": [round(s, 3) for s in samples],
        "min_s": round(min(samples), 3),
        "median_s": round(statistics.median(samples), 3),
        "max_s": round(max(samples), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--stop", choices=("kill", "term"), default="kill")
    parser.add_argument("--member", nargs=2, metavar=("TOPIC", "GROUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.member:
        asyncio.run(member(*args.member))
        return
    result = asyncio.run(run(args.partitions, args.rounds, args.stop))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
