"""A third-party agent installs a small package: the SDK needs neither servicekit nor the
PostgreSQL, Redis or OpenTelemetry clients, and runs untraced without the ``otel`` extra.
``cryptography`` is a dependency of its own: every message an agent publishes is signed
(``spine_contracts.signing``), and an agent that cannot sign has its work refused; the
``relay-signature`` extra still installs for those who name it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import requires

_BLOCK = """
import sys
class _Absent:
    def __init__(self, names): self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, _Absent(BLOCKED))
"""


def _run(code: str, blocked: set[str]) -> str:
    script = _BLOCK.replace("BLOCKED", repr(sorted(blocked))) + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_sdk_declares_no_service_plumbing() -> None:
    declared = {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower()
                for r in requires("spine-agent-sdk") or () if "extra ==" not in r}  # fmt: skip
    assert not declared & {"spine-servicekit", "asyncpg", "redis"}
    assert not {d for d in declared if d.startswith("opentelemetry")}


def test_an_agent_imports_and_runs_without_servicekit_databases_or_opentelemetry() -> None:
    out = _run(
        """
        import spine_agent, spine_agent.testing
        from spine_agent import agent
        from spine_agent.settings import AgentSettings
        assert agent.tracing is None
        print(AgentSettings(_env_file=None).kafka_bootstrap_servers)
        print(sorted(m for m in sys.modules if m.split(".")[0] in
              {"spine_servicekit", "asyncpg", "redis", "opentelemetry"}))
        """,
        {"spine_servicekit", "asyncpg", "redis", "opentelemetry"},
    )
    assert out.splitlines() == ["127.0.0.1:9092", "[]"]


def test_with_the_otel_extra_the_agent_traces() -> None:
    out = _run(
        """
        from spine_agent import agent
        print(agent.tracing is not None and agent.tracing.__name__)
        """,
        set(),
    )
    assert out.strip() == "spine_kafka.tracing"


def test_cryptography_comes_with_the_sdk_and_the_old_extra_still_names_it() -> None:
    reqs = requires("spine-agent-sdk") or []
    crypto = [r for r in reqs if r.lower().startswith("cryptography")]
    assert any("extra ==" not in r for r in crypto), crypto
    assert any("relay-signature" in r for r in crypto), crypto
    assert any(r.startswith("spine-contracts[signing]") for r in reqs), reqs


def test_an_agent_signs_with_the_key_file_and_says_how_to_get_one() -> None:
    out = _run(
        """
        import asyncio
        from pathlib import Path
        from spine_agent import Agent, AgentInfo
        from spine_kafka.clients import KafkaConfig
        from spine_kafka.security import KafkaSecurity
        agent = Agent(AgentInfo(agent_id="nokey"))
        @agent.handler
        async def handle(task):
            return {}
        try:
            asyncio.run(agent.serve(KafkaConfig("127.0.0.1:1", security=KafkaSecurity()),
                                    asyncio.Event(),
                                    signing_key_file=Path("/nonexistent/key.pem")))
        except Exception as exc:
            print(type(exc).__name__, exc)
        """,
        set(),
    )
    assert out.startswith("SigningKeyError"), out
    assert "spine-admin issue-agent nokey" in out and "SPINE_AGENT_SIGNING_KEY_FILE" in out


def test_an_http_agent_without_cryptography_is_told_what_to_install() -> None:
    out = _run(
        """
        import spine_agent.http as http
        try:
            http.verify_relay_signature("key", {}, b"", "echo-http")
        except ImportError as exc:
            print(exc)
        """,
        {"cryptography"},
    )
    assert "cryptography" in out and "pip install" in out
