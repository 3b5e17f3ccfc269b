"""The projection the projector tests run, and a process that runs it (for the crash test).

    python tests/servicekit/_projector_worker.py SCHEMA [--delay S] [--batch N] [--stall-at K]

Kafka, PostgreSQL and the topic prefix come from the environment (``KAFKA_BOOTSTRAP_SERVERS``,
``DATABASE_URL``, ``SPINE_TOPIC_PREFIX``). SIGTERM stops it cleanly (exit 0); a projector
failure exits 1.

The projection is built so that applying an event twice is visible: ``applied`` has no
unique key, ``counter.n`` grows by one per applied event and ``executions.events`` counts
the events per execution. ``--delay`` sleeps inside each batch's transaction, after the
rows are written and before the offsets are, which is where a crash hurts most;
``--stall-at K`` makes the K-th batch log ``test_projection_stalled`` there and wait for
ever, so a test can kill the process at exactly that point.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import asyncpg
from spine_contracts import topics
from spine_contracts.messages.executions import ExecutionCompleted, ExecutionStarted
from spine_servicekit.kafka import KafkaConfig
from spine_servicekit.logging import configure_logging, get_logger
from spine_servicekit.projector import ApplyFn, Incoming, Projection, Projector
from spine_servicekit.settings import CommonSettings, load_settings

NAME = "test_executions"

MIGRATIONS = (
    """CREATE TABLE executions (
           execution_id text   PRIMARY KEY,
           status       text   NOT NULL,
           user_id      text,
           events       int    NOT NULL,
           last_seq     int    NOT NULL)""",
    """CREATE TABLE applied (
           message_id uuid   NOT NULL,
           topic      text   NOT NULL,
           partition  int    NOT NULL,
           "offset"   bigint NOT NULL)""",
    """CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
       INSERT INTO counter VALUES (1, 0)""",
)

_UPSERT = """
    INSERT INTO executions AS e (execution_id, status, user_id, events, last_seq)
    VALUES ($1, $2, $3, 1, $4)
    ON CONFLICT (execution_id) DO UPDATE SET
        status   = CASE WHEN e.status = 'completed' THEN e.status ELSE EXCLUDED.status END,
        user_id  = COALESCE(e.user_id, EXCLUDED.user_id),
        events   = e.events + 1,
        last_seq = GREATEST(e.last_seq, EXCLUDED.last_seq)"""
_APPLIED = 'INSERT INTO applied (message_id, topic, partition, "offset") VALUES ($1, $2, $3, $4)'


class Rejected(ValueError):
    """What the test projection raises for an execution it is told to refuse."""


def make_apply(
    delay: float = 0.0, reject: frozenset[str] = frozenset(), stall_at: int | None = None
) -> ApplyFn:
    calls = 0

    async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
        nonlocal calls
        calls += 1
        rows: list[tuple[str, str, str | None, int]] = []
        for item in batch:
            message = item.message
            if isinstance(message, ExecutionStarted):
                rows.append(
                    (message.data.execution_id, "running", message.data.user_id, message.data.seq)
                )
            elif isinstance(message, ExecutionCompleted):
                rows.append((message.data.execution_id, "completed", None, message.data.seq))
            else:
                continue
            if rows[-1][0] in reject:
                raise Rejected(f"execution {rows[-1][0]} is refused by this projection")
        await conn.executemany(_UPSERT, rows)
        await conn.executemany(
            _APPLIED, [(i.message.message_id, i.topic, i.partition, i.offset) for i in batch]
        )
        await conn.execute("UPDATE counter SET n = n + $1 WHERE id = 1", len(batch))
        if delay:
            await conn.execute("SELECT pg_sleep($1)", delay)
        if calls == stall_at:
            get_logger(__name__).info("test_projection_stalled", records=len(batch))
            await asyncio.Event().wait()

    return apply


def projection(
    delay: float = 0.0, reject: frozenset[str] = frozenset(), stall_at: int | None = None
) -> Projection:
    return Projection(
        name=NAME,
        topics=(topics.EXECUTION_EVENTS,),
        apply=make_apply(delay, reject, stall_at),
        migrations=MIGRATIONS,
    )


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schema")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--stall-at", type=int, default=None)
    args = parser.parse_args(argv)
    settings = load_settings(CommonSettings)
    configure_logging("projector-worker", level="INFO", console=False)
    kafka = KafkaConfig.from_settings(settings, client_id="projector-worker")
    projector = Projector(
        kafka,
        settings.database_url,
        projection(args.delay, stall_at=args.stall_at),
        schema=args.schema,
        max_batch=args.batch,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with projector:
        # wait_for with an impossible predicate returns only by raising ProjectorFailed.
        failed = asyncio.create_task(projector.wait_for(lambda _: False))
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait({failed, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if failed.done():
            failed.result()
        failed.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
