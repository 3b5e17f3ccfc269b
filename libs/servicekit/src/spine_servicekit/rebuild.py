"""Rebuild a service's read model from Kafka and swap it in while the service runs
(docs/operations.md).

::

    python -m spine_servicekit.rebuild --service orchestrator   # or: make rebuild SERVICE=...
    python -m spine_servicekit.rebuild --all --check-only       # compare, swap nothing

For one service (its schema ``S`` holds every projection of the service):

1. **Replay.** Every projection whose topics are kept forever or compacted runs in a
   fresh schema ``S_rebuild`` from offset 0, with :meth:`Projector.limit` set to the
   offsets the live projector has stored: it never applies past the live position.
   The ceiling is raised to the live offsets until the gap left is at most one batch
   (or ``rounds`` times, when the live rate is close to the replay rate).
2. **Pause.** The rebuild takes ``pg_advisory_lock(pause_lock_key(S))``. Every live
   batch takes that lock shared as the first statement of its transaction, so the lock
   is granted once the batch in flight has committed, and later batches wait for it:
   the live projector stops moving, its reads keep being served.
3. **Exact catch-up.** The ceiling becomes the live offsets read under the lock; the
   rebuild applies up to exactly them and stops.
4. **Carry over.** A projection fed by a topic with finite retention (the gateway's
   usage roll-ups) cannot be replayed from offset 0; its tables and ledger rows are
   copied under the lock instead ("usage older than the topic's retention is kept only
   in its rolled-up form"), and listed as carried in the report.
5. **Compare.** Same tables with the same columns; per table the row count and a sum
   of per-row md5 hashes (order-free, no sorting of large tables); the stored offsets of
   every projection. On a difference a few differing rows of each side are reported,
   nothing is swapped and ``S_rebuild`` is kept for inspection.
6. **Swap.** In one transaction, after checking that the live offsets did not move:
   ``ALTER SCHEMA S RENAME TO S_old_<time>; ALTER SCHEMA S_rebuild RENAME TO S``. Then
   the lock is released and the old schema dropped (``--keep-old`` keeps it). Services
   reach their tables through ``search_path = "S", public`` (by name), and a schema
   rename invalidates PostgreSQL's cached plans, so the live projector's waiting batch
   and every pooled read resolve to the new tables on their next statement: nothing
   restarts and no connection is dropped.

Projections must derive every column from the events (never ``now()``), which is what
makes a rebuild equal the live tables exactly rather than "up to timestamps".

Each service registers its projections, and the settings field naming their schema, as a
:class:`ServiceProjections` under the ``ai_spine.projections`` entry points: this module
names no service. :data:`TARGETS` lists the registered ones without loading them, so
importing this module imports no service and opens nothing.

    RebuildError
    └── RebuildMismatch   the rebuilt tables differ from the live ones (``report``)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, entry_points

import asyncpg
from aiokafka import TopicPartition
from pydantic import Field, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict
from spine_contracts import topics
from spine_contracts.topics import FOREVER, TopicSpec
from spine_kafka.clients import KafkaConfig
from spine_kafka.logging import configure_logging, get_logger

from .postgres import drop_schema, lock_key, migrate, quote_schema
from .projector import (
    MESSAGES_TABLE,
    OFFSETS_TABLE,
    Projection,
    Projector,
    pause_lock_key,
    prepare_schema,
    read_offsets,
)
from .settings import CommonSettings, load_settings

__all__ = [
    "ENTRY_POINTS",
    "TARGETS",
    "RebuildError",
    "RebuildMismatch",
    "RebuildReport",
    "ServiceProjections",
    "TableCheck",
    "Target",
    "rebuild_schema",
    "registered_targets",
    "replayable",
]

log = get_logger(__name__)

#: The entry-point group where a service registers its projections, in its pyproject.toml:
#: ``[project.entry-points."ai_spine.projections"]`` ``<service> = "<module>:<attribute>"``
#: naming a :class:`ServiceProjections`.
ENTRY_POINTS = "ai_spine.projections"

#: Tables of the projectors' own ledger; compared separately (offsets) or not at all.
_LEDGER_TABLES = frozenset({"schema_migrations", OFFSETS_TABLE, MESSAGES_TABLE})
_SAMPLE_ROWS = 5


class RebuildError(Exception):
    """A rebuild could not be completed; nothing was swapped."""


class RebuildMismatch(RebuildError):
    """The rebuilt tables differ from the live ones; nothing was swapped."""

    def __init__(self, report: RebuildReport) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class ServiceProjections:
    """What a service registers under the ``ai_spine.projections`` entry points: the
    projections that fill its schema, and the settings field that names that schema."""

    projections: Callable[[], Iterable[Projection]]
    settings: type[BaseSettings]
    schema_field: str = "db_schema"


class _EnvOnly(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")


@dataclass(frozen=True)
class Target:
    """One registered service; its entry point is loaded (the service imported) on first use."""

    service: str
    entry_point: EntryPoint

    def _registered(self) -> ServiceProjections:
        found = self.entry_point.load()
        if not isinstance(found, ServiceProjections):
            raise RebuildError(
                f"entry point {ENTRY_POINTS}:{self.service} ({self.entry_point.value}) is "
                f"not a ServiceProjections"
            )
        return found

    def load_projections(self) -> tuple[Projection, ...]:
        return tuple(self._registered().projections())

    def schema(self) -> str:
        """The schema the service uses: its settings field's env variable, else the default.

        Only that field is read: the rest of the service's settings (its secrets, say) may
        not be valid where the rebuild runs."""
        registered = self._registered()
        info = registered.settings.model_fields[registered.schema_field]
        alias = info.alias or registered.schema_field.upper()
        only = create_model(
            "_SchemaOnly", __base__=_EnvOnly, value=(str, Field(info.default, alias=alias))
        )
        schema = str(only().value)  # type: ignore[attr-defined]
        quote_schema(schema)
        return schema


def registered_targets() -> dict[str, Target]:
    """Every installed service that registered projections, by name (nothing imported)."""
    found = sorted(entry_points(group=ENTRY_POINTS), key=lambda ep: ep.name)
    return {ep.name: Target(ep.name, ep) for ep in found}


#: The services whose schemas ``make rebuild`` rebuilds, from the installed entry points.
TARGETS: Mapping[str, Target] = registered_targets()


def replayable(projection: Projection, kafka: KafkaConfig) -> bool:
    """Whether every topic of ``projection`` keeps its records forever (or compacted)."""
    for name in projection.topics:
        spec: TopicSpec | None
        if isinstance(name, TopicSpec):
            spec = name
        else:
            try:
                spec = topics.spec_for(name, kafka.prefix)
            except KeyError:
                spec = None  # a topic outside the registry (tests): assume it is kept
        if spec is not None and spec.cleanup_policy != "compact" and spec.retention_ms != FOREVER:
            return False
    return True


# --- the report -------------------------------------------------------------------------


@dataclass
class TableCheck:
    table: str
    live_rows: int | None
    rebuilt_rows: int | None
    equal: bool
    carried: bool = False
    problem: str | None = None
    only_live: list[str] = field(default_factory=list)
    only_rebuilt: list[str] = field(default_factory=list)


@dataclass
class RebuildReport:
    schema: str
    rebuilt_schema: str
    projections: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    replayed: int = 0
    tables: list[TableCheck] = field(default_factory=list)
    offsets_equal: bool = True
    offsets: dict[str, dict[str, int]] = field(default_factory=dict)
    offset_problems: list[str] = field(default_factory=list)
    paused_s: float = 0.0
    took_s: float = 0.0
    swapped: bool = False
    old_schema: str | None = None
    live_missing: bool = False

    @property
    def equal(self) -> bool:
        return self.offsets_equal and all(t.equal for t in self.tables)

    def summary(self) -> str:
        rows = ", ".join(
            f"{t.table} {t.live_rows}{' carried' if t.carried else ''}"
            + ("" if t.equal else f" != {t.rebuilt_rows} ({t.problem or 'rows differ'})")
            for t in self.tables
        )
        verdict = "equal" if self.equal else "DIFFERENT"
        offsets = "equal" if self.offsets_equal else "DIFFER"
        old = f"kept as {self.old_schema}" if self.old_schema else "dropped"
        action = f"swapped in (old schema {old})" if self.swapped else "not swapped"
        if self.live_missing:
            action = "no live schema: created from the log" if self.swapped else "no live schema"
        return (
            f"schema {self.schema}: replayed {self.replayed} records into {self.rebuilt_schema}; "
            f"{verdict}: {rows or 'no tables'}; offsets {offsets}; "
            f"paused {self.paused_s:.2f}s of {self.took_s:.1f}s; {action}"
        )


# --- the rebuild ------------------------------------------------------------------------


async def rebuild_schema(
    kafka: KafkaConfig,
    database_url: str,
    schema: str,
    projections: Sequence[Projection],
    *,
    swap: bool = True,
    keep_old: bool = False,
    keep_rebuilt: bool = False,
    catch_up_timeout_s: float = 600.0,
    max_pause_s: float = 30.0,
    rounds: int = 10,
    max_batch: int = 500,
) -> RebuildReport:
    """Rebuild ``schema`` from Kafka into ``<schema>_rebuild``, compare, and swap it in.

    Raises :class:`RebuildMismatch` (nothing swapped, the rebuilt schema kept) when the
    tables differ, :class:`RebuildError` when it cannot finish; either way the live
    projector is resumed.
    """
    started = time.monotonic()
    quote_schema(schema)
    target = f"{schema[:55]}_rebuild"
    quote_schema(target)
    report = RebuildReport(schema=schema, rebuilt_schema=target)
    names = [p.name for p in projections]
    if len(set(names)) != len(names):
        raise RebuildError(f"{schema}: projection names are not unique: {names}")
    replayed = [p for p in projections if replayable(p, kafka)]
    carried = [p for p in projections if not replayable(p, kafka)]
    report.projections = [p.name for p in replayed]
    report.carried = [p.name for p in carried]
    key = pause_lock_key(schema)
    conn = await asyncpg.connect(database_url)
    projectors: list[Projector] = []
    locked = False
    paused = 0.0
    keep_target = True  # until this rebuild owns it: it may be another rebuild's
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key("rebuild", schema)):
            raise RebuildError(f"{schema}: another rebuild of this schema is running")
        keep_target = keep_rebuilt
        await drop_schema(conn, target)  # the leftover of an interrupted rebuild
        report.live_missing = not await _schema_exists(conn, schema)
        if report.live_missing and not swap:
            raise RebuildError(f"{schema}: no live schema to compare with")
        live: dict[str, dict[TopicPartition, int]] = {}
        for p in replayed:
            live[p.name] = await read_offsets(conn, schema, p.name)
        await prepare_schema(conn, target)
        for p in replayed:
            projector = Projector(kafka, database_url, p, schema=target, max_batch=max_batch)
            if not report.live_missing:
                projector.limit(live[p.name])
            projectors.append(projector)
            await projector.start()  # one by one: they share the schema's ledger
        carried_tables = await _create_carried(conn, target, carried)
        log.info(
            "rebuild_started",
            schema=schema,
            target=target,
            projections=report.projections,
            carried=report.carried,
        )

        if report.live_missing:
            async with asyncio.timeout(catch_up_timeout_s):
                for projector in projectors:
                    await projector.wait_until_caught_up()
        else:
            for round_ in range(1, rounds + 1):
                async with asyncio.timeout(catch_up_timeout_s):
                    await _reach(projectors, live)
                live = {p.name: await read_offsets(conn, schema, p.name) for p in replayed}
                gap = _gap(projectors, live)
                log.info("rebuild_caught_up", schema=schema, round=round_, behind=gap)
                for projector in projectors:
                    projector.limit(live[projector.projection.name])
                if gap <= max_batch:
                    break

            paused = time.monotonic()
            async with asyncio.timeout(max_pause_s):
                await conn.execute("SELECT pg_advisory_lock($1)", key)
                locked = True
                final = {p.name: await read_offsets(conn, schema, p.name) for p in replayed}
                for projector in projectors:
                    projector.limit(final[projector.projection.name])
                await _reach(projectors, final)
            log.info("rebuild_paused_live", schema=schema, waited_s=time.monotonic() - paused)

        for projector in projectors:
            await projector.stop()
            report.replayed += projector.stats.applied
        if not report.live_missing:
            await _copy_carried(conn, schema, target, carried, carried_tables)
            await _compare(conn, schema, target, projections, carried_tables, report)
            if not report.equal:
                keep_target = True
                raise RebuildMismatch(report)
        if swap:
            report.old_schema = await _swap(conn, schema, target, projections, report)
            report.swapped = True
            log.info("rebuild_swapped", schema=schema, old_schema=report.old_schema)
    except BaseException:
        for projector in projectors:
            await projector.stop()
        raise
    finally:
        if locked:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
            report.paused_s = time.monotonic() - paused
        try:
            if report.swapped and report.old_schema is not None and not keep_old:
                await drop_schema(conn, report.old_schema)
                report.old_schema = None
            if not report.swapped and not keep_target:
                await drop_schema(conn, target)
        finally:
            await conn.close()
        report.took_s = time.monotonic() - started
    return report


async def _schema_exists(conn: asyncpg.Connection, schema: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema))


async def _tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY table_name",
        schema,
    )
    return [r["table_name"] for r in rows]


async def _reach(
    projectors: Sequence[Projector], offsets: Mapping[str, Mapping[TopicPartition, int]]
) -> None:
    await asyncio.gather(
        *(p.wait_for_offsets(offsets.get(p.projection.name, {})) for p in projectors)
    )


def _gap(projectors: Sequence[Projector], live: Mapping[str, Mapping[TopicPartition, int]]) -> int:
    behind = 0
    for projector in projectors:
        applied = projector.applied_offsets()
        for tp, offset in live.get(projector.projection.name, {}).items():
            behind += max(0, offset - applied.get(tp, 0))
    return behind


async def _create_carried(
    conn: asyncpg.Connection, target: str, carried: Sequence[Projection]
) -> dict[str, list[str]]:
    """Create the carried projections' tables in ``target``; their names per projection."""
    tables: dict[str, list[str]] = {}
    for projection in carried:
        before = set(await _tables(conn, target))
        await migrate(conn, target, projection.name, projection.migrations)
        tables[projection.name] = sorted(set(await _tables(conn, target)) - before)
    return tables


