"""A Kafka-native agent: one async handler, run concurrently over the agent's tasks topic.

::

    agent = Agent(AgentInfo(agent_id="echo", capabilities=("echo",)), concurrency=32)

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        return {"echo": task.input}

    if __name__ == "__main__":
        agent.run()

What :meth:`Agent.serve` does (docs/agents.md):

* signs everything it publishes with the agent's Ed25519 key (:mod:`.signing`: the file
  ``spine-admin issue-agent`` wrote, ``SPINE_AGENT_SIGNING_KEY_FILE``; or a ``signer``
  handed in, as the relay does with its own key), and stops before it starts without one;
* connects with bounded waits: while the broker is away (restarting, or started together
  with the agent) each start-up step (topic, producer, registration, consumer) is retried
  with a back-off and logged (``kafka_unavailable_retrying``, naming the step) for up to
  ``startup_timeout`` seconds (``SPINE_KAFKA_STARTUP_TIMEOUT``, 120); then it stops with
  :class:`AgentFailed`, so the process exits non-zero and its supervisor starts it again.
  It never hangs on a client that failed to start (closed, never used);
* creates the agent's tasks topic when missing, publishes ``RegisterAgent`` (transport
  ``kafka``, and the ``concurrency`` it takes: the orchestrator keeps no more outstanding)
  and an ``AgentHeartbeat`` every ``heartbeat_interval`` (with ``in_flight``) —
  unless built with ``announce=False``: then someone else speaks for the agent (the
  registry's relay registers nothing and beats from its health probes of an HTTP agent);
* consumes the tasks topic in the group ``<prefix>agent.<agent_id>`` (``read_committed``,
  no auto-commit) and runs up to ``concurrency`` handlers at once. When every slot is
  busy it pauses its partitions and keeps polling, so ``max_poll_interval_ms`` never trips
  and a rebalance is never provoked by a slow handler;
* publishes one ``AgentResult`` per task (keyed by execution_id, caused by the task) and
  waits for the broker's acknowledgement before the task counts as done; a result too
  large for one message (``KafkaConfig.max_value_bytes``, docs/limits.md) is replaced by
  an error result naming its size and the limit, and logged (``result_too_large``), so
  the node fails at once instead of timing out;
* sends what a handler reports with ``await task.progress(...)`` on the progress topic,
  signed, coalesced to about 10 messages a second per node (:mod:`.progress`), in the
  background and outside any transaction; a failed send never fails the task, and the last
  one is acknowledged before the result is published;
* commits only contiguous offsets (:class:`~spine_agent.offsets.OffsetTracker`), every
  ``commit_interval`` at most: a slow task never holds back later tasks from running,
  only from being committed. Delivery is therefore at least once: after a crash or a
  rebalance, tasks after the last committed offset run again, and a handler with side
  effects uses ``task.idempotency_key``;
* ``AgentCancel`` cancels the matching in-flight handlers (and drops matching tasks that
  have not started). A cancelled task publishes **no result**: the orchestrator asked for
  the cancel and has already settled the node; its offset counts as done;
* a task whose ``deadline`` passed before it could start is acknowledged without running
  (the orchestrator has already timed it out) and logged as ``task_expired``;
* a record that does not decode goes to the dead-letter topic and is committed past;
* when ``stopping`` is set (SIGTERM in :meth:`Agent.run`) it stops fetching, lets the
  running handlers finish for up to ``drain_timeout`` seconds (then cancels them, without
  results and without committing them, so another replica runs them again), commits,
  publishes a last heartbeat with ``ready=False`` and closes its clients (the commit and
  the last beat bounded by :data:`SHUTDOWN_STEP_S`: with the broker away they are skipped).

    AgentError
    ├── HandlerMissing   serve() or run() before @agent.handler
    └── AgentFailed      the agent stopped because it could not publish, or could not
                         reach the broker within ``startup_timeout`` (``__cause__``)
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import IllegalStateError, KafkaError, MessageSizeTooLargeError
from spine_contracts import (
    AgentCancel,
    AgentHeartbeat,
    AgentInfo,
    AgentMessage,
    AgentProgress,
    AgentResult,
    ContractError,
    Message,
    RegisterAgent,
    parse_as,
    topics,
    utcnow,
)
from spine_contracts.signing import Signer, SigningKeyError
from spine_kafka import ops
from spine_kafka.aio import run_loop, wait_any
from spine_kafka.clients import (
    KafkaConfig,
    Outgoing,
    dead_letter,
    ensure_topics,
    make_consumer,
    make_producer,
)
from spine_kafka.clients import instance_id as new_instance_id
from spine_kafka.limits import MessageTooLarge, too_large
from spine_kafka.logging import bind, configure_logging, get_logger
from spine_kafka.settings import load_settings

try:  # the ``otel`` extra: without OpenTelemetry installed an agent runs untraced
    from spine_kafka import tracing
except ImportError:
    tracing = None  # type: ignore[assignment]

from . import signing
from .offsets import OffsetTracker
from .progress import Chunk, NodeProgress, Send
from .results import describe_error, result_for
from .settings import AgentSettings
from .task import NeedsInput, Task, TaskFailed

Outcome: TypeAlias = "dict[str, Any] | NeedsInput"
Handler: TypeAlias = Callable[[Task], Awaitable[Outcome]]
Hook: TypeAlias = Callable[[], Awaitable[None]]

log = get_logger("spine_agent")

DEFAULT_HEARTBEAT_S = 5.0
#: Environment that asks for traces (see spine_kafka.tracing), which the otel extra provides
_OTEL_ASKED = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "SPINE_OTEL_FILE",
)
#: Attempts to publish one result before the agent gives up and stops (the task is then
#: not committed, so it runs again after a restart). The producer retries inside each.
PUBLISH_ATTEMPTS = 3
#: How long an agent started while the broker is away keeps trying (SPINE_KAFKA_STARTUP_TIMEOUT)
DEFAULT_STARTUP_TIMEOUT_S = 120.0
#: The longest one start-up step may take before its attempt counts as failed: above
#: aiokafka's request timeouts (30 s producer, 40 s consumer), so their errors come first;
#: an idempotent producer's start otherwise waits for its producer id without bound.
STARTUP_STEP_S = 45.0
#: First pause between two start-up attempts; doubled up to STARTUP_MAX_BACKOFF_S
STARTUP_BACKOFF_S = 0.5
STARTUP_MAX_BACKOFF_S = 5.0
#: Bound of the final commit and of the last heartbeat at shutdown (broker away: skipped,
#: the uncommitted tasks simply run again) and of closing a client that failed to start
SHUTDOWN_STEP_S = 10.0


class AgentError(Exception):
    """Base of the SDK's errors."""


