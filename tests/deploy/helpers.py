"""What the deployment tests share: the process table, kustomize, the compose loader.

Nothing here needs a Docker engine or a cluster. ``kustomize`` is found or installed by the
fixture itself (a pinned release through ``go install``, cached under ``.spine/tools``), so a
fresh machine with Go needs no extra setup step.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic_settings import BaseSettings
from spine_kafka.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
TOOLS = ROOT / ".spine" / "tools"
KUSTOMIZE_VERSION = "v5.7.1"
#: The Kubernetes version whose schemas the rendered manifests are validated against.
KUBERNETES_VERSION = "1.32.0"
#: A master key that passes the gateway's checks, for the tests only.
TEST_API_KEY = "test-master-key-0123456789"


@dataclass(frozen=True)
class Process:
    """One deployable process: its compose service / Deployment name and what it runs."""

    name: str
    script: str
    settings: str  # "module:Class"
    #: Source that decides which shared infrastructure the process uses (files or dirs;
    #: a leading "!" leaves a directory out).
    scope: tuple[str, ...]
    #: Env naming the host an HTTP server binds to, and the settings field with its port.
    http_bind: tuple[str, str] | None = None
    #: Serves the servicekit ops endpoint (/metrics, /health, /ready on SPINE_OPS_PORT,
    #: bound to API_HOST) and is probed on it.
    ops: bool = False

    @property
    def ops_bind(self) -> tuple[str, str] | None:
        return ("API_HOST", "ops_port") if self.ops else None

    def settings_class(self) -> type[BaseSettings]:
        module, _, cls = self.settings.partition(":")
        found = getattr(importlib.import_module(module), cls)
        assert issubclass(found, BaseSettings)
        return found  # type: ignore[no-any-return]

    @property
    def kafka_native(self) -> bool:
        return issubclass(self.settings_class(), KafkaSettings)


_SDK = "libs/agent-sdk/src/spine_agent"
_REGISTRY = "services/registry/src/spine_registry"
PROCESSES: tuple[Process, ...] = (
    Process(
        "gateway",
        "spine-gateway",
        "spine_gateway.settings:GatewaySettings",
        ("services/gateway/src/spine_gateway",),
        http_bind=("API_HOST", "port"),
    ),
    Process(
        "orchestrator",
        "spine-orchestrator",
        "spine_orchestrator.settings:OrchestratorSettings",
        ("services/orchestrator/src/spine_orchestrator",),
        ops=True,
    ),
    Process(
        "registry",
        "spine-registry",
        "spine_registry.settings:RegistrySettings",
        (_REGISTRY, f"!{_REGISTRY}/relay"),
        ops=True,
    ),
    Process(
        "relay",
        "spine-relay",
        "spine_registry.relay.settings:RelaySettings",
        (f"{_REGISTRY}/relay", _SDK),
        ops=True,
    ),
    Process(
        "auth",
        "spine-auth",
        "spine_auth.settings:AuthSettings",
        ("services/auth/src/spine_auth",),
        ops=True,
    ),
    Process(
        "metrics",
        "spine-metrics",
        "spine_metrics.settings:MetricsSettings",
        ("services/metrics/src/spine_metrics",),
        http_bind=("API_HOST", "metrics_port"),
    ),
    Process(
        "zoe",
        "spine-agent-zoe",
        # zoe words her questions with a model when SPINE_LLM_* name one
        "spine_agent.llm.settings:LLMSettings",
        ("agents/src/spine_demo_agents/zoe.py", _SDK),
        ops=True,
    ),
    Process(
        "eddie",
        "spine-agent-eddie",
        "spine_agent.settings:AgentSettings",
        ("agents/src/spine_demo_agents/eddie.py", _SDK),
        ops=True,
    ),
    Process(
        "echo",
        "spine-agent-echo",
        "spine_agent.settings:AgentSettings",
        ("agents/src/spine_demo_agents/echo.py", _SDK),
        ops=True,
    ),
    Process(
        "echo-http",
        "spine-agent-echo-http",
        "spine_demo_agents.echo_http:EchoHttpSettings",
        ("agents/src/spine_demo_agents/echo_http.py",),
        http_bind=("ECHO_HTTP_HOST", "port"),
    ),
    # the web console (DESIGN §13): an HTTP client of the gateway, on no bus
    Process(
        "console",
        "spine-console",
        "spine_console.settings:ConsoleSettings",
        ("services/console/src/spine_console",),
        http_bind=("SPINE_CONSOLE_HOST", "port"),
    ),
)
BY_NAME = {p.name: p for p in PROCESSES}
#: The optional model agent (compose profile ``llm``, the Kubernetes component
#: ``components/llm-agent``): deployed like a demo agent, only when asked for.
LLM_AGENT = Process(
    "llm",
    "spine-agent-llm",
    "spine_agent.llm.settings:LLMSettings",
    ("agents/src/spine_demo_agents/llm.py", _SDK),
    ops=True,
)
LLM_COMPONENT = K8S / "components" / "llm-agent"
#: Console scripts that are the operator's tools, not processes a deployment runs (compose's
#: init job and the Kubernetes docs use them).
OPERATOR_TOOLS = frozenset({"spine-admin"})
#: Agents a deployment runs only when it has something they need: spine-agent-llm refuses to
#: start without SPINE_LLM_PROVIDER and SPINE_LLM_MODEL, so the default stack leaves it out.
OPTIONAL_AGENTS = frozenset({"spine-agent-llm"})
#: Processes that consume in a Kafka consumer group: replicas beyond the partitions idle.
GROUP_CONSUMERS = ("orchestrator", "auth", "registry", "zoe", "eddie", "echo")
DEMO_AGENT_IDS = ("zoe", "eddie", "echo", "echo-http")


def expected_of(names: Iterable[str]) -> set[str]:
    """What the gateway's ``SPINE_EXPECTED_SERVICES`` must name for a deployment running the
    processes ``names``: each process on the bus, a service by the name it beats under (its
    process name), an agent on the SDK as ``agent:<id>`` (its process is named after its
    agent id). The HTTP agent echo-http is on no list: the relay speaks for it."""
    out: set[str] = set()
    for name in names:
        process = BY_NAME.get(name)
        if process is None or not process.kafka_native:
            continue
        agent = process.settings.startswith("spine_agent.")
        out.add(f"agent:{name}" if agent else name)
    return out


def kafka_principal(process: str, prefix: str = "") -> str:
    """The Kafka principal a process logs in as (docs/security.md): a service's own name,
    or ``agent-<id>`` for a demo agent (whose process is named after its agent id)."""
    from spine_admin.acls import SERVICES, agent_principal, service_principal

    if process in SERVICES:
        return service_principal(process, prefix)
    return agent_principal(process, prefix)


# Attribute reads of the shared settings that mean "this process uses that component".
_USES = {
    "DATABASE_URL": re.compile(r"\.database_url\b"),
    "REDIS_URL": re.compile(r"\.redis_url\b"),
    "FLOWS_DIR": re.compile(r"\.flows_dir\b"),
    "API_KEY": re.compile(r"\.api_key\b"),
}


def _scope_text(process: Process) -> str:
    left_out = [ROOT / e[1:] for e in process.scope if e.startswith("!")]
    chunks: list[str] = []
    for entry in (e for e in process.scope if not e.startswith("!")):
        path = ROOT / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        chunks += [f.read_text() for f in files if not any(f.is_relative_to(d) for d in left_out)]
    return "\n".join(chunks)


def required_env(process: Process) -> set[str]:
    """Env a deployment must set for this process.

    The settings fields without a default, ``KAFKA_BOOTSTRAP_SERVERS`` for every process on
    the shared settings (they all run ``run_service`` or the agent SDK), and the shared
    infrastructure whose settings attribute the process's code reads.
    """
    cls = process.settings_class()
    needed = {f.alias or n.upper() for n, f in cls.model_fields.items() if f.is_required()}
    if process.kafka_native:
        needed.add("KAFKA_BOOTSTRAP_SERVERS")
        text = _scope_text(process)
        needed |= {env for env, pattern in _USES.items() if pattern.search(text)}
    for bind in (process.http_bind, process.ops_bind):
        if bind:
            needed.add(bind[0])
    return needed


@contextmanager
def only_env(env: Mapping[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ, dict(env), clear=True):
        yield


def load_process_settings(process: Process, env: Mapping[str, str]) -> BaseSettings:
    """The process's settings as it would read them from exactly ``env`` (no .env file);
    a KAFKA_CREDENTIALS_FILE inside a container is read as a stand-in (see below)."""
    cls = process.settings_class()
    with tempfile.TemporaryDirectory() as tmp, only_env(with_stand_in_login(env, Path(tmp))):
        return cls(_env_file=None)  # type: ignore[call-arg]


def with_stand_in_login(env: Mapping[str, str], directory: Path) -> dict[str, str]:
    """``env`` with a KAFKA_CREDENTIALS_FILE that is not on this machine (a path in the
    container, written there by compose's init job) replaced by a stand-in in ``directory``
    naming the same principal, the file's stem: the settings read the file at validation."""
    out = dict(env)
    path = out.get("KAFKA_CREDENTIALS_FILE")
    if path and not Path(path).exists():
        principal = PurePosixPath(path).stem
        stand_in = directory / f"{principal}.json"
        stand_in.write_text(json.dumps({"username": principal, "password": "stand-in"}))
        out["KAFKA_CREDENTIALS_FILE"] = str(stand_in)
    return out


def workspace_scripts() -> dict[str, str]:
    """Console scripts of every workspace member: name -> member directory."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts: dict[str, str] = {}
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        for member in sorted(ROOT.glob(pattern)):
            meta = member / "pyproject.toml"
            if meta.exists():
                project = tomllib.loads(meta.read_text())["project"]
                for script in project.get("scripts", {}):
                    scripts[script] = str(member.relative_to(ROOT))
    return scripts


def workspace_members() -> list[str]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [
        str(m.relative_to(ROOT))
        for pattern in root["tool"]["uv"]["workspace"]["members"]
        for m in sorted(ROOT.glob(pattern))
        if (m / "pyproject.toml").exists()
    ]


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- compose ------------------------------------------------------------------------------
class InterpolationError(ValueError):
    """A ``${VAR:?message}`` without a value, as ``docker compose`` reports it."""


_VAR = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose-spec interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``:-``/``-``, ``:?``/``?``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset_or_empty = current is None or (current == "" and op and op.startswith(":"))
        if op in (":-", "-") and unset_or_empty:
            return arg
        if op in (":?", "?") and unset_or_empty:
            raise InterpolationError(f"required variable {name} is missing a value: {arg}")
        return current or ""

    return _VAR.sub(one, value)


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """deploy/compose.yaml with merge keys resolved and variables interpolated."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    values = {"API_KEY": TEST_API_KEY} if env is None else dict(env)
    return interpolate(raw, values)  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# --- kustomize ----------------------------------------------------------------------------
def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def kustomize_command() -> tuple[list[str], str]:
    """A kustomize this machine can run, installing the pinned one when Go is there.

    Order: ``$KUSTOMIZE``; the cached ``go install`` of :data:`KUSTOMIZE_VERSION`; a fresh
    ``go install`` of it; ``kubectl kustomize`` (whatever version kubectl embeds).
    """
    if os.environ.get("KUSTOMIZE"):
        return [os.environ["KUSTOMIZE"], "build"], "KUSTOMIZE"
    cached = TOOLS / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"
    if cached.exists():
        return [str(cached), "build"], f"kustomize {KUSTOMIZE_VERSION}"
    go = shutil.which("go")
    if go:
        cached.parent.mkdir(parents=True, exist_ok=True)
        result = run(
            [go, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
            env={**os.environ, "GOBIN": str(cached.parent), "GOFLAGS": "-mod=mod"},
            timeout=900,
        )
        if result.returncode == 0 and cached.exists():
            return [str(cached), "build"], f"kustomize {KUSTOMIZE_VERSION}"
        pytest.fail(f"go install of kustomize {KUSTOMIZE_VERSION} failed:\n{result.stderr[-3000:]}")
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"], "kubectl kustomize"
    pytest.fail(
        "no kustomize: install Go (the tests install kustomize) or kubectl, or set KUSTOMIZE"
    )


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
