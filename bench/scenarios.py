"""`make bench-scenarios`: load shapes `make bench` does not try, after `make up`.

    uv run --group bench python -m bench.scenarios [--rates 50,100,150] [--duration 30] ...

`make bench` measures one execution at a time and a batch submitted at once; a service meets
neither. These scenarios put AI Spine (and, where it applies, both Celery configurations of
bench/peer.py) under:

1. ``rates`` — fixed arrival rates, open loop: submission *k* at ``t0 + k / rate``, never
   waiting for earlier ones (a closed loop slows down with the system and hides its queue).
   Latency = send → terminal; ``late`` / ``max lag`` say how far the client itself fell
   behind its schedule (then the figures flatter the system). AI Spine's execute answer
   (request → 200) is measured beside it, first at 2/s (one at a time): its p99 at each
   rate must stay within ``--answer-ratio`` (3×) of that p50, or the run fails.
2. ``tenants`` — fairness (DESIGN §16): a small tenant running one execution at a time,
   idle and then while a big tenant's burst runs (AI Spine only: Celery has no tenants). The
   big tenant's ``max_in_flight`` is raised to 2,000, above its burst, so the agent's line —
   not the per-user limit — is what is tested: the echo agent declares its concurrency and
   the orchestrator hands its slots to the tenants in turn. Target: the small tenant's p50
   during the burst ≤ 2× its p50 idle (``--fair-ratio``); above it the run fails.
3. ``kill`` — ``kill -9`` mid-load: a second echo agent replica started here (AI Spine), one
   prefork pool process (Celery); what was lost, doubled or run twice, and the latency
   around the kill. The killed replica is not restarted: the remaining one must take over.

Every execution goes through bench/checks.py (outputs, terminal events, dispatches, re-runs).
Exit 1 if a check fails, except Celery's under a kill (losing work there is the finding).
Prints a table per scenario, then one JSON line (also .spine/bench/scenarios-last.json,
appended to .spine/bench/scenarios-history.jsonl).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from .checks import Audit, audit, spine_echo_output
from .common import FLOW_IDS, Latency
from .peer import CeleryPeer
from .procstats import INFRA, SERVICES, ProcessWatch, cpu_delta, read_pid
from .run import kafka_config, listener_pid, load_env, machine_busy_s
from .spine import INPUT, SpineClient, SpineObserver, SpineUnavailable

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".spine" / "bench"
SCENARIOS = ("rates", "tenants", "kill")
SYSTEMS = ("spine", "celery-fast", "celery-matched")
SHAPE = "chain"  # echo_chain: 3 echo nodes in a row
#: the burst tenant's max_in_flight in ``tenants``: above its burst (the issue's 2,000)
BURST_MAX_IN_FLIGHT = 2_000
#: for the time estimate only: echo_chain executions/s sustained on the 2-core machine
SPINE_RATE, CELERY_RATE = 60.0, 150.0
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
T = TypeVar("T")


# -- small helpers -----------------------------------------------------------------------------


def pct(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of ``samples`` (ms), as bench/common.py computes them."""
    s = Latency(list(samples), warmup_runs=0).summary()
    return {k: s[k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms") if k in s}


def fmt(v: Any, digits: int = 0) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:.{digits}f}"
    return "–" if v is None else str(v)


def bad(a: Audit) -> str:
    return "ok" if a.ok else ", ".join(f"{k}={n}" for k, n in sorted(a.failures.items()))


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread: unlike ``asyncio.to_thread``, a Ctrl-C does not
    wait for it (Python 3.11's ``asyncio.run`` joins its executor's threads on the way out,
    and a Celery open loop can run for its whole deadline)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error else future.set_result(value)

    def run() -> None:
        try:
            value, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting task
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name=getattr(fn, "__name__", "job"), daemon=True).start()
    return await future


