"""`make bench`: AI Spine beside the frozen floor and two Celery configurations, in rounds.

    uv run --group bench python -m bench.run [--rounds 3] [--runs 100] [--n 1000] [--profile]

Needs the stack of `make up` (the gateway must answer on PORT from .env). The contestants
take turns (floor, AI Spine, Celery fast, Celery matched; repeated --rounds times); every
execution's output, dispatches, terminal events and the bench user's balance are checked,
and a failed check fails the run (exit 1). Prints the tables while it goes, then one JSON
line with every figure (also .spine/bench/last.json), then the headline as the last line,
JSON. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table
from spine_kafka.clients import KafkaConfig, make_admin
from spine_kafka.security import KafkaSecurity

from .checks import Audit
from .common import FLOW_IDS, Latency, Throughput, progress
from .contestants import (
    CeleryContestant,
    Check,
    Contestant,
    FloorContestant,
    SpineContestant,
    merge_audit,
)
from .peer import CeleryPeer
from .procstats import INFRA, SERVICES, ProcessWatch, cpu_delta, read_pid
from .rounds import CONTESTANTS, NOT_FINISHED, SHAPES, Round, _get, headline, headline_text, rate

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".spine" / "bench"
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
T = TypeVar("T")


# -- environment -------------------------------------------------------------------------------


def load_env() -> dict[str, str]:
    """.spine/infra.env, then .env, then the process environment (which wins)."""
    env: dict[str, str] = {}
    for path in (ROOT / ".spine" / "infra.env", ROOT / ".env"):
        if path.exists():
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    key, _, value = line.removeprefix("export ").partition("=")
                    env[key.strip()] = value.strip().strip("'\"")
    env.update(os.environ)
    return env


def kafka_config(env: dict[str, str]) -> KafkaConfig:
    """The bench's own clients (observer, probes, the floor's security) reach the broker as
    the services do: the bootstrap servers and the login of :func:`load_env`'s variables."""
    return KafkaConfig(
        bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        client_id="bench",
        security=KafkaSecurity.from_env(env),
    )


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1/0.0.0.0:port (from /proc/net/tcp)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in wanted:
                    return int(entry.name)
        except OSError:
            continue
    return None


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


# -- phases ------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    sys_s: dict[str, float] = field(default_factory=dict)  # of cpu_s, in the kernel
    machine_busy_s: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    deadline: float | None = None  # monotonic time the phase must end by


@dataclass
class Plan:
    """Deadlines that keep the whole run inside the budget.

    When a phase starts it gets a share of the time left, by weight among the phases still
    to come (at least its minimum); what a phase does not use goes to the later ones. An
    optional phase is skipped when less than its minimum is left.
    """

    budget_s: float
    started: float = field(default_factory=time.monotonic)
    weight: dict[str, float] = field(default_factory=dict)
    minimum: dict[str, float] = field(default_factory=dict)
    mandatory: dict[str, bool] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def add(self, name: str, weight: float, minimum_s: float, mandatory: bool = True) -> None:
        self.order.append(name)
        self.weight[name] = weight
        self.minimum[name] = minimum_s
        self.mandatory[name] = mandatory

    @property
    def end(self) -> float:
        return self.started + self.budget_s

    def deadline(self, name: str) -> float:
        now = time.monotonic()
        left = max(0.0, self.end - now)
        rest = self.order[self.order.index(name) :]
        share = left * self.weight[name] / sum(self.weight[p] for p in rest)
        return now + max(min(self.minimum[name], left), share)

    def fits(self, name: str) -> bool:
        return self.end - time.monotonic() >= self.minimum[name]


