"""Wiring of the relay: the catalogue in, one task consumer and one prober per HTTP agent.

* Follows ``spine.registry.events`` from the beginning (every replica reads it whole);
  after catching up, every change reconciles the running links with the served agents:
  a new registration starts a link, a deregistration stops one (its calls in flight
  finish, up to ``SPINE_RELAY_DRAIN_TIMEOUT``), a new endpoint is used from the next call
  and probed at once.
* A link's consumer is the agent SDK's :class:`~spine_agent.Agent` built with
  ``announce=False``: the same group (``<prefix>agent.<agent_id>``), bounded concurrency,
  contiguous commits, cancels and expired tasks as for a Kafka-native agent; its handler
  is :func:`~.delivery.deliver` over the one shared, pooled ``httpx.AsyncClient``, whose
  connects are guarded against SSRF (:mod:`.guard`, ``SPINE_RELAY_ALLOWED_NETWORKS``).
* Every call (each ``POST /execute`` attempt, each probe) is signed with the relay's
  Ed25519 key from ``SPINE_RELAY_SIGNING_KEY_FILE`` (:mod:`.signing`, :mod:`.keyfile`),
  generated on first start; its public key is logged (``relay_signing_key``) and written
  beside the key as ``<file>.pub``.
* What the relay publishes for an agent — its results (through the SDK's ``Agent``) and its
  heartbeats — is signed with the same key (``RelaySigner.bus``), recorded on the bus by
  ``spine-admin issue-agent relay``; unsigned they would be refused.
* A link's prober publishes an ``AgentHeartbeat`` (transport ``http``, ``ready`` = the
  probe's verdict, ``reason`` why not, ``endpoint`` = the endpoint it probed) at once when
  the link starts or its registration changes, then every ``SPINE_RELAY_PROBE_INTERVAL``,
  so the registry marks the agent active or inactive. A registered agent is active only
  after a probe of its current endpoint succeeded: the registry ignores a beat about an
  endpoint the agent has been re-pointed away from (a probe that was in flight then).

On shutdown no "not ready" beat is sent: the agent itself is as healthy as it was, its
tasks wait on Kafka for the next relay, and if none comes the registry's heartbeat TTL
marks the agent inactive.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

import httpx
from aiokafka.errors import KafkaError
from spine_agent import Agent, NeedsInput, Task
from spine_contracts import AgentHeartbeat, AgentInfo, Message, topics
from spine_contracts.messages.registry import HEARTBEAT_REASON_CHARS
from spine_kafka.aio import wait_any
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import Outgoing
from spine_servicekit.logging import bind, get_logger
from spine_servicekit.runtime import ServiceContext

from . import keyfile
from .catalog import RelayCatalog
from .delivery import RetryPolicy, deliver
from .guard import guarded_client
from .probe import ProbeResult, probe
from .settings import RelaySettings
from .signing import RelaySigner

log = get_logger(__name__)


@dataclass
class Link:
    """What the relay runs for one HTTP agent."""

    info: AgentInfo
    agent: Agent
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    serving: asyncio.Task[None] | None = None
    probing: asyncio.Task[None] | None = None
    last_probe: ProbeResult | None = None
    #: the endpoint ``last_probe`` is about
    probed: str | None = None
    #: set when the registration changed: probe now rather than after the interval
    recheck: asyncio.Event = field(default_factory=asyncio.Event)


class Relay:
    def __init__(
        self,
        ctx: ServiceContext,
        settings: RelaySettings,
        client: httpx.AsyncClient,
        signer: RelaySigner,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.client = client
        self.signer = signer
        self.policy = RetryPolicy(
            max_retries=settings.max_retries,
            backoff_s=settings.backoff_s,
            max_backoff_s=settings.max_backoff_s,
        )
        self.catalog = RelayCatalog()
        self.changed = asyncio.Event()
        self.links: dict[str, Link] = {}
        self.stopping_links: set[asyncio.Task[None]] = set()
        self.heartbeats_topic = ctx.kafka.topic(topics.REGISTRY_HEARTBEATS)

    # --- the catalogue -------------------------------------------------------------------
    def apply(self, message: Message, _record: object) -> None:
        if self.catalog.apply(message):
            self.changed.set()

    async def reconcile(self) -> None:
        wanted = self.catalog.agents
        for agent_id in [a for a in self.links if a not in wanted]:
            self._stop(self.links.pop(agent_id), reason="no longer a registered HTTP agent")
        for agent_id, info in wanted.items():
            link = self.links.get(agent_id)
            if link is None:
                self.links[agent_id] = self._start(info)
            elif link.info != info:
                log.info(
                    "relay_agent_updated",
                    agent_id=agent_id,
                    endpoint=info.endpoint,
                    old_endpoint=link.info.endpoint,
                )
                link.info = info
                link.recheck.set()
        self.ctx.details["http_agents"] = sorted(self.links)

    def check(self) -> None:
        """Raise what stopped a link's consumer or prober on its own: the relay cannot
        work around it (e.g. Kafka refuses its results), so the process fails loudly
        and its restart resumes from the committed offsets."""
        for link in self.links.values():
            for task in (link.serving, link.probing):
                if task is not None and task.done() and not link.stopping.is_set():
                    task.result()
                    raise RuntimeError(f"{task.get_name()} stopped by itself")

    # --- one link ------------------------------------------------------------------------
    def _start(self, info: AgentInfo) -> Link:
        agent = Agent(
            info,
            concurrency=self.settings.concurrency,
            drain_timeout=self.settings.drain_timeout_s,
            announce=False,
            signer=self.signer.bus,
        )
        link = Link(info, agent)
        sign = self.signer.for_agent(info.agent_id)

        @agent.handler
        async def handle(task: Task) -> dict[str, object] | NeedsInput:
            endpoint = link.info.endpoint
            assert endpoint is not None  # only agents with an endpoint are served
            return await deliver(
                self.client,
                endpoint,
                task,
                self.policy,
                default_timeout_s=self.settings.request_timeout_s,
                sign=sign,
            )

        cfg = dataclasses.replace(self.ctx.kafka, client_id=f"relay-{info.agent_id}")
        link.serving = asyncio.create_task(
            agent.serve(
                cfg,
                link.stopping,
                instance_id=f"{self.ctx.instance_id}/{info.agent_id}",
                startup_timeout=self.settings.kafka_startup_timeout_s,
            ),
            name=f"relay-serve-{info.agent_id}",
        )
        link.probing = asyncio.create_task(
            self._probe_loop(link), name=f"relay-probe-{info.agent_id}"
        )
        log.info("relay_agent_started", agent_id=info.agent_id, endpoint=info.endpoint)
        return link

    def _stop(self, link: Link, reason: str) -> None:
        log.info("relay_agent_stopping", agent_id=link.info.agent_id, reason=reason)
        task = asyncio.create_task(self._close(link), name=f"relay-stop-{link.info.agent_id}")
        self.stopping_links.add(task)
        task.add_done_callback(self.stopping_links.discard)

    async def _close(self, link: Link) -> None:
        link.stopping.set()
        if link.probing is not None:
            link.probing.cancel()
        waiting = [t for t in (link.serving, link.probing) if t is not None]
        results = await asyncio.gather(*waiting, return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, Exception):
                log.error(
                    "relay_agent_stop_failed", agent_id=link.info.agent_id, error=repr(outcome)
                )
        log.info("relay_agent_stopped", agent_id=link.info.agent_id)

    async def _probe_loop(self, link: Link) -> None:
        agent_id = link.info.agent_id
        bind(agent_id=agent_id)
        while True:
            link.recheck.clear()  # a change from now on is probed again, this one now
            endpoint = link.info.endpoint
            assert endpoint is not None
            result = await probe(
                self.client,
                endpoint,
                self.settings.probe_timeout_s,
                sign=self.signer.for_agent(agent_id),
            )
            previous = link.last_probe
            if previous is None or previous.ready != result.ready or link.probed != endpoint:
                if result.ready:
                    log.info("relay_probe_ready", endpoint=endpoint)
                else:
                    log.warning("relay_probe_not_ready", endpoint=endpoint, reason=result.reason)
            link.last_probe, link.probed = result, endpoint
            await self._beat(link, endpoint, result)
            await wait_any(link.recheck, within=self.settings.probe_interval_s)

    async def _beat(self, link: Link, endpoint: str, result: ProbeResult) -> None:
        """The probe's verdict about ``endpoint`` — the one probed, which the registry
        compares with the agent's endpoint when the beat arrives."""
        info = link.info
        beat = AgentHeartbeat.build(
            agent_id=info.agent_id,
            instance_id=self.ctx.instance_id,
            transport="http",
            ready=result.ready,
            in_flight=link.agent.in_flight,
            capabilities=result.capabilities
            if result.capabilities is not None
            else info.capabilities,
            version=result.version or info.version,
            endpoint=endpoint,
            reason=None if result.ready else result.reason[:HEARTBEAT_REASON_CHARS],
        )
        key, value, headers = Outgoing(self.heartbeats_topic, info.agent_id, beat).encode_signed(
            self.signer.bus, self.ctx.kafka.prefix
        )
        try:
            await self.ctx.producer.send_and_wait(
                self.heartbeats_topic, value=value, key=key, headers=headers
            )
        except KafkaError as exc:  # a missed beat shows as inactive after the TTL; keep probing
            log.warning("relay_heartbeat_failed", error=repr(exc))

    async def close(self) -> None:
        for link in self.links.values():
            self._stop(link, reason="relay stopping")
        self.links.clear()
        if self.stopping_links:
            await asyncio.gather(*self.stopping_links, return_exceptions=True)


