"""deploy/compose.yaml without a Docker engine.

In every case, with nothing but the dev dependencies: the interpolated file validated
against the Compose Specification's JSON schema (``compose-spec.json``, the copy compose-go
v2.16.2 embeds, the version ``composecheck`` builds with), and a structural check: every
service and agent is in the file with the env its settings require, healthchecks, valid
``depends_on`` conditions, named volumes. And the compose loader itself: ``docker compose
config`` where the docker client has the compose plugin, else the same loader built from
compose-go (the library that command is made of) with Go, which this project's machines
have. A loader that cannot run fails the test; nothing is skipped or downgraded to a
warning.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from spine_demo_agents.echo_http import EchoHttpSettings

from .helpers import (
    BY_NAME,
    COMPOSE_FILE,
    DEMO_AGENT_IDS,
    OPERATOR_TOOLS,
    PROCESSES,
    ROOT,
    TEST_API_KEY,
    TOOLS,
    InterpolationError,
    environment,
    load_compose,
    load_process_settings,
    required_env,
    workspace_scripts,
)

pytestmark = pytest.mark.timeout(900)

CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
COMPOSECHECK = Path(__file__).parent / "composecheck"
COMPOSE_SPEC = Path(__file__).parent / "compose-spec.json"
PROFILES = ("observability",)


# --- the compose loader itself ---------------------------------------------------------
def _docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    return [docker, "compose"] if probe.returncode == 0 else None


def _composecheck() -> list[str] | None:
    """compose-go's loader as a small binary, built once per source version."""
    go = shutil.which("go")
    if go is None:
        return None
    digest = hashlib.sha256(
        b"".join((COMPOSECHECK / f).read_bytes() for f in ("go.mod", "go.sum", "main.go"))
    ).hexdigest()[:12]
    binary = TOOLS / f"composecheck-{digest}"
    if not binary.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=COMPOSECHECK,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if built.returncode != 0:
            pytest.fail(f"building the compose-go checker failed:\n{built.stderr[-3000:]}")
    return [str(binary)]


