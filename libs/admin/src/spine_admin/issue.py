"""Issuing an agent: one function, :func:`issue`, made of steps run in order.

An agent may publish nothing that counts until the operator has issued it (DESIGN §12):

1. **its signing key** — an Ed25519 private key written ``0600`` in a ``0700`` directory
   (``<key_dir>/<agent_id>/signing-key.pem``), atomically; an existing key is reused, so
   issuing again is harmless and the agent keeps its identity;
2. **its tasks topic** — ``spine.agents.<agent_id>.tasks`` with the installation's partition
   count (``SPINE_TOPIC_PARTITIONS``, what the orchestrator uses), so no agent needs the
   right to create topics;
3. **its Kafka principal** on a secured broker — ``agent-<id>`` with its credentials file
   (``<credentials_dir>/agent-<id>.json``, 0600), its LITERAL ACLs and last its SCRAM
   credential (:mod:`.principals`), so it can log in only once its ACLs are in place;
4. **its record on the bus** — ``IssueAgent{agent_id, public_key, owner}`` on
   ``spine.registry.admin``; the registry folds it into the agent's catalogue entry, so
   every reader of ``spine.registry.events`` knows the key its messages must verify
   against (and the owner, which an agent's own registration cannot set).

A step is an ``async`` function of the shared :class:`_Issuing` state.

The relay is issued the same way under :data:`~spine_contracts.signing.RELAY_SIGNER`
(``spine-admin issue-agent relay``), with its own key file, no tasks topic and no agent
principal (it logs in as the service ``relay``, ``spine-admin issue-services``): results
and heartbeats of HTTP agents verify against that key.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError
from spine_contracts import (
    AgentDeregistered,
    AgentRegistered,
    AgentStatusChanged,
    IssueAgent,
    Message,
    RevokeAgentKey,
    parse,
    topics,
)
from spine_contracts.errors import ContractError
from spine_contracts.signing import RELAY_SIGNER, Signer, SigningKeyError, load_or_create_key
from spine_kafka.clients import (
    KafkaConfig,
    Outgoing,
    ensure_topics,
    make_consumer,
    make_producer,
    partitions_of,
)

from . import principals
from .connection import Broker
from .connection import credentials_dir as default_credentials_dir

#: ``--key-dir``'s default, relative to the working directory: where the SDK looks too
#: (``spine_agent.signing.DEFAULT_KEY_DIR``)
DEFAULT_KEY_DIR = Path(".spine/agents")
KEY_FILE_NAME = "signing-key.pem"
#: the relay's key file unless ``SPINE_RELAY_SIGNING_KEY_FILE`` says otherwise (the relay's
#: own default, ``spine_registry.relay.settings``)
DEFAULT_RELAY_KEY_FILE = Path(".spine/relay/signing-key.pem")
#: who the envelope names as acting (DESIGN §12: every command records its principal)
ACTOR = "spine-admin"

Progress = Callable[[str], None]
Entry = AgentRegistered | AgentStatusChanged | AgentDeregistered


class IssueError(RuntimeError):
    """Issuing or revoking could not be done; the message says which step and why."""


@dataclass(frozen=True)
class Issued:
    """What :func:`issue` did."""

    agent_id: str
    owner: str | None
    key_file: Path
    key_id: str
    public_key: str
    created_key: bool
    created_topics: tuple[str, ...]
    #: the agent's credentials file on a secured broker, else None
    credentials_file: Path | None = None


@dataclass
class _Issuing:
    """The state the steps share."""

    cfg: KafkaConfig
    agent_id: str
    owner: str | None
    key_file: Path
    with_tasks_topic: bool
    credentials_dir: Path
    progress: Progress
    signer: Signer | None = None
    created_key: bool = False
    created_topics: list[str] = field(default_factory=list)
    credentials_file: Path | None = None


Step = Callable[[_Issuing], Awaitable[None]]


def key_file_for(agent_id: str, key_dir: Path = DEFAULT_KEY_DIR) -> Path:
    """Where the agent's key lives: ``<key_dir>/<agent_id>/signing-key.pem``, or the relay's
    own key file for :data:`RELAY_SIGNER`."""
    if agent_id == RELAY_SIGNER:
        return Path(os.environ.get("SPINE_RELAY_SIGNING_KEY_FILE") or DEFAULT_RELAY_KEY_FILE)
    return key_dir / agent_id / KEY_FILE_NAME


def _check_id(agent_id: str) -> None:
    try:
        topics.agent_tasks(agent_id)
    except ValueError as exc:
        raise IssueError(f"{exc} (agent ids contain no '.')") from None


# --- the steps ------------------------------------------------------------------------------


async def _signing_key(ctx: _Issuing) -> None:
    try:
        found = await asyncio.to_thread(load_or_create_key, ctx.key_file, "key file")
    except SigningKeyError as exc:
        raise IssueError(f"signing key: {exc}") from exc
    ctx.signer, ctx.created_key = found.signer, found.created
    state = "created" if found.created else "reused"
    ctx.progress(f"signing key {state}: {ctx.key_file} (key id {found.signer.key_id})")
    if found.open_to_others:
        ctx.progress(f"warning: {ctx.key_file} is readable by other users; chmod 600 it")


async def _tasks_topic(ctx: _Issuing) -> None:
    agent_ids = [ctx.agent_id] if ctx.with_tasks_topic else []
    try:
        created = await ensure_topics(ctx.cfg, (topics.REGISTRY_ADMIN,), agent_ids=agent_ids)
    except Exception as exc:  # the broker's answer, said once with the step's name
        raise IssueError(f"topics: {type(exc).__name__}: {exc}") from exc
    ctx.created_topics = created
    if ctx.with_tasks_topic:
        name = ctx.cfg.agent_tasks(ctx.agent_id)
        state = "created" if name in created else "exists"
        ctx.progress(f"tasks topic {state}: {name} ({ctx.cfg.partitions} partitions)")


async def _principal(ctx: _Issuing) -> None:
    if not ctx.with_tasks_topic:
        return  # the relay: a service principal
    if not ctx.cfg.security.sasl:
        ctx.progress(
            f"no Kafka principal: the broker is not secured ({ctx.cfg.security.describe()})"
        )
        return

    def apply() -> principals.PrincipalIssued:
        broker = Broker(ctx.cfg.bootstrap_servers, ctx.cfg.security)
        return principals.issue_agent_credentials(
            broker, ctx.agent_id, prefix=ctx.cfg.prefix, credentials_dir=ctx.credentials_dir
        )

    try:
        done = await asyncio.to_thread(apply)
    except Exception as exc:  # the broker's answer, said once with the step's name
        raise IssueError(f"principal: {type(exc).__name__}: {exc}") from exc
    ctx.credentials_file = done.credentials_file
    state = "new password" if done.created_password else "password kept"
    ctx.progress(
        f"principal {done.principal}: {done.acls} LITERAL ACLs, SCRAM-SHA-512 set, "
        f"{done.credentials_file} ({state})"
    )


async def _record_on_bus(ctx: _Issuing) -> None:
    assert ctx.signer is not None
    command = IssueAgent.build(
        actor=ACTOR,
        agent_id=ctx.agent_id,
        public_key=ctx.signer.public_key_b64,
        owner=ctx.owner,
    )
    topic = ctx.cfg.topic(topics.REGISTRY_ADMIN)
    await _publish(ctx.cfg, Outgoing(topic, ctx.agent_id, command))
    owner = ctx.owner or "kept (system for a new agent)"
    ctx.progress(f"recorded on {topic}: key {ctx.signer.key_id}, owner {owner}")


#: In order: the record on the bus comes last, once the agent can log in and sign.
STEPS: tuple[Step, ...] = (_signing_key, _tasks_topic, _principal, _record_on_bus)


async def issue(
    cfg: KafkaConfig,
    agent_id: str,
    *,
    owner: str | None = None,
    key_dir: Path = DEFAULT_KEY_DIR,
    key_file: Path | None = None,
    credentials_dir: Path | None = None,
    progress: Progress = lambda _line: None,
) -> Issued:
    """Issue ``agent_id``: its signing key, its tasks topic and its record on the bus.

    Idempotent: an existing key file is reused and the record says the same again.
    ``owner`` (``system`` or a user id) is recorded when given; ``None`` keeps the entry's
    owner. Raises :class:`IssueError` naming the step that failed."""
    _check_id(agent_id)
    ctx = _Issuing(
        cfg,
        agent_id,
        owner,
        key_file or key_file_for(agent_id, key_dir),
        with_tasks_topic=agent_id != RELAY_SIGNER,
        credentials_dir=credentials_dir or default_credentials_dir(),
        progress=progress,
    )
    for step in STEPS:
        await step(ctx)
    assert ctx.signer is not None
    return Issued(
        agent_id,
        owner,
        ctx.key_file,
        ctx.signer.key_id,
        ctx.signer.public_key_b64,
        ctx.created_key,
        tuple(ctx.created_topics),
        ctx.credentials_file,
    )


async def revoke(
    cfg: KafkaConfig,
    agent_id: str,
    *,
    key_dir: Path = DEFAULT_KEY_DIR,
    delete_key: bool = False,
    credentials_dir: Path | None = None,
    progress: Progress = lambda _line: None,
) -> None:
    """Forget the agent's public key on the bus (its messages are refused from then on)
    and, on a secured broker, delete its principal (SCRAM credential, ACLs, file: no new
    login, every request refused); with ``delete_key`` also remove its key file, so
    issuing again makes a new key."""
    _check_id(agent_id)
    if cfg.security.sasl and agent_id != RELAY_SIGNER:
        where = credentials_dir or default_credentials_dir()

        def drop() -> principals.PrincipalRevoked:
            broker = Broker(cfg.bootstrap_servers, cfg.security)
            return principals.revoke_agent_credentials(
                broker, agent_id, prefix=cfg.prefix, credentials_dir=where
            )

        gone = await asyncio.to_thread(drop)
        scram_state = "deleted" if gone.had_scram else "absent"
        progress(
            f"principal {gone.principal}: SCRAM {scram_state}, {gone.acls_deleted} ACLs deleted"
        )
    await ensure_topics(cfg, (topics.REGISTRY_ADMIN,))
    topic = cfg.topic(topics.REGISTRY_ADMIN)
    await _publish(
        cfg, Outgoing(topic, agent_id, RevokeAgentKey.build(actor=ACTOR, agent_id=agent_id))
    )
    progress(f"revocation recorded on {topic}")
    path = key_file_for(agent_id, key_dir)
    if delete_key:
        path.unlink(missing_ok=True)
        progress(f"key file deleted: {path}")
    elif path.exists():
        progress(f"key file kept: {path} (issuing again reuses it; delete it for a new key)")


@dataclass(frozen=True)
class AgentShown:
    """The agent's catalogue entry as ``spine.registry.events`` has it, and its key file."""

    agent_id: str
    entry: Entry | None
    key_file: Path
    local_key_id: str | None


