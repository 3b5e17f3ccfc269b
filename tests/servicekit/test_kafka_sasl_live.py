"""The security settings reach a real SASL/SCRAM broker: the factories' clients log in with
credentials from the environment and are refused, at once, without them.

The project's broker stays unsecured until the secured ``make up`` lands (issue 17), so this
module starts a throwaway one from the same jars (``scripts/infra.sh kafka-jars``) on free
ports in a temporary directory: a KRaft single node whose client listener is
SASL_PLAINTEXT with SCRAM-SHA-512 and whose controller listener is SASL PLAIN with a static
user (DESIGN §12), users bootstrapped by ``StorageTool format --add-scram``. About ten
seconds, most of it the JVM.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaConnectionError
from pydantic import SecretStr
from spine_kafka.clients import KafkaConfig, make_admin, make_consumer, make_producer
from spine_kafka.security import SECURITY_ENV, KafkaSecurity
from spine_kafka.settings import KafkaSettings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
LOG4J = ROOT / "deploy" / "local" / "kafka" / "log4j2.xml"
START_TIMEOUT_S = 60.0
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
USER, PASSWORD = "agent-probe", "probe-" + uuid.uuid4().hex

SERVER = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=SASL_PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="admin" password="{admin}";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="controller" password="{controller_secret}" user_controller="{controller_secret}";
log.dirs={data}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=1
num.io.threads=2
"""


@dataclass(frozen=True)
class SaslBroker:
    bootstrap: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _jars() -> Path:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra.sh"), "kafka-jars"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 or shutil.which("java") is None:
        pytest.fail(f"no broker jars or java for the SASL broker:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _java(jars: Path, log: Path, *args: str) -> list[str]:
    return [
        "java",
        "-Xms128m",
        "-Xmx384m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",  # starts faster; this broker carries a few records
        "-cp",
        f"{jars}/*",
        f"-Dlog4j2.configurationFile={LOG4J}",
        f"-Dspine.kafka.log.file={log}",
        *args,
    ]


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    jars = _jars()
    home = tmp_path_factory.mktemp("sasl-broker")
    log = home / "kafka.log"
    port = _free_port()
    props = home / "server.properties"
    props.write_text(
        SERVER.format(
            port=port,
            controller=_free_port(),
            admin=ADMIN_PASSWORD,
            controller_secret=uuid.uuid4().hex,
            data=home / "data",
        )
    )
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    scram = [
        f"SCRAM-SHA-512=[name=admin,password={ADMIN_PASSWORD}]",
        f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]",
    ]
    formatted = subprocess.run(
        _java(jars, log, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props))
        + ["--standalone", *(a for s in scram for a in ("--add-scram", s))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert formatted.returncode == 0, formatted.stdout[-2000:] + formatted.stderr[-2000:]
    with (home / "stdout.log").open("wb") as out:
        broker = subprocess.Popen(
            _java(jars, log, "kafka.Kafka", str(props)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield SaslBroker(f"127.0.0.1:{port}", log)
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(timeout=10)


@pytest.fixture
def security_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The environment an issued agent gets: a SASL protocol and a 0600 credentials file."""
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)
    credentials = tmp_path / f"{USER}.json"
    credentials.write_text(json.dumps({"username": USER, "password": PASSWORD}))
    credentials.chmod(0o600)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_CREDENTIALS_FILE", str(credentials))
    return credentials


@pytest_asyncio.fixture(loop_scope="session")
async def secured(
    sasl_broker: SaslBroker, security_env: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[KafkaConfig]:
    """A config built the way every process builds its own: settings from the environment."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", sasl_broker.bootstrap)
    cfg = KafkaConfig.from_settings(load_settings(KafkaSettings, _env_file=None), "sasl-test")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:  # the JVM is starting: the port opens before the broker serves
        admin = make_admin(cfg)
        try:
            await admin.start()
            await admin.list_topics()
            break
        except KafkaConnectionError:
            if time.monotonic() > deadline:
                pytest.fail(f"SASL broker not ready:\n{sasl_broker.log_tail()}")
            await asyncio.sleep(0.3)
        finally:
            await admin.close()
    yield cfg


async def test_the_factories_log_in_with_the_environment_s_credentials(
    secured: KafkaConfig,
) -> None:
    assert secured.security.describe() == f"SASL_PLAINTEXT/SCRAM-SHA-512 as {USER}"
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    admin = make_admin(secured)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)], timeout_ms=30_000)
    finally:
        await admin.close()
    producer = make_producer(secured, transactional_id=f"{topic}-tx")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"signed in", key=b"k")
    finally:
        await producer.stop()
    consumer = make_consumer(secured, topic, group_id=f"{topic}-group")
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
        await consumer.commit()
    finally:
        await consumer.stop()
    assert record.value == b"signed in"


@pytest.mark.parametrize(
    ("login", "refusal"),
    [
        (KafkaSecurity(), "Connection at"),  # PLAINTEXT: the SASL listener hangs up
        (
            KafkaSecurity(
                security_protocol="SASL_PLAINTEXT",
                sasl_username=USER,
                sasl_password=SecretStr("not-the-password"),
            ),
            "SaslAuthenticationFailed",
        ),
    ],
    ids=["no-credentials", "wrong-password"],
)
async def test_without_the_credentials_every_client_is_refused_at_once(
    secured: KafkaConfig,
    caplog: pytest.LogCaptureFixture,
    login: KafkaSecurity,
    refusal: str,
) -> None:
    cfg = replace(secured, security=login)
    clients = {
        "admin": make_admin(cfg),
        "producer": make_producer(cfg),
        "consumer": make_consumer(cfg, group_id=None),
    }
    caplog.set_level(logging.WARNING, logger="aiokafka")
    for name, client in clients.items():
        started = time.monotonic()
        with pytest.raises(KafkaConnectionError):
            await client.start()
        assert time.monotonic() - started < 10, f"{name}: refused only after a wait"
        await (client.close() if name == "admin" else client.stop())
    assert refusal in caplog.text, caplog.text[-2000:]
