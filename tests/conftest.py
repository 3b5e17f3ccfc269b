"""Session-wide infrastructure: start or reuse Kafka, PostgreSQL and Redis once.

``scripts/infra.sh up`` is idempotent and honours ``KAFKA_BOOTSTRAP_SERVERS``,
``DATABASE_URL`` and ``REDIS_URL``; a component that cannot start fails the run (never a
skip). Each test module gets its own topic prefix, with the registry's topics created at
``SPINE_TOPIC_PARTITIONS`` (2 by default here) and deleted afterwards. The Kafka login
(``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``...) comes from the environment or
``.spine/infra.env`` too, and reaches every client and child process the tests start.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from spine_kafka.security import SECURITY_ENV
from spine_servicekit.kafka import KafkaConfig
from support import prefixed_kafka

ROOT = Path(__file__).resolve().parent.parent
INFRA_ENV = ROOT / ".spine" / "infra.env"
TEST_PARTITIONS = int(os.environ.get("SPINE_TEST_PARTITIONS", "2"))


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="session")
def infra() -> dict[str, str]:
    """Effective ``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``, ``REDIS_URL`` and the Kafka
    security variables that are set."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra.sh"), "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(
            f"infrastructure did not start (scripts/infra.sh up exited {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    values = _read_env_file(INFRA_ENV)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL"):
        values[name] = os.environ.get(name) or values[name]
    for name in SECURITY_ENV:
        if os.environ.get(name):
            values[name] = os.environ[name]
    return values


@pytest.fixture(scope="module")
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def kafka(infra: dict[str, str], topic_prefix: str) -> AsyncIterator[KafkaConfig]:
    """A Kafka config with a fresh prefix whose registry topics exist; deleted afterwards."""
    async with prefixed_kafka(infra, topic_prefix, TEST_PARTITIONS) as cfg:
        yield cfg


@pytest.fixture(scope="session")
def database_url(infra: dict[str, str]) -> str:
    return infra["DATABASE_URL"]


@pytest.fixture(scope="session")
def redis_url(infra: dict[str, str]) -> str:
    return infra["REDIS_URL"]


@pytest_asyncio.fixture(loop_scope="session")
async def pg_schema(database_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    yield schema
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def child_env(infra: dict[str, str], topic_prefix: str) -> Iterator[dict[str, str]]:
    """Environment for a service process started by a test."""
    env = dict(os.environ)
    env.update(infra)
    env["SPINE_TOPIC_PREFIX"] = topic_prefix
    env["SPINE_TOPIC_PARTITIONS"] = str(TEST_PARTITIONS)
    yield env
