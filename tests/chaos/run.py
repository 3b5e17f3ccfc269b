"""Chaos: executions of mixed flows in flight while every service is killed -9 in turn.

``make chaos`` runs :func:`main` (a few hundred executions); ``tests/chaos/test_chaos.py``
runs :func:`run_chaos` with a few dozen inside ``make test``. One run:

1. starts a whole stack as real processes with its own topic prefix and PostgreSQL schemas
   (the e2e harness): registry, orchestrator, auth, gateway, relay, metrics and the agents
   echo, eddie and echo-http (an HTTP agent, so the relay has work);
2. creates users and (as system flows) a few flows with the master key through the HTTP API,
   and submits executions of mixed flows (the repository's echo_chain, parallel_research,
   conditional_review, and API flows: a slow chain, a fan-out, an HTTP-agent chain, a flaky
   node that succeeds on its retry, a node that always fails) through ``POST
   /flows/execute`` the way a client with retries does (same ``Idempotency-Key`` after a
   5xx or a broken connection), and cancels some of them;
3. meanwhile kills -9, at random moments, each service in turn and restarts it (waiting for
   the new process's first heartbeat), and restarts the Kafka broker once
   (``scripts/infra.sh kafka-restart``);
4. waits until every execution ended, then checks, from the logs read from offset 0 with
   ``read_committed``:

   * every execution reached exactly one terminal state (``lost``: none, ``duplicated``:
     more than one);
   * no ``(execution, node, attempt)`` was dispatched twice — ``NodeDispatched`` on the
     execution log and the ``AgentMessage`` on the agents' task topics (``duplicated``);
   * every balance equals its start minus what docs/credits.md charges: a completed run
     its flow's cost, a failed one nothing, a cancelled one its cost only if an agent had
     delivered work, a withdrawn reservation nothing — as the gateway shows it, as auth's
     projection holds it and as auth's last event says (``balance errors``);
   * every projection (orchestrator, registry, auth, gateway) equals its rebuild from
     offset 0 (``make rebuild`` check-only).

It prints ``chaos: executions N, kills K, lost L, duplicated D, balance errors B, ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from spine_contracts import (
    AgentHeartbeat,
    AgentMessage,
    CreditsReserved,
    CreditsSettled,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    Message,
    NodeCompleted,
    NodeDispatched,
    ReservationWithdrawn,
    ServiceHeartbeat,
    topics,
)
from spine_kafka.security import SECURITY_ENV, KafkaSecurity
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import (
    KafkaConfig,
    decode_record,
    delete_topics_with_prefix,
    ensure_topics,
    partitions_of,
    read_partition,
)
from spine_servicekit.rebuild import TARGETS, RebuildError, RebuildMismatch, rebuild_schema

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:  # the e2e harness, also when run as a script
    sys.path.append(str(ROOT / "tests"))

from e2e.harness import COMMANDS, Stack  # noqa: E402
from e2e.test_gateway_e2e import MASTER, _stack_env  # noqa: E402
from support import revoke_test_principals, spawn  # noqa: E402

TERMINAL = (ExecutionCompleted, ExecutionFailed, ExecutionCancelled)
OUTCOME = {
    ExecutionCompleted: "completed",
    ExecutionFailed: "failed",
    ExecutionCancelled: "cancelled",
}
#: What is killed, in a random order; the value is the process (harness command name).
VICTIMS = {
    "orchestrator": "orchestrator",
    "auth": "auth",
    "registry": "registry",
    "relay": "relay",
    "gateway": "gateway",
    "metrics": "spine-metrics",
    "echo": "echo",
}
SERVICES = ("registry", "orchestrator", "auth", "gateway", "relay", "spine-metrics")
AGENTS = ("echo", "eddie", "echo-http")
HTTP_AGENT = "echo-http"
APPLICANT = {"name": "Ana", "income": 6000, "amount": 12000, "term_months": 24, "debts": 300}


def _free_port() -> int:
    """A free port below the ephemeral range, which the many client connections of a busy
    machine draw from (a port bound there and released may be taken before it is used)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _flow(flow_id: str, cost: int, *nodes: dict[str, Any]) -> dict[str, Any]:
    return {"flow_id": flow_id, "name": flow_id, "cost": cost, "nodes": list(nodes)}


def _plain_node(node_id: str, *deps: str, agent: str = "echo", **config: Any) -> dict[str, Any]:
    config.setdefault("timeout", 30)
    config.setdefault("retries", 2)
    return {"id": node_id, "agent_id": agent, "depends_on": list(deps), "config": config}


