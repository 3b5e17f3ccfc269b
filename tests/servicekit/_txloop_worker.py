"""A TransactionalLoop with a fan-out handler: the system under test of ``test_txloop``.

Imported by the tests for :class:`FanOutHandler`, and run as a process for the crash test::

    python _txloop_worker.py --group G --txid-prefix T [--outputs 3] [--delay-s 0.005]
        [--kill-on-commit K --marker PATH]

Environment: ``KAFKA_BOOTSTRAP_SERVERS``, ``SPINE_TOPIC_PREFIX``. With ``--kill-on-commit K``
the process SIGKILLs itself right before its K-th ``commit_transaction`` (outputs and
offsets are already in the open transaction) unless ``--marker`` exists; it creates the
marker first, so only the first life dies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer
from spine_contracts import CancelExecution, NodeSkipped, topics
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import KafkaConfig, Outgoing, make_producer
from spine_servicekit.logging import configure_logging
from spine_servicekit.txloop import Incoming, PoisonMessage, TransactionalLoop

#: ``CancelExecution.data.reason`` values that make the handler fail for that input.
RAISE = "raise"
POISON = "poison"
HUGE = "huge"  # its output exceeds the producer's max request size: never producible


class FanOutHandler:
    """Each input becomes ``outputs`` NodeSkipped events caused by it (key = input key).

    Keeps a tiny per-partition state (inputs seen) so the tests can watch rebuilds.
    """

    def __init__(self, cfg: KafkaConfig, *, outputs: int = 1, delay_s: float = 0.0) -> None:
        self.events_topic = cfg.topic(topics.EXECUTION_EVENTS)
        self.outputs = outputs
        self.delay_s = delay_s
        self.assigned: Counter[int] = Counter()
        self.revoked: Counter[int] = Counter()
        self.seen: dict[int, int] = {}

    async def on_assigned(self, partition: int) -> None:
        self.assigned[partition] += 1
        self.seen[partition] = 0

    async def on_revoked(self, partition: int) -> None:
        self.revoked[partition] += 1
        self.seen.pop(partition, None)

    async def handle(self, partition: int, batch: Sequence[Incoming]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for incoming in batch:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)  # a slow decision, part of the system under test
            message = incoming.message
            reason = message.data.reason if isinstance(message, CancelExecution) else ""
            if reason == RAISE:
                raise RuntimeError(f"handler bug on {message.message_id}")
            if reason == POISON:
                raise PoisonMessage("input rejected", incoming)
            self.seen[partition] = self.seen.get(partition, 0) + 1
            execution_id = incoming.key or "none"
            for i in range(self.outputs):
                event = NodeSkipped.build(
                    cause=message,
                    execution_id=execution_id,
                    seq=i,
                    node_id=f"n{i}",
                    reason="x" * 2_000_000 if reason == HUGE else "fan-out",
                )
                out.append(Outgoing(self.events_topic, execution_id, event))
        return out


def _killing_factory(cfg: KafkaConfig, kill_on_commit: int, marker: Path):
    commits = 0
    first_life = not marker.exists()

    def factory(txid: str) -> AIOKafkaProducer:
        producer = make_producer(cfg, transactional_id=txid)
        commit = producer.commit_transaction

        async def commit_or_die() -> None:
            nonlocal commits
            commits += 1
            if commits == kill_on_commit and first_life:
                marker.write_bytes(b"")  # noqa: ASYNC240 - a few bytes, right before dying
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            await commit()

        producer.commit_transaction = commit_or_die  # type: ignore[method-assign]
        return producer

    return factory


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", required=True)
    parser.add_argument("--txid-prefix", required=True)
    parser.add_argument("--outputs", type=int, default=3)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--max-batch", type=int, default=50)
    parser.add_argument("--session-timeout-ms", type=int, default=3000)
    parser.add_argument("--kill-on-commit", type=int, default=0)
    parser.add_argument("--marker", type=Path)
    args = parser.parse_args(argv)

    configure_logging("txloop-worker", level="INFO", console=False)
    cfg = KafkaConfig(
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        prefix=os.environ.get("SPINE_TOPIC_PREFIX", ""),
        client_id="txloop-worker",
        security=KafkaSecurity.from_env(os.environ),
    )
    factory = None
    if args.kill_on_commit:
        if args.marker is None:
            parser.error("--kill-on-commit needs --marker")
        factory = _killing_factory(cfg, args.kill_on_commit, args.marker)
    loop = TransactionalLoop(
        cfg,
        group_id=args.group,
        input_topics=[cfg.topic(topics.EXECUTION_COMMANDS)],
        handler=FanOutHandler(cfg, outputs=args.outputs, delay_s=args.delay_s),
        transactional_id_prefix=args.txid_prefix,
        consumer_name="txloop-worker",
        max_batch=args.max_batch,
        producer_factory=factory,
        consumer_options={
            "session_timeout_ms": args.session_timeout_ms,
            "heartbeat_interval_ms": max(100, args.session_timeout_ms // 6),
        },
    )
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    async with loop:
        await stopping.wait()


if __name__ == "__main__":
    asyncio.run(main())
