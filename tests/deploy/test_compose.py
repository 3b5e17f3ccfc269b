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

And the secured bus: every Kafka client logs in as its own principal from a credentials
volume only it mounts, the broker refuses what no ACL allows, and deploy/kafka-sasl.sh (the
broker's entrypoint and the step that makes its passwords) runs for real, against stand-ins
of Kafka's scripts.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from spine_admin.acls import SERVICES, SUPER_USERS
from spine_demo_agents.echo_http import EchoHttpSettings
from spine_kafka.security import read_credentials_file

from .helpers import (
    BY_NAME,
    COMPOSE_FILE,
    DEMO_AGENT_IDS,
    LLM_AGENT,
    OPERATOR_TOOLS,
    OPTIONAL_AGENTS,
    PROCESSES,
    ROOT,
    TEST_API_KEY,
    TOOLS,
    InterpolationError,
    environment,
    expected_of,
    kafka_principal,
    load_compose,
    load_process_settings,
    required_env,
    workspace_scripts,
)

pytestmark = pytest.mark.timeout(900)

CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
COMPOSECHECK = Path(__file__).parent / "composecheck"
COMPOSE_SPEC = Path(__file__).parent / "compose-spec.json"
PROFILES = ("observability", "llm")
KAFKA_SASL = COMPOSE_FILE.parent / "kafka-sasl.sh"
#: The one-shot step that makes the broker's passwords and prepares the credentials volumes.
CREDENTIALS_STEP = "kafka-credentials"
#: Who may mount a principal's credentials volume besides its own process.
ISSUERS = ("init", CREDENTIALS_STEP)
#: The optional model agent's own issue step (profile llm).
LLM_ISSUER = "llm-init"


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
    deployed = set(scripts) - OPERATOR_TOOLS - OPTIONAL_AGENTS
    assert deployed == {p.script for p in PROCESSES}, "a script has no process"
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


def test_the_console_after_the_gateway_without_the_master_key(compose: dict[str, Any]) -> None:
    """DESIGN §13: the console on port 8080, a client of the gateway's HTTP API (started once
    the gateway is healthy), its sessions in Redis; it is never handed the master key and
    has no Kafka login."""
    services = compose["services"]
    console = services["console"]
    assert console["command"] == ["spine-console"]
    assert any(str(p).endswith(":8080") for p in console["ports"]), "console on port 8080"
    env = environment(console)
    assert env["SPINE_CONSOLE_HOST"] == "0.0.0.0" and env["SPINE_CONSOLE_PORT"] == "8080"
    gateway_port = environment(services["gateway"])["PORT"]
    assert env["SPINE_CONSOLE_GATEWAY_URL"] == f"http://gateway:{gateway_port}"
    assert env["REDIS_URL"] == environment(services["gateway"])["REDIS_URL"]
    assert env["SPINE_CONSOLE_COOKIE_SECURE"] == "false"  # http://localhost
    assert not {"API_KEY", "SPINE_METRICS_SCRAPE_TOKEN", "DATABASE_URL"} & set(env)
    assert not any(k.startswith("KAFKA_") for k in env)
    assert console["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert console["depends_on"]["redis"]["condition"] == "service_healthy"
    test = " ".join(map(str, console["healthcheck"]["test"]))
    assert "http://127.0.0.1:8080/healthz" in test
    assert console["image"] == services["gateway"]["image"]
    assert not console.get("volumes"), "nothing to keep: sessions live in Redis"


def test_the_gateway_expects_every_process_on_the_bus(compose: dict[str, Any]) -> None:
    """/status is 503 while something on SPINE_EXPECTED_SERVICES has nothing running: the
    list names exactly the services and Kafka agents this file runs."""
    env = environment(compose["services"]["gateway"])
    named = set(env["SPINE_EXPECTED_SERVICES"].split(","))
    assert named == expected_of(compose["services"])
    settings = load_process_settings(BY_NAME["gateway"], env)
    assert set(settings.expected.names) == named  # type: ignore[attr-defined]


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
    for node in ast.walk(tree):  # every imported name exists
        if isinstance(node, ast.ImportFrom):
            imported = __import__(str(node.module), fromlist=["*"])
            for alias in node.names:
                assert hasattr(imported, alias.name), f"{node.module}.{alias.name}"
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
    # a registration naming an owner is taken only from the gateway's topic (the registry)
    assert "cfg.topic(topics.REGISTRY_REQUESTS)" in source


# --- the secured bus ------------------------------------------------------------------------
def _init_constants(compose: dict[str, Any]) -> dict[str, Any]:
    """The init script's imports and constants, evaluated for real."""
    namespace: dict[str, Any] = {}
    for node in ast.parse(_init_script(compose)).body:
        if isinstance(node, ast.ImportFrom | ast.Assign):
            exec(compile(ast.Module([node], []), "<init>", "exec"), namespace)
    return namespace


def _mounts(service: dict[str, Any]) -> list[list[str]]:
    """source, target[, mode] of each short-syntax volume."""
    return [str(v).split(":") for v in service.get("volumes", [])]


def _mounted_by(services: dict[str, Any], volume: str) -> set[str]:
    return {name for name, svc in services.items() if any(m[0] == volume for m in _mounts(svc))}


def _kafka_clients() -> list[str]:
    return [p.name for p in PROCESSES if p.kafka_native]


@pytest.mark.parametrize("prefix", ["", "stage-"])
def test_every_kafka_client_logs_in_as_its_own_principal(prefix: str) -> None:
    """SASL_PLAINTEXT/SCRAM-SHA-512 as the principal spine-admin issues for it (with the
    installation's topic prefix), from its credentials file; the init job as admin."""
    services = load_compose({"API_KEY": TEST_API_KEY, "SPINE_TOPIC_PREFIX": prefix})["services"]
    principals = {name: kafka_principal(name, prefix) for name in _kafka_clients()}
    assert len(set(principals.values())) == len(principals), "one principal per process"
    for name, principal in principals.items():
        env = environment(services[name])
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env.get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512") == "SCRAM-SHA-512", name
        assert PurePosixPath(env["KAFKA_CREDENTIALS_FILE"]).name == f"{principal}.json"
        assert not {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} & set(env), name
        settings = load_process_settings(BY_NAME[name], env)  # a stand-in file, same name
        security = settings.kafka_security  # type: ignore[attr-defined]
        assert security.sasl and security.sasl_username == principal, name
    init = environment(services["init"])
    assert init["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert PurePosixPath(init["KAFKA_CREDENTIALS_FILE"]).name == "admin.json"
    assert "admin" in SUPER_USERS


def test_each_principal_mounts_only_its_own_credentials(compose: dict[str, Any]) -> None:
    """Its file in a named volume that it mounts read-only and no other process mounts; the
    init job writes it there (CREDENTIALS/<name>) once kafka-credentials has given the
    volume to the service user."""
    services, volumes = compose["services"], compose.get("volumes") or {}
    constants = _init_constants(compose)
    assert set(constants["SERVICES"]) == set(SERVICES)
    step = {m[1]: m[0] for m in _mounts(services[CREDENTIALS_STEP])}
    init = {m[0]: m[1] for m in _mounts(services["init"])}
    seen: set[str] = set()
    for name in _kafka_clients():
        service = services[name]
        where = PurePosixPath(environment(service)["KAFKA_CREDENTIALS_FILE"]).parent
        [mount] = [m for m in _mounts(service) if PurePosixPath(m[1]) == where]
        source = mount[0]
        assert source in volumes and source not in seen, f"{name}: a named volume of its own"
        assert mount[2:] == ["ro"], f"{name} mounts its credentials read-only"
        assert _mounted_by(services, source) == {name, *ISSUERS}, source
        assert init[source] == str(constants["CREDENTIALS"] / name), "init writes it there"
        assert step[f"/secrets/principals/{name}"] == source
        seen.add(source)
    secret_volumes = seen | {"kafka-secrets", "admin-credentials"}
    for name in _kafka_clients():
        mine = {m[0] for m in _mounts(services[name])} & secret_volumes
        assert len(mine) == 1, f"{name} mounts {sorted(mine)}"


def test_the_broker_asks_every_client_to_log_in(compose: dict[str, Any]) -> None:
    """DESIGN §12's broker: every listener SASL (the host's too), SCRAM-SHA-512 for clients,
    PLAIN for the KRaft controller, StandardAuthorizer, no ACL = no access, three super
    users; formatted with SCRAM users by kafka-sasl.sh; a healthcheck that logs in."""
    services = compose["services"]
    kafka = services["kafka"]
    env = environment(kafka)
    listeners = dict(e.split(":") for e in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners.values()) == {"SASL_PLAINTEXT"}, listeners
    names = {e.split("://")[0] for e in env["KAFKA_LISTENERS"].split(",")}
    assert names == set(listeners) and "HOST" in names
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == "SCRAM-SHA-512"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env[f"KAFKA_LISTENER_NAME_{controller}_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == "PLAIN"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"].split(";") == [f"User:{u}" for u in SUPER_USERS]
    assert not any("password" in value.lower() for value in env.values()), "no password here"
    assert kafka["entrypoint"] == ["bash", "/opt/spine/kafka-sasl.sh", "broker"]
    mounts = {m[1]: m for m in _mounts(kafka)}
    script = ["./kafka-sasl.sh", "/opt/spine/kafka-sasl.sh", "ro"]
    assert mounts["/opt/spine/kafka-sasl.sh"] == script and KAFKA_SASL.exists()
    assert mounts["/etc/kafka/spine"] == ["kafka-secrets", "/etc/kafka/spine", "ro"]
    assert _mounted_by(services, "kafka-secrets") == {"kafka", CREDENTIALS_STEP}
    test = " ".join(map(str, kafka["healthcheck"]["test"]))
    assert "--command-config /opt/kafka/config/client.properties" in test
    assert kafka["depends_on"][CREDENTIALS_STEP]["condition"] == "service_completed_successfully"


def test_the_credentials_step(compose: dict[str, Any]) -> None:
    """One-shot, root without a network (it only makes files); the admin's copy goes to the
    issue jobs only, read-only, where their KAFKA_CREDENTIALS_FILE names it."""
    services = compose["services"]
    step = services[CREDENTIALS_STEP]
    assert step["restart"] == "no" and step["network_mode"] == "none"
    assert step["image"] == services["kafka"]["image"] and step["user"] == "0:0"
    assert step["entrypoint"] == ["bash", "/opt/spine/kafka-sasl.sh", "credentials"]
    targets = {m[1]: m[0] for m in _mounts(step)}
    assert targets["/secrets/kafka"] == "kafka-secrets"
    assert targets["/secrets/admin"] == "admin-credentials"
    # the operator's login: its two issue steps (llm-init only with the llm profile)
    assert _mounted_by(services, "admin-credentials") == {"init", LLM_ISSUER, CREDENTIALS_STEP}
    admin_file = PurePosixPath(environment(services["init"])["KAFKA_CREDENTIALS_FILE"])
    [mount] = [m for m in _mounts(services["init"]) if m[0] == "admin-credentials"]
    assert mount == ["admin-credentials", str(admin_file.parent), "ro"]
    condition = services["init"]["depends_on"][CREDENTIALS_STEP]["condition"]
    assert condition == "service_completed_successfully"


def test_the_init_job_issues_every_principal(compose: dict[str, Any]) -> None:
    source = _init_script(compose)
    for call in ("issue_service(", "credentials_dir=CREDENTIALS / name", "Broker("):
        assert call in source, call
    assert "credentials_dir=CREDENTIALS / agent_id" in source
    signers = set(_init_constants(compose)["KEY_FILES"])
    assert signers == {"relay"} | (set(_kafka_clients()) - set(SERVICES))


# --- deploy/kafka-sasl.sh, run for real ------------------------------------------------------
def _sasl(mode: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        ["bash", str(KAFKA_SASL), mode], env=full, capture_output=True, text=True, timeout=60
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _make_credentials(root: Path) -> dict[str, str]:
    me = f"{os.getuid()}:{os.getgid()}"
    (root / "principals" / "gateway").mkdir(parents=True)
    env = {"SPINE_SECRETS_ROOT": str(root), "SPINE_OWNER": me, "SPINE_BROKER_OWNER": me}
    made = _sasl("credentials", env)
    assert made.returncode == 0, made.stderr
    return env


def _password(path: Path) -> str:
    return read_credentials_file(path)[1].get_secret_value()


def test_the_credentials_step_makes_passwords_once(tmp_path: Path) -> None:
    env = _make_credentials(tmp_path)
    passwords = {}
    for user in ("admin", "broker", "controller"):
        path = tmp_path / "kafka" / f"{user}.json"
        assert read_credentials_file(path)[0] == user  # what every client reads
        assert _mode(path) == 0o600
        passwords[user] = _password(path)
        assert len(passwords[user]) >= 32
    assert len(set(passwords.values())) == 3
    assert _password(tmp_path / "admin" / "admin.json") == passwords["admin"]
    for directory in ("kafka", "admin", "principals/gateway"):
        assert _mode(tmp_path / directory) == 0o700, directory
    assert _sasl("credentials", env).returncode == 0  # again: kept
    assert _password(tmp_path / "kafka" / "broker.json") == passwords["broker"]


_RUN_CLASS = """#!/usr/bin/env bash
printf '%s\\n' "$@" >"$STUB_LOG/run-class.argv"
cp "${1#@}" "$STUB_LOG/format.args"
touch "${KAFKA_LOG_DIRS}/meta.properties"
"""
_SERVER_START = """#!/usr/bin/env bash
printf '%s\\n' "$@" >"$STUB_LOG/start.argv"
"""
_STORAGE = """#!/usr/bin/env bash
exec $(dirname $0)/kafka-run-class.sh kafka.tools.StorageTool "$@"
"""


def _stub_kafka(tmp_path: Path) -> Path:
    """Kafka's bin/ scripts as stand-ins that record how they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("kafka-run-class.sh", _RUN_CLASS),
        ("kafka-server-start.sh", _SERVER_START),
        ("kafka-storage.sh", _STORAGE),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _properties(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def _broker_env(compose: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The kafka service's environment, its paths moved under ``tmp_path``."""
    secrets = tmp_path / "secrets"
    _make_credentials(secrets)
    for name in ("config", "data", "log"):
        (tmp_path / name).mkdir()
    return {
        **environment(compose["services"]["kafka"]),
        "KAFKA_LOG_DIRS": str(tmp_path / "data"),
        "SPINE_KAFKA_SECRETS": str(secrets / "kafka"),
        "SPINE_KAFKA_CONFIG_DIR": str(tmp_path / "config"),
        "SPINE_KAFKA_BIN": str(_stub_kafka(tmp_path)),
        "STUB_LOG": str(tmp_path / "log"),
    }


def test_the_broker_entrypoint_formats_with_scram_users_once(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    env = _broker_env(compose, tmp_path)
    password = {
        user: _password(tmp_path / "secrets" / "kafka" / f"{user}.json")
        for user in ("admin", "broker", "controller")
    }
    started = _sasl("broker", env)
    assert started.returncode == 0, started.stderr
    config = tmp_path / "config" / "server.properties"
    props = _properties(config)
    assert _mode(config) == 0o600
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith(".StandardAuthorizer")
    assert props["super.users"] == "User:admin;User:broker;User:controller"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert "heap.opts" not in props, "JVM options are not broker properties"
    client = props["listener.name.client.scram-sha-512.sasl.jaas.config"]
    assert f'username="broker" password="{password["broker"]}";' in client
    assert "listener.name.host.scram-sha-512.sasl.jaas.config" in props
    controller = props["listener.name.controller.plain.sasl.jaas.config"]
    assert f'user_controller="{password["controller"]}"' in controller
    health = _properties(tmp_path / "config" / "client.properties")
    assert health["security.protocol"] == "SASL_PLAINTEXT"
    assert password["broker"] in health["sasl.jaas.config"]
    log = tmp_path / "log"
    [argfile] = (log / "run-class.argv").read_text().split()
    assert argfile.startswith("@"), "no password on the format's command line"
    assert not Path(argfile[1:]).exists(), "the argument file is removed"
    args = (log / "format.args").read_text().split()
    assert args[:2] == ["kafka.tools.StorageTool", "format"]
    assert args[args.index("--cluster-id") + 1] == env["CLUSTER_ID"]
    scram = [args[i + 1] for i, a in enumerate(args) if a == "--add-scram"]
    users = ("admin", "broker")
    assert scram == [f"SCRAM-SHA-512=[name={u},password={password[u]}]" for u in users]
    assert (log / "start.argv").read_text().split() == [str(config)]
    (log / "run-class.argv").unlink()
    assert _sasl("broker", env).returncode == 0
    assert not (log / "run-class.argv").exists(), "a formatted volume is not formatted again"


def test_the_broker_entrypoint_refuses_what_nobody_could_log_in_to(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    env = _broker_env(compose, tmp_path)
    (tmp_path / "data" / "meta.properties").touch()  # an unsecured stack's data volume
    refused = [_sasl("broker", env)]
    assert refused[-1].returncode != 0 and "without SCRAM users" in refused[-1].stderr
    (tmp_path / "data" / ".spine-scram").write_text("the digest of other passwords\n")
    refused.append(_sasl("broker", env))
    assert refused[-1].returncode != 0 and "other passwords" in refused[-1].stderr
    plaintext = {**env, "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CLIENT:PLAINTEXT"}
    refused.append(_sasl("render", plaintext))
    assert refused[-1].returncode != 0 and "must ask for a login" in refused[-1].stderr
    said = "".join(r.stdout + r.stderr for r in refused)
    for user in ("admin", "broker", "controller"):
        assert _password(tmp_path / "secrets" / "kafka" / f"{user}.json") not in said


# --- the optional model agent (profile llm) -------------------------------------------------
def test_the_llm_agent_is_optional_and_configured_from_the_environment(
    compose: dict[str, Any],
) -> None:
    """`docker compose up` leaves it out; `--profile llm up` issues it (its own step) and
    runs it from SPINE_LLM_* on the host, as its own principal with its own signing key."""
    services, volumes = compose["services"], compose.get("volumes") or {}
    llm, issuer = services[LLM_AGENT.name], services[LLM_ISSUER]
    assert llm["profiles"] == ["llm"] and issuer["profiles"] == ["llm"]
    assert llm["command"] == [LLM_AGENT.script] and LLM_AGENT.script in workspace_scripts()
    assert LLM_AGENT.script in OPTIONAL_AGENTS
    assert {n for n, svc in services.items() if "llm" in svc.get("profiles", ())} == {
        LLM_AGENT.name,
        LLM_ISSUER,
    }
    env = environment(llm)
    assert not required_env(LLM_AGENT) - set(env)
    settings = load_process_settings(LLM_AGENT, env)  # the real validation
    assert settings.llm_provider == "openai" and settings.llm_agent_id == "llm"  # type: ignore[attr-defined]
    key = settings.llm_api_key  # type: ignore[attr-defined]
    assert key is None or not key.get_secret_value()  # nothing inline
    test = " ".join(map(str, llm["healthcheck"]["test"]))
    assert f":{settings.ops_port}/ready" in test  # type: ignore[attr-defined]
    # every SPINE_LLM_* comes from the host's environment, the key never from the file
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["llm"]["environment"]
    for name, value in raw.items():
        if name.startswith("SPINE_LLM_"):
            assert str(value).startswith(f"${{{name}:-"), name
    with_model = load_compose(
        {
            "API_KEY": TEST_API_KEY,
            "SPINE_LLM_PROVIDER": "anthropic",
            "SPINE_LLM_MODEL": "claude-x",
            "SPINE_LLM_API_KEY": "sk-host-only-0123456789",
        }
    )
    configured = load_process_settings(LLM_AGENT, environment(with_model["services"]["llm"]))
    assert configured.llm_model == "claude-x"  # type: ignore[attr-defined]
    # issued like zoe: its principal, its key, each in a volume only it and its issuer mount
    principal = kafka_principal("llm")
    assert PurePosixPath(env["KAFKA_CREDENTIALS_FILE"]).name == f"{principal}.json"
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    mounts = {m[0]: m for m in _mounts(llm)}
    assert mounts["llm-credentials"][1:] == ["/etc/spine/kafka", "ro"]
    assert _mounted_by(services, "llm-credentials") == {"llm", LLM_ISSUER, CREDENTIALS_STEP}
    assert _mounted_by(services, "llm-key") == {"llm", LLM_ISSUER}
    assert {"llm-key", "llm-credentials"} <= set(volumes)
    key_file = PurePosixPath(env["SPINE_AGENT_SIGNING_KEY_FILE"])
    assert key_file.parent == PurePosixPath(mounts["llm-key"][1])
    command = issuer["command"]
    assert command[:3] == ["spine-admin", "issue-agent", "llm"]
    issued_key = PurePosixPath(command[command.index("--key-file") + 1])
    issuer_mounts = {m[0]: m for m in _mounts(issuer)}
    assert issued_key.relative_to(issuer_mounts["llm-key"][1]) == key_file.relative_to(
        mounts["llm-key"][1]
    )
    credentials_dir = command[command.index("--credentials-dir") + 1]
    assert issuer_mounts["llm-credentials"][1] == credentials_dir
    assert issuer_mounts["admin-credentials"][2:] == ["ro"]
    admin = PurePosixPath(environment(issuer)["KAFKA_CREDENTIALS_FILE"])
    assert admin.parent == PurePosixPath(issuer_mounts["admin-credentials"][1])
    step = {m[1]: m[0] for m in _mounts(services[CREDENTIALS_STEP])}
    assert step["/secrets/principals/llm"] == "llm-credentials"
    # the image gives /var/lib/spine to the service user: a new key volume is writable
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = re.search(r"install -d -o 10001 -g 10001 -m 0700 ([^&]+)", dockerfile)
    assert install is not None and issuer_mounts["llm-key"][1] in install.group(1).split()
    # after the topics and services exist; the agent after it is issued
    assert issuer["restart"] == "no"
    assert issuer["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert llm["depends_on"][LLM_ISSUER]["condition"] == "service_completed_successfully"
    assert llm["image"] == issuer["image"] == services["zoe"]["image"]