class Runner:
    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.watch = ProcessWatch()
        self.phases: list[Phase] = []
        self.rounds: list[Round] = []
        self.cpu_ms: list[dict[str, dict[str, float | None]]] = []  # per round
        self.audits: dict[str, Audit] = {}  # contestant -> every phase's audit merged
        self.plan = Plan(args.budget)
        self.notes: list[str] = []
        self.profile: dict[str, Any] = {}

    async def phase(self, name: str, run: Callable[[Phase], Awaitable[Any]]) -> Any:
        ph = Phase(name)
        self.phases.append(ph)
        if name in self.plan.order:
            ph.deadline = self.plan.deadline(name)
        before, busy0, t0 = self.watch.cpu(), machine_busy_s(), time.monotonic()
        sys0 = self.watch.cpu(kernel_only=True)
        try:
            value = await run(ph)
        finally:
            ph.wall_s = round(time.monotonic() - t0, 2)
            ph.cpu_s = cpu_delta(before, self.watch.cpu())
            ph.sys_s = cpu_delta(sys0, self.watch.cpu(kernel_only=True))
            ph.machine_busy_s = round(machine_busy_s() - busy0, 2)
        return value

    def record(
        self,
        contestant: str,
        shape: str,
        kind: str,
        value: Latency | Throughput,
        checked: Audit,
        ph: Phase,
    ) -> None:
        summary = value.summary()
        summary["checks"] = checked.summary()
        ph.result = summary
        self.rounds[-1].setdefault(contestant, {}).setdefault(shape, {})[kind] = summary
        merge_audit(self.audits.setdefault(contestant, Audit()), checked)
        if isinstance(value, Throughput):
            per_exec = (
                round(1000 * ph.machine_busy_s / value.completed, 1)
                if value.finished and value.completed
                else None
            )
            summary["machine_cpu_ms_per_execution"] = per_exec
            self.cpu_ms[-1].setdefault(contestant, {})[shape] = per_exec
        flag = "" if checked.ok else f"  [red]CHECK FAILED: {checked.failures}[/]"
        reruns = f" reruns={checked.reruns}" if checked.reruns else ""
        console.print(f"  {ph.name:<34} {_one_line(summary)}{reruns}{flag}")


def _one_line(s: dict[str, Any]) -> str:
    if "p50_ms" in s:
        return (
            f"runs={s['runs']} p50={s['p50_ms']:.1f} p95={s['p95_ms']:.1f} "
            f"p99={s['p99_ms']:.1f} ms" + (" (truncated)" if s.get("truncated_by_budget") else "")
        )
    if "executions_per_s" in s:
        rate = s["executions_per_s"]
        shown = f"{rate:.1f}/s" if rate is not None else NOT_FINISHED
        return (
            f"{s['completed']}/{s['submitted']} completed in {s['elapsed_s']:.1f} s = {shown}, "
            f"unfinished={s['unfinished_at_deadline']} lost={s['lost']}"
        )
    return json.dumps(s)


async def _with_bar(label: str, total: int, go: Callable[..., Awaitable[T]], **kw: Any) -> T:
    with progress() as bar:
        task = bar.add_task(label, total=total)
        return await go(tick=lambda n=1: bar.advance(task, n), **kw)


# -- the run -----------------------------------------------------------------------------------

#: (kind, contestant) -> share of the time left when the phase starts (see Plan)
WEIGHTS = {
    ("latency", "floor"): 0.5,
    ("throughput", "floor"): 0.3,
    ("latency", "spine"): 1.5,
    ("throughput", "spine"): 2.0,
    ("latency", "celery-fast"): 0.4,
    ("throughput", "celery-fast"): 1.2,
    ("latency", "celery-matched"): 0.5,
    ("throughput", "celery-matched"): 1.5,
}