class HandlerMissing(AgentError):
    pass


class AgentFailed(AgentError):
    """The agent stopped on an error it cannot work around; the cause is ``__cause__``."""


@dataclass
class AgentStats:
    """Counters of one :meth:`Agent.serve` run (tests and ``/status``-style introspection)."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    needs_input: int = 0
    cancelled: int = 0
    expired: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    commits: int = 0
    max_in_flight: int = 0
    committed: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass
class _Item:
    tp: TopicPartition
    offset: int
    message: AgentMessage


@dataclass
class _Running:
    item: _Item
    handler_task: asyncio.Task[object] | None = None
    cancel_reason: str | None = None


def _trace_id(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 else None


class Agent:
    """A Kafka-native agent: an :class:`AgentInfo`, a handler and how to run it."""

    def __init__(
        self,
        info: AgentInfo,
        *,
        concurrency: int = 32,
        heartbeat_interval: float | None = None,
        drain_timeout: float = 20.0,
        commit_interval: float = 0.2,
        poll_timeout_ms: int = 100,
        remember_completed: int = 10_000,
        announce: bool = True,
        signer: Signer | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        self.announce = announce
        #: signs what this agent publishes; ``None``: loaded from the key file at serve()
        self.signer = signer
        self.info = (
            info
            if info.transport == "kafka" or not announce
            else info.model_copy(update={"transport": "kafka"})
        )
        self.concurrency = concurrency
        self.heartbeat_interval = heartbeat_interval
        self.drain_timeout = drain_timeout
        self.commit_interval = commit_interval
        self.poll_timeout_ms = poll_timeout_ms
        self.remember_completed = remember_completed
        self._handler: Handler | None = None
        self._on_startup: list[Hook] = []
        self._on_shutdown: list[Hook] = []
        self._worker: _Worker | None = None

    @property
    def agent_id(self) -> str:
        return self.info.agent_id

    def group_id(self, cfg: KafkaConfig) -> str:
        """The consumer group every replica of this agent joins."""
        return f"{cfg.prefix}agent.{self.agent_id}"

    def handler(self, fn: Handler) -> Handler:
        """Decorator: the coroutine function that handles every task."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError("the handler must be an async function (async def)")
        self._handler = fn
        return fn

    def on_startup(self, fn: Hook) -> Hook:
        """Decorator: a coroutine run before the first task (open clients here)."""
        self._on_startup.append(fn)
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        """Decorator: a coroutine run after the last task has finished."""
        self._on_shutdown.append(fn)
        return fn

    @property
    def stats(self) -> AgentStats:
        return self._worker.stats if self._worker is not None else AgentStats()

    @property
    def in_flight(self) -> int:
        return len(self._worker.running) if self._worker is not None else 0

    async def serve(
        self,
        cfg: KafkaConfig,
        stopping: asyncio.Event,
        *,
        instance_id: str | None = None,
        heartbeat_interval: float | None = None,
        concurrency: int | None = None,
        drain_timeout: float | None = None,
        signer: Signer | None = None,
        signing_key_file: Path | None = None,
        startup_timeout: float | None = None,
    ) -> None:
        """Run until ``stopping`` is set, then drain and return (for tests and embedding).

        Signs with ``signer``, else the agent's own, else the key in ``signing_key_file``
        (default ``.spine/agents/<agent_id>/signing-key.pem``); raises
        :class:`~spine_contracts.signing.SigningKeyError` before touching Kafka when there
        is none. Waits up to ``startup_timeout`` seconds (default 120) for an absent broker,
        then raises :class:`AgentFailed`."""
        if self._handler is None:
            raise HandlerMissing(f"agent {self.agent_id!r} has no @agent.handler")
        signer = signer or self.signer
        if signer is None:
            signer = await asyncio.to_thread(signing.load, self.agent_id, signing_key_file)
        worker = _Worker(
            self,
            self._handler,
            cfg,
            stopping,
            instance_id=instance_id or new_instance_id(self.agent_id),
            heartbeat_interval=heartbeat_interval or self.heartbeat_interval or DEFAULT_HEARTBEAT_S,
            concurrency=concurrency or self.concurrency,
            drain_timeout=self.drain_timeout if drain_timeout is None else drain_timeout,
            signer=signer,
            startup_timeout=(
                DEFAULT_STARTUP_TIMEOUT_S if startup_timeout is None else startup_timeout
            ),
        )
        self._worker = worker
        for hook in self._on_startup:
            await hook()
        try:
            await worker.run()
        finally:
            for hook in self._on_shutdown:
                await hook()

    def run(self, settings: AgentSettings | None = None) -> None:
        """Entry point: settings from the environment, logging, serve until SIGTERM/SIGINT."""
        if self._handler is None:
            raise HandlerMissing(f"agent {self.agent_id!r} has no @agent.handler")
        settings = settings or load_settings(AgentSettings)
        configure_logging(self.agent_id, settings.log_level, console=settings.dev_mode or None)
        if tracing is not None:
            tracing.setup(f"agent-{self.agent_id}")
        elif any(os.environ.get(n, "").lower() not in ("", "none") for n in _OTEL_ASKED):
            log.warning("tracing_unavailable", install="spine-agent-sdk[otel]")
        try:
            run_loop(self._main(settings), settings.event_loop)
        except SigningKeyError as exc:
            log.error("agent_signing_key_missing", error=str(exc))
            raise SystemExit(f"{self.agent_id}: {exc}") from None
        except AgentFailed as exc:  # logged where it happened; exit non-zero, no traceback
            raise SystemExit(f"{self.agent_id}: {exc}") from None
        finally:
            if tracing is not None:
                tracing.shutdown()

    async def _main(self, settings: AgentSettings) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        cfg = KafkaConfig.from_settings(settings, client_id=f"agent-{self.agent_id}")
        server: ops.OpsServer | None = None
        if settings.ops_port:
            server = ops.OpsServer(
                f"agent-{self.agent_id}",
                settings.api_host,
                settings.ops_port,
                ready=lambda: bool(self._worker and self._worker.ready and not stopping.is_set()),
            )
            await server.start()
        try:
            await self.serve(
                cfg,
                stopping,
                instance_id=settings.instance_id,
                heartbeat_interval=self.heartbeat_interval or settings.heartbeat_interval_s,
                concurrency=settings.agent_concurrency,
                drain_timeout=settings.agent_drain_timeout_s,
                signing_key_file=settings.signing_key_file,
                startup_timeout=settings.kafka_startup_timeout_s,
            )
        finally:
            if server is not None:
                await server.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: _Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._worker.on_assigned(set(assigned))