async def _copy_carried(
    conn: asyncpg.Connection,
    schema: str,
    target: str,
    carried: Sequence[Projection],
    tables: Mapping[str, list[str]],
) -> None:
    """Copy what cannot be replayed, under the pause lock: rows, offsets, applied ids."""
    q, t = quote_schema(schema), quote_schema(target)
    async with conn.transaction():
        for projection in carried:
            for table in tables[projection.name]:
                await conn.execute(f'INSERT INTO {t}."{table}" SELECT * FROM {q}."{table}"')
            for ledger in (OFFSETS_TABLE, MESSAGES_TABLE):
                await conn.execute(
                    f"INSERT INTO {t}.{ledger} SELECT * FROM {q}.{ledger} WHERE projection = $1",
                    projection.name,
                )


async def _columns(conn: asyncpg.Connection, schema: str, table: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        schema,
        table,
    )
    return [(r["column_name"], r["data_type"]) for r in rows]


_CHECKSUM = """
    SELECT count(*) AS n,
           coalesce(sum(('x' || substr(md5(r::text), 1, 16))::bit(64)::bigint::numeric), 0) AS h
    FROM {}."{}" AS r"""
_ONLY_IN = """
    SELECT r::text AS row FROM {a}."{t}" AS r EXCEPT ALL SELECT r::text FROM {b}."{t}" AS r
    LIMIT {n}"""


