"""AI Spine as `make up` runs it, driven through the gateway's HTTP API only.

* latency: one execution at a time, by aiohttp over keep-alive connections —
  ``POST /api/v1/flows/execute``, then
  ``GET /api/v1/executions/{id}/stream`` until the terminal SSE event; the figure is the
  time from sending the POST to reading that event (the POST's own answer time is kept too);
* throughput: ``n`` executions submitted at once by one async aiohttp client with a bounded
  connection pool (httpx cost ~7× its client CPU per request: a fifth of the machine).
  Completion is read from the execution events topic by a group-less ``read_committed``
  consumer that started at the topic's end before the first request: it
  sees the committed ``execution.completed`` record of every execution, without adding
  thousands of SSE streams to the gateway's work. Executions/s = completed / (first request
  sent → last completion seen). Every accepted execution must be seen terminal ("lost"
  counts those that are not, within the deadline).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import yaml
from aiokafka import TopicPartition
from spine_kafka.clients import KafkaConfig, make_consumer

from .checks import Tally
from .common import FLOW_IDS, WARMUP, Latency, Throughput, Tick, no_tick, out_of_time

TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}
INPUT = {"text": "hello", "n": 1}
#: the bench user's limits: above the largest phase (a batch of thousands at once)
BENCH_MAX_IN_FLIGHT = 1_000_000
BENCH_MAX_QUEUED = 1_000_000


class SpineUnavailable(RuntimeError):
    """The stack does not answer as `make up` leaves it."""


def _execute_body(flow_id: str) -> dict[str, Any]:
    return {"flow_id": flow_id, "input_data": INPUT, "metadata": {"bench": True}}


class SpineClient:
    def __init__(self, base_url: str, master_key: str, *, pool: int = 100) -> None:
        self.base_url = base_url.rstrip("/")
        self.master_key = master_key
        self.pool = pool
        self.user_key = ""
        self.user_id = ""
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            # keepalive_expiry below uvicorn's 5 s keep-alive: never reuse a connection the
            # server is closing (that race shows up as a ReadError on an unanswered POST)
            limits=httpx.Limits(
                max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=2.0
            ),
            timeout=httpx.Timeout(60.0, pool=None),  # queued requests wait for a connection
        )

    async def close(self) -> None:
        await self.client.aclose()

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.user_key}"}

    async def check(self) -> None:
        try:
            r = await self.client.get("/health", timeout=5)
        except httpx.HTTPError as exc:
            raise SpineUnavailable(
                f"the gateway does not answer on {self.base_url} ({type(exc).__name__}); "
                "run `make up` first (and check .spine/logs/gateway.log)"
            ) from exc
        if r.status_code != 200:
            raise SpineUnavailable(f"{self.base_url}/health answered {r.status_code}: {r.text}")

    async def create_user(
        self, credits: int = 10_000_000, max_in_flight: int = BENCH_MAX_IN_FLIGHT
    ) -> int:
        """A fresh bench user with enough credits, a rate limit no bench reaches, and limits
        (DESIGN §16) above its largest phase: the per-user queue is not what is measured."""
        tag = uuid.uuid4().hex[:10]
        r = await self.client.post(
            "/api/v1/users/create",
            json={
                "email": f"bench-{tag}@bench.invalid",
                "name": "bench",
                "organization": "bench",
                "credits": credits,
                "rate_limit": 2**31 - 1,
                "max_in_flight": max_in_flight,
                "max_queued": BENCH_MAX_QUEUED,
            },
            headers={"Authorization": f"Bearer {self.master_key}"},
        )
        if r.status_code != 201:
            raise SpineUnavailable(f"cannot create the bench user: {r.status_code} {r.text}")
        body = r.json()
        self.user_key, self.user_id = body["api_key"], body["user_id"]
        return int(body["balance"])

    async def ensure_flow(self, flow_id: str, path: Path) -> str:
        """'present' if the gateway knows the flow, else define it from its file ('defined')."""
        r = await self.client.get(f"/api/v1/flows/{flow_id}", headers=self._auth)
        if r.status_code == 200:
            return "present"
        definition = yaml.safe_load(await asyncio.to_thread(path.read_text))
        r = await self.client.post("/api/v1/flows", json=definition, headers=self._auth)
        if r.status_code not in (200, 201):
            raise SpineUnavailable(f"cannot define flow {flow_id}: {r.status_code} {r.text}")
        return "defined"

    async def balance(self) -> int | None:
        r = await self.client.get("/api/v1/users/me", headers=self._auth)
        return r.json().get("balance") if r.status_code == 200 else None

    async def balance_when(self, ok: Callable[[int | None], bool], timeout: float) -> int | None:  # noqa: ASYNC109
        """The balance once ``ok`` holds, or the last one read after ``timeout`` s: refunds
        and settlements reach the gateway's read model a moment after the terminal event,
        and the gateway offers nothing to await, so this polls."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.balance()
            if ok(value) or time.monotonic() >= deadline:
                return value
            await asyncio.sleep(0.2)

    async def add_credits(self, credits: int) -> None:
        """The master key adds credits to the bench user (a test's injected balance error)."""
        r = await self.client.post(
            "/api/v1/users/add-credits",
            json={"user_id": self.user_id, "credits": credits},
            headers={"Authorization": f"Bearer {self.master_key}"},
        )
        if r.status_code != 200:
            raise SpineUnavailable(f"cannot add credits: {r.status_code} {r.text}")

    async def flow(self, flow_id: str) -> dict[str, Any]:
        """The flow as the gateway holds it (its nodes and cost decide the expected output
        and the charge)."""
        r = await self.client.get(f"/api/v1/flows/{flow_id}", headers=self._auth)
        if r.status_code != 200:
            raise SpineUnavailable(f"flow {flow_id}: {r.status_code} {r.text}")
        return dict(r.json())

    def _session(self, limit: int) -> aiohttp.ClientSession:
        """aiohttp, not httpx, for the measured requests: per request it costs the client a
        sixth of the CPU (measured: httpx 17.8 ms per POST), and the client shares the two
        cores with everything it measures."""
        return aiohttp.ClientSession(
            base_url=self.base_url,
            connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=2.0),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=60.0),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    async def _submit(self, session: aiohttp.ClientSession, flow_id: str) -> tuple[int, bytes]:
        async with session.post(
            "/api/v1/flows/execute", json=_execute_body(flow_id), headers=self._auth
        ) as r:
            return r.status, await r.read()

    async def _await_stream(self, session: aiohttp.ClientSession, execution_id: str) -> str:
        """Read the execution's SSE stream until its terminal event; return that event."""
        async with session.get(
            f"/api/v1/executions/{execution_id}/stream", headers=self._auth
        ) as response:
            if response.status != 200:
                return f"http_{response.status}"
            async for raw in response.content:
                if raw.startswith(b"event:"):
                    event = raw[6:].strip().decode()
                    if event in TERMINAL:
                        return event
        return "stream_closed"

    async def _follow_stream(
        self, session: aiohttp.ClientSession, execution_id: str, out: Latency
    ) -> str:
        """The stream's terminal event. A 200 answered with status ``pending`` (the gateway's
        read model did not show the execution in time) can make the stream answer 404 for a
        while: open it again every 0.2 s, and count it (``errors.stream_404_reopened``)."""
        while True:
            event = await self._await_stream(session, execution_id)
            if event != "http_404":
                return event
            out.errors["stream_404_reopened"] = out.errors.get("stream_404_reopened", 0) + 1
            await asyncio.sleep(0.2)

    async def latency(
        self, shape: str, runs: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> Latency:
        flow_id = FLOW_IDS[shape]
        out = Latency([])
        marks: list[tuple[str, float, float, float]] = []  # id, sent, answered, streamed
        async with self._session(limit=2) as session:
            for i in range(WARMUP + runs):
                if out_of_time(deadline):
                    out.truncated = True
                    break
                wall0, t0 = time.time(), time.perf_counter()
                try:
                    status, payload = await self._submit(session, flow_id)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    out.fail(type(exc).__name__)
                    continue
                t_accept = time.perf_counter()
                if status != 200:
                    out.fail(f"http_{status}")
                    continue
                execution_id = orjson.loads(payload)["execution_id"]
                out.executions.add(execution_id)
                try:
                    event = await asyncio.wait_for(
                        self._follow_stream(session, execution_id, out), 60
                    )
                except (TimeoutError, aiohttp.ClientError) as exc:
                    out.fail(f"stream_{type(exc).__name__}")
                    continue
                t_end = time.perf_counter()
                if event != "execution.completed":
                    out.fail(event)
                    continue
                if i >= WARMUP:
                    out.samples_ms.append((t_end - t0) * 1000)
                    out.accepted_ms.append((t_accept - t0) * 1000)
                    marks.append((execution_id, wall0, wall0 + t_accept - t0, wall0 + t_end - t0))
                    tick(1)
        out.breakdown = await self._breakdown(marks)
        return out

    async def _breakdown(self, marks: list[tuple[str, float, float, float]]) -> dict[str, Any]:
        """Where one execution's time goes, from its event trail (``occurred_at`` is set by
        the service that decided the event; every process runs on this machine's clock).

        * ``to_started``: request sent → ``execution.started`` (gateway, auth hop,
          orchestrator hop);
        * ``node_round_trip``: ``node_dispatched`` → ``node_completed`` of one agent node
          (the orchestrator's commit, the agent's consume/produce, the orchestrator's consume);
        * ``completed_to_client``: ``execution.completed`` → the SSE event read by the
          client (the gateway's projection into PostgreSQL, the stream's wake-up and query);
        * ``answered_after_started``: the POST's answer relative to ``execution.started``
          (the answer waits for the gateway's read model to show the execution).
        """
        to_started: list[float] = []
        round_trip: list[float] = []
        to_client: list[float] = []
        answered: list[float] = []
        for execution_id, sent, accepted, streamed in marks:
            r = await self.client.get(
                f"/api/v1/executions/{execution_id}/events", headers=self._auth
            )
            if r.status_code != 200:
                continue
            at: dict[str, float] = {}
            dispatched: dict[str, float] = {}
            for e in r.json()["events"]:
                ts = datetime.fromisoformat(e["occurred_at"]).timestamp()
                kind, node = e["type"], e["data"].get("node_id")
                if kind == "execution.node_dispatched":
                    dispatched[node] = ts
                elif kind == "execution.node_completed" and node in dispatched:
                    round_trip.append((ts - dispatched[node]) * 1000)
                else:
                    at.setdefault(kind, ts)
            if "execution.started" in at and "execution.completed" in at:
                to_started.append((at["execution.started"] - sent) * 1000)
                answered.append((accepted - at["execution.started"]) * 1000)
                to_client.append((streamed - at["execution.completed"]) * 1000)

        def p50(xs: list[float]) -> float | None:
            return round(statistics.median(xs), 1) if xs else None

        return {
            "executions": len(to_started),
            "to_started_p50_ms": p50(to_started),
            "node_round_trip_p50_ms": p50(round_trip),
            "node_round_trips": len(round_trip),
            "completed_to_client_p50_ms": p50(to_client),
            "answered_after_started_p50_ms": p50(answered),
        }

    async def throughput(
        self,
        shape: str,
        n: int,
        observer: SpineObserver,
        tick: Tick = no_tick,
        deadline: float | None = None,
    ) -> tuple[Throughput, Drain]:
        """Submit ``n`` executions at once; measure until all are terminal or ``deadline``.

        Returns the figures and a :class:`Drain` that keeps listening to the observer, so the
        caller can still check, later, that the unfinished ones are not lost.
        """
        flow_id = FLOW_IDS[shape]
        drain = Drain(observer)
        errors: dict[str, int] = {}

        def on_terminal(execution_id: str, kind: str, at: float) -> None:
            drain.terminal[execution_id] = (kind, at)
            if execution_id in drain.accepted:
                tick(1)
                drain.changed.set()

        observer.listeners.append(on_terminal)

        session = self._session(limit=self.pool)
        body = _execute_body(flow_id)

        async def one() -> None:
            try:
                async with session.post(
                    "/api/v1/flows/execute", json=body, headers=self._auth
                ) as r:
                    status, payload = r.status, await r.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if status != 200:
                errors[f"http_{status}"] = errors.get(f"http_{status}", 0) + 1
                return
            eid = orjson.loads(payload)["execution_id"]
            drain.accepted.add(eid)
            if eid in drain.terminal:  # finished before its answer reached us
                tick(1)
                drain.changed.set()

        t0 = time.perf_counter()
        submit = asyncio.gather(*(one() for _ in range(n)))
        drain.submit = submit
        submit.add_done_callback(lambda _f: drain.changed.set())
        submit.add_done_callback(lambda _f: asyncio.ensure_future(session.close()))
        await asyncio.wait({submit}, timeout=_left(deadline))
        t_submit = time.perf_counter()
        await drain.wait(deadline)
        t_stop = time.perf_counter()
        seen = [drain.terminal[e] for e in drain.accepted if e in drain.terminal]
        completed = [at for kind, at in seen if kind == "execution.completed"]
        unfinished = (
            len(drain.accepted)
            - len(seen)
            + (0 if submit.done() else n - len(drain.accepted) - sum(errors.values()))
        )
        figures = Throughput(
            executions=drain.accepted,
            submitted=len(drain.accepted),
            completed=len(completed),
            failed=len(seen) - len(completed) + sum(errors.values()),
            unfinished=unfinished,
            lost=0 if not unfinished else None,
            elapsed_s=(max(at for _, at in seen) if seen and not unfinished else t_stop) - t0,
            submit_s=t_submit - t0,
            errors=errors,
        )
        return figures, drain

    # -- scenarios (bench/scenarios.py) --------------------------------------------------------

    async def one_at_a_time(
        self,
        shape: str,
        *,
        runs: int | None = None,
        stop: asyncio.Event | None = None,
        warmup: int = 0,
        deadline: float | None = None,
    ) -> Latency:
        """Closed loop, as :meth:`latency` (POST, then the SSE stream to the terminal event),
        until ``runs`` were measured, ``stop`` is set or ``deadline`` — a tenant whose next
        execution waits for its previous one. No breakdown; ``warmup`` runs not counted."""
        flow_id = FLOW_IDS[shape]
        out = Latency([], warmup_runs=warmup)
        async with self._session(limit=2) as session:
            i = 0
            while runs is None or len(out.samples_ms) < runs:
                if (stop is not None and stop.is_set()) or out_of_time(deadline):
                    out.truncated = runs is not None
                    break
                i += 1
                t0 = time.perf_counter()
                try:
                    status, payload = await self._submit(session, flow_id)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    out.fail(type(exc).__name__)
                    continue
                t_accept = time.perf_counter()
                if status != 200:
                    out.fail(f"http_{status}")
                    continue
                execution_id = orjson.loads(payload)["execution_id"]
                out.executions.add(execution_id)
                try:
                    event = await asyncio.wait_for(
                        self._follow_stream(session, execution_id, out), 60
                    )
                except (TimeoutError, aiohttp.ClientError) as exc:
                    out.fail(f"stream_{type(exc).__name__}")
                    continue
                if event != "execution.completed":
                    out.fail(event)
                elif i > warmup:
                    out.samples_ms.append((time.perf_counter() - t0) * 1000)
                    out.accepted_ms.append((t_accept - t0) * 1000)
        return out

    async def open_loop(
        self,
        shape: str,
        rate_per_s: float,
        seconds: float,
        observer: SpineObserver,
        deadline: float | None = None,
        tick: Tick = no_tick,
    ) -> tuple[dict[str, tuple[float, float | None]], dict[str, Any]]:
        """Submit ``rate_per_s`` executions a second for ``seconds`` on a fixed schedule
        (submission ``i`` at ``start + i / rate``, whatever the earlier ones are doing), then
        wait until every accepted one is terminal or ``deadline``.

        Returns ``{execution_id: (sent, latency_ms)}`` — ``sent`` in seconds after the
        schedule's start, ``latency_ms`` from the request's issue to the observer reading its
        ``execution.completed`` (``None`` if it did not complete; a wait for a free connection
        of the pool counts, as the system's backlog it is) — and counts like
        :meth:`bench.peer.CeleryPeer.open_loop`'s: submitted, accepted, completed, failed,
        unfinished, late (a send more than 5 ms behind schedule), max_lag_ms, max_in_flight
        (requests awaiting their answer; at the pool's size they queue in the client),
        errors, and ``t0`` (the schedule's start, ``perf_counter``)."""
        body = _execute_body(FLOW_IDS[shape])
        count = max(1, round(rate_per_s * seconds))
        sent: dict[str, float] = {}
        terminal: dict[str, tuple[str, float]] = {}
        errors: dict[str, int] = {}
        answers_ms: list[float] = []  # execute's own answer: request issued → 200 read
        changed = asyncio.Event()
        late, max_lag, in_flight, max_in_flight = 0, 0.0, 0, 0

        def on_terminal(execution_id: str, kind: str, at: float) -> None:
            terminal[execution_id] = (kind, at)
            if execution_id in sent:
                tick(1)
                changed.set()

        async def one(session: aiohttp.ClientSession, t_send: float) -> None:
            nonlocal in_flight, max_in_flight
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
            try:
                async with session.post(
                    "/api/v1/flows/execute", json=body, headers=self._auth
                ) as r:
                    status, payload = r.status, await r.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            finally:
                in_flight -= 1
            if status != 200:
                errors[f"http_{status}"] = errors.get(f"http_{status}", 0) + 1
                return
            answers_ms.append((time.perf_counter() - t_send) * 1000)
            execution_id = orjson.loads(payload)["execution_id"]
            sent[execution_id] = t_send
            if execution_id in terminal:  # finished before its answer reached us
                tick(1)
            changed.set()

        observer.listeners.append(on_terminal)
        tasks: set[asyncio.Task[None]] = set()
        submitted = 0
        start = time.perf_counter() + 0.01
        try:
            async with self._session(limit=self.pool) as session:
                for i in range(count):
                    due = start + i / rate_per_s
                    if (wait := due - time.perf_counter()) > 0:
                        await asyncio.sleep(wait)
                    if out_of_time(deadline):
                        break
                    now = time.perf_counter()
                    late += now - due > 0.005
                    max_lag = max(max_lag, now - due)
                    task = asyncio.create_task(one(session, now))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    submitted += 1
                if tasks:
                    await asyncio.wait(set(tasks), timeout=_left(deadline))
                while not sent.keys() <= terminal.keys() and not out_of_time(deadline):
                    changed.clear()
                    try:
                        await asyncio.wait_for(changed.wait(), _left(deadline))
                    except TimeoutError:
                        break
                for task in list(tasks):  # unanswered at the deadline
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            observer.listeners.remove(on_terminal)
        timeline: dict[str, tuple[float, float | None]] = {}
        for execution_id, t_send in sent.items():
            kind, at = terminal.get(execution_id, (None, 0.0))
            done = kind == "execution.completed"
            timeline[execution_id] = (t_send - start, (at - t_send) * 1000 if done else None)
        ended = [terminal[e][0] for e in sent if e in terminal]
        extra = {
            "answers_ms": answers_ms,
            "submitted": submitted,
            "accepted": len(sent),
            "completed": sum(1 for k in ended if k == "execution.completed"),
            "failed": sum(1 for k in ended if k != "execution.completed") + sum(errors.values()),
            "unfinished": len(sent) - len(ended),
            "late": late,
            "max_lag_ms": round(max_lag * 1000, 2),
            "max_in_flight": max_in_flight,
            "errors": errors,
            "t0": start,
        }
        return timeline, extra


class Drain:
    """The tail of a throughput phase: executions still running when it had to end."""

    def __init__(self, observer: SpineObserver) -> None:
        self.accepted: set[str] = set()
        self.terminal: dict[str, tuple[str, float]] = {}
        self.observer: SpineObserver | None = observer
        self.submit: asyncio.Future[Any] | None = None
        self.changed = asyncio.Event()

    def done(self) -> bool:
        submitted = self.submit is None or self.submit.done()
        return submitted and self.accepted <= self.terminal.keys()

    async def wait(self, deadline: float | None) -> None:
        """Until every submission is answered and every accepted execution is terminal."""
        while not self.done() and not out_of_time(deadline):
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), _left(deadline))
            except TimeoutError:
                return

    async def finish(self, deadline: float | None) -> int:
        """Wait for the rest (until ``deadline``); how many are still not terminal."""
        try:
            await self.wait(deadline)
            if self.submit is not None and not self.submit.done():
                self.submit.cancel()
                await asyncio.gather(self.submit, return_exceptions=True)
            return len(self.accepted - self.terminal.keys())
        finally:
            if self.observer is not None:
                self.observer.listeners.clear()
                self.observer = None


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