def _config(
    env: dict[str, str], unset: tuple[str, ...] = ()
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run the compose loader on the file: (which, result); none here fails the test."""
    full_env = {**os.environ, **env}
    for name in ("COMPOSE_FILE", *unset):
        full_env.pop(name, None)
    docker = _docker_compose()
    if docker is not None:
        cmd = [*docker, "-f", str(COMPOSE_FILE)]
        for profile in PROFILES:
            cmd += ["--profile", profile]
        cmd += ["config", "--format", "json"]
        return "docker compose config", subprocess.run(
            cmd, capture_output=True, text=True, env=full_env, timeout=120
        )
    checker = _composecheck()
    if checker is not None:
        cmd = [*checker]
        for profile in PROFILES:
            cmd += ["-profile", profile]
        cmd.append(str(COMPOSE_FILE))
        return "compose-go loader", subprocess.run(
            cmd, capture_output=True, text=True, env=full_env, timeout=120
        )
    pytest.fail(
        "no compose loader: neither `docker compose` nor Go (which builds compose-go's loader "
        "from tests/deploy/composecheck) is on PATH. Go comes with this project's machines; "
        "install it (or the docker compose plugin) rather than skipping the check.",
        pytrace=False,
    )


def schema_errors(document: dict[str, Any]) -> list[str]:
    """Where ``document`` breaks the Compose Specification's schema (none: valid)."""
    try:
        import jsonschema
    except ImportError:  # a dev dependency: its absence is a broken install, not a skip
        pytest.fail("jsonschema is missing: `uv sync --all-packages` installs the dev group")
    schema = json.loads(COMPOSE_SPEC.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def test_compose_file_follows_the_compose_specification() -> None:
    document = load_compose({"API_KEY": TEST_API_KEY})
    assert schema_errors(document) == []
    structural_check(document)


def test_the_schema_check_catches_what_compose_refuses() -> None:
    document = load_compose({"API_KEY": TEST_API_KEY})
    name = next(iter(document["services"]))
    broken = {**document["services"][name], "restart": 5, "depends_on": {"x": {"condition": "?"}}}
    errors = schema_errors({**document, "services": {**document["services"], name: broken}})
    assert any(e.startswith(f"services/{name}") for e in errors), errors
    assert schema_errors({**document, "volumez": {}}) != []


def test_compose_config_accepts_the_file() -> None:
    env = {"API_KEY": TEST_API_KEY}
    which, result = _config(env)
    assert result.returncode == 0, f"{which} rejected deploy/compose.yaml:\n{result.stderr}"
    project = json.loads(result.stdout)
    # the loader's normalised model agrees with the structural reading
    structural_check(project)
    assert set(project["services"]) == set(load_compose(env)["services"])


def test_compose_config_requires_api_key() -> None:
    which, result = _config({}, unset=("API_KEY",))
    assert result.returncode != 0, f"{which} accepted the file without API_KEY"
    assert "API_KEY" in result.stderr
    with pytest.raises(InterpolationError, match="API_KEY"):
        load_compose({})


# --- the structural check --------------------------------------------------------------
def structural_check(project: dict[str, Any]) -> None:
    services = project["services"]
    for process in PROCESSES:
        assert process.name in services, f"{process.name} is missing from compose"
        service = services[process.name]
        assert service.get("command") == [process.script], process.name
        env = environment(service)
        missing = required_env(process) - set(env)
        assert not missing, f"{process.name} lacks {sorted(missing)}"
        settings = load_process_settings(process, env)  # the real validation
        if process.http_bind:
            host_env, port_field = process.http_bind
            assert env[host_env] == "0.0.0.0", f"{process.name} must bind all interfaces"
            port = getattr(settings, port_field)
            test = " ".join(map(str, service["healthcheck"]["test"]))
            assert f":{port}/" in test, f"{process.name}'s healthcheck misses port {port}"
        elif process.ops_bind:
            host_env, port_field = process.ops_bind
            assert env[host_env] == "0.0.0.0", f"{process.name} must bind all interfaces"
            port = getattr(settings, port_field)
            test = " ".join(map(str, service["healthcheck"]["test"]))
            assert port and f":{port}/ready" in test, f"{process.name}'s healthcheck: /ready"

    for name, service in services.items():
        health = service.get("healthcheck")
        one_shot = service.get("restart") == "no"
        if not one_shot:
            assert health and health.get("test") and not health.get("disable"), (
                f"{name} has no healthcheck"
            )
        for target, dep in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = dep.get("condition", "service_started")
            assert condition in CONDITIONS, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not one-shot"
    _no_dependency_cycle(services)


def _no_dependency_cycle(services: dict[str, Any]) -> None:
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"depends_on cycle: {' -> '.join((*path, name))}"
        state[name] = 1
        for target in services[name].get("depends_on") or {}:
            visit(target, (*path, name))
        state[name] = 2

    for name in services:
        visit(name, ())


def _needs(services: dict[str, Any], name: str, target: str, condition: str) -> bool:
    """Whether ``name`` waits (directly or through others) for ``target`` in ``condition``."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        for dep, spec in (services[current].get("depends_on") or {}).items():
            if dep == target and spec.get("condition") == condition:
                return True
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return False


def test_every_service_and_agent_is_in_compose(compose: dict[str, Any]) -> None:
    structural_check(compose)
    scripts = workspace_scripts()
    assert set(scripts) - OPERATOR_TOOLS == {p.script for p in PROCESSES}, "a script has no process"
    for service_dir in sorted((ROOT / "services").iterdir()):
        if (service_dir / "pyproject.toml").exists():
            member = str(service_dir.relative_to(ROOT))
            assert any(scripts[p.script] == member for p in PROCESSES), member


def test_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert _needs(services, "init", "kafka", "service_healthy")
    for process in PROCESSES:
        needed = required_env(process)
        if "KAFKA_BOOTSTRAP_SERVERS" in needed:
            assert _needs(services, process.name, "init", "service_completed_successfully"), (
                f"{process.name} may start before the topics exist"
            )
        if "DATABASE_URL" in needed:
            assert _needs(services, process.name, "postgres", "service_healthy"), process.name
        if "REDIS_URL" in needed:
            assert _needs(services, process.name, "redis", "service_healthy"), process.name


def test_infrastructure(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose.get("volumes") or {}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert not any("ZOOKEEPER" in k for k in env)
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    for process in PROCESSES:
        bootstrap = environment(services[process.name]).get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            assert f"//{bootstrap}" in advertised, f"{process.name}: {bootstrap} not advertised"
    for name, path in (("kafka", "/var/lib/kafka/data"), ("postgres", "/var/lib/postgresql/data")):
        mounts = [str(v).split(":") for v in services[name].get("volumes", [])]
        assert any(m[0] in volumes and m[1] == path for m in mounts), f"{name}: named volume"
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_shared_settings_agree(compose: dict[str, Any]) -> None:
    """The topic numbers every process ensures are the ones the init job created."""
    services = compose["services"]
    keys = (
        "KAFKA_BOOTSTRAP_SERVERS",
        "SPINE_TOPIC_PREFIX",
        "SPINE_TOPIC_PARTITIONS",
        "SPINE_TOPIC_REPLICATION",
        "SPINE_TOPIC_MIN_ISR",
    )
    init = {k: environment(services["init"]).get(k) for k in keys}
    assert all(v is not None for v in init.values())
    for process in PROCESSES:
        if process.kafka_native:
            env = environment(services[process.name])
            assert {k: env.get(k) for k in keys} == init, process.name


def test_gateway_port_secret_and_flows(compose: dict[str, Any]) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert raw["services"]["gateway"]["environment"]["API_KEY"].startswith("${API_KEY:?")
    services = compose["services"]
    gateway = services["gateway"]
    assert any(str(p).endswith(":8000") for p in gateway["ports"]), "gateway on port 8000"
    env = environment(gateway)
    assert env["API_KEY"] == TEST_API_KEY and env["API_KEY_REQUIRED"] == "true"
    orchestrator = services["orchestrator"]
    flows_dir = environment(orchestrator)["FLOWS_DIR"]
    assert f"../flows:{flows_dir}:ro" in orchestrator["volumes"]
    assert (COMPOSE_FILE.parent / "../flows").resolve() == ROOT / "flows"


def test_one_image_for_every_process(compose: dict[str, Any]) -> None:
    services = compose["services"]
    images = {services[p.name]["image"] for p in PROCESSES} | {services["init"]["image"]}
    assert len(images) == 1
    for name in [p.name for p in PROCESSES] + ["init"]:
        build = services[name]["build"]
        assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve() == (
            ROOT / "Dockerfile"
        )


def _init_script(compose: dict[str, Any]) -> str:
    command = compose["services"]["init"]["command"]
    assert command[:2] == ["python", "-c"]
    return str(command[2])


def test_init_job_creates_topics_and_registers_echo_http(compose: dict[str, Any]) -> None:
    source = _init_script(compose)
    tree = ast.parse(source)  # it compiles
    names = {
        a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names
    }
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    for module in modules:  # every imported name exists
        imported = __import__(str(module), fromlist=["*"])
        for name in names:
            if name in source.split(f"from {module} import", 1)[1].split("\n", 1)[0]:
                assert hasattr(imported, name), f"{module}.{name}"
    assert "ensure_topics(" in source
    namespace: dict[str, Any] = {}
    for node in tree.body:  # the constants, evaluated for real
        if isinstance(node, ast.ImportFrom | ast.Assign):
            exec(compile(ast.Module([node], []), "<init>", "exec"), namespace)
    assert tuple(namespace["DEMO_AGENTS"]) == DEMO_AGENT_IDS
    echo_http = namespace["ECHO_HTTP"]
    services = compose["services"]
    port = load_process_settings(BY_NAME["echo-http"], environment(services["echo-http"])).port
    assert isinstance(load_process_settings(BY_NAME["echo-http"], {}), EchoHttpSettings)
    assert echo_http.endpoint == f"http://echo-http:{port}"
    assert echo_http.transport == "http"


def test_demo_agent_ids_match_the_agents() -> None:
    from spine_demo_agents import echo, eddie, zoe

    coded = {zoe.agent.agent_id, eddie.agent.agent_id, echo.agent.agent_id}
    coded.add(EchoHttpSettings.model_fields["agent_id"].default)
    assert coded == set(DEMO_AGENT_IDS)


def test_observability_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        for volume in services[name]["volumes"]:
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), source


@pytest.mark.parametrize(
    ("process", "setting"),
    [
        ("relay", "SPINE_RELAY_SIGNING_KEY_FILE"),
        ("echo", "SPINE_AGENT_SIGNING_KEY_FILE"),
        ("zoe", "SPINE_AGENT_SIGNING_KEY_FILE"),
        ("eddie", "SPINE_AGENT_SIGNING_KEY_FILE"),
    ],
)
def test_each_signer_keeps_its_key_on_a_volume_of_its_own(
    compose: dict[str, Any], process: str, setting: str
) -> None:
    """Created by the init job (the operator's step, spine-admin), kept across restarts,
    mounted by no other long-running process; the image gives every mount point to the
    service user so a new volume is writable by it, and the init job writes the key where
    the process reads it."""
    services, volumes = compose["services"], compose.get("volumes") or {}
    service = services[process]
    key_file = PurePosixPath(environment(service)[setting])
    mounts = [str(v).split(":") for v in service.get("volumes", [])]
    [(source, target, *_)] = [m for m in mounts if key_file.is_relative_to(m[1])]
    assert source in volumes, "a named volume: the key outlives the container"
    for name, other in services.items():
        sources = {str(v).split(":")[0] for v in other.get("volumes", [])}
        assert name in (process, "init") or source not in sources, f"{name} mounts {source}"
    [(_, init_target)] = [
        str(v).split(":")[:2] for v in services["init"]["volumes"] if str(v).startswith(source)
    ]
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+):(\d+)", dockerfile, re.M)[-1]
    install = re.search(r"install -d -o (\d+) -g (\d+) -m 0700 ([^&]+)", dockerfile)
    assert install is not None and install.groups()[:2] == user
    made = install.group(3).replace("\\", " ").split()
    assert target in made and init_target in made
    # where the init job writes it = where the process reads it, through the volume
    namespace: dict[str, Any] = {}
    for node in ast.parse(_init_script(compose)).body:
        if isinstance(node, ast.ImportFrom | ast.Assign):
            exec(compile(ast.Module([node], []), "<init>", "exec"), namespace)
    written = namespace["KEY_FILES"][process if process != "relay" else "relay"]
    assert written.relative_to(init_target) == key_file.relative_to(target)


def test_the_init_job_issues_through_spine_admin(compose: dict[str, Any]) -> None:
    source = _init_script(compose)
    assert "from spine_admin import issue" in source and "await issue(" in source
    assert "owner=SYSTEM" in source  # the HTTP agent's registration is the operator's