async def show(cfg: KafkaConfig, agent_id: str, *, key_dir: Path = DEFAULT_KEY_DIR) -> AgentShown:
    """The agent's latest catalogue entry (read to the end of the compacted topic)."""
    _check_id(agent_id)
    entry = await latest_entry(cfg, agent_id)
    path = key_file_for(agent_id, key_dir)
    local: str | None = None
    if path.exists():
        try:
            local = Signer.from_file(path).key_id
        except SigningKeyError:
            local = None
    return AgentShown(agent_id, entry, path, local)


async def latest_entry(
    cfg: KafkaConfig,
    agent_id: str,
    until: Callable[[Entry], bool] | None = None,
    within: float = 30.0,
) -> Entry | None:
    """The agent's last entry up to the end of ``spine.registry.events``; with ``until``,
    read on (up to ``within`` seconds) until an entry of the agent satisfies it."""
    topic = cfg.topic(topics.REGISTRY_EVENTS)
    consumer = make_consumer(cfg, group_id=None)
    await consumer.start()
    last: Entry | None = None
    try:
        try:
            tps = [TopicPartition(topic, p) for p in await partitions_of(cfg, topic)]
        except UnknownTopicOrPartitionError:
            return None  # no service has run on this installation yet
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        async with asyncio.timeout(within):
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        if record.key != agent_id.encode() or record.value is None:
                            continue
                        try:
                            message: Message = parse(record.value)
                        except ContractError:
                            continue
                        if isinstance(message, Entry):
                            last = message
                if until is not None:
                    if last is not None and until(last):
                        return last
                    continue
                if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    return last
    except TimeoutError:
        raise IssueError(f"no matching entry for {agent_id!r} within {within:g}s") from None
    finally:
        await consumer.stop()


async def _publish(cfg: KafkaConfig, item: Outgoing) -> None:
    producer = make_producer(cfg)
    try:
        await producer.start()
        key, value, headers = item.encode()
        await producer.send_and_wait(item.topic, value=value, key=key, headers=headers)
    except Exception as exc:  # one clear line for the operator, whatever the client raised
        raise IssueError(f"publishing to {item.topic}: {type(exc).__name__}: {exc}") from exc
    finally:
        await producer.stop()