class Ticker:
    """A plain progress line every ``every`` s while a step runs (readable in a log too).
    ``tick`` may be called from another thread (Celery's open loop)."""

    def __init__(
        self, label: str, total: int | None = None, rate: float = 0.0, every: float = 5.0
    ) -> None:
        self.label, self.total, self.rate, self.every = label, total, rate, every
        self.done = 0
        self._task: asyncio.Task[None] | None = None

    def tick(self, n: int = 1) -> None:
        self.done += n

    async def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(self.every)
            elapsed = time.monotonic() - t0
            of = f" of {self.total}" if self.total else ""
            sent = (
                f"~{min(self.total or 0, round(elapsed * self.rate))} sent, " if self.rate else ""
            )
            console.print(
                f"    [dim]… {self.label}: {elapsed:.0f} s, {sent}{self.done}{of} finished[/]"
            )

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class EchoReplica:
    """A second ``spine-agent-echo`` started by the bench with the environment `make up`
    gives agents (.spine/infra.env, .env), its ops port off (the first one holds 9115).
    It joins the group ``agent.echo``: the two replicas share the tasks topic's partitions."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**env, "SPINE_OPS_PORT": "0"}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._from = 0

    def start(self) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "spine-agent-echo")],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.process.pid

    async def joined(self, within: float = 60.0) -> list[int]:  # noqa: ASYNC109
        """Until its log says it was assigned partitions (the group's rebalance is done);
        the partitions. Its log is the only signal it gives of that."""
        assert self.process is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the second echo replica exited; see {self.log_path}")
            parts = first_assignment(self.log_path, self._from)
            if parts:
                return parts
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the second echo replica got no partition in {within:.0f} s")

    def kill9(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return self.process.pid

    def stop(self) -> None:
        """Cleanup (an exception or a Ctrl-C before the kill): SIGTERM, then SIGKILL."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def first_assignment(log_path: Path, offset: int) -> list[int]:
    """The partitions of the first non-empty ``partitions_assigned`` after ``offset``."""
    found = assignments(log_path, offset)
    return found[0][0] if found else []


def assignments(log_path: Path, offset: int) -> list[tuple[list[int], float]]:
    """Every non-empty ``partitions_assigned`` event after ``offset``: (partitions, epoch s)."""
    out = []
    try:
        with log_path.open("rb") as fh:
            fh.seek(offset)
            lines = fh.read().splitlines()
    except OSError:
        return out
    for line in lines:
        if b'"partitions_assigned"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("partitions"):
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append((list(event["partitions"]), at))
    return out


# -- the run's shared state --------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.kafka = kafka_config(env)
        self.prefix = env.get("SPINE_TOPIC_PREFIX", "")
        self.base_url = args.url or f"http://127.0.0.1:{env.get('PORT', '8000')}"
        self.master = env.get("API_KEY", "")
        self.client = SpineClient(self.base_url, self.master, pool=args.pool)
        self.observer: SpineObserver | None = None
        self.want: Any = None  # echo_chain's expected output
        self.peers: dict[str, CeleryPeer] = {}
        self.replica: EchoReplica | None = None
        self.watch = ProcessWatch()
        self.failed: list[str] = []  # checks that fail the run

    @property
    def obs(self) -> SpineObserver:
        assert self.observer is not None
        return self.observer

    async def open(self) -> None:
        await self.client.check()
        if not self.master:
            raise SpineUnavailable("API_KEY (the master key) is not in .env nor the environment")
        await self.client.create_user()
        flow_id = FLOW_IDS[SHAPE]
        await self.client.ensure_flow(flow_id, ROOT / "flows" / f"{flow_id}.yaml")
        self.want = spine_echo_output(await self.client.flow(flow_id), INPUT)
        run_dir = ROOT / ".spine" / "run"
        port = int(self.base_url.rsplit(":", 1)[1].split("/")[0])
        for name in SERVICES + INFRA:
            pid = listener_pid(port) if name == "gateway" else None
            pid = pid or read_pid(run_dir, name)
            if pid is not None:
                self.watch.add(name, pid)
        self.watch.add("bench-client", os.getpid(), tree=False)
        self.watch.start()
        self.observer = SpineObserver(self.kafka, self.prefix)
        await self.observer.start()

    def peer(self, system: str) -> CeleryPeer:
        """The Celery worker of ``system`` (``celery-fast`` | ``celery-matched``), started
        on first use and kept for the run."""
        if system not in self.peers:
            config = system.removeprefix("celery-")
            peer = CeleryPeer(ROOT, config=config, log_path=OUT / f"{system}-worker.log")
            self.peers[system] = peer
            console.print(f"  starting the Celery worker ({config}) …")
            # on the loop's thread, blocking it: a Ctrl-C then lands after start() returned,
            # and close() stops the worker (from a thread, it could start after close())
            peer.start()
            self.watch_peer(peer)
        return self.peers[system]

    def watch_peer(self, peer: CeleryPeer) -> None:
        for name, pid in peer.pids().items():
            self.watch.add(f"{peer.name}-{name}", pid)

    def restart(self, peer: CeleryPeer) -> None:
        """A fresh worker and queue: a backlog left at a deadline would run into the next
        step."""
        peer.stop()
        peer.start()  # on the loop's thread: see peer()
        self.watch_peer(peer)

    async def close(self) -> None:
        if self.replica is not None:
            self.replica.stop()
        for peer in self.peers.values():
            with contextlib.suppress(Exception):
                peer.stop()
        if self.observer is not None:
            await self.observer.stop()
        await self.client.close()
        self.watch.stop()

    @contextlib.contextmanager
    def cpu(self, into: dict[str, Any]) -> Iterator[None]:
        """The machine's CPU over a step (``machine_cpu_pct`` of all cores, and per process
        in ``cpu_s``): outside processes show as ``other_cpu_pct``."""
        before, busy0, t0 = self.watch.cpu(), machine_busy_s(), time.monotonic()
        try:
            yield
        finally:
            wall = time.monotonic() - t0
            used = cpu_delta(before, self.watch.cpu())
            busy = machine_busy_s() - busy0
            cores = os.cpu_count() or 1
            into["wall_s"] = round(wall, 1)
            into["machine_cpu_pct"] = round(100 * busy / (wall * cores), 1) if wall else None
            into["other_cpu_pct"] = (
                round(100 * max(0.0, busy - sum(used.values())) / (wall * cores), 1)
                if wall
                else None
            )
            into["cpu_s"] = used

    # -- one open-loop load, with the checks ---------------------------------------------------

    async def spine_load(
        self, label: str, rate: float, seconds: float, kill: EchoReplica | None = None
    ) -> dict[str, Any]:
        """AI Spine at ``rate``/s for ``seconds``; ``kill``: that replica gets ``kill -9``
        ``--kill-after`` s into the load. Not terminal at the schedule + ``--grace``: not
        finished; still not after another ``--grace``: lost (the wait keeps a backlog out
        of the next step)."""
        args = self.args
        row: dict[str, Any] = {"system": "spine", "rate_per_s": rate, "seconds": seconds}
        killed: dict[str, Any] = {}
        with self.cpu(row):
            async with Ticker(label, round(rate * seconds), rate) as ticker:
                deadline = time.monotonic() + seconds + args.grace
                load = asyncio.create_task(
                    self.client.open_loop(SHAPE, rate, seconds, self.obs, deadline, ticker.tick)
                )
                if kill is not None:
                    killed = await self._kill_replica(kill, load)
                timeline, extra = await load
                ids = set(timeline)
                pending = ids - self.obs.first_terminal.keys()
                if pending:
                    console.print(f"    {len(pending)} not finished: waiting {args.grace:.0f} s")
                    await self.obs.wait_terminal(pending, time.monotonic() + args.grace)
        await self.obs.caught_up()
        checks = audit(self.obs.tally(ids), lambda _e: self.want)
        lat = [ms for _, ms in timeline.values() if ms is not None]
        row.update(_counts(extra), **pct(lat), checks=checks.summary())
        row["answer"] = pct(extra.get("answers_ms", []))
        if killed:
            at = killed["at_s"] = round(killed.pop("perf") - extra["t0"], 2)
            row["before_kill"] = pct([ms for s, ms in timeline.values() if ms and s < at])
            row["after_kill"] = pct([ms for s, ms in timeline.values() if ms and s >= at])
            row["kill"] = killed
        if not checks.ok:
            self.failed.append(f"{label}: {bad(checks)}")
        return row

    async def _kill_replica(self, replica: EchoReplica, load: asyncio.Task[Any]) -> dict[str, Any]:
        await asyncio.wait({load}, timeout=self.args.kill_after)
        if load.done():
            return {}
        echo_log = ROOT / ".spine" / "logs" / "agent-echo.log"
        offset = echo_log.stat().st_size if echo_log.exists() else 0
        wall, perf = time.time(), time.perf_counter()
        pid = replica.kill9()
        self.watch.remove("agent-echo-2")
        console.print(f"    kill -9 of the second echo replica (pid {pid})")
        await asyncio.wait({load})
        # the first replica's rebalance after the group noticed the death: the take-over
        took = [at - wall for parts, at in assignments(echo_log, offset) if len(parts) > 1]
        return {
            "pid": pid,
            "perf": perf,
            "takeover_s": round(took[0], 2) if took else None,
        }

    async def celery_load(
        self, system: str, label: str, rate: float, seconds: float, kill: bool = False
    ) -> dict[str, Any]:
        """A Celery configuration at ``rate``/s; ``kill``: one pool process gets ``kill -9``
        ``--kill-after`` s in. Without a kill, a workflow unfinished at the deadline is
        undecided (the worker is restarted to drop the backlog); with one, it is lost."""
        peer = self.peer(system)
        row: dict[str, Any] = {"system": system, "rate_per_s": rate, "seconds": seconds}
        with self.cpu(row):
            async with Ticker(label, round(rate * seconds), rate) as ticker:
                deadline = time.monotonic() + seconds + self.args.grace
                job = asyncio.ensure_future(
                    in_thread(peer.open_loop, SHAPE, rate, seconds, deadline, ticker.tick)
                )
                if kill:
                    await asyncio.wait({job}, timeout=self.args.kill_after)
                    if not job.done():
                        pid = await in_thread(peer.kill_child)
                        row["kill"] = {"pid": pid, "at_s": self.args.kill_after}
                        console.print(f"    kill -9 of a {system} pool process (pid {pid})")
                latencies, tally, extra = await job
        pending = set() if kill else tally.accepted - tally.status.keys()
        checks = audit(tally, CeleryPeer.expected(SHAPE), pending=pending)
        row.update(_counts(extra), **pct(latencies), checks=checks.summary())
        if extra.get("failed_then_completed"):
            row["failed_then_completed"] = extra["failed_then_completed"]
        if pending:
            row["lost"] = None  # undecided: the backlog is dropped with the worker
        if extra.get("unfinished"):
            self.restart(peer)
        if not checks.ok and not kill:
            self.failed.append(f"{label}: {bad(checks)}")
        return row


def _counts(extra: dict[str, Any]) -> dict[str, Any]:
    keys = ("submitted", "accepted", "completed", "failed", "unfinished", "late", "max_lag_ms")
    out = {k: extra[k] for k in keys if k in extra}
    out["not_finished"] = out.pop("unfinished", None)
    for k in ("max_in_flight", "errors"):
        if extra.get(k):
            out[k] = extra[k]
    return out


# -- the scenarios -----------------------------------------------------------------------------


async def rates(b: Bench) -> list[dict[str, Any]]:
    """1: each rate, each system, one after the other (never two loads at once). AI Spine's
    execute answer is measured too, against its p50 one at a time (a slow rate first, where
    no execution overlaps another): target p99 ≤ ``--answer-ratio`` × that at every rate."""
    rows = []
    reference = None
    if "spine" in b.args.systems:
        console.print("  spine 2/s for 15 s (execute's answer one at a time) …")
        alone = await b.spine_load("spine 2/s (one at a time)", 2.0, 15.0)
        reference = alone["answer"].get("p50_ms")
        rows.append(alone)
    for rate in b.args.rates:
        for system in b.args.systems:
            label = f"{system} {rate:g}/s"
            console.print(f"  {label} for {b.args.duration:g} s …")
            if system == "spine":
                row = await b.spine_load(label, rate, b.args.duration)
            else:
                row = await b.celery_load(system, label, rate, b.args.duration)
            if system == "spine" and reference:
                p99 = row["answer"].get("p99_ms")
                row["answer_p99_ratio"] = round(p99 / reference, 1) if p99 else None
                if p99 is None or p99 > b.args.answer_ratio * reference:
                    b.failed.append(
                        f"{label}: execute's answer p99 {fmt(p99)} ms is above "
                        f"{b.args.answer_ratio:g}× its one-at-a-time p50 ({fmt(reference, 1)} ms)"
                    )
            console.print(f"  {label}: {_line(row)}")
            rows.append(row)
    return rows


async def tenants(b: Bench) -> dict[str, Any]:
    """2: a small tenant, one execution at a time, idle then during a big tenant's burst."""
    args = b.args
    small = SpineClient(b.base_url, b.master, pool=2)
    big = SpineClient(b.base_url, b.master, pool=args.pool)
    out: dict[str, Any] = {"burst": {"n": args.burst, "pool": args.pool}}
    try:
        await small.create_user()
        await big.create_user(max_in_flight=BURST_MAX_IN_FLIGHT)
        console.print(f"  small tenant idle: {args.idle_runs} executions one at a time …")
        idle = await small.one_at_a_time(SHAPE, runs=args.idle_runs, warmup=5)
        console.print(f"  big tenant: burst of {args.burst}; small tenant one at a time …")
        with b.cpu(out["burst"]):
            async with Ticker("burst", args.burst) as ticker:
                deadline = time.monotonic() + args.burst_deadline
                stop = asyncio.Event()
                during = asyncio.create_task(small.one_at_a_time(SHAPE, stop=stop))
                try:
                    tp, drain = await big.throughput(
                        SHAPE, args.burst, b.obs, ticker.tick, deadline
                    )
                finally:
                    stop.set()
                    busy = await during
        await drain.finish(time.monotonic() + args.grace)  # an unfinished tail, then lost
        small_ids = idle.executions | busy.executions
        await b.obs.caught_up()
        small_tally = b.obs.tally(small_ids, keep=tp.executions)
        small_checks = audit(small_tally, lambda _e: b.want)
        big_checks = audit(b.obs.tally(tp.executions), lambda _e: b.want)
    finally:
        await small.close()
        await big.close()
    p_idle, p_busy = pct(idle.samples_ms), pct(busy.samples_ms)
    ratio = (
        round(p_busy["p50_ms"] / p_idle["p50_ms"], 1)
        if "p50_ms" in p_idle and "p50_ms" in p_busy
        else None
    )
    out["small_idle"] = {"runs": len(idle.samples_ms), "failed": idle.failed, **p_idle}
    out["small_during_burst"] = {"runs": len(busy.samples_ms), "failed": busy.failed, **p_busy}
    out["small_p50_ratio"] = ratio
    out["small_p50_target"] = args.fair_ratio
    if ratio is None or ratio > args.fair_ratio:
        b.failed.append(
            f"tenants: the small tenant's p50 during the burst is {ratio}× its idle p50 "
            f"(target ≤ {args.fair_ratio:g}×)"
        )
    out["small_checks"] = small_checks.summary()
    tps = tp.summary()
    out["burst"].update(
        {k: tps[k] for k in ("submitted", "completed", "failed", "elapsed_s", "submit_s")},
        executions_per_s=tps["executions_per_s"],
        not_finished=tp.unfinished,
        refused=tp.errors,  # submissions not accepted (HTTP status or client error)
        checks=big_checks.summary(),
    )
    for name, checks in (("small tenant", small_checks), ("burst", big_checks)):
        if not checks.ok:
            b.failed.append(f"tenants {name}: {bad(checks)}")
    for e in (idle.errors, busy.errors):
        if e:
            out.setdefault("small_errors", []).append(e)
    return out


async def kill(b: Bench) -> list[dict[str, Any]]:
    """3: kill -9 mid-load — AI Spine's second echo replica, then a Celery pool process."""
    args = b.args
    rows = []
    for system in args.systems:
        label = f"{system} kill"
        console.print(
            f"  {label}: {args.kill_rate:g}/s for {args.kill_duration:g} s, kill -9 after "
            f"{args.kill_after:g} s …"
        )
        if system == "spine":
            b.replica = EchoReplica(b.env, ROOT / ".spine" / "logs" / "bench-echo-2.log")
            pid = b.replica.start()
            b.watch.add("agent-echo-2", pid)
            t0 = time.monotonic()
            parts = await b.replica.joined()
            console.print(
                f"    second echo replica pid {pid} joined (partitions {parts}, "
                f"{time.monotonic() - t0:.1f} s)"
            )
            row = await b.spine_load(label, args.kill_rate, args.kill_duration, kill=b.replica)
            row["kill"] = {**row.get("kill", {}), "partitions": parts}
            b.replica = None
        else:
            row = await b.celery_load(system, label, args.kill_rate, args.kill_duration, kill=True)
        console.print(f"  {label}: {_line(row)}")
        rows.append(row)
    return rows


# -- the report --------------------------------------------------------------------------------


def _line(row: dict[str, Any]) -> str:
    c = row["checks"]
    return (
        f"{row.get('completed')}/{row.get('submitted')} completed, failed={row.get('failed')} "
        f"not finished={row.get('not_finished')} p50={fmt(row.get('p50_ms'))} "
        f"p99={fmt(row.get('p99_ms'))} ms late={row.get('late')} "
        f"checks={'ok' if c['ok'] else c['failures']} re-runs={c['agent_reruns']}"
    )


Col = tuple[str, Callable[[dict[str, Any]], str]]


def _get(key: str, digits: int = 0) -> Callable[[dict[str, Any]], str]:
    return lambda r: fmt(r.get(key), digits)


def _failed(kind: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: fmt(r["checks"]["failures"].get(kind, 0))


def _table(title: str, cols: list[Col], rows: list[dict[str, Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for i, (name, _) in enumerate(cols):
        t.add_column(name, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(cell(r) for _, cell in cols))
    console.print(t)


RATE_COLS: list[Col] = [
    ("system", _get("system")),
    ("rate/s", _get("rate_per_s")),
    ("sent", _get("submitted")),
    ("late", _get("late")),
    ("max lag ms", _get("max_lag_ms", 1)),
    ("completed", _get("completed")),
    ("failed", _get("failed")),
    ("not finished", _get("not_finished")),
    *((p, _get(f"{p}_ms")) for p in ("p50", "p95", "p99", "max")),
    ("answer p50/p99", lambda r: _pair(r.get("answer"))),
    ("answer p99 ×", _get("answer_p99_ratio", 1)),
    ("checks", lambda r: _checks(r["checks"])),
    ("re-runs", lambda r: fmt(r["checks"]["agent_reruns"])),
    ("machine CPU %", _get("machine_cpu_pct")),
    ("other %", _get("other_cpu_pct")),
]
SMALL_COLS: list[Col] = [
    ("small tenant", _get("name")),
    ("runs", _get("runs")),
    *((p, _get(f"{p}_ms")) for p in ("p50", "p95", "p99", "max")),
    ("failed", _get("failed")),
]
KILL_COLS: list[Col] = [
    ("system", _get("system")),
    ("accepted", lambda r: fmt(r.get("accepted", r.get("submitted")))),
    ("completed", _get("completed")),
    ("failed", _get("failed")),
    ("not finished", _get("not_finished")),
    ("lost", _failed("lost")),
    ("double term.", _failed("double_terminal")),
    ("double disp.", _failed("double_dispatch")),
    ("wrong output", _failed("wrong_output")),
    ("re-runs", lambda r: fmt(r["checks"]["agent_reruns"])),
    ("p50/p99 before", lambda r: _pair(r.get("before_kill"))),
    ("p50/p99 after", lambda r: _pair(r.get("after_kill"))),
    ("max", _get("max_ms")),
    ("take-over s", lambda r: fmt(r.get("kill", {}).get("takeover_s"), 1)),
    ("other %", _get("other_cpu_pct")),
]


def report_rates(rows: list[dict[str, Any]]) -> None:
    _table("1. Fixed arrival rates, open loop (latency ms: send → terminal)", RATE_COLS, rows)


def report_tenants(t: dict[str, Any]) -> None:
    burst = t["burst"]
    rows = [
        {"name": "idle", **t["small_idle"]},
        {"name": "during the burst", **t["small_during_burst"]},
    ]
    _table("2. Small tenant, one at a time (ms)", SMALL_COLS, rows)
    console.print(
        f"  small p50 during / idle = {fmt(t['small_p50_ratio'], 1)}×; small checks "
        f"{_checks(t['small_checks'])}; burst: {burst['completed']}/{burst['submitted']} "
        f"completed in {fmt(burst['elapsed_s'], 1)} s (submitted in "
        f"{fmt(burst['submit_s'], 1)} s, {fmt(burst['executions_per_s'], 1)}/s), not finished "
        f"{burst['not_finished']}, refused {burst['refused'] or 0}, checks "
        f"{_checks(burst['checks'])}, machine CPU {fmt(burst.get('machine_cpu_pct'))}%"
    )


def report_kill(rows: list[dict[str, Any]]) -> None:
    _table(
        "3. kill -9 mid-load (latency ms by send time: before / after the kill)", KILL_COLS, rows
    )


def _pair(p: dict[str, float] | None) -> str:
    return f"{fmt(p.get('p50_ms'))}/{fmt(p.get('p99_ms'))}" if p else "–"


def _checks(c: dict[str, Any]) -> str:
    return f"{c['checked']} ok" if c["ok"] else f"[red]{c['failures']}[/]"


# -- the run -----------------------------------------------------------------------------------


def estimate(args: argparse.Namespace) -> tuple[float, float]:
    """(expected, at most) seconds: a load ends when its executions do, at the latest its
    schedule + --grace (+ --grace more for AI Spine's stragglers)."""
    spine, celery = "spine" in args.systems, sum(s != "spine" for s in args.systems)
    est = worst = 15.0 + 8 * celery  # preflight, starting the Celery workers
    if "rates" in args.scenarios:
        for rate in args.rates:
            n = rate * args.duration
            est += spine * (max(args.duration, n / SPINE_RATE) + 5)
            est += celery * (max(args.duration, n / CELERY_RATE) + 3)
            worst += spine * (args.duration + 2 * args.grace) + celery * (
                args.duration + args.grace + 10
            )
    if "tenants" in args.scenarios and spine:
        est += args.idle_runs * 0.15 + args.burst / SPINE_RATE + 10
        worst += args.idle_runs * 0.5 + args.burst_deadline + args.grace
    if "kill" in args.scenarios:
        n = args.kill_rate * args.kill_duration
        est += spine * (10 + max(args.kill_duration, n / SPINE_RATE) + 15)
        est += celery * (max(args.kill_duration, n / CELERY_RATE) + 5)
        worst += spine * (70 + args.kill_duration + 2 * args.grace)
        worst += celery * (args.kill_duration + args.grace)
    return est, worst


async def main_async(args: argparse.Namespace) -> int:
    env = load_env()
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "SPINE_TOPIC_PREFIX"):
        if key in env:
            os.environ.setdefault(key, env[key])
    b = Bench(args, env)
    started_at, t_start = datetime.now(UTC), time.monotonic()
    load_start = os.getloadavg()
    est, worst = estimate(args)
    plan = {
        "rates": f"rates {'/'.join(f'{r:g}' for r in args.rates)} per s × {args.duration:g} s",
        "tenants": f"{args.idle_runs} idle runs, burst {args.burst}",
        "kill": f"kill -9 at {args.kill_after:g} s of {args.kill_rate:g}/s × "
        f"{args.kill_duration:g} s",
    }
    console.print(
        f"[bold]AI Spine scenarios[/] {started_at:%Y-%m-%d %H:%M:%S} UTC · {b.base_url} · "
        f"{os.cpu_count()} cores · load {load_start[0]:.2f}\n"
        f"  plan: {'; '.join(plan[s] for s in args.scenarios)} · {', '.join(args.systems)}\n"
        f"  estimated {est / 60:.1f} min (at most {worst / 60:.0f} min if every load runs to "
        f"its deadline)"
    )
    result: dict[str, Any] = {}
    try:
        try:
            await b.open()
        except SpineUnavailable as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        if "rates" in args.scenarios:
            console.print("[bold]1. fixed arrival rates[/]")
            result["rates"] = await rates(b)
            report_rates(result["rates"])
        if "tenants" in args.scenarios and "spine" in args.systems:
            console.print("[bold]2. a small tenant during a big tenant's burst[/]")
            result["tenants"] = await tenants(b)
            report_tenants(result["tenants"])
        if "kill" in args.scenarios:
            console.print("[bold]3. kill -9 mid-load[/]")
            result["kill"] = await kill(b)
            report_kill(result["kill"])
    finally:
        await b.close()
    elapsed = round(time.monotonic() - t_start, 1)
    noisy = [r for rows in (result.get("rates", []), result.get("kill", [])) for r in rows]
    noisy = [r for r in noisy if (r.get("other_cpu_pct") or 0) >= 10]
    if noisy:
        console.print(
            f"[yellow]noisy machine: processes outside the bench used ≥ 10% of the cores in "
            f"{len(noisy)} step(s) (column 'other %'); their figures are slower than on a "
            "quiet machine[/]"
        )
    ok = not b.failed
    if ok:
        console.print("[green]checks: as expected (Celery's losses under a kill are reported)[/]")
    else:
        console.print(f"[red]CHECKS FAILED: {'; '.join(b.failed)}[/]")
    console.print(f"total {elapsed} s (estimated {est:.0f} s)")
    line = {
        "bench": "ai-spine-scenarios",
        "version": 1,
        "started_at": started_at.isoformat(),
        "elapsed_s": elapsed,
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "config": {k: v for k, v in vars(args).items()} | {"gateway": b.base_url},
        "scenarios": result,
        "checks_ok": ok,
        "check_failures": b.failed,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    text = json.dumps(line, separators=(",", ":"))
    (OUT / "scenarios-last.json").write_text(text + "\n")
    with (OUT / "scenarios-history.jsonl").open("a") as fh:
        fh.write(text + "\n")
    print(text, flush=True)
    return 0 if ok else 1


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        unknown = set(items) - set(allowed)
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose among {', '.join(allowed)}")
        return [x for x in allowed if x in items]

    return parse


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add(
        "--scenarios",
        type=_choices(SCENARIOS),
        default=list(SCENARIOS),
        help="comma-separated: rates,tenants,kill (default all)",
    )
    add(
        "--systems",
        type=_choices(SYSTEMS),
        default=list(SYSTEMS),
        help="comma-separated: spine,celery-fast,celery-matched (default all)",
    )
    add("--rates", type=_floats, default=[50.0, 100.0, 150.0], help="executions/s, scenario 1")
    add("--duration", type=float, default=30.0, help="seconds of load per rate, scenario 1")
    add(
        "--grace",
        type=float,
        default=60.0,
        help="seconds after a load's schedule before an execution counts as not finished "
        "(AI Spine: and as many more before it counts as lost)",
    )
    add("--idle-runs", type=int, default=40, help="small tenant's runs while idle, scenario 2")
    add(
        "--burst",
        type=int,
        default=1000,
        help=f"big tenant's executions at once, scenario 2 (≤ its max_in_flight, "
        f"{BURST_MAX_IN_FLIGHT})",
    )
    add(
        "--answer-ratio",
        type=float,
        default=3.0,
        help="scenario 1 fails when execute's answer p99 at a rate is above this multiple of "
        "its p50 one at a time",
    )
    add(
        "--fair-ratio",
        type=float,
        default=2.0,
        help="scenario 2 fails when the small tenant's p50 during the burst is above this "
        "multiple of its idle p50",
    )
    add(
        "--burst-deadline",
        type=float,
        default=180.0,
        help="seconds the burst may take before it counts as not finished",
    )
    add("--pool", type=int, default=100, help="HTTP connections of a loading client")
    add(
        "--kill-rate",
        type=float,
        default=50.0,
        help="executions/s, scenario 3 (below saturation: the kill, not the queue)",
    )
    add("--kill-duration", type=float, default=20.0, help="seconds of load, scenario 3")
    add("--kill-after", type=float, default=5.0, help="seconds into the load of the kill -9")
    add("--url", help="gateway base URL (default http://127.0.0.1:$PORT)")
    args = p.parse_args()
    if not args.rates or min(args.rates) <= 0 or args.duration <= 0 or args.kill_rate <= 0:
        p.error("rates and durations must be > 0")
    try:
        sys.exit(asyncio.run(main_async(args)))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted (what the bench started is stopped)[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
