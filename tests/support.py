"""Scaffolding every kind of test shares, in one place (importable as ``support``).

* :func:`fresh_topics`: a sub-prefix of the module's with its own, empty topics;
* :class:`TopicTail` and :func:`read_to_end`: read a topic from its beginning, and count
  only after reading to its end (read_committed: the last stable offset), so a duplicate
  that arrives in a later fetch is counted too;
* :func:`spawn`, :func:`stop` and :func:`log_tail`: a process started by a test, stopped
  with SIGTERM (SIGKILL when it does not go), and the end of its log for a failure message;
* :func:`issue_agent` and :func:`signed`: a test agent issued through ``spine-admin``'s own
  code path (its key under ``.spine/test-agents``), and a message signed as an agent signs
  it, for tests that publish an agent's messages themselves.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import ConsumerRecord, TopicPartition
from spine_admin import Issued, issue, principals
from spine_admin.acls import SERVICES
from spine_admin.connection import Broker
from spine_contracts import ContractError, Message, parse, to_bytes, topics
from spine_contracts.signing import RELAY_SIGNER, Signer, load_or_create_key, topic_base
from spine_contracts.topics import TopicSpec
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import (
    KafkaConfig,
    delete_topics_with_prefix,
    ensure_topics,
    headers_for,
    make_admin,
    make_consumer,
)

M = TypeVar("M", bound=Message)
ROOT = Path(__file__).resolve().parent.parent
#: where test agents' keys live (spine-admin's --key-dir for tests); keys are reused across
#: tests and runs, each test's namespace records them again
TEST_KEY_DIR = ROOT / ".spine" / "test-agents"
#: where test principals' credentials files go (spine-admin's --credentials-dir for tests);
#: a principal's name starts with its test's topic prefix, so tests never share one
TEST_CREDENTIALS_DIR = ROOT / ".spine" / "test-credentials"

# --- topics -------------------------------------------------------------------------------


async def partitions_of(cfg: KafkaConfig, topic_names: Sequence[str]) -> list[TopicPartition]:
    """The partitions the broker's metadata shows for these topics (none for a topic that
    does not exist yet)."""
    admin = make_admin(cfg)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topic_names))
    finally:
        await admin.close()
    return sorted(
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t.get("error_code", 0) == 0
        for p in t.get("partitions", ())
    )


async def visible(cfg: KafkaConfig, topic_names: Sequence[str], within: float = 15.0) -> None:
    """Wait until just-created topics show in the broker's metadata."""
    wanted = set(topic_names)
    async with asyncio.timeout(within):
        while True:
            shown = {tp.topic for tp in await partitions_of(cfg, sorted(wanted))}
            if shown >= wanted:
                return
            await asyncio.sleep(0.05)  # metadata propagation: polled, there is no event


async def fresh_topics(
    kafka: KafkaConfig, specs: Iterable[TopicSpec] = topics.STATIC, agents: Iterable[str] = ()
) -> KafkaConfig:
    """A sub-prefix of the module's with its own topics: a test starts from empty ones
    (deleted with the module's, which share the prefix)."""
    cfg = replace(kafka, prefix=f"{kafka.prefix}{uuid.uuid4().hex[:8]}.")
    created = await ensure_topics(cfg, list(specs), agent_ids=list(agents))
    await visible(cfg, created)
    return cfg


# --- reading a topic ----------------------------------------------------------------------