async def _compare(
    conn: asyncpg.Connection,
    schema: str,
    target: str,
    projections: Sequence[Projection],
    carried_tables: Mapping[str, list[str]],
    report: RebuildReport,
) -> None:
    q, t = quote_schema(schema), quote_schema(target)
    carried = {name for names in carried_tables.values() for name in names}
    live_tables = {n for n in await _tables(conn, schema) if n not in _LEDGER_TABLES}
    new_tables = {n for n in await _tables(conn, target) if n not in _LEDGER_TABLES}
    for table in sorted(live_tables | new_tables):
        check = TableCheck(table, None, None, equal=False, carried=table in carried)
        report.tables.append(check)
        if table not in new_tables:
            check.problem = "only in the live schema: no projection of the service makes it"
            continue
        if table not in live_tables:
            check.problem = "only in the rebuilt schema"
            continue
        if await _columns(conn, schema, table) != await _columns(conn, target, table):
            check.problem = "columns differ"
            continue
        live = await conn.fetchrow(_CHECKSUM.format(q, table))
        new = await conn.fetchrow(_CHECKSUM.format(t, table))
        check.live_rows, check.rebuilt_rows = live["n"], new["n"]
        check.equal = live["n"] == new["n"] and live["h"] == new["h"]
        if not check.equal:
            check.only_live = [
                r["row"] for r in await conn.fetch(_ONLY_IN.format(a=q, b=t, t=table, n=5))
            ]
            check.only_rebuilt = [
                r["row"] for r in await conn.fetch(_ONLY_IN.format(a=t, b=q, t=table, n=5))
            ]
    for projection in projections:
        live_offsets = _nonzero(await read_offsets(conn, schema, projection.name))
        new_offsets = _nonzero(await read_offsets(conn, target, projection.name))
        report.offsets[projection.name] = {
            f"{tp.topic}/{tp.partition}": o for tp, o in sorted(live_offsets.items())
        }
        if live_offsets != new_offsets:
            report.offsets_equal = False
            report.offset_problems.append(
                f"{projection.name}: live {_show(live_offsets)} != rebuilt {_show(new_offsets)}"
            )