async def main_async(args: argparse.Namespace) -> int:
    from .spine import SpineClient, SpineUnavailable

    env = load_env()
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "DATABASE_URL", "SPINE_TOPIC_PREFIX"):
        if key in env:
            os.environ.setdefault(key, env[key])
    kafka = kafka_config(env)
    port = int(env.get("PORT", "8000"))
    base_url = args.url or env.get("SPINE_BENCH_URL") or f"http://127.0.0.1:{port}"
    master = env.get("API_KEY", "")
    prefix = env.get("SPINE_TOPIC_PREFIX", "")
    run_dir = ROOT / ".spine" / "run"
    r = Runner(args, env)
    started_at = datetime.now(UTC)
    load_start = os.getloadavg()
    only = set(args.only.split(",")) if args.only else set(CONTESTANTS)
    unknown = only - set(CONTESTANTS)
    if unknown:
        console.print(f"[red]error:[/] --only: unknown contestant(s) {sorted(unknown)}")
        return 2

    # -- preflight: the stack must be up
    client = SpineClient(base_url, master, pool=args.pool)
    try:
        await client.check()
    except SpineUnavailable as exc:
        console.print(f"[red]error:[/] {exc}")
        await client.close()
        return 2
    if not master:
        console.print("[red]error:[/] API_KEY (the master key) is not in .env nor the environment")
        await client.close()
        return 2
    missing = []
    for name in SERVICES + INFRA:
        pid = read_pid(run_dir, name)
        if name == "gateway":
            listening = listener_pid(int(base_url.rsplit(":", 1)[1].split("/")[0]))
            if listening is not None and listening != pid:
                r.notes.append(
                    f"gateway: measured the process listening on the URL "
                    f"(pid {listening}), not .spine/run/gateway.pid ({pid})"
                )
                pid = listening
        if pid is None:
            missing.append(name)
        else:
            r.watch.add(name, pid, tree=True)
    r.watch.add("bench-client", os.getpid(), tree=False)
    if missing:
        r.notes.append(f"not running (not measured): {', '.join(missing)}")
    start_balance = await client.create_user()
    flows_state = {
        shape: await client.ensure_flow(flow_id, ROOT / "flows" / f"{flow_id}.yaml")
        for shape, flow_id in FLOW_IDS.items()
    }
    flows = {shape: await client.flow(flow_id) for shape, flow_id in FLOW_IDS.items()}
    partitions = await _partitions(kafka, f"{prefix}spine.executions.commands")
    console.print(
        f"[bold]AI Spine bench[/] {started_at:%Y-%m-%d %H:%M:%S} UTC · gateway {base_url} · "
        f"{os.cpu_count()} cores · load {load_start[0]:.2f} · rounds={args.rounds} "
        f"runs={args.runs} n={args.n}/{args.n_fanout} budget={args.budget:.0f}s · "
        f"partitions={partitions}"
    )
    for note in r.notes:
        console.print(f"  [dim]{note}[/]")

    spine = SpineContestant(
        client,
        kafka,
        prefix,
        flows,
        drain_s=args.drain,
        inject=frozenset(args.inject.split(",")) if args.inject else frozenset(),
    )
    contestants: list[Contestant] = []
    peers: list[CeleryPeer] = []
    if "floor" in only:
        contestants.append(FloorContestant(kafka, partitions))
    if "spine" in only:
        contestants.append(spine)
    for config in ("fast", "matched"):
        if f"celery-{config}" in only:
            peer = CeleryPeer(ROOT, config=config)
            peers.append(peer)
            contestants.append(CeleryContestant(peer))
    plan = r.plan
    for i in range(1, args.rounds + 1):
        for c in contestants:
            for kind in ("latency", "throughput"):
                for shape in SHAPES:
                    plan.add(f"r{i} {c.name} {shape} {kind}", WEIGHTS[(kind, c.name)], 5.0)

    exit_code = 0
    balance_problem: str | None = None
    try:
        for peer in peers:
            console.print(f"  starting the Celery worker ({peer.config}) ...")
            await asyncio.to_thread(peer.start)
            _watch_peer(r, peer)
        r.watch.start()

        async def idle(ph: Phase) -> None:
            await asyncio.sleep(args.idle)

        await r.phase("idle", idle)
        idle_phase = r.phases[-1]
        idle_pct = {k: round(100 * v / idle_phase.wall_s, 1) for k, v in idle_phase.cpu_s.items()}
        floor = next((c for c in contestants if isinstance(c, FloorContestant)), None)
        if floor is not None and args.broker_warmup > 0:
            console.print(
                f"  warming the broker up for {args.broker_warmup:.0f} s (floor, unmeasured)"
            )
            warm = await floor.warm_up(args.broker_warmup)
            merge_audit(r.audits.setdefault("floor", Audit()), warm)

        for i in range(1, args.rounds + 1):
            console.print(f"[bold]round {i} of {args.rounds}[/]")
            r.rounds.append({})
            r.cpu_ms.append({})
            for c in contestants:
                await c.open()
                try:
                    await _turn(r, c, i, args, started_at)
                finally:
                    await c.close()
        if "spine" in only:
            late, balance_problem = await spine.final_checks(start_balance)
            merge_audit(r.audits.setdefault("spine", Audit()), late)
        balance = await client.balance()
    finally:
        await spine.shutdown()
        for peer in peers:
            await asyncio.to_thread(peer.stop)
        await client.close()
        r.watch.stop()

    checks = _checks(r, balance_problem, start_balance, balance if "spine" in only else None)
    if not checks["ok"]:
        exit_code = 1
    _report(r, started_at, load_start, idle_pct, flows_state, base_url, partitions, checks)
    return exit_code