class TopicTail:
    """Every partition of one topic from its beginning, without a consumer group,
    accumulating what it read (read_committed unless told otherwise)."""

    def __init__(
        self,
        cfg: KafkaConfig,
        topic: str | TopicSpec,
        isolation: str = "read_committed",
    ) -> None:
        self.topic = topic if isinstance(topic, str) else cfg.topic(topic)
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self.messages: list[Message] = []
        self.undecodable = 0
        self._keys: list[bytes | None] = []
        self._cfg = cfg
        self._consumer = make_consumer(
            cfg, group_id=None, isolation_level=isolation, fetch_max_wait_ms=50
        )
        self._tps: list[TopicPartition] = []

    async def __aenter__(self) -> TopicTail:
        self._tps = await partitions_of(self._cfg, [self.topic])
        assert self._tps, f"{self.topic} does not exist"
        await self._consumer.start()
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 100) -> None:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for record in records:
                self.records.append(record)
                try:
                    message = parse(record.value or b"")
                except ContractError:
                    self.undecodable += 1
                    continue
                self.messages.append(message)
                self._keys.append(record.key)

    async def until(self, predicate: Callable[[TopicTail], bool], within: float = 30.0) -> None:
        """Read on until ``predicate(self)`` holds."""
        try:
            async with asyncio.timeout(within):
                while not predicate(self):
                    await self.poll()
        except TimeoutError:
            raise AssertionError(
                f"{self.topic}: condition not met within {within}s "
                f"({len(self.records)} records: {Counter(m.type for m in self.messages)})"
            ) from None

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """The end of every partition now (for read_committed: the last stable offset)."""
        return dict(await self._consumer.end_offsets(self._tps))

    async def to_end(self, within: float = 30.0) -> list[Message]:
        """Read on until every partition's position reaches the end offsets taken now;
        every message read so far."""
        ends = await self.end_offsets()

        async def reached() -> bool:
            for tp, end in ends.items():
                if await self._consumer.position(tp) < end:
                    return False
            return True

        try:
            async with asyncio.timeout(within):
                while not await reached():
                    await self.poll()
        except TimeoutError:
            raise AssertionError(
                f"{self.topic}: the end {ends} not reached within {within}s "
                f"({len(self.records)} records)"
            ) from None
        return self.messages

    def of(self, cls: type[M], **where: Any) -> list[M]:
        return [
            m
            for m in self.messages
            if isinstance(m, cls) and all(getattr(m.data, k) == v for k, v in where.items())
        ]

    def keyed(self, key: str) -> list[Message]:
        return [m for k, m in zip(self._keys, self.messages, strict=True) if k == key.encode()]


async def read_to_end(
    cfg: KafkaConfig,
    topic: str | TopicSpec,
    *,
    at_least: int = 0,
    within: float = 30.0,
    isolation: str = "read_committed",
) -> list[Message]:
    """Every message of ``topic`` up to its end, read once at least ``at_least`` are there:
    the end offsets are taken after that, so nothing written before them is missed."""
    async with TopicTail(cfg, topic, isolation) as tail:
        if at_least:
            await tail.until(lambda t: len(t.messages) >= at_least, within)
        return await tail.to_end(within)


# --- processes ----------------------------------------------------------------------------


async def spawn(
    *argv: str | Path,
    env: Mapping[str, str],
    log: Path | None = None,
    cwd: Path | None = None,
    **options: Any,
) -> asyncio.subprocess.Process:
    """Start a process; with ``log``, its stdout and stderr are appended to that file
    (else ``options`` say where they go, e.g. ``stdout=asyncio.subprocess.PIPE``)."""
    args = [str(a) for a in argv]
    if log is None:
        return await asyncio.create_subprocess_exec(*args, env=dict(env), cwd=cwd, **options)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            *args, env=dict(env), cwd=cwd, stdout=sink, stderr=sink, **options
        )


