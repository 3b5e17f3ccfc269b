"""``scripts/infra.sh`` and the secured broker, on a broker of this test's own (free ports,
a temporary state directory, the project's jars): an unsecured broker on the port is not
reused, an unsecured data directory is migrated in place — loudly, keeping its topics — and
a secured one is never served plaintext. Three broker starts, ~40 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "scripts" / "infra.sh"
READY = ROOT / "scripts" / "kafka_ready.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def jars() -> str:
    out = subprocess.run(
        ["bash", str(INFRA), "kafka-jars"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def state(tmp_path: Path, jars: str) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "SPINE_STATE_DIR": str(tmp_path / "spine"),
        "SPINE_KAFKA_LIBS": jars,
        "SPINE_KAFKA_PORT": str(_free_port()),
        "SPINE_KAFKA_CONTROLLER_PORT": str(_free_port()),
        "SPINE_INFRA_TIMEOUT": "90",
    }
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_CREDENTIALS_FILE"):
        env.pop(name, None)
    yield env
    subprocess.run(["bash", str(INFRA), "down", "kafka"], env=env, capture_output=True)


def _infra(env: dict[str, str], *args: str, security: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INFRA), *args],
        env={**env, "SPINE_KAFKA_SECURITY": security},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _anonymous_metadata(env: dict[str, str]) -> bool:
    bootstrap = f"127.0.0.1:{env['SPINE_KAFKA_PORT']}"
    probe = [str(READY), "--bootstrap", bootstrap, "--timeout", "0", "--quiet"]
    return subprocess.run(["python3", *probe], capture_output=True).returncode == 0


def test_an_unsecured_directory_is_migrated_loudly_and_never_served_plaintext_again(
    state: dict[str, str],
) -> None:
    plain = _infra(state, "up", "kafka", security="plaintext")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert _anonymous_metadata(state)  # the unsecured broker serves anyone

    # a second installation on the same port, secured: it must not reuse that broker
    other = {**state, "SPINE_STATE_DIR": state["SPINE_STATE_DIR"] + "-other"}
    refused = _infra(other, "up", "kafka", security="sasl")
    assert refused.returncode != 0
    assert "UNSECURED broker" in refused.stderr

    assert _infra(state, "down", "kafka", security="plaintext").returncode == 0
    migrated = _infra(state, "up", "kafka", security="sasl")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert "MIGRATING IT IN PLACE" in migrated.stderr and "Nothing is deleted" in migrated.stderr
    assert not _anonymous_metadata(state)  # now nobody gets in without a login
    admin = Path(state["SPINE_STATE_DIR"]) / "credentials" / "admin.json"
    assert admin.stat().st_mode & 0o777 == 0o600
    assert json.loads(admin.read_text())["username"] == "admin"
    bootstrap = f"127.0.0.1:{state['SPINE_KAFKA_PORT']}"
    login = subprocess.run(
        ["python3", str(READY), "--bootstrap", bootstrap, "--timeout", "30", "--credentials",
         str(admin)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr

    assert _infra(state, "down", "kafka", security="sasl").returncode == 0
    downgrade = _infra(state, "up", "kafka", security="plaintext")
    assert downgrade.returncode != 0
    assert "is secured" in downgrade.stderr
