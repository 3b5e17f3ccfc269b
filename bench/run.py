"""`make bench`: AI Spine beside the bare-Kafka floor and a Celery peer, on this machine.

    uv run --group bench python -m bench.run [--runs 300] [--n 3000] [--budget 570] [--profile]

Needs the stack of `make up` (the gateway must answer on PORT from .env). Prints a table
while it goes, then one JSON line with every figure (also written to
.spine/bench/last.json). See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from .common import Latency, Throughput, progress
from .procstats import INFRA, SERVICES, ProcessWatch, cpu_delta, read_pid

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
        self.results: dict[str, dict[str, dict[str, Any]]] = {
            "floor": {},
            "spine": {},
            "celery": {},
        }
        self.plan = Plan(args.budget)
        self.notes: list[str] = []
        self.profile: dict[str, Any] = {}

    async def phase(
        self, name: str, run: Callable[[Phase], Awaitable[Any]], *, optional: bool = False
    ) -> Any:
        ph = Phase(name)
        self.phases.append(ph)
        if optional and not self.plan.fits(name):
            ph.skipped = "time budget"
            console.print(f"  [yellow]{name}: skipped (not enough of the time budget left)[/]")
            return None
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
        self, system: str, shape: str, kind: str, value: Latency | Throughput, ph: Phase
    ) -> None:
        summary = value.summary()
        ph.result = summary
        self.results[system].setdefault(shape, {})[kind] = summary
        console.print(f"  {ph.name:<28} {_one_line(summary)}")


def _one_line(s: dict[str, Any]) -> str:
    if "p50_ms" in s:
        return (
            f"runs={s['runs']} p50={s['p50_ms']:.1f} p95={s['p95_ms']:.1f} "
            f"p99={s['p99_ms']:.1f} ms" + (" (truncated)" if s.get("truncated_by_budget") else "")
        )
    if "executions_per_s" in s:
        return (
            f"{s['completed']}/{s['submitted']} completed in {s['elapsed_s']:.1f} s = "
            f"{s['executions_per_s']:.1f}/s, unfinished={s['unfinished_at_deadline']} "
            f"lost={s['lost']}"
        )
    return json.dumps(s)


async def run_latency(
    label: str, total: int, go: Callable[..., Awaitable[Latency]], **kw: Any
) -> Latency:
    with progress() as bar:
        task = bar.add_task(label, total=total)
        return await go(tick=lambda n=1: bar.advance(task, n), **kw)


async def run_throughput(label: str, total: int, go: Callable[..., Awaitable[T]], **kw: Any) -> T:
    with progress() as bar:
        task = bar.add_task(label, total=total)
        return await go(tick=lambda n=1: bar.advance(task, n), **kw)


# -- the run -----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    from .floor import Floor
    from .peer import CeleryPeer
    from .spine import SpineClient, SpineUnavailable

    env = load_env()
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "DATABASE_URL", "SPINE_TOPIC_PREFIX"):
        if key in env:
            os.environ.setdefault(key, env[key])
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    port = int(env.get("PORT", "8000"))
    base_url = args.url or env.get("SPINE_BENCH_URL") or f"http://127.0.0.1:{port}"
    master = env.get("API_KEY", "")
    prefix = env.get("SPINE_TOPIC_PREFIX", "")
    run_dir = ROOT / ".spine" / "run"
    r = Runner(args, env)
    started_at = datetime.now(UTC)
    load_start = os.getloadavg()

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
    await client.create_user()
    flows = {
        shape: await client.ensure_flow(flow_id, ROOT / "flows" / f"{flow_id}.yaml")
        for shape, flow_id in (("chain", "echo_chain"), ("fanout", "echo_fanout"))
    }
    partitions = await _partitions(bootstrap, f"{prefix}spine.executions.commands")
    events_topic = f"{prefix}spine.executions.events"
    console.print(
        f"[bold]AI Spine bench[/] {started_at:%Y-%m-%d %H:%M:%S} UTC · gateway {base_url} · "
        f"{os.cpu_count()} cores · load {load_start[0]:.2f} · runs={args.runs} n={args.n} "
        f"budget={args.budget:.0f}s · partitions={partitions}"
    )
    for note in r.notes:
        console.print(f"  [dim]{note}[/]")
    r.watch.start()

    plan = r.plan
    # name, weight (share of the time left), minimum seconds, mandatory
    for name, weight, minimum, mandatory in (
        ("floor chain latency", 1.0, 10, True),
        ("floor chain throughput", 0.5, 5, True),
        ("floor fanout latency", 1.0, 10, True),
        ("floor fanout throughput", 0.5, 5, True),
        ("celery chain latency", 1.0, 10, True),
        ("celery chain throughput", 1.5, 15, True),
        ("celery fanout latency", 1.0, 10, True),
        ("celery fanout throughput", 1.0, 15, False),
        ("spine chain latency", 2.5, 20, True),
        ("spine fanout latency", 2.0, 20, True),
        ("spine chain throughput", 3.0, 40, True),
        ("spine fanout throughput", 2.0, 40, False),
    ):
        plan.add(name, weight, minimum, mandatory)

    # -- idle: what the stack costs while nothing happens
    async def idle(ph: Phase) -> None:
        await asyncio.sleep(args.idle)

    await r.phase("idle", idle)
    idle_phase = r.phases[-1]
    idle_pct = {k: round(100 * v / idle_phase.wall_s, 1) for k, v in idle_phase.cpu_s.items()}

    # -- 1. the floor (fresh topics and hops per flow: a cut phase leaves no backlog behind)
    if not args.skip_floor:
        for shape in ("chain", "fanout"):
            async with Floor(bootstrap, partitions) as floor:

                async def f_lat(ph: Phase, shape: str = shape) -> None:
                    lat = await run_latency(
                        ph.name,
                        args.runs,
                        floor.latency,
                        shape=shape,
                        runs=args.runs,
                        deadline=ph.deadline,
                        # the broker's first transactions after `make up` run cold
                        warmup_s=args.broker_warmup if shape == "chain" else 0.0,
                    )
                    r.record("floor", shape, "latency", lat, ph)

                async def f_tput(ph: Phase, shape: str = shape) -> None:
                    tp = await run_throughput(
                        ph.name,
                        args.n,
                        floor.throughput,
                        shape=shape,
                        n=args.n,
                        deadline=ph.deadline,
                    )
                    r.record("floor", shape, "throughput", tp, ph)

                await r.phase(f"floor {shape} latency", f_lat)
                await r.phase(f"floor {shape} throughput", f_tput)

    # -- 2. the peer (a worker restarted, its Redis DB emptied, after a cut phase)
    if not args.skip_celery:
        peer = CeleryPeer(ROOT, OUT / "celery-worker.log")
        pid = await asyncio.to_thread(peer.start)
        r.watch.add("celery-worker", pid, tree=True)
        try:
            for shape in ("chain", "fanout"):

                async def c_lat(ph: Phase, shape: str = shape) -> None:
                    lat = await run_latency(
                        ph.name,
                        args.runs,
                        _threaded(peer.latency),
                        shape=shape,
                        runs=args.runs,
                        deadline=ph.deadline,
                    )
                    r.record("celery", shape, "latency", lat, ph)

                async def c_tput(ph: Phase, shape: str = shape) -> Throughput:
                    tp = await run_throughput(
                        ph.name,
                        args.n,
                        _threaded(peer.throughput),
                        shape=shape,
                        n=args.n,
                        deadline=ph.deadline,
                    )
                    r.record("celery", shape, "throughput", tp, ph)
                    return tp

                await r.phase(f"celery {shape} latency", c_lat)
                tp = await r.phase(
                    f"celery {shape} throughput",
                    c_tput,
                    optional=not plan.mandatory[f"celery {shape} throughput"],
                )
                if shape == "chain" and tp is not None and tp.unfinished:
                    await asyncio.to_thread(peer.stop)
                    pid = await asyncio.to_thread(peer.start)
                    r.watch.add("celery-worker", pid, tree=True)
        finally:
            await asyncio.to_thread(peer.stop)

    # -- 3. AI Spine through its HTTP API
    from .profile import Profiler

    drains = []
    try:
        for shape in ("chain", "fanout"):

            async def s_lat(ph: Phase, shape: str = shape) -> None:
                lat = await run_latency(
                    ph.name,
                    args.runs,
                    client.latency,
                    shape=shape,
                    runs=args.runs,
                    deadline=ph.deadline,
                )
                r.record("spine", shape, "latency", lat, ph)

            await r.phase(f"spine {shape} latency", s_lat)
        for shape in ("chain", "fanout"):

            async def s_tput(ph: Phase, shape: str = shape) -> None:
                profiler = None
                if args.profile and shape == "chain":
                    profiler = Profiler(OUT / f"profile-{started_at:%Y%m%dT%H%M%S}")
                    targets = {
                        n: u.pid
                        for n, u in r.watch.units.items()
                        if n in ("orchestrator", "gateway", "agent-echo", "auth")
                    }
                    profiler.start(targets)
                    for n, p in profiler.pids().items():
                        r.watch.add(n, p, tree=False)
                try:
                    tp, drain = await run_throughput(
                        ph.name,
                        args.n,
                        client.throughput,
                        shape=shape,
                        n=args.n,
                        events_topic=events_topic,
                        bootstrap=bootstrap,
                        deadline=ph.deadline - args.drain,
                    )
                finally:
                    if profiler is not None:
                        r.profile = profiler.stop()
                        r.profile["_dir"] = str(profiler.out_dir)
                drains.append((shape, tp, drain))
                r.record("spine", shape, "throughput", tp, ph)
                if tp.unfinished:
                    # finish this tail before anything else is measured
                    left = await drain.finish(ph.deadline)
                    _settle(r, shape, tp, left)

            await r.phase(
                f"spine {shape} throughput",
                s_tput,
                optional=not plan.mandatory[f"spine {shape} throughput"],
            )
    finally:
        for shape, tp, drain in drains:
            if drain.follower is not None:
                _settle(
                    r,
                    shape,
                    tp,
                    await drain.finish(None if not tp.unfinished else time.monotonic() + 5),
                )
        balance = await client.balance()
        await client.close()
        r.watch.stop()

    _report(r, started_at, load_start, idle_pct, flows, balance, base_url, partitions)
    return 0


def _settle(r: Runner, shape: str, tp: Throughput, left: int) -> None:
    entry = r.results["spine"][shape]["throughput"]
    entry["lost"] = 0 if left == 0 else None
    entry["not_terminal_at_end_of_run"] = left
    tp.lost = entry["lost"]


def _threaded(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    async def call(**kw: Any) -> T:
        return await asyncio.to_thread(fn, **kw)

    return call


async def _partitions(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"]) or 2
    finally:
        await admin.close()


# -- the report --------------------------------------------------------------------------------


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return round(a / b, 2)
    return None


def _abbrev(phase: str) -> str:
    words = phase.split()
    if len(words) != 3:
        return phase
    system, shape, kind = words
    return f"{system[0].upper()} {shape[:2]} {'lat' if kind == 'latency' else 'tput'}"


def _report(
    r: Runner,
    started_at: datetime,
    load_start: tuple[float, float, float],
    idle_pct: dict[str, float],
    flows: dict[str, str],
    balance: int | None,
    base_url: str,
    partitions: int,
) -> None:
    res = r.results
    lat = Table(title="Latency of one execution at a time (ms)", title_justify="left")
    for col in ("system", "flow", "runs", "p50", "p95", "p99", "accepted p50"):
        lat.add_column(col, justify="right" if col not in ("system", "flow") else "left")
    tput = Table(title="Throughput: n executions submitted at once", title_justify="left")
    for col in (
        "system",
        "flow",
        "completed",
        "unfinished",
        "lost",
        "submit s",
        "elapsed s",
        "exec/s",
    ):
        tput.add_column(col, justify="right" if col not in ("system", "flow") else "left")
    for system in ("floor", "spine", "celery"):
        for shape in ("chain", "fanout"):
            row = _get(res, system, shape, "latency")
            if row:
                lat.add_row(
                    system,
                    shape,
                    str(row["runs"]) + ("*" if row.get("truncated_by_budget") else ""),
                    f"{row.get('p50_ms', 0):.1f}",
                    f"{row.get('p95_ms', 0):.1f}",
                    f"{row.get('p99_ms', 0):.1f}",
                    f"{row.get('accept_p50_ms', 0):.1f}",
                )
            row = _get(res, system, shape, "throughput")
            if row:
                tput.add_row(
                    system,
                    shape,
                    f"{row['completed']}/{row['submitted']}",
                    str(row["unfinished_at_deadline"]),
                    "?" if row["lost"] is None else str(row["lost"]),
                    f"{row['submit_s']:.1f}",
                    f"{row['elapsed_s']:.1f}",
                    f"{row['executions_per_s']:.1f}",
                )
    console.print()
    console.print(lat)
    breakdown = Table(
        title="Where one AI Spine execution's time goes (p50 ms, from its event trail)",
        title_justify="left",
    )
    for col in ("flow", "sent→started", "node round trip", "completed→client", "answer−started"):
        breakdown.add_column(col, justify="left" if col == "flow" else "right")
    for shape in ("chain", "fanout"):
        b = _get(res, "spine", shape, "latency", "breakdown")
        if b:
            breakdown.add_row(
                shape,
                *[
                    str(b.get(k))
                    for k in (
                        "to_started_p50_ms",
                        "node_round_trip_p50_ms",
                        "completed_to_client_p50_ms",
                        "answered_after_started_p50_ms",
                    )
                ],
            )
    if breakdown.row_count:
        console.print(breakdown)
    console.print(tput)

    ratios = {
        "spine_p50/floor_p50": _ratio(
            _get(res, "spine", "chain", "latency", "p50_ms"),
            _get(res, "floor", "chain", "latency", "p50_ms"),
        ),
        "spine_throughput/celery_throughput": _ratio(
            _get(res, "spine", "chain", "throughput", "executions_per_s"),
            _get(res, "celery", "chain", "throughput", "executions_per_s"),
        ),
        "spine_p50/celery_p50": _ratio(
            _get(res, "spine", "chain", "latency", "p50_ms"),
            _get(res, "celery", "chain", "latency", "p50_ms"),
        ),
        "spine_throughput/floor_throughput": _ratio(
            _get(res, "spine", "chain", "throughput", "executions_per_s"),
            _get(res, "floor", "chain", "throughput", "executions_per_s"),
        ),
        "fanout_spine_p50/floor_p50": _ratio(
            _get(res, "spine", "fanout", "latency", "p50_ms"),
            _get(res, "floor", "fanout", "latency", "p50_ms"),
        ),
        "fanout_spine_throughput/celery_throughput": _ratio(
            _get(res, "spine", "fanout", "throughput", "executions_per_s"),
            _get(res, "celery", "fanout", "throughput", "executions_per_s"),
        ),
    }
    console.print("Ratios: " + "  ".join(f"{k} = {v}" for k, v in ratios.items()))

    # CPU seconds per process and phase
    measured = [p for p in r.phases if not p.skipped]
    units = sorted(
        {u for p in measured for u in p.cpu_s},
        key=lambda u: -sum(p.cpu_s.get(u, 0) for p in measured),
    )
    cpu = Table(
        title="CPU seconds per process and phase (2 cores = 2 CPU-s per wall second; "
        "F/C/S = floor/Celery/AI Spine, ch/fa = chain/fan-out)",
        title_justify="left",
    )
    cpu.add_column("process", no_wrap=True, min_width=16)
    for p in measured:
        cpu.add_column(_abbrev(p.name), justify="right", no_wrap=True)
    cpu.add_column("idle %", justify="right")
    for u in units:
        cpu.add_row(
            u,
            *[f"{p.cpu_s[u]:.1f}" if u in p.cpu_s else "" for p in measured],
            f"{idle_pct.get(u, 0):.1f}" if u in idle_pct else "",
        )
    cpu.add_row(
        "[dim]other processes[/]",
        *[f"{max(0.0, p.machine_busy_s - sum(p.cpu_s.values())):.1f}" for p in measured],
        "",
    )
    cpu.add_row("[bold]machine busy[/]", *[f"{p.machine_busy_s:.1f}" for p in measured], "")
    cpu.add_row("[bold]wall s[/]", *[f"{p.wall_s:.1f}" for p in measured], "")
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
        for service, prof in r.profile.items():
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
            rows = max(
                len(prof[k])
                for k in ("self_by_package_pct", "self_by_function_pct", "inclusive_spine_pct")
            )
            for i in range(min(rows, 10)):
                cells = []
                for k in ("self_by_package_pct", "self_by_function_pct", "inclusive_spine_pct"):
                    cells.append(
                        f"{prof[k][i][1]:5.1f} {prof[k][i][0]}" if i < len(prof[k]) else ""
                    )
                t.add_row(*cells)
            console.print(t)

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
    total = round(time.monotonic() - r.plan.started, 1)
    console.print(
        f"total {total} s (budget {r.args.budget:.0f} s); load average now {os.getloadavg()[0]:.2f}"
    )
    line = {
        "bench": "ai-spine",
        "started_at": started_at.isoformat(),
        "elapsed_s": total,
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "other_processes_cpu_pct": other_share,
        },
        "config": {
            "runs": r.args.runs,
            "n": r.args.n,
            "budget_s": r.args.budget,
            "http_pool": r.args.pool,
            "gateway": base_url,
            "partitions": partitions,
            "flows": flows,
            "profile": bool(r.profile),
        },
        "floor": res["floor"],
        "spine": res["spine"],
        "celery": res["celery"],
        "ratios": ratios,
        "cpu_s": {
            p.name: {
                **p.cpu_s,
                "_machine_busy": p.machine_busy_s,
                "_other": round(p.machine_busy_s - sum(p.cpu_s.values()), 2),
                "_wall": p.wall_s,
            }
            for p in measured
        },
        "cpu_kernel_s": {p.name: p.sys_s for p in measured},
        "idle_cpu_pct": idle_pct,
        "skipped": [p.name for p in r.phases if p.skipped],
        "memory_mb": memory,
        "bench_user_balance_after": balance,
        "notes": r.notes,
        **({"profile": r.profile} if r.profile else {}),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    text = json.dumps(line, separators=(",", ":"))
    (OUT / "last.json").write_text(text + "\n")
    with (OUT / "history.jsonl").open("a") as fh:
        fh.write(text + "\n")
    print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300, help="measured runs per latency phase")
    parser.add_argument("--n", type=int, default=3000, help="executions per throughput phase")
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
        default=30.0,
        help="seconds kept after an AI Spine throughput phase's deadline to see "
        "its unfinished executions end (the 'lost' check)",
    )
    parser.add_argument("--url", help="gateway base URL (default http://127.0.0.1:$PORT)")
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
        help="py-spy the orchestrator, gateway, auth and echo agent during the "
        "AI Spine chain throughput phase (perturbs that phase's figures)",
    )
    parser.add_argument("--skip-floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-celery", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