def api_flows(slow: float = 1.0) -> list[dict[str, Any]]:
    """Flows created through the API (costs differ, so a wrong charge shows in a balance);
    ``slow`` scales the agents' work, to keep more executions in flight."""

    def ms(n: int) -> int:
        return int(n * slow)

    def _node(node_id: str, *deps: str, **config: Any) -> dict[str, Any]:
        config.setdefault("timeout", 30 * max(1.0, slow / 4))
        return _plain_node(node_id, *deps, **config)

    return [
        _flow("chaos_chain", 2, _node("a", delay_ms=ms(900)), _node("b", "a", delay_ms=ms(900)),
              _node("c", "b", delay_ms=ms(900))),
        _flow("chaos_fanout", 3, _node("a", delay_ms=ms(400)),
              *[_node(f"b{i}", "a", delay_ms=ms(500 * i)) for i in (1, 2, 3)],
              _node("c", "b1", "b2", "b3")),
        _flow("chaos_http", 2, _node("a", agent=HTTP_AGENT, delay_ms=ms(800)),
              _node("b", "a", agent=HTTP_AGENT, delay_ms=ms(600))),
        _flow("chaos_flaky", 1, _node("a", fail_times=1, retry_backoff=0.2),
              _node("b", "a", delay_ms=ms(600))),
        _flow("chaos_failing", 5, _node("a", delay_ms=ms(600)),
              _node("b", "a", fail=True, retries=1, retry_backoff=0.2)),
    ]  # fmt: skip


#: (flow_id, weight, input_data)
MIX: list[tuple[str, int, dict[str, Any]]] = [
    ("echo_chain", 2, {"x": 1}),
    ("parallel_research", 1, {"topic": "chaos"}),
    ("conditional_review", 1, APPLICANT),
    ("chaos_chain", 4, {"x": 2}),
    ("chaos_fanout", 3, {"x": 3}),
    ("chaos_http", 2, {"x": 4}),
    ("chaos_flaky", 1, {"x": 5}),
    ("chaos_failing", 1, {"x": 6}),
]


@dataclass
class ChaosOptions:
    executions: int = 300
    seed: int | None = None
    users: int = 4
    cancel_share: float = 0.1
    slow: float = 1.0  # scales the delays of the API flows' agents
    first_wave: float = 0.0  # share of the executions submitted before the first action
    victims: tuple[str, ...] = tuple(VICTIMS)
    broker_restart: bool = True
    #: seconds between an action (kill, broker restart) and the next one, drawn uniformly
    gap: tuple[float, float] = (2.0, 8.0)
    #: how long to wait for every execution to end after the last action
    settle_timeout: float = 300.0
    partitions: int = 2
    infra_script: Path = field(
        default_factory=lambda: Path(
            os.environ.get("SPINE_CHAOS_INFRA", str(ROOT / "scripts" / "infra.sh"))
        )
    )
    progress: Callable[[str], None] = print