async def stop(
    proc: asyncio.subprocess.Process, *, within: float = 30.0, sig: int = signal.SIGTERM
) -> int:
    """Send ``sig`` (unless the process already ended) and wait up to ``within`` seconds;
    a process still there then is killed and ``TimeoutError`` raised. Its exit code
    (negative: the signal that ended it)."""
    if proc.returncode is None:
        proc.send_signal(sig)
    try:
        async with asyncio.timeout(within):
            return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction of a TCP proxy until it closes (a broker that "appears" on a
    port: a test opens a forwarder to the real broker there)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def log_tail(path: Path, chars: int = 4000) -> str:
    """The end of a process's log, for an assertion message."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path}: no log)"


# --- signed agents ------------------------------------------------------------------------


async def issue_agent(
    cfg: KafkaConfig, agent_id: str, owner: str | None = None, key_file: Path | None = None
) -> Issued:
    """Issue a test agent in ``cfg``'s namespace exactly as ``spine-admin issue-agent`` does
    (key file, tasks topic, ``IssueAgent``), its key under :data:`TEST_KEY_DIR` unless
    ``key_file`` names another (a relay's own)."""
    path = key_file or agent_key_file(agent_id)
    return await issue(
        cfg,
        agent_id,
        owner=owner,
        key_dir=TEST_KEY_DIR,
        key_file=path,
        credentials_dir=TEST_CREDENTIALS_DIR,
    )


async def issue_services(cfg: KafkaConfig) -> dict[str, Path]:
    """Every service principal in ``cfg``'s namespace, as ``spine-admin issue-services``
    does: ``{service: credentials file}``; empty on an unsecured broker."""
    if not cfg.security.sasl:
        return {}

    def run() -> list[principals.PrincipalIssued]:
        broker = Broker(cfg.bootstrap_servers, cfg.security)
        return principals.issue_services(
            broker, prefix=cfg.prefix, credentials_dir=TEST_CREDENTIALS_DIR
        )

    done = await asyncio.to_thread(run)
    return {name: issued.credentials_file for name, issued in zip(SERVICES, done, strict=True)}


def login_env(credentials_file: Path | None) -> dict[str, str]:
    """What a child process logs in with: its own credentials file, and none of the
    admin's variables the test environment carries (empty counts as unset)."""
    if credentials_file is None:
        return {}
    return {
        "KAFKA_CREDENTIALS_FILE": str(credentials_file),
        "KAFKA_SASL_USERNAME": "",
        "KAFKA_SASL_PASSWORD": "",
        "KAFKA_SASL_PASSWORD_FILE": "",
    }


@asynccontextmanager
async def prefixed_kafka(
    infra: Mapping[str, str], prefix: str, partitions: int
) -> AsyncIterator[KafkaConfig]:
    """A Kafka config with ``prefix`` whose registry topics exist; the topics and the test
    principals go afterwards (the ``kafka`` fixtures, module- or package-scoped)."""
    cfg = KafkaConfig(
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        prefix=prefix,
        partitions=partitions,
        client_id="spine-tests",
        security=KafkaSecurity.from_env(infra),
    )
    await ensure_topics(cfg)
    try:
        yield cfg
    finally:
        await delete_topics_with_prefix(cfg, prefix)
        await revoke_test_principals(cfg)


async def revoke_test_principals(cfg: KafkaConfig) -> int:
    """Delete the SCRAM credentials, ACLs and files of every principal issued in ``cfg``'s
    namespace (test clean-up, beside deleting its topics). Returns how many."""
    if not cfg.security.sasl or not cfg.prefix:
        return 0
    names = [p.stem for p in TEST_CREDENTIALS_DIR.glob(f"{cfg.prefix}*.json")]
    if not names:
        return 0

    def run() -> None:
        broker = Broker(cfg.bootstrap_servers, cfg.security)
        for name in names:
            principals.revoke_principal(broker, name, credentials_dir=TEST_CREDENTIALS_DIR)

    await asyncio.to_thread(run)
    return len(names)


def agent_key_file(agent_id: str) -> Path:
    """The key file :func:`issue_agent` wrote (``SPINE_AGENT_SIGNING_KEY_FILE`` of a test
    agent process)."""
    if agent_id == RELAY_SIGNER:
        return TEST_KEY_DIR / "relay" / "signing-key.pem"
    return TEST_KEY_DIR / agent_id / "signing-key.pem"


def signer_of(agent_id: str) -> Signer:
    """The signer of a test agent (its key file made first when missing, as issuing does:
    for in-process catalogues that are fed the key without a registry)."""
    return load_or_create_key(agent_key_file(agent_id)).signer


def signed(
    cfg: KafkaConfig, topic: str, key: str, message: Message, signer: Signer
) -> tuple[str, Message, list[tuple[str, bytes]]]:
    """``(key, message, headers)`` for ``crash.helpers.publish_raw``: the message with the
    signature headers ``signer`` gives it on ``topic``, as an agent publishes it."""
    headers = headers_for(message)
    headers += signer.headers(topic_base(topic, cfg.prefix), key.encode(), to_bytes(message))
    return key, message, headers