async def _turn(
    r: Runner, c: Contestant, i: int, args: argparse.Namespace, started_at: datetime
) -> None:
    """One contestant's phases in round ``i``: latency of both flows, then throughput."""
    for shape in SHAPES:

        async def lat(ph: Phase, shape: str = shape) -> tuple[Latency, Check]:
            return await _with_bar(
                ph.name, args.runs, c.latency, shape=shape, runs=args.runs, deadline=ph.deadline
            )

        value, check = await r.phase(f"r{i} {c.name} {shape} latency", lat)
        r.record(c.name, shape, "latency", value, await check(), r.phases[-1])
    for shape in SHAPES:
        n = args.n if shape == "chain" else args.n_fanout

        async def tput(ph: Phase, shape: str = shape, n: int = n) -> tuple[Throughput, Check]:
            profiler = None
            if args.profile and c.name == "spine" and shape == "chain" and i == 1:
                from .profile import Profiler

                profiler = Profiler(OUT / f"profile-{started_at:%Y%m%dT%H%M%S}")
                targets = {
                    name: u.pid
                    for name, u in r.watch.units.items()
                    if name in ("orchestrator", "gateway", "agent-echo", "auth")
                }
                profiler.start(targets)
                for name, pid in profiler.pids().items():
                    r.watch.add(name, pid, tree=False)
            try:
                return await _with_bar(
                    ph.name, n, c.throughput, shape=shape, n=n, deadline=ph.deadline
                )
            finally:
                if profiler is not None:
                    r.profile = profiler.stop()
                    r.profile["_dir"] = str(profiler.out_dir)

        value, check = await r.phase(f"r{i} {c.name} {shape} throughput", tput)
        r.record(c.name, shape, "throughput", value, await check(), r.phases[-1])
        if isinstance(c, CeleryContestant) and value.unfinished:
            # its backlog would run into the next phase: a fresh worker and queue
            await asyncio.to_thread(c.peer.stop)
            await asyncio.to_thread(c.peer.start)
            _watch_peer(r, c.peer)


def _watch_peer(r: Runner, peer: CeleryPeer) -> None:
    """Measure a (re)started Celery worker's tree and, for matched, its own Redis."""
    for part, pid in peer.pids().items():
        r.watch.add(f"celery-{peer.config}-{part}", pid, tree=True)


def _checks(
    r: Runner, balance_problem: str | None, start: int, final: int | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"contestants": {c: a.summary() for c, a in r.audits.items()}}
    failures = {c: a.failures for c, a in r.audits.items() if a.failures}
    if balance_problem:
        failures.setdefault("spine", {})["balance"] = 1
    out["balance"] = {"start": start, "final": final, "problem": balance_problem}
    out["ok"] = not failures
    out["failures"] = failures
    out["agent_reruns"] = {c: a.reruns for c, a in r.audits.items()}
    return out


async def _partitions(kafka: KafkaConfig, topic: str) -> int:
    admin = make_admin(kafka)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"]) or 2
    finally:
        await admin.close()


# -- the report --------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 1) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:.{digits}f}"
    return "" if v is None else str(v)