@dataclass
class ChaosReport:
    executions: int = 0  # accepted by the gateway (200)
    started: int = 0  # ExecutionStarted on the log (incl. withdrawn ones)
    kills: int = 0
    broker_restarts: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    balance_errors: list[str] = field(default_factory=list)
    projection_errors: list[str] = field(default_factory=list)
    projections: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the run itself went wrong
    outcomes: Counter[str] = field(default_factory=Counter)
    responses: Counter[str] = field(default_factory=Counter)
    actions: list[str] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)  # exits by themselves, restarted
    dispatches: int = 0
    peak_in_flight: int = 0
    tasks: int = 0
    withdrawn: int = 0
    cancels: int = 0
    seed: int = 0
    took_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.balance_errors
            or self.projection_errors
            or self.problems
        )

    def summary(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return (
            f"chaos: executions {self.executions}, kills {self.kills}, "
            f"broker restarts {self.broker_restarts}, restarted after exit {len(self.exits)}, "
            f"lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, balance errors {len(self.balance_errors)}, "
            f"projection errors {len(self.projection_errors)} "
            f"({outcomes}; at most {self.peak_in_flight} in flight; "
            f"{self.cancels} cancel requests, {self.withdrawn} reservations withdrawn, "
            f"{self.dispatches} dispatches; seed {self.seed}; "
            f"{self.took_s:.0f}s)"
        )

    def details(self) -> str:
        lines = [self.summary(), "actions: " + "; ".join(self.actions)]
        answers = sorted(self.responses.items())
        lines.append("responses: " + ", ".join(f"{k} {v}" for k, v in answers))
        lines += [f"projection: {p}" for p in self.projections]
        lines += [f"exit: {e}" for e in self.exits]
        for name in ("problems", "lost", "duplicated", "balance_errors", "projection_errors"):
            items = getattr(self, name)
            if items:
                lines.append(f"{name}: " + "; ".join(items[:20]))
        return "\n".join(lines)


class ChaosStack(Stack):
    """The harness's stack, with restartable processes (each generation its own instance id)
    and a view of the liveness beats, to await a restarted process."""

    def __init__(self, kafka: KafkaConfig, env: dict[str, str]) -> None:
        super().__init__(kafka, env)
        self.pids: set[int] = set()  # processes that sent a service heartbeat
        self.agent_instances: set[str] = set()
        self.started: dict[str, ExecutionStarted] = {}
        self.ended: dict[str, Message] = {}
        self.generation: Counter[str] = Counter()
        self.killed: set[int] = set()  # pids this run killed on purpose
        self.exits: list[tuple[str, int, float]] = []  # (name, returncode, when): by itself
        self.stopping = False
        self.peak = 0  # most executions in flight at once
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self, *names: str, extra_env: dict[str, str] | None = None) -> None:
        for spec, apply in (
            (topics.SERVICE_HEARTBEATS, self._on_beat),
            (topics.REGISTRY_HEARTBEATS, self._on_beat),
        ):
            follower = TopicFollower(
                self.kafka, self.kafka.topic(spec), apply, start="end", name=f"chaos-{spec.base}"
            )
            await follower.start()
            self._followers.append(follower)
        await super().start(*names, extra_env=extra_env)

    async def spawn(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        gen = self.generation[name]
        self.generation[name] += 1
        command = COMMANDS.get(name, [name])
        env = {**self.env, **(extra_env or {}), "SPINE_INSTANCE_ID": f"chaos-{name}-{gen}"}
        env = await self.identity(name, env)
        log = self.logs / f"test-{self.kafka.prefix}{name}.log"
        self.procs[name] = await spawn(
            Path(sys.executable).parent / command[0], *command[1:], env=env, log=log, cwd=ROOT
        )
        self._watchers.append(asyncio.create_task(self._supervise(name, self.procs[name])))

    async def _supervise(self, name: str, proc: asyncio.subprocess.Process) -> None:
        """What the deployment's ``restart: unless-stopped`` does: a process that exits by
        itself (not killed by this run, not stopped) is started again, and recorded."""
        returncode = await proc.wait()
        if self.stopping or proc.pid in self.killed or self.procs.get(name) is not proc:
            return
        self.exits.append((name, returncode, time.monotonic()))
        if sum(1 for n, _, _ in self.exits if n == name) <= 20:
            await asyncio.sleep(1.0)  # a supervisor's restart back-off
            if not self.stopping:
                await self.spawn(name)

    def instance(self, name: str) -> str:
        return f"chaos-{name}-{self.generation[name] - 1}"

    async def stop(self) -> None:
        self.stopping = True
        await super().stop()
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def _on_event(self, message: Message, record: Any) -> None:
        eid = str(message.data.execution_id)  # type: ignore[attr-defined]
        if isinstance(message, ExecutionStarted):
            self.started.setdefault(eid, message)
        elif isinstance(message, TERMINAL):
            self.ended.setdefault(eid, message)
        self.peak = max(self.peak, len(self.started) - len(self.ended))
        async with self._changed:
            self._changed.notify_all()

    async def _on_beat(self, message: Message, _record: Any) -> None:
        if isinstance(message, ServiceHeartbeat):
            self.pids.add(message.data.pid)
        elif isinstance(message, AgentHeartbeat):
            self.agent_instances.add(message.data.instance_id)
        else:
            return
        async with self._changed:
            self._changed.notify_all()

    async def up(self, name: str, within: float = 120.0) -> None:
        """Wait until the current process of ``name`` beats (an agent: its agent beat)."""
        if name == HTTP_AGENT:
            return  # no beats of its own: the relay's probe makes it active (setup awaits it)
        if name in AGENTS:
            await self.wait_for(lambda: self.instance(name) in self.agent_instances, within)
        else:
            await self.wait_for(lambda: self.procs[name].pid in self.pids, within)

    def exited(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.returncode is not None]


class Client:
    """What a user of the published SDK does: retries a 5xx or a broken connection with the
    same Idempotency-Key; a reservation withdrawn after a 503 needs a new request."""

    def __init__(self, base: str, report: ChaosReport, rng: random.Random) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=40.0)
        self.report = report
        self.rng = rng

    async def close(self) -> None:
        await self.http.aclose()

    async def call(
        self, method: str, path: str, *, key: str, within: float = 300.0, **kw: Any
    ) -> httpx.Response:
        """The first answer that is not a 5xx, 429 or broken connection (retried)."""
        deadline = time.monotonic() + within
        delay = 0.2
        headers = {"Authorization": f"Bearer {key}", **kw.pop("extra_headers", {})}
        while True:
            try:
                r = await self.http.request(method, path, headers=headers, **kw)
                self.report.responses[str(r.status_code)] += 1
                if r.status_code < 500 and r.status_code != 429:
                    return r
            except httpx.TransportError as exc:
                self.report.responses[type(exc).__name__] += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path}: no answer within {within}s")
            await asyncio.sleep(delay * (0.5 + self.rng.random()))  # a client's back-off
            delay = min(delay * 2, 3.0)