async def load_signer(settings: RelaySettings) -> RelaySigner:
    """The relay's signer from its key file (created on first start); says which key."""
    loaded = await asyncio.to_thread(keyfile.load_or_create, settings.signing_key_file)
    signer = RelaySigner(loaded.key)
    log.info(
        "relay_signing_key",
        path=str(loaded.path),
        created=loaded.created,
        key_id=signer.key_id,
        public_key=signer.public_key_b64,
        public_key_file=str(loaded.public_file) if loaded.public_file else None,
    )
    if loaded.public_file_error is not None:
        log.info("relay_public_key_file_not_written", reason=loaded.public_file_error)
    if loaded.readable_by_others:
        log.warning("relay_signing_key_readable_by_others", path=str(loaded.path))
    return signer


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, RelaySettings)
    signer = await load_signer(settings)
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=min(settings.max_connections, 100),
    )
    async with guarded_client(
        settings.address_policy, limits, headers={"user-agent": "spine-relay"}
    ) as client:
        relay = Relay(ctx, settings, client, signer)
        follower = TopicFollower(
            ctx.kafka.background(),
            ctx.kafka.topic(topics.REGISTRY_EVENTS),
            relay.apply,
            name="relay-catalog",
        )
        await follower.start()
        try:
            await follower.wait_caught_up()
            log.info("relay_catalog_loaded", http_agents=len(relay.catalog.agents))
            while not ctx.stopping.is_set():
                relay.changed.clear()
                await relay.reconcile()
                relay.check()
                await wait_any(relay.changed, ctx.stopping, within=1.0)
        finally:
            await follower.stop()
            await relay.close()