class _Worker:
    """The state of one ``serve`` run: clients, offsets, running handlers."""

    def __init__(
        self,
        agent: Agent,
        handler: Handler,
        cfg: KafkaConfig,
        stopping: asyncio.Event,
        *,
        instance_id: str,
        heartbeat_interval: float,
        concurrency: int,
        drain_timeout: float,
        signer: Signer,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        self.agent = agent
        self.signer = signer
        self.handler = handler
        self.cfg = cfg
        self.stopping = stopping
        self.instance_id = instance_id
        self.heartbeat_interval = heartbeat_interval
        self.concurrency = concurrency
        self.drain_timeout = drain_timeout
        self.startup_timeout = startup_timeout
        #: what start-up is doing (logged when it fails): topics, producer, register, consumer
        self.startup_step = ""
        self.agent_id = agent.agent_id
        self.group_id = agent.group_id(cfg)
        self.tasks_topic = cfg.agent_tasks(self.agent_id)
        self.results_topic = cfg.topic(topics.AGENT_RESULTS)
        self.progress_topic = cfg.topic(topics.AGENT_PROGRESS)
        self.stats = AgentStats()
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.backlog: deque[_Item] = deque()
        self.running: dict[asyncio.Task[None], _Running] = {}
        self.by_message: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.aux: set[asyncio.Task[None]] = set()
        self.completed: OrderedDict[uuid.UUID, None] = OrderedDict()
        self.slot_freed = asyncio.Event()
        self.commit_lock = asyncio.Lock()
        self.fatal: BaseException | None = None
        self.ready = False
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._last_commit_check = 0.0
        self._log = log.bind(agent_id=self.agent_id, instance_id=instance_id)

    # --- lifecycle -----------------------------------------------------------------------
    def declared(self) -> AgentInfo:
        """The entry it registers: with the capacity it declares (DESIGN §16), the info's
        ``concurrency`` if set (an agent run as N replicas declares N × concurrency), else
        this process's own."""
        info = self.agent.info
        if info.concurrency is None:
            info = info.model_copy(update={"concurrency": self.concurrency})
        return info

    async def run(self) -> None:
        beats: asyncio.Task[None] | None = None
        try:
            if not await self._connect():
                return  # stopped while waiting for the broker
            self.ready = True
            if self.agent.announce:
                beats = asyncio.create_task(self._heartbeats(), name=f"{self.agent_id}-heartbeats")
            self._log.info(
                "agent_started",
                topic=self.tasks_topic,
                group_id=self.group_id,
                concurrency=self.concurrency,
                key_id=self.signer.key_id,
                kafka_security=self.cfg.security.describe(),
            )
            await self._loop()
        finally:
            self.ready = False
            await self._shutdown(beats)
        if self.fatal is not None:
            raise AgentFailed(f"agent {self.agent_id!r} stopped: {self.fatal!r}") from self.fatal

    async def _connect(self) -> bool:
        """Start the clients and register, retried while the broker is away (a restart, or
        started together with this process) for up to ``startup_timeout`` seconds, then
        :class:`AgentFailed`. ``False``: ``stopping`` was set before it could connect.

        Every step is bounded and a failed attempt closes its clients and starts anew:
        aiokafka waits without end in a send on a producer whose start failed (its
        metadata task never started: the goodbye heartbeat of such an agent used to hang
        it, silent, for good) and in an idempotent producer's start while the broker is
        down."""
        deadline = time.monotonic() + self.startup_timeout
        delay = STARTUP_BACKOFF_S
        attempt = 0
        while not self.stopping.is_set():
            attempt += 1
            try:
                await self._start_clients()
                if attempt > 1:
                    self._log.info("kafka_connected", attempts=attempt)
                return True
            except (KafkaError, OSError) as exc:  # TimeoutError is an OSError
                error = describe_error(exc)
                if time.monotonic() + delay > deadline:
                    self._log.error(
                        "kafka_unavailable_giving_up",
                        step=self.startup_step,
                        attempts=attempt,
                        waited_s=round(self.startup_timeout, 1),
                        error=error,
                    )
                    raise AgentFailed(
                        f"agent {self.agent_id!r} could not {self.startup_step} within "
                        f"{self.startup_timeout:g}s (SPINE_KAFKA_STARTUP_TIMEOUT): {error}"
                    ) from exc
                self._log.warning(
                    "kafka_unavailable_retrying",
                    step=self.startup_step,
                    attempt=attempt,
                    retry_in_s=delay,
                    error=error,
                )
                await wait_any(self.stopping, within=delay)
                delay = min(delay * 2, STARTUP_MAX_BACKOFF_S)
        return False

    async def _start_clients(self) -> None:
        """One attempt: the tasks topic (unsecured broker only), the producer, the
        registration, the consumer, each bounded by :data:`STARTUP_STEP_S`. ``producer`` and
        ``consumer`` are set only once started; a failure closes what it made and raises."""
        producer = make_producer(self.cfg)
        consumer: AIOKafkaConsumer | None = None
        try:
            # On a secured broker an agent creates nothing: `spine-admin issue-agent` made
            # its tasks topic, and its ACLs hold no CREATE (docs/security.md).
            if not self.cfg.security.sasl:
                self.startup_step = "create its tasks topic"
                async with asyncio.timeout(STARTUP_STEP_S):
                    created = await ensure_topics(self.cfg, specs=(), agent_ids=[self.agent_id])
                if created:
                    self._log.info("agent_topic_created", topic=self.tasks_topic)
            self.startup_step = "start its producer"
            async with asyncio.timeout(STARTUP_STEP_S):
                await producer.start()
            self.producer = producer
            if self.agent.announce:
                self.startup_step = "register"
                async with asyncio.timeout(STARTUP_STEP_S):
                    await self._send(
                        self.cfg.topic(topics.REGISTRY_COMMANDS),
                        self.agent_id,
                        RegisterAgent.build(agent=self.declared()),
                    )
            consumer = make_consumer(self.cfg, group_id=self.group_id)
            consumer.subscribe([self.tasks_topic], listener=_Rebalance(self))
            self.startup_step = "start its consumer"
            async with asyncio.timeout(STARTUP_STEP_S):
                await consumer.start()
            self.consumer = consumer
        except BaseException:
            self.producer = None
            if consumer is not None:
                await self._quietly("consumer_stop_failed", _within(consumer.stop()))
            await self._quietly("producer_stop_failed", _within(producer.stop()))
            raise

    async def _shutdown(self, beats: asyncio.Task[None] | None) -> None:
        """Drain, commit, say goodbye, close. Each step is attempted even if one fails:
        whatever is not committed simply runs again elsewhere (at least once)."""
        consumer, producer = self.consumer, self.producer
        if consumer is not None:
            await self._quietly("pause_failed", self._pause_all())
        self.backlog.clear()  # not started: redelivered to whoever owns the partition next
        if self.running:
            self._log.info("agent_draining", in_flight=len(self.running))
            _, pending = await asyncio.wait(set(self.running), timeout=self.drain_timeout)
            if pending:
                self._log.warning("agent_drain_timeout", abandoned=len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self.aux:
            await asyncio.wait(set(self.aux), timeout=self.drain_timeout)
        if consumer is not None:
            # a commit waits for the group coordinator as long as the broker is away
            await self._quietly("final_commit_failed", _within(self._commit(force=True)))
        if beats is not None:
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
        if producer is not None and self.agent.announce:
            await self._quietly("final_heartbeat_failed", _within(self._beat(ready=False)))
        if consumer is not None:
            await self._quietly("consumer_stop_failed", consumer.stop())
        if producer is not None:
            await self._quietly("producer_stop_failed", producer.stop())
        self._log.info("agent_stopped", **_counters(self.stats))

    async def _pause_all(self) -> None:
        self._set_paused(True)

    async def _quietly(self, event: str, step: Awaitable[object]) -> None:
        try:
            await step
        except Exception as exc:  # shutdown goes on; the cause is logged, never hidden
            self._log.warning(event, error=describe_error(exc))

    # --- the poll loop -------------------------------------------------------------------
    async def _loop(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while not self.stopping.is_set() and self.fatal is None:
            self._start_backlog()
            free = self.concurrency - len(self.running)
            saturated = free <= 0 or bool(self.backlog)
            self._set_paused(saturated)
            if saturated:
                # Paused partitions return nothing, but polling keeps the member alive.
                self.slot_freed.clear()
                await wait_any(self.slot_freed, self.stopping, within=self.poll_timeout_s)
                batch = await consumer.getmany(timeout_ms=0, max_records=self.concurrency)
            else:
                batch = await consumer.getmany(
                    timeout_ms=self.agent.poll_timeout_ms, max_records=free
                )
            for tp, records in batch.items():
                for record in records:
                    self._accept(tp, record)
            await self._commit()

    @property
    def poll_timeout_s(self) -> float:
        return self.agent.poll_timeout_ms / 1000

    def _set_paused(self, paused: bool) -> None:
        consumer = self.consumer
        assert consumer is not None
        if paused:
            todo = consumer.assignment() - consumer.paused()
            if todo:
                consumer.pause(*todo)
        else:
            todo = consumer.paused()
            if todo:
                consumer.resume(*todo)

    def _accept(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        self.tracker.start(tp, record.offset)
        try:
            message = parse_as(record.value or b"", (AgentMessage, AgentCancel))
        except (ContractError, ValueError, TypeError) as exc:
            self._dead_letter(tp, record, exc)
            return
        if isinstance(message, AgentCancel):
            self._cancel(message)
            self._done(tp, record.offset)
            return
        assert isinstance(message, AgentMessage)
        self.stats.received += 1
        mid = message.message_id
        if mid in self.completed:
            self.stats.duplicates += 1
            self._log.info("task_duplicate", message_id=str(mid), state="completed")
            self._done(tp, record.offset)
        elif mid in self.by_message:
            # A redelivery (after a rebalance) of a task this process is running: count it
            # done when the first copy is, instead of running it twice at once.
            self.stats.duplicates += 1
            self._log.info("task_duplicate", message_id=str(mid), state="running")
            self._spawn_aux(self._await_twin(self.by_message[mid], mid, tp, record.offset))
        else:
            self.backlog.append(_Item(tp, record.offset, message))

    def _start_backlog(self) -> None:
        while self.backlog and len(self.running) < self.concurrency:
            item = self.backlog.popleft()
            mid = item.message.message_id
            if mid in self.completed or mid in self.by_message:
                # Two copies fetched together (a redelivery, or the task published twice):
                # the second waits for the first instead of running again.
                self.stats.duplicates += 1
                self._log.info("task_duplicate", message_id=str(mid), state="queued")
                if mid in self.completed:
                    self._done(item.tp, item.offset)
                else:
                    twin = self.by_message[mid]
                    self._spawn_aux(self._await_twin(twin, mid, item.tp, item.offset))
                continue
            deadline = item.message.data.deadline
            if deadline is not None and deadline <= utcnow():
                self.stats.expired += 1
                self._log.warning(
                    "task_expired",
                    execution_id=item.message.data.execution_id,
                    node_id=item.message.data.node_id,
                    attempt=item.message.data.attempt,
                    deadline=deadline.isoformat(),
                )
                self._done(item.tp, item.offset)
                continue
            running = _Running(item)
            task = asyncio.create_task(
                self._execute(running), name=f"{self.agent_id}-{item.message.data.idempotency_key}"
            )
            self.running[task] = running
            self.by_message[item.message.message_id] = task
            self.stats.max_in_flight = max(self.stats.max_in_flight, len(self.running))
            task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        running = self.running.pop(task, None)
        if running is not None:
            self.by_message.pop(running.item.message.message_id, None)
        self.slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())

    def _fail(self, exc: BaseException | None) -> None:
        if exc is not None and self.fatal is None:
            self.fatal = exc
            self._log.error("agent_failed", error=describe_error(exc))
            self.slot_freed.set()

    # --- one task ------------------------------------------------------------------------
    async def _execute(self, running: _Running) -> None:
        if tracing is None or not tracing.ENABLED:
            await self._run_task(running)
            return
        message = running.item.message  # the task's span is current while it runs and answers
        with tracing.span(
            f"agent {self.agent_id} {message.data.node_id}",
            message=message,
            kind=tracing.SpanKind.CONSUMER,
            attributes={"aispine.agent_id": self.agent_id, "aispine.node_id": message.data.node_id},
        ):
            await self._run_task(running)

    async def _run_task(self, running: _Running) -> None:
        message = running.item.message
        data = message.data
        bind(
            agent_id=self.agent_id,
            execution_id=data.execution_id,
            node_id=data.node_id,
            attempt=data.attempt,
            message_id=str(message.message_id),
            correlation_id=message.correlation_id,
            trace_id=_trace_id(message.trace),
        )
        if running.cancel_reason is not None:  # cancelled before it got to run
            self._cancelled(running)
            return
        started = time.perf_counter()
        self._log.debug("task_started")
        progress = NodeProgress(self._progress_sender(message))
        handler_task: asyncio.Task[object] = asyncio.create_task(
            self._call_handler(Task.from_message(message, progress=progress.report))
        )
        running.handler_task = handler_task
        try:
            outcome = await handler_task
        except asyncio.CancelledError:
            progress.discard()
            current = asyncio.current_task()
            if running.cancel_reason is not None and (current is None or not current.cancelling()):
                self._cancelled(running)
                return
            raise
        duration_ms = (time.perf_counter() - started) * 1000
        try:
            result = result_for(message, self.agent_id, outcome, duration_ms=duration_ms)
        except Exception as exc:  # e.g. a question that is not text: still an answer
            result = result_for(message, self.agent_id, exc, duration_ms=duration_ms)
        # The last progress is acknowledged before the result goes: the two topics share no
        # order, and a reader must never see progress of a node that has finished.
        await progress.close()
        result = await self._publish_result(message, result)
        self._count(result)
        self._remember(message.message_id)
        self._done(running.item.tp, running.item.offset)

    async def _call_handler(self, task: Task) -> object:
        try:
            return await self.handler(task)
        except (NeedsInput, TaskFailed) as answer:  # expected outcomes: no traceback
            return answer
        except Exception as exc:  # the handler's failure is the task's error result
            self._log.warning("task_handler_raised", error=describe_error(exc), exc_info=True)
            return exc

    def _cancelled(self, running: _Running) -> None:
        self.stats.cancelled += 1
        self._log.info("task_cancelled", reason=running.cancel_reason)
        self._remember(running.item.message.message_id)
        self._done(running.item.tp, running.item.offset)

    def _count(self, result: AgentResult) -> None:
        status = result.data.status
        ops.AGENT_TASKS.labels(self.agent_id, status).inc()
        duration_ms = result.data.metrics.get("duration_ms")
        if duration_ms is not None:
            ops.AGENT_TASK_DURATION.labels(self.agent_id).observe(duration_ms / 1000)
        if status == "success":
            self.stats.succeeded += 1
        elif status == "needs_input":
            self.stats.needs_input += 1
        else:
            self.stats.failed += 1
        self._log.info(
            "task_finished",
            status=status,
            duration_ms=result.data.metrics.get("duration_ms"),
            error_message=result.data.error_message,
        )

    async def _publish_result(self, cause: AgentMessage, result: AgentResult) -> AgentResult:
        """Publish ``result``, or the error result that replaces one too large; return it."""
        replaced = False
        attempt = 0
        while True:
            try:
                await self._send(self.results_topic, result.data.execution_id, result)
                return result
            except (MessageTooLarge, MessageSizeTooLargeError) as exc:
                # Never lost, never a timeout: the node fails at once, saying why.
                if replaced:
                    raise
                replaced = True
                if isinstance(exc, MessageTooLarge):
                    error = too_large("result", exc.size, exc.limit)
                else:  # the broker's limit is below SPINE_KAFKA_MAX_MESSAGE_BYTES
                    error = (
                        f"result refused by the broker as too large (the limit here is "
                        f"{self.cfg.max_value_bytes:,} bytes): {exc}"
                    )
                self._log.warning(
                    "result_too_large",
                    status=result.data.status,
                    size=getattr(exc, "size", None),
                    limit=self.cfg.max_value_bytes,
                    error=error,
                )
                result = result_for(
                    cause,
                    self.agent_id,
                    TaskFailed(error),
                    duration_ms=result.data.metrics.get("duration_ms", 0.0),
                )
            except KafkaError as exc:
                attempt += 1
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                self._log.warning(
                    "result_publish_retry", attempt=attempt, error=describe_error(exc)
                )
                await asyncio.sleep(0.2 * attempt)

    def _cancel(self, cancel: AgentCancel) -> None:
        c = cancel.data

        def matches(message: AgentMessage) -> bool:
            d = message.data
            return d.execution_id == c.execution_id and c.node_id in (None, d.node_id)

        for running in self.running.values():
            if matches(running.item.message) and running.cancel_reason is None:
                running.cancel_reason = c.reason
                if running.handler_task is not None:
                    running.handler_task.cancel()
        kept: deque[_Item] = deque()
        for item in self.backlog:
            if matches(item.message):
                self.stats.cancelled += 1
                self._log.info(
                    "task_cancelled",
                    execution_id=c.execution_id,
                    node_id=item.message.data.node_id,
                    reason=c.reason,
                    started=False,
                )
                self._remember(item.message.message_id)
                self._done(item.tp, item.offset)
            else:
                kept.append(item)
        self.backlog = kept

    async def _await_twin(
        self, first: asyncio.Task[None], mid: uuid.UUID, tp: TopicPartition, offset: int
    ) -> None:
        await asyncio.wait({first})
        if mid in self.completed:
            self._done(tp, offset)

    def _dead_letter(
        self, tp: TopicPartition, record: ConsumerRecord[Any, Any], error: BaseException
    ) -> None:
        self._log.error(
            "task_undecodable",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=describe_error(error),
        )
        if self.cfg.security.sasl:
            # An agent may not write dead letters on a secured broker (a forged one would
            # wait to be replayed): the log line above is the record; move past it.
            self.stats.dead_letters += 1
            self._done(tp, record.offset)
            return
        letter = dead_letter(record, error, consumer=self.group_id)

        async def send() -> None:
            key = letter.data.origin_key or ""
            await self._send(self.cfg.topic(topics.DEADLETTER), key, letter)
            self.stats.dead_letters += 1
            self._done(tp, record.offset)

        self._spawn_aux(send())

    def _spawn_aux(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.aux.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self.aux.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._fail(t.exception())

        task.add_done_callback(finished)

    def _remember(self, mid: uuid.UUID) -> None:
        self.completed[mid] = None
        while len(self.completed) > self.agent.remember_completed:
            self.completed.popitem(last=False)

    def _done(self, tp: TopicPartition, offset: int) -> None:
        self.tracker.done(tp, offset)

    # --- offsets -------------------------------------------------------------------------
    async def _commit(
        self, *, force: bool = False, only: set[TopicPartition] | None = None
    ) -> None:
        """Commit each partition's contiguous done offset, at most every commit_interval."""
        now = time.monotonic()
        if not force and now - self._last_commit_check < self.agent.commit_interval:
            return
        self._last_commit_check = now
        consumer = self.consumer
        assert consumer is not None
        async with self.commit_lock:
            assigned = consumer.assignment()
            scope = [tp for tp in self.tracker.partitions if tp in assigned]
            if only is not None:
                scope = [tp for tp in scope if tp in only]
            for tp in scope:
                if self.tracker.idle(tp):
                    # Past transaction markers after the last task, so the lag reaches 0.
                    try:
                        position = await asyncio.wait_for(consumer.position(tp), timeout=0.05)
                    except (TimeoutError, IllegalStateError):
                        continue
                    self.tracker.advance(tp, position)
            offsets = {tp: off for tp, off in self.tracker.to_commit().items() if tp in scope}
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except (KafkaError, IllegalStateError) as exc:
                # A rebalance is under way; the new owner resumes from the last commit.
                self._log.warning("commit_failed", error=describe_error(exc))
                return
            self.tracker.committed(offsets)
            self.stats.commits += 1
            self.stats.committed.update(offsets)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.consumer is not None and revoked:
            try:
                await self._commit(force=True, only=revoked)
            except Exception as exc:
                self._log.warning("commit_on_revoke_failed", error=describe_error(exc))
        for tp in revoked:
            self.tracker.forget(tp)
        # Not started yet: the partition's next owner runs them.
        self.backlog = deque(item for item in self.backlog if item.tp not in revoked)
        if revoked:
            self._log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self.tracker.forget(tp)
        self._log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    # --- publishing ----------------------------------------------------------------------
    async def _send(self, topic: str, key: str, message: Message) -> None:
        producer = self.producer
        assert producer is not None
        if tracing is not None and tracing.ENABLED:  # a result answers from inside its task's span
            message = tracing.stamp(message)
        k, value, headers = Outgoing(topic, key, message).encode_signed(
            self.signer, self.cfg.prefix
        )
        if len(value) > self.cfg.max_value_bytes:
            raise MessageTooLarge(message.type, len(value), self.cfg.max_value_bytes)
        await producer.send_and_wait(topic, value=value, key=k, headers=headers)

    def _progress_sender(self, cause: AgentMessage) -> Send:
        """Sends one coalesced chunk of ``cause``'s progress, signed, outside any
        transaction, waiting for the broker's acknowledgement (bounded by the caller)."""
        d = cause.data

        async def send(chunk: Chunk) -> None:
            producer = self.producer
            if producer is None:
                return
            message = AgentProgress.build(
                cause=cause,
                execution_id=d.execution_id,
                node_id=d.node_id,
                attempt=d.attempt,
                agent_id=self.agent_id,
                seq=chunk.seq,
                text=chunk.text,
                tokens=chunk.tokens,
                status=chunk.status,
            )
            k, value, headers = Outgoing(
                self.progress_topic, d.execution_id, message
            ).encode_signed(self.signer, self.cfg.prefix)
            sent = await producer.send(self.progress_topic, value=value, key=k, headers=headers)
            await sent

        return send

    async def _beat(self, *, ready: bool) -> None:
        info = self.agent.info
        beat = AgentHeartbeat.build(
            agent_id=self.agent_id,
            instance_id=self.instance_id,
            transport="kafka",
            ready=ready,
            in_flight=len(self.running),
            capabilities=info.capabilities,
            version=info.version,
        )
        await self._send(self.cfg.topic(topics.REGISTRY_HEARTBEATS), self.agent_id, beat)
        ops.kafka_ok()

    async def _heartbeats(self) -> None:
        while True:
            try:
                await self._beat(ready=self.ready and not self.stopping.is_set())
            except KafkaError as exc:  # a missed beat shows as inactive; keep beating
                self._log.warning("heartbeat_failed", error=describe_error(exc))
            await asyncio.sleep(self.heartbeat_interval)


async def _within(step: Awaitable[object], seconds: float = SHUTDOWN_STEP_S) -> None:
    """``step``, given up (TimeoutError) after ``seconds``: a closing step never hangs."""
    async with asyncio.timeout(seconds):
        await step


def _counters(stats: AgentStats) -> dict[str, int]:
    return {k: v for k, v in vars(stats).items() if isinstance(v, int)}