@dataclass
class User:
    user_id: str
    key: str
    start: int


class Chaos:
    def __init__(self, kafka: KafkaConfig, infra: dict[str, str], options: ChaosOptions) -> None:
        self.options = options
        self.infra = infra
        seed = options.seed if options.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(seed)
        self.report = ChaosReport(seed=seed)
        prefix = f"chaos{uuid.uuid4().hex[:8]}."
        self.kafka = KafkaConfig(
            bootstrap_servers=kafka.bootstrap_servers,
            prefix=prefix,
            partitions=options.partitions,
            client_id="spine-chaos",
            security=kafka.security,
        )
        self.port = _free_port()
        env, self.schemas = _stack_env(self.kafka, infra, prefix, self.port)
        env.update(
            {
                "SPINE_METRICS_PORT": str(_free_port()),
                "SPINE_METRICS_SUMMARY_INTERVAL": "1",
                "SPINE_RELAY_PROBE_INTERVAL": "1",
                "SPINE_RELAY_BACKOFF": "0.2",
                "SPINE_RELAY_MAX_BACKOFF": "2",
                # A broker restart silences every beat for a while: this run is about crash
                # safety, not about liveness verdicts, so agents are not judged inactive.
                "SPINE_REGISTRY_HEARTBEAT_TTL": "120",
                "SPINE_GATEWAY_REPLY_TIMEOUT": "6",
                "ECHO_HTTP_PORT": str(_free_port()),
                "ECHO_HTTP_AGENT_ID": HTTP_AGENT,
                # the relay's SSRF guard refuses loopback unless allowed (echo-http is local)
                "SPINE_RELAY_ALLOWED_NETWORKS": "127.0.0.1/32",
            }
        )
        self.stack = ChaosStack(self.kafka, env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = Client(self.base, self.report, self.rng)
        self.users: list[User] = []
        self.accepted: dict[str, tuple[str, User]] = {}  # execution_id -> (flow_id, user)
        self.submitted = 0
        self._deck: list[tuple[str, int, dict[str, Any]]] = []  # the mix, each flow once
        self._tasks: set[asyncio.Task[Any]] = set()
        self._restarts: list[asyncio.Task[None]] = []
        self.broker_down = (float("inf"), float("inf"))

    def say(self, text: str) -> None:
        self.options.progress(f"[chaos {time.monotonic() - self._t0:6.1f}s] {text}")

    # --- set-up ------------------------------------------------------------------------
    async def setup(self) -> None:
        await ensure_topics(self.kafka, agent_ids=AGENTS)
        await self.stack.start(*SERVICES, *AGENTS)
        await self.wait_http()
        async with asyncio.timeout(120):
            for name in (*SERVICES, *AGENTS):
                await self.stack.up(name)
        master = MASTER
        for i in range(self.options.users):
            credits = 6 * self.options.executions // self.options.users + 50 + i
            r = await self.client.call(
                "POST", "/api/v1/users/create", key=master,
                json={"email": f"chaos{i}-{uuid.uuid4().hex[:6]}@example.com", "name": f"c{i}",
                      "credits": credits, "rate_limit": 100_000},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            body = r.json()
            self.users.append(User(body["user_id"], body["api_key"], int(body["credits"])))
        key = self.users[0].key
        # the shared flows and the HTTP agent are system ones: every user runs them
        r = await self.client.call(
            "POST", "/api/v1/agents", key=master,
            json={"agent_id": HTTP_AGENT, "name": "Echo over HTTP", "transport": "http",
                  "endpoint": f"http://127.0.0.1:{self.stack.env['ECHO_HTTP_PORT']}",
                  "capabilities": ["echo"]},
        )  # fmt: skip
        assert r.status_code in (200, 201, 202), r.text
        for flow in api_flows(self.options.slow):
            r = await self.client.call("POST", "/api/v1/flows", key=master, json=flow)
            assert r.status_code in (200, 201), r.text
        await self.stack.agents_active(*AGENTS, timeout=120)
        async with asyncio.timeout(120):
            wanted = {flow_id for flow_id, _, _ in MIX}
            while True:  # the repository's flows arrive from the orchestrator's loader
                r = await self.client.call("GET", "/api/v1/flows", key=key)
                if wanted <= {f["flow_id"] for f in r.json()["flows"]}:
                    break
                await asyncio.sleep(0.3)

    async def wait_http(self, within: float = 120.0) -> None:
        async with asyncio.timeout(within):  # a port has no event to await
            while True:
                try:
                    if (await self.client.http.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)

    # --- load --------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def submit_many(self, count: int, spread_s: float) -> None:
        """Submit ``count`` executions over about ``spread_s`` seconds (not awaiting them)."""
        weights = [w for _, w, _ in MIX]
        for _ in range(count):
            # every flow of the mix at least once (in a random order), then by weight: a run
            # without a failing or flaky execution would not prove refunds and retries
            if self.submitted < len(MIX):
                if self.submitted == 0:
                    self._deck = self.rng.sample(MIX, len(MIX))
                flow_id, _, input_data = self._deck[self.submitted]
            else:
                flow_id, _, input_data = self.rng.choices(MIX, weights)[0]
            user = self.rng.choice(self.users)
            self.submitted += 1
            self._spawn(self.submit(self.submitted, flow_id, input_data, user))
            await asyncio.sleep(spread_s / max(count, 1) * 2 * self.rng.random())

    async def submit(self, n: int, flow_id: str, input_data: dict[str, Any], user: User) -> None:
        generation = 0
        try:
            while True:
                r = await self.client.call(
                    "POST", "/api/v1/flows/execute", key=user.key,
                    json={"flow_id": flow_id, "input_data": input_data},
                    extra_headers={"Idempotency-Key": f"chaos-{n}-{generation}"},
                )  # fmt: skip
                if r.status_code == 200:
                    eid = r.json()["execution_id"]
                    self.accepted[eid] = (flow_id, user)
                    # the first of each flow runs to its end (see submit_many); later ones
                    # are cancelled at random
                    if n > len(MIX) and self.rng.random() < self.options.cancel_share:
                        await asyncio.sleep(self.rng.uniform(0.1, 3.0 * self.options.slow))
                        await self.cancel(eid, user)
                    return
                code = r.json().get("error_code") if r.content else None
                if r.status_code == 409 and code == "RESERVATION_WITHDRAWN":
                    generation += 1  # withdrawn after a 503: that one was cancelled; anew
                    continue
                if r.status_code == 409 and code == "IDEMPOTENCY_KEY_IN_USE":
                    await asyncio.sleep(0.5)
                    continue
                self.report.problems.append(
                    f"execute #{n} {flow_id}: {r.status_code} {r.text[:200]}"
                )
                return
        except TimeoutError as exc:
            self.report.problems.append(f"execute #{n} {flow_id}: {exc}")

    async def cancel(self, eid: str, user: User) -> None:
        self.report.cancels += 1
        r = await self.client.call(
            "POST", f"/api/v1/executions/{eid}/cancel", key=user.key,
            extra_headers={"Idempotency-Key": f"cancel-{eid}"},
        )  # fmt: skip
        if r.status_code not in (200, 409):
            self.report.problems.append(f"cancel {eid}: {r.status_code} {r.text[:200]}")

    # --- chaos -------------------------------------------------------------------------
    async def kill(self, victim: str) -> None:
        name = VICTIMS[victim]
        proc = self.stack.procs[name]
        if proc.returncode is not None:
            self.report.problems.append(f"{victim} had exited ({proc.returncode}) before its kill")
        else:
            self.stack.killed.add(proc.pid)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        self.report.kills += 1
        await self.stack.spawn(name)
        self.say(
            f"killed -9 {victim} (pid {proc.pid}) and restarted it; {self.in_flight()} in flight"
        )
        # The next action does not wait for this one to be back: kills may overlap.
        self._restarts.append(asyncio.create_task(self._back(victim, name, time.monotonic())))

    async def _back(self, victim: str, name: str, t0: float) -> None:
        try:
            await self.stack.up(name)
            if victim == "gateway":
                await self.wait_http()
        except TimeoutError:
            self.report.problems.append(f"{victim} did not come back after its kill")
            return
        took = time.monotonic() - t0
        self.report.actions.append(f"kill -9 {victim} (back in {took:.1f}s)")
        self.say(f"{victim} is back after {took:.1f}s")

    async def restart_broker(self) -> None:
        t0 = time.monotonic()
        self.say("restarting the Kafka broker")
        self.broker_down = (t0, float("inf"))
        proc = await asyncio.create_subprocess_exec(
            "bash", str(self.options.infra_script), "kafka-restart",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()  # infra.sh waits (bounded) for readiness
        if proc.returncode != 0:
            self.report.problems.append(
                f"broker restart failed ({proc.returncode}): {out.decode()[-800:]}"
            )
            return
        self.report.broker_restarts += 1
        self.broker_down = (t0, time.monotonic())
        took = time.monotonic() - t0
        self.report.actions.append(f"broker restart ({took:.1f}s)")
        self.say(f"Kafka broker restarted in {took:.1f}s; {self.in_flight()} in flight")

    def judge_exits(self) -> None:
        """A process that exited by itself while the broker was away (it cannot start
        without one: it exits, its supervisor starts it again) is expected; any other
        exit is a crash this run found."""
        lo, hi = self.broker_down
        for name, returncode, when in self.stack.exits:
            what = f"{name} exited by itself (code {returncode}) at {when - self._t0:.0f}s"
            if lo <= when <= hi + 20:
                self.report.exits.append(f"{what}, the broker being away: restarted")
            else:
                self.report.problems.append(what)

    def in_flight(self) -> int:
        return sum(1 for eid in self.stack.started if eid not in self.stack.ended)

    async def run_actions(self) -> None:
        actions: list[str] = list(self.options.victims)
        self.rng.shuffle(actions)
        if self.options.broker_restart:
            actions.insert(self.rng.randrange(len(actions) + 1), "kafka")
        first = int(self.options.executions * self.options.first_wave)
        chunk = (self.options.executions - first) // (len(actions) + 1)
        lo, hi = self.options.gap
        if first:
            await self.submit_many(first, lo)
        # One wave of executions per action, submitted while the action comes at a random
        # moment; the last wave after the last action.
        for action in actions:
            submitting = asyncio.create_task(self.submit_many(chunk, hi))
            await asyncio.sleep(self.rng.uniform(lo, hi))  # a random moment
            if action == "kafka":
                await self.restart_broker()
            else:
                await self.kill(action)
            await submitting
        await self.submit_many(self.options.executions - self.submitted, lo)
        await asyncio.gather(*self._restarts)

    async def wait_all(self) -> None:
        """Every submission answered, every started or accepted execution ended."""
        self.say(f"waiting for {len(self._tasks)} requests and {self.in_flight()} executions")
        try:
            async with asyncio.timeout(self.options.settle_timeout):
                while self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
                ids = set(self.accepted)
                await self.stack.wait_for(
                    lambda: (
                        ids <= set(self.stack.started)
                        and set(self.stack.started) <= set(self.stack.ended)
                    ),
                    self.options.settle_timeout,
                )
        except TimeoutError:
            self.report.problems.append(
                f"not everything ended within {self.options.settle_timeout}s "
                f"({self.in_flight()} in flight)"
            )

    # --- checks ------------------------------------------------------------------------
    async def read_log(self, spec: topics.TopicSpec | str) -> list[Message]:
        topic = spec if isinstance(spec, str) else self.kafka.topic(spec)
        found: list[Message] = []
        for partition in await partitions_of(self.kafka, topic):
            async for records in read_partition(self.kafka, topic, partition):
                found += [decode_record(r, self.kafka.prefix) for r in records if r.value]
        return found

    async def check_log(self) -> dict[str, int]:
        """Terminal states and dispatches from the logs; returns each execution's charge."""
        events = await self.read_log(topics.EXECUTION_EVENTS)
        started: dict[str, ExecutionStarted] = {}
        terminal: dict[str, list[Message]] = defaultdict(list)
        dispatched: Counter[tuple[str, str, int]] = Counter()
        worked: set[str] = set()  # executions where an agent node completed
        agent_nodes: dict[str, set[str]] = {}
        for m in events:
            d: Any = m.data
            eid = str(d.execution_id)
            if isinstance(m, ExecutionStarted):
                started[eid] = m
                agent_nodes[eid] = {n.id for n in d.flow.nodes if n.agent_id is not None}
            elif isinstance(m, TERMINAL):
                terminal[eid].append(m)
            elif isinstance(m, NodeDispatched):
                dispatched[(eid, d.node_id, d.attempt)] += 1
            elif isinstance(m, NodeCompleted) and eid not in terminal:
                if d.agent_id is not None or d.node_id in agent_nodes.get(eid, ()):
                    worked.add(eid)
        r = self.report
        r.started = len(started)
        r.dispatches = sum(dispatched.values())
        for eid in set(self.accepted) | set(started):
            ends = terminal.get(eid, [])
            if eid not in started:
                r.lost.append(f"{eid}: accepted, never started")
            elif not ends:
                r.lost.append(f"{eid}: {started[eid].data.flow_id} never ended")
            elif len(ends) > 1:
                r.duplicated.append(f"{eid}: {len(ends)} terminal events {[e.type for e in ends]}")
        for eid in terminal:
            if eid not in started:
                r.duplicated.append(f"{eid}: ended without a start")
        for (eid, node, attempt), n in dispatched.items():
            if n > 1:
                r.duplicated.append(f"{eid}/{node}/{attempt} dispatched {n} times")
        # The agents' task topics: each (execution, node, attempt) once there too.
        tasks: Counter[tuple[str, str, int]] = Counter()
        for agent in AGENTS:
            for m in await self.read_log(self.kafka.agent_tasks(agent)):
                if isinstance(m, AgentMessage):
                    tasks[(str(m.data.execution_id), m.data.node_id, m.data.attempt)] += 1
        r.tasks = sum(tasks.values())
        for k, n in tasks.items():
            if n > 1:
                r.duplicated.append(f"task {'/'.join(map(str, k))} on its topic {n} times")
        if set(tasks) != set(dispatched):
            r.duplicated.append(
                f"task topics and NodeDispatched differ: {len(set(tasks) ^ set(dispatched))} keys"
            )
        # The documented charge of each execution (docs/credits.md).
        charges: dict[str, int] = {}
        for eid, start in started.items():
            ends = terminal.get(eid)
            if not ends:
                continue
            outcome = OUTCOME[type(ends[0])]
            r.outcomes[outcome] += 1
            cost = start.data.flow.cost
            if outcome == "completed" or (outcome == "cancelled" and eid in worked):
                charges[eid] = cost
            else:
                charges[eid] = 0
        return charges

    async def check_balances(self, charges: dict[str, int]) -> None:
        events = await self.read_log(topics.AUTH_EVENTS)
        owner: dict[str, str] = {}
        withdrawn: set[str] = set()
        settled: dict[str, int] = {}
        last_balance: dict[str, int] = {}
        for m in events:
            d: Any = m.data
            if isinstance(m, CreditsReserved):
                owner[d.execution_id] = d.user_id
            elif isinstance(m, ReservationWithdrawn):
                withdrawn.add(d.execution_id)
            elif isinstance(m, CreditsSettled):
                settled[d.execution_id] = d.charged
            if hasattr(d, "balance") and hasattr(d, "user_id"):
                last_balance[d.user_id] = d.balance
        self.report.withdrawn = len(withdrawn)
        expected = {u.user_id: u.start for u in self.users}
        for eid, uid in owner.items():
            if eid in withdrawn:  # a withdrawn reservation pays nothing, whatever came later
                continue
            charge = charges.get(eid)
            if charge is None:
                self.report.balance_errors.append(f"{eid}: reserved, execution never ended")
                continue
            expected[uid] -= charge
            if settled.get(eid) != charge:
                self.report.balance_errors.append(
                    f"{eid}: policy charges {charge}, auth settled {settled.get(eid)}"
                )
        conn = await asyncpg.connect(self.infra["DATABASE_URL"])
        try:
            schema = self.schemas["auth"]
            rows = await conn.fetch(f'SELECT user_id, balance FROM "{schema}".users')
            projected = {r["user_id"]: r["balance"] for r in rows}
        finally:
            await conn.close()
        for user in self.users:
            want = expected[user.user_id]
            shown = await self.gateway_balance(user, want)
            for where, got in (
                ("the gateway", shown),
                ("auth's projection", projected.get(user.user_id)),
                ("auth's last event", last_balance.get(user.user_id)),
            ):
                if got != want:
                    self.report.balance_errors.append(
                        f"{user.user_id}: {where} shows {got}, policy says {want} "
                        f"(start {user.start})"
                    )

    async def gateway_balance(self, user: User, want: int, within: float = 60.0) -> int | None:
        """The balance the gateway shows once its projection caught up with auth."""
        got = None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            r = await self.client.call("GET", f"/api/v1/users/{user.user_id}", key=MASTER)
            got = r.json().get("credits") if r.status_code == 200 else None
            if got == want:
                return got
            await asyncio.sleep(0.3)  # a projection's progress over HTTP: polled, bounded
        return got

    async def check_projections(self) -> None:
        db = self.infra["DATABASE_URL"]
        schemas = {"orchestrator": "orc", "registry": "reg", "auth": "auth", "gateway": "gw"}
        for target, short in schemas.items():
            schema = self.schemas[short]
            projections = TARGETS[target].load_projections()
            try:
                report = await rebuild_schema(self.kafka, db, schema, projections, swap=False)
                self.report.projections.append(f"{target}: {report.summary()}")
            except RebuildMismatch as exc:
                self.report.projection_errors.append(f"{target}: {exc.report.summary()}")
            except RebuildError as exc:
                self.report.projection_errors.append(f"{target}: {exc}")

    # --- the whole run -----------------------------------------------------------------
    async def run(self) -> ChaosReport:
        self._t0 = time.monotonic()
        o = self.options
        self.say(
            f"{o.executions} executions, seed {self.report.seed}, prefix {self.kafka.prefix} "
            f"(logs .spine/logs/test-{self.kafka.prefix}*.log)"
        )
        try:
            await self.setup()
            self.say(f"stack up; {len(self.users)} users, flows {[f for f, _, _ in MIX]}")
            watch = asyncio.create_task(self._progress())
            try:
                await self.run_actions()
                await self.wait_all()
            finally:
                watch.cancel()
            self.report.executions = len(self.accepted)
            self.report.peak_in_flight = self.stack.peak
            self.say(f"all ended: {len(self.accepted)} accepted; checking the logs")
            charges = await self.check_log()
            await self.check_balances(charges)
            self.say("checking every projection against its rebuild")
            await self.check_projections()
            self.judge_exits()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.client.close()
            await self.stack.stop()
            await self.cleanup()
        self.report.took_s = time.monotonic() - self._t0
        return self.report

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(10)
            self.say(
                f"submitted {self.submitted}, accepted {len(self.accepted)}, "
                f"started {len(self.stack.started)}, ended {len(self.stack.ended)}, "
                f"in flight {self.in_flight()}"
            )

    async def cleanup(self) -> None:
        conn = await asyncpg.connect(self.infra["DATABASE_URL"])
        try:
            base = self.kafka.prefix.strip(".")
            for schema in (*self.schemas.values(), f"{base}_gwdev"):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema[:55]}_rebuild" CASCADE')
        finally:
            await conn.close()
        await delete_topics_with_prefix(self.kafka, self.kafka.prefix)
        await revoke_test_principals(self.kafka)


async def run_chaos(
    kafka: KafkaConfig, infra: dict[str, str], options: ChaosOptions
) -> ChaosReport:
    return await Chaos(kafka, infra, options).run()


def _infra() -> dict[str, str]:
    """The endpoints ``scripts/infra.sh up`` (idempotent) reports, like the tests' conftest;
    all three given in the environment: those, as they are. The Kafka security variables
    that are set come along."""
    names = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")
    security = {n: os.environ[n] for n in SECURITY_ENV if os.environ.get(n)}
    if all(os.environ.get(n) for n in names):
        return {n: os.environ[n] for n in names} | security
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra.sh"), "up"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"chaos: infrastructure did not start:\n{result.stderr[-3000:]}")
    values: dict[str, str] = {}
    for line in (ROOT / ".spine" / "infra.env").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    for name in names:
        values[name] = os.environ.get(name) or values[name]
    return values | security


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--gap", type=float, nargs=2, default=(3.0, 12.0), metavar=("MIN", "MAX"),
                        help="seconds between two actions, drawn uniformly")  # fmt: skip
    parser.add_argument(
        "--first-wave",
        type=float,
        default=0.33,
        help="share of the executions submitted before the first kill",
    )
    parser.add_argument("--slow", type=float, default=30.0,
                        help="scale the agents' work in the API flows")  # fmt: skip
    parser.add_argument("--no-broker-restart", action="store_true")
    args = parser.parse_args(argv)
    infra = _infra()
    kafka = KafkaConfig(
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], security=KafkaSecurity.from_env(infra)
    )
    options = ChaosOptions(
        executions=args.executions,
        seed=args.seed,
        users=args.users,
        gap=tuple(args.gap),
        broker_restart=not args.no_broker_restart,
        slow=args.slow,
        first_wave=args.first_wave,
        settle_timeout=420.0,
        progress=lambda s: print(s, flush=True),
    )
    report = asyncio.run(run_chaos(kafka, infra, options))
    print(report.details(), flush=True)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