Listener = Callable[[str, str, float], None]
STORED = {"agent.message", "agent.result", "execution.node_completed", *TERMINAL}


class SpineObserver:
    """What AI Spine did, read from the bus — the checks' observation points.

    Follows from their end, without a group and ``read_committed``: the execution events
    (terminal events, agent nodes completed), the echo agent's tasks (each record is one
    dispatch of one (execution, node, attempt)) and the agent results (each record is one
    run of a task, counted by its idempotency key). During a phase it only reads headers
    and keeps the records' bytes; :meth:`tally` decodes them afterwards, so the client's
    CPU stays off the measured window as far as it can. ``listeners`` hear every terminal
    event as it arrives (the throughput phase's clock).
    """

    def __init__(self, kafka: KafkaConfig, prefix: str, agent_id: str = "echo") -> None:
        self.topics = [
            f"{prefix}spine.executions.events",
            f"{prefix}spine.agents.{agent_id}.tasks",
            f"{prefix}spine.agents.results",
        ]
        self.consumer = make_consumer(
            kafka,
            group_id=None,
            auto_offset_reset="latest",
            fetch_max_wait_ms=100,
            max_poll_records=2000,
        )
        self.records: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self.first_terminal: dict[str, tuple[str, float]] = {}
        self.listeners: list[Listener] = []
        self._tps: list[TopicPartition] = []
        self._read = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        for topic in self.topics:
            partitions = self.consumer.partitions_for_topic(topic)
            if not partitions:
                await self.consumer._client.force_metadata_update()  # noqa: SLF001
                partitions = self.consumer.partitions_for_topic(topic)
            if not partitions:
                raise SpineUnavailable(f"topic {topic} does not exist")
            self._tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self._tps)
        await self.consumer.seek_to_end(*self._tps)
        for tp in self._tps:  # resolve the positions now: "end" must mean before our first request
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="spine-observer")

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    kind = next(
                        (bytes(v).decode() for k, v in record.headers or () if k == "message-type"),
                        None,
                    )
                    if kind not in STORED or record.key is None:
                        continue
                    execution_id = record.key.decode()
                    self.records[execution_id].append((kind, record.value))
                    if kind in TERMINAL and execution_id not in self.first_terminal:
                        self.first_terminal[execution_id] = (kind, now)
                        for listener in self.listeners:
                            listener(execution_id, kind, now)
            self._read.set()

    async def caught_up(self, timeout: float = 30.0) -> bool:  # noqa: ASYNC109
        """Read to the end: until every partition's position reaches the last stable offset
        taken now (so a duplicate committed before this call is seen)."""
        ends = await self.consumer.end_offsets(self._tps)
        async with asyncio.timeout(timeout):
            while True:
                positions = [await self.consumer.position(tp) for tp in self._tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, self._tps, strict=True)):
                    return True
                self._read.clear()
                await self._read.wait()

    async def wait_terminal(self, ids: set[str], deadline: float | None) -> set[str]:
        """Until each of ``ids`` was seen terminal (or ``deadline``); the ones still not."""
        waiting = ids - self.first_terminal.keys()
        while waiting and not out_of_time(deadline):
            self._read.clear()
            try:
                await asyncio.wait_for(self._read.wait(), _left(deadline))
            except TimeoutError:
                break
            waiting -= self.first_terminal.keys()
        return waiting

    def tally(self, accepted: set[str], keep: set[str] = frozenset()) -> Tally:  # type: ignore[assignment]
        """Decode what was kept for ``accepted`` into a :class:`Tally`; forget everything but
        the executions in ``keep`` (still running: their audit comes later, whole)."""
        out = Tally(accepted=set(accepted) - keep)
        for execution_id in out.accepted:
            for kind, value in self.records.get(execution_id, ()):
                data = orjson.loads(value)["data"]
                if kind == "agent.message":
                    out.dispatches[(execution_id, data["node_id"], data["attempt"])] += 1
                elif kind == "agent.result":
                    out.runs[f"{execution_id}:{data['node_id']}:{data['attempt']}"] += 1
                elif kind == "execution.node_completed":
                    if data.get("agent_id"):
                        out.agent_work.add(execution_id)
                else:
                    out.end(execution_id, kind.removeprefix("execution."), data.get("output_data"))
        for execution_id in list(self.records):
            if execution_id not in keep:
                del self.records[execution_id]
        for execution_id in list(self.first_terminal):
            if execution_id not in keep:
                del self.first_terminal[execution_id]
        return out

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