def _report(
    r: Runner,
    started_at: datetime,
    load_start: tuple[float, float, float],
    idle_pct: dict[str, float],
    flows: dict[str, str],
    base_url: str,
    partitions: int,
    checks: dict[str, Any],
) -> None:
    table = Table(title="Each round (latency ms: one execution at a time)", title_justify="left")
    for col in (
        "round",
        "contestant",
        "flow",
        "p50",
        "p95",
        "p99",
        "accept p50",
        "exec/s",
        "CPU ms/exec",
        "checked",
        "re-runs",
    ):
        table.add_column(col, justify="left" if col in ("contestant", "flow") else "right")
    for i, rnd in enumerate(r.rounds, 1):
        for c in CONTESTANTS:
            for shape in SHAPES:
                lat = _get(rnd, c, shape, "latency") or {}
                tp = _get(rnd, c, shape, "throughput") or {}
                if not lat and not tp:
                    continue
                checked = sum((_get(x, "checks", "checked") or 0) for x in (lat, tp))
                reruns = sum((_get(x, "checks", "agent_reruns") or 0) for x in (lat, tp))
                bad = {
                    k: v
                    for x in (lat, tp)
                    for k, v in (_get(x, "checks", "failures") or {}).items()
                }
                table.add_row(
                    str(i),
                    c,
                    shape,
                    _fmt(lat.get("p50_ms")) + ("*" if lat.get("truncated_by_budget") else ""),
                    _fmt(lat.get("p95_ms")),
                    _fmt(lat.get("p99_ms")),
                    _fmt(lat.get("accept_p50_ms")),
                    _fmt(rate(tp) if tp else None),
                    _fmt(tp.get("machine_cpu_ms_per_execution")),
                    str(checked) + (f" [red]{bad}[/]" if bad else ""),
                    str(reruns),
                )
    console.print()
    console.print(table)

    # CPU seconds per process, by contestant and kind, over all rounds and both flows
    measured = [p for p in r.phases if not p.skipped and p.name != "idle"]
    groups: dict[str, list[Phase]] = {}
    for p in measured:
        _, contestant, _, kind = p.name.split()
        groups.setdefault(f"{contestant} {'lat' if kind == 'latency' else 'tput'}", []).append(p)
    units = sorted(
        {u for p in measured for u in p.cpu_s},
        key=lambda u: -sum(p.cpu_s.get(u, 0) for p in measured),
    )
    cpu = Table(
        title="CPU seconds per process, by contestant and phase kind, all rounds "
        "(2 cores = 2 CPU-s per wall second)",
        title_justify="left",
    )
    cpu.add_column("process", no_wrap=True, min_width=16)
    for g in groups:
        cpu.add_column(g, justify="right", no_wrap=True)
    cpu.add_column("idle %", justify="right")
    for u in units:
        cpu.add_row(
            u,
            *[_fmt(sum(p.cpu_s.get(u, 0.0) for p in ps)) for ps in groups.values()],
            _fmt(idle_pct.get(u)),
        )
    cpu.add_row(
        "[dim]other processes[/]",
        *[
            _fmt(sum(max(0.0, p.machine_busy_s - sum(p.cpu_s.values())) for p in ps))
            for ps in groups.values()
        ],
        "",
    )
    cpu.add_row(
        "[bold]machine busy[/]",
        *[_fmt(sum(p.machine_busy_s for p in ps)) for ps in groups.values()],
        "",
    )
    cpu.add_row("[bold]wall s[/]", *[_fmt(sum(p.wall_s for p in ps)) for ps in groups.values()], "")
    console.print(cpu)

    memory = r.watch.memory_report()
    mem = Table(
        title="Memory (MB): peak RSS sampled during the run; VmHWM = peak since start",
        title_justify="left",
    )
    for col in ("process", "peak RSS", "peak RSS (tree)", "VmHWM"):
        mem.add_column(col, justify="left" if col == "process" else "right")
    for name, row in memory.items():
        mem.add_row(
            name,
            str(row.get("rss_peak_mb", "")),
            str(row.get("tree_rss_peak_mb", "")),
            str(row.get("vmhwm_mb", "")),
        )
    console.print(mem)
    if r.profile:
        _print_profile(r.profile)

    wall = sum(p.wall_s for p in measured)
    other = sum(max(0.0, p.machine_busy_s - sum(p.cpu_s.values())) for p in measured)
    cores = os.cpu_count() or 1
    other_share = round(100 * other / (wall * cores), 1) if wall else None
    if other_share is not None and other_share >= 10:
        console.print(
            f"[yellow]noisy machine: processes outside the bench used {other_share}% of the "
            f"{cores} cores during the measured phases; figures are slower than on a quiet "
            "machine[/]"
        )
    client_cpu = round(sum(p.cpu_s.get("bench-client", 0.0) for p in measured), 1)
    head = headline(r.rounds, r.cpu_ms, checks, client_cpu)
    console.print("[bold]Ratios[/] (each round's, then the median of the rounds):")
    for line in headline_text(head):
        console.print("  " + line)
    console.print(f"bench client CPU: {client_cpu} s over the measured phases")
    if checks["ok"]:
        console.print(
            "[green]checks: every output, dispatch, terminal event and the balance as expected[/]"
        )
    else:
        console.print(f"[red]CHECKS FAILED: {json.dumps(checks['failures'])}[/]")
        for c, a in checks["contestants"].items():
            for kind, shown in a.get("examples", {}).items():
                for example in shown:
                    console.print(f"  [red]{c} {kind}:[/] {example}")
        if checks["balance"]["problem"]:
            console.print(f"  [red]spine balance:[/] {checks['balance']['problem']}")
    total = round(time.monotonic() - r.plan.started, 1)
    console.print(
        f"total {total} s (budget {r.args.budget:.0f} s); load average now {os.getloadavg()[0]:.2f}"
    )
    line = {
        "bench": "ai-spine",
        "version": 2,
        "started_at": started_at.isoformat(),
        "elapsed_s": total,
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "other_processes_cpu_pct": other_share,
        },
        "config": {
            "rounds": r.args.rounds,
            "runs": r.args.runs,
            "n": r.args.n,
            "n_fanout": r.args.n_fanout,
            "budget_s": r.args.budget,
            "http_pool": r.args.pool,
            "gateway": base_url,
            "partitions": partitions,
            "flows": flows,
            "profile": bool(r.profile),
            "inject": r.args.inject or None,
        },
        "rounds": r.rounds,
        "headline": head,
        "cpu_s": {
            p.name: {
                **p.cpu_s,
                "_machine_busy": p.machine_busy_s,
                "_other": round(p.machine_busy_s - sum(p.cpu_s.values()), 2),
                "_wall": p.wall_s,
            }
            for p in measured
        },
        "idle_cpu_pct": idle_pct,
        "memory_mb": memory,
        "notes": r.notes,
        **({"profile": r.profile} if r.profile else {}),
    }
    out = Path(r.args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(line, separators=(",", ":"))
    (out / "last.json").write_text(text + "\n")
    with (out / "history.jsonl").open("a") as fh:
        fh.write(text + "\n")
    print(text, flush=True)
    print(json.dumps({"headline": head}, separators=(",", ":")), flush=True)


def _print_profile(profile: dict[str, Any]) -> None:
    for service, prof in profile.items():
        if service.startswith("_"):
            continue
        if "error" in prof:
            console.print(f"profile {service}: [red]{prof['error']}[/]")
            continue
        t = Table(
            title=f"py-spy {service}: {prof['busy_samples']} busy samples of {prof['samples']}",
            title_justify="left",
        )
        t.add_column("self % by package")
        t.add_column("self % by function")
        t.add_column("inclusive % (AI Spine code)")
        keys = ("self_by_package_pct", "self_by_function_pct", "inclusive_spine_pct")
        rows = max(len(prof[k]) for k in keys)
        for i in range(min(rows, 10)):
            t.add_row(
                *[f"{prof[k][i][1]:5.1f} {prof[k][i][0]}" if i < len(prof[k]) else "" for k in keys]
            )
        console.print(t)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every contestant (>= 1)")
    parser.add_argument(
        "--runs", type=int, default=60, help="measured runs per latency phase and round"
    )
    parser.add_argument(
        "--n", type=int, default=600, help="executions per chain throughput phase and round"
    )
    parser.add_argument(
        "--n-fanout",
        type=int,
        default=150,
        help="executions per fan-out throughput phase and round (Celery's chord is slow)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds the whole run may take (phases are cut to fit)",
    )
    parser.add_argument("--pool", type=int, default=100, help="HTTP connections to the gateway")
    parser.add_argument(
        "--idle", type=float, default=5.0, help="seconds of idle CPU measurement before the load"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=15.0,
        help="seconds kept at the end of an AI Spine throughput phase to see its unfinished "
        "executions end (they are checked again at the end of the run)",
    )
    parser.add_argument("--url", help="gateway base URL (default http://127.0.0.1:$PORT)")
    parser.add_argument(
        "--out", default=str(OUT), help="where last.json and history.jsonl go (.spine/bench)"
    )
    parser.add_argument(
        "--only",
        help="comma-separated contestants to run (floor, spine, celery-fast, celery-matched)",
    )
    parser.add_argument(
        "--broker-warmup",
        type=float,
        default=15.0,
        help="seconds of unmeasured floor executions before the first floor latency runs "
        "(a broker just started by make up is still compiling its hot paths)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the orchestrator, gateway, auth and echo agent during round 1's "
        "AI Spine chain throughput phase (perturbs that phase's figures)",
    )
    # tests only: break the run on purpose to prove the checks catch it (double, balance)
    parser.add_argument("--inject", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.runs < 1 or args.n < 1 or args.n_fanout < 1:
        parser.error("--rounds, --runs, --n and --n-fanout must be at least 1")
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the Celery workers and
    # celery-matched's Redis are stopped by the finally blocks, not left behind
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(asyncio.run(main_async(args)))


def _terminate(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