def _nonzero(offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    return {tp: o for tp, o in offsets.items() if o > 0}


def _show(offsets: Mapping[TopicPartition, int]) -> str:
    return str({f"{tp.topic}/{tp.partition}": o for tp, o in sorted(offsets.items())})


async def _swap(
    conn: asyncpg.Connection,
    schema: str,
    target: str,
    projections: Sequence[Projection],
    report: RebuildReport,
) -> str | None:
    """Rename the live schema away and the rebuilt one into its place, in one transaction."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    old = f"{schema[:40]}_old_{stamp}"
    async with conn.transaction():
        if report.live_missing:
            await conn.execute(
                f"ALTER SCHEMA {quote_schema(target)} RENAME TO {quote_schema(schema)}"
            )
            return None
        for projection in projections:
            now = _nonzero(await read_offsets(conn, schema, projection.name))
            expected = report.offsets.get(projection.name, {})
            if {f"{tp.topic}/{tp.partition}": o for tp, o in now.items()} != expected:
                raise RebuildError(
                    f"{schema}: the live projector {projection.name!r} moved while paused "
                    "(a replica without the pause lock?); nothing swapped"
                )
        await conn.execute(f"ALTER SCHEMA {quote_schema(schema)} RENAME TO {quote_schema(old)}")
        await conn.execute(f"ALTER SCHEMA {quote_schema(target)} RENAME TO {quote_schema(schema)}")
    return old


# --- the command line -------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings)
    kafka = KafkaConfig.from_settings(settings, client_id="spine-rebuild")
    names = list(TARGETS) if args.all or not args.service else args.service
    failed = 0
    for name in names:
        target = TARGETS[name]
        try:
            report = await rebuild_schema(
                kafka,
                settings.database_url,
                target.schema(),
                target.load_projections(),
                swap=not args.check_only,
                keep_old=args.keep_old,
                keep_rebuilt=args.keep_rebuilt,
                catch_up_timeout_s=args.timeout,
                max_pause_s=args.max_pause,
            )
        except RebuildMismatch as exc:
            failed += 1
            _print_mismatch(name, exc.report)
            continue
        except (RebuildError, OSError, TimeoutError, asyncpg.PostgresError) as exc:
            failed += 1
            print(f"{name}: rebuild failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        print(f"{name}: {report.summary()}", flush=True)
    return 1 if failed else 0


def _print_mismatch(name: str, report: RebuildReport) -> None:
    print(f"{name}: {report.summary()}", flush=True)
    for check in report.tables:
        if check.equal:
            continue
        print(f"  {check.table}: {check.problem or 'rows differ'}", flush=True)
        for row in check.only_live:
            print(f"    live only:    {row[:300]}", flush=True)
        for row in check.only_rebuilt:
            print(f"    rebuilt only: {row[:300]}", flush=True)
    for problem in report.offset_problems:
        print(f"  offsets: {problem}", flush=True)
    print(f"  the rebuilt schema {report.rebuilt_schema} is kept for inspection", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spine_servicekit.rebuild",
        description="Rebuild services' projections from Kafka, compare them with the live "
        "tables and swap them in while the services keep serving.",
    )
    parser.add_argument(
        "--service", action="append", choices=sorted(TARGETS), help="repeatable; default: all"
    )
    parser.add_argument("--all", action="store_true", help="every service with projections")
    parser.add_argument(
        "--check-only", action="store_true", help="compare with the live tables, swap nothing"
    )
    parser.add_argument("--keep-old", action="store_true", help="keep the replaced schema")
    parser.add_argument(
        "--keep-rebuilt", action="store_true", help="keep <schema>_rebuild after --check-only"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="catch-up limit (s)")
    parser.add_argument(
        "--max-pause", type=float, default=30.0, help="how long the live projector may pause (s)"
    )
    args = parser.parse_args(argv)
    settings = load_settings(CommonSettings)
    configure_logging("rebuild", settings.log_level, console=None)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    # Run the importable module's main, not this ``__main__`` copy: the services register
    # instances of spine_servicekit.rebuild.ServiceProjections, a class this copy redefines.
    from spine_servicekit.rebuild import main as _main

    sys.exit(_main())
