"""deploy/k8s rendered with kustomize and validated offline.

Core kinds against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict, for
:data:`KUBERNETES_VERSION`); Strimzi resources with the project's structural check
(tests/deploy/strimzi.py); then what the schemas cannot know: every service and agent has
a Deployment running its command with the env its settings need, probes that point at
something the process serves, hardening, autoscaling within the partition counts, topic
numbers that agree with what the services themselves ensure, and a secured broker: every
process logs in as its own KafkaUser, whose ACLs are spine_admin's table.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
from spine_admin.acls import SERVICES, SUPER_USERS, Acl, agent_grants, service_grants

from . import strimzi
from .helpers import (
    BY_NAME,
    GROUP_CONSUMERS,
    K8S,
    KUBERNETES_VERSION,
    LLM_AGENT,
    LLM_COMPONENT,
    OVERLAYS,
    PROCESSES,
    ROOT,
    TEST_API_KEY,
    expected_of,
    kafka_principal,
    load_process_settings,
    of_kind,
    required_env,
)

pytestmark = pytest.mark.timeout(900)

HPA_TARGETS = ("gateway", "orchestrator", "zoe", "eddie", "echo", "echo-http")
SECRETS = {
    "API_KEY": TEST_API_KEY,
    "DATABASE_URL": "postgresql://spine:secret@postgres:5432/spine",
    "REDIS_URL": "redis://redis:6379/0",
    "POSTGRES_PASSWORD": "secret",
    "SPINE_METRICS_SCRAPE_TOKEN": "test-scrape-token-0123456789",
    # a KafkaUser's Secret (made by Strimzi's User Operator)
    "password": "test-kafka-password-0123456789",
    # the optional model agent's provider key (the Secret ai-spine-llm)
    "api-key": "sk-test-provider-key-0123456789",
}
NAMESPACES = {"dev": "ai-spine-dev", "prod": "ai-spine"}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The env a container would see: envFrom ConfigMaps, then env (secrets faked)."""
    maps = of_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in maps, f"envFrom names a missing ConfigMap {name}"
        env.update({k: str(v) for k, v in maps[name]["data"].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = SECRETS[item["valueFrom"]["secretKeyRef"]["key"]]
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = "pod-name-0"
    return env


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
def test_core_kinds_match_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    checked = 0
    for doc in rendered[overlay]:
        if doc["apiVersion"].startswith("kafka.strimzi.io/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} "
                f"at {list(exc.absolute_path)}"
            )
        checked += 1
    assert checked > 20


def test_the_schema_check_catches_a_mistake(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = copy.deepcopy(of_kind(rendered["prod"], "Deployment")["gateway"])
    _container(deployment)["livenessProbe"]["httpGet"]["pathh"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_strimzi_resources(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    assert strimzi.check(docs) == []
    assert len(of_kind(docs, "Kafka")) == 1
    assert of_kind(docs, "KafkaNodePool"), "the overlay brings the node pools"
    kafka = next(iter(of_kind(docs, "Kafka").values()))
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    assert "topicOperator" in kafka["spec"]["entityOperator"]


def test_base_strimzi_resources_alone(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert strimzi.check(rendered["base"], whole=False) == []


def test_the_strimzi_check_catches_mistakes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["prod"])
    pools = of_kind(docs, "KafkaNodePool")
    pools["brokers"]["spec"]["roles"] = ["broker", "zookeeper"]
    pools["controllers"]["spec"]["storage"] = {"type": "persistent-claim"}
    kafka = next(iter(of_kind(docs, "Kafka").values()))
    kafka["spec"]["kafka"]["listeners"][0]["port"] = 9404
    topic = of_kind(docs, "KafkaTopic")["spine.flows"]
    topic["spec"]["replicas"] = 5
    topic["metadata"]["labels"]["strimzi.io/cluster"] = "other"
    problems = "\n".join(strimzi.check(docs))
    for expected in ("spec.roles", "needs a size", "not reserved", "no Kafka named 'other'"):
        assert expected in problems
    docs = copy.deepcopy(rendered["prod"])
    of_kind(docs, "KafkaTopic")["spine.usage"]["spec"]["replicas"] = 4
    assert any("4 replicas but 3 brokers" in p for p in strimzi.check(docs))


def test_the_strimzi_check_catches_user_mistakes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = copy.deepcopy(rendered["prod"])
    users = of_kind(docs, "KafkaUser")
    [rule, *_] = users["gateway"]["spec"]["authorization"]["acls"]
    rule["operations"] = ["READ"]
    rule["resource"]["patternType"] = "prefixed"
    users["relay"]["spec"]["authentication"]["type"] = "scram-sha-256"
    users["auth"]["metadata"]["labels"]["strimzi.io/cluster"] = "other"
    problems = "\n".join(strimzi.check(docs))
    for expected in ("operations must be", "patternType", "authentication.type", "'other'"):
        assert expected in problems, expected
    docs = copy.deepcopy(rendered["prod"])
    kafka = next(iter(of_kind(docs, "Kafka").values()))
    del kafka["spec"]["kafka"]["listeners"][0]["authentication"]
    del kafka["spec"]["kafka"]["authorization"]
    del kafka["spec"]["entityOperator"]["userOperator"]
    problems = "\n".join(strimzi.check(docs))
    for expected in ("no listener takes scram-sha-512", "need spec.kafka.authorization", "userOp"):
        assert expected in problems, expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_has_a_deployment(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    deployments = of_kind(docs, "Deployment")
    images = set()
    for process in PROCESSES:
        assert process.name in deployments, f"{overlay}: no Deployment {process.name}"
        container = _container(deployments[process.name])
        assert container["command"] == [process.script]
        images.add(container["image"])
        env = container_env(docs, container)
        missing = required_env(process) - set(env)
        assert not missing, f"{overlay}/{process.name} lacks {sorted(missing)}"
        load_process_settings(process, env)  # the settings accept it
    assert len(images) == 1, images


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_expects_every_process_on_the_bus(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """/status is 503 while something on SPINE_EXPECTED_SERVICES has nothing running: the
    list names exactly the services and Kafka agents the overlay deploys."""
    docs = rendered[overlay]
    deployments = of_kind(docs, "Deployment")
    env = container_env(docs, _container(deployments["gateway"]))
    named = set(env["SPINE_EXPECTED_SERVICES"].split(","))
    assert named == expected_of(deployments), overlay
    settings = load_process_settings(BY_NAME["gateway"], env)
    assert set(settings.expected.names) == named  # type: ignore[attr-defined]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_point_at_what_each_process_serves(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    for name, deployment in of_kind(docs, "Deployment").items():
        container = _container(deployment)
        assert "livenessProbe" in container and "readinessProbe" in container, name
        if name not in BY_NAME:
            continue
        process = BY_NAME[name]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            if process.http_bind:
                port = probe["httpGet"]["port"]
                port = ports.get(port, port)
                settings = load_process_settings(process, container_env(docs, container))
                assert port == getattr(settings, process.http_bind[1]), f"{name} {kind}"
                host_env = process.http_bind[0]
                assert container_env(docs, container)[host_env] == "0.0.0.0", name
            else:
                assert process.ops_bind, f"{name} serves neither an API nor the ops endpoint"
                port = probe["httpGet"]["port"]
                port = ports.get(port, port)
                env = container_env(docs, container)
                settings = load_process_settings(process, env)
                assert port == settings.ops_port != 0, f"{name} {kind}"  # type: ignore[attr-defined]
                path = "/health" if kind == "livenessProbe" else "/ready"
                assert probe["httpGet"]["path"] == path, f"{name} {kind}"
                assert env[process.ops_bind[0]] == "0.0.0.0", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_hardened(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, workload in of_kind(rendered[overlay], kind).items():
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
            assert pod.get("automountServiceAccountToken") is False, name
            # a Service named echo-http would otherwise inject ECHO_HTTP_PORT=tcp://...
            assert pod.get("enableServiceLinks") is False, name
            for container in pod["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, name
                assert sc["readOnlyRootFilesystem"] is True, name
                assert sc["capabilities"]["drop"] == ["ALL"], name
                resources = container["resources"]
                assert {"cpu", "memory"} <= set(resources["requests"]), name
                assert "memory" in resources["limits"], name
            if name in BY_NAME:
                grace = pod["terminationGracePeriodSeconds"]
                # the service runtime drains 15 s, the agent SDK 20 s
                assert grace > 20, f"{name}: terminationGracePeriodSeconds {grace}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_ports_that_exist(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    workloads = {**of_kind(docs, "Deployment"), **of_kind(docs, "StatefulSet")}
    for name, service in of_kind(docs, "Service").items():
        selector = service["spec"]["selector"]
        matches = [
            w
            for w in workloads.values()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} workloads"
        ports = {
            p["name"]
            for c in matches[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: {port['targetPort']}"
    assert set(of_kind(docs, "Service")) >= {"gateway", "metrics", "echo-http"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_and_disruption_budgets(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    deployments = of_kind(docs, "Deployment")
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    config = next(iter(of_kind(docs, "ConfigMap").values()))["data"]
    partitions = int(config["SPINE_TOPIC_PARTITIONS"])
    assert set(hpas) == set(HPA_TARGETS)
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert "replicas" not in deployments[name]["spec"], f"{name}: the HPA owns replicas"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        if name in GROUP_CONSUMERS:
            assert hpa["spec"]["maxReplicas"] <= partitions, f"{name}: idle replicas"
    for name in GROUP_CONSUMERS:
        if name not in hpas:
            assert deployments[name]["spec"].get("replicas", 1) <= partitions, name
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            p
            for p in pdbs.values()
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        if name in BY_NAME:
            assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_agree_with_what_the_services_ensure(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Services wait for each topic they ensure to have SPINE_TOPIC_PARTITIONS partitions."""
    docs = rendered[overlay]
    config = next(iter(of_kind(docs, "ConfigMap").values()))["data"]
    kafka = next(iter(of_kind(docs, "Kafka").values()))
    plain = next(lst for lst in kafka["spec"]["kafka"]["listeners"] if lst["tls"] is False)
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == (
        f"{kafka['metadata']['name']}-kafka-bootstrap:{plain['port']}"
    )
    for topic in of_kind(docs, "KafkaTopic").values():
        spec = topic["spec"]
        assert spec["topicName"].startswith(config["SPINE_TOPIC_PREFIX"])
        if topic["metadata"]["labels"]["ai-spine/partitions"] == "default":
            assert spec["partitions"] == int(config["SPINE_TOPIC_PARTITIONS"]), topic
        assert spec["replicas"] == int(config["SPINE_TOPIC_REPLICATION"])
        assert spec["config"]["min.insync.replicas"] == int(config["SPINE_TOPIC_MIN_ISR"])
    if overlay == "prod":
        assert int(config["SPINE_TOPIC_PARTITIONS"]) >= 6
        assert int(config["SPINE_TOPIC_REPLICATION"]) == 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_and_documented_secrets(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    namespace = NAMESPACES[overlay]
    assert set(of_kind(docs, "Namespace")) == {namespace}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    refs = {
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for kind in ("Deployment", "StatefulSet", "Job")
        for w in of_kind(docs, kind).values()
        for c in w["spec"]["template"]["spec"]["containers"]
        for item in c.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert {"API_KEY", "DATABASE_URL", "REDIS_URL"} <= {key for _, key in refs}
    gateway = _container(of_kind(docs, "Deployment")["gateway"])
    token = {i["name"]: i for i in gateway["env"]}["SPINE_METRICS_SCRAPE_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["key"] == "SPINE_METRICS_SCRAPE_TOKEN"
    assert not token["valueFrom"]["secretKeyRef"].get("optional"), "Prometheus needs one"
    maps = of_kind(docs, "ConfigMap").values()
    assert not any("SPINE_METRICS_SCRAPE_TOKEN" in m.get("data", {}) for m in maps)
    assert not of_kind(docs, "Secret"), "secrets are created in the cluster, not committed"
    guide = (ROOT / "docs" / "deploy.md").read_text()
    users = of_kind(docs, "KafkaUser")
    for name, key in refs:
        if name in users:  # the User Operator makes it: nothing to set
            assert key == "password", f"{name}: a KafkaUser's Secret holds `password`"
            continue
        assert name in guide and f"{key}=" in guide, f"docs/deploy.md: how to set {key}"
    assert "KafkaUser" in guide, "docs/deploy.md: where the Kafka logins come from"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_relay_mounts_its_signing_key_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """The relay signs calls to HTTP agents with a key every replica shares and no other
    pod holds: a read-only mount of a Secret created in the cluster (docs/deploy.md)."""
    docs = rendered[overlay]
    relay = of_kind(docs, "Deployment")["relay"]
    container = _container(relay)
    key_file = PurePosixPath(container_env(docs, container)["SPINE_RELAY_SIGNING_KEY_FILE"])
    [mount] = [
        m for m in container["volumeMounts"] if key_file.parent == PurePosixPath(m["mountPath"])
    ]
    assert mount.get("readOnly") is True
    volumes = {v["name"]: v for v in relay["spec"]["template"]["spec"]["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    [item] = [i for i in secret["items"] if i["path"] == key_file.name]
    assert not secret.get("optional"), "a relay without its key must not start"
    assert secret["defaultMode"] & 0o007 == 0, "the key is readable by the pod's group only"
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, workload in of_kind(docs, kind).items():
            mounted = {
                v["secret"]["secretName"]
                for v in workload["spec"]["template"]["spec"].get("volumes", [])
                if "secret" in v
            }
            assert name == "relay" or secret["secretName"] not in mounted, name
    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert secret["secretName"] in guide and f"--from-file={item['key']}=" in guide


# --- the secured bus ------------------------------------------------------------------------
def _kafka_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [kafka] = of_kind(docs, "Kafka").values()
    return kafka["spec"]  # type: ignore[no-any-return]


def _prefix(docs: list[dict[str, Any]]) -> str:
    return str(next(iter(of_kind(docs, "ConfigMap").values()))["data"]["SPINE_TOPIC_PREFIX"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_broker_asks_every_client_to_log_in(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """DESIGN §12: SCRAM-SHA-512 on every client listener, no ACL means no access, and the
    only super user of ours is the operator's admin."""
    spec = _kafka_spec(rendered[overlay])
    kafka = spec["kafka"]
    for listener in kafka["listeners"]:
        assert listener["authentication"] == {"type": "scram-sha-512"}, listener["name"]
    assert kafka["authorization"]["type"] == "simple"
    assert kafka["authorization"]["superUsers"] == ["admin"]
    assert "admin" in SUPER_USERS
    assert kafka["config"]["allow.everyone.if.no.acl.found"] is False
    assert spec["entityOperator"]["userOperator"] == {}


def _acls_of(user: dict[str, Any]) -> set[Acl]:
    """A KafkaUser's ACLs in spine_admin's terms (one per operation, as Strimzi writes them)."""
    kinds = {"topic": "TOPIC", "group": "GROUP", "transactionalId": "TRANSACTIONAL_ID"}
    patterns = {"literal": "LITERAL", "prefix": "PREFIXED"}
    out = set()
    for rule in user["spec"]["authorization"]["acls"]:
        resource = rule["resource"]
        assert rule.get("host", "*") == "*", "spine_admin's ACLs hold for any host"
        for operation in rule["operations"]:
            out.add(
                Acl(
                    kinds[resource["type"]],  # type: ignore[arg-type]
                    patterns[resource.get("patternType", "literal")],  # type: ignore[arg-type]
                    resource["name"],
                    operation.upper(),
                    rule.get("type", "allow").upper(),
                )
            )
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_kafka_user_per_principal_with_the_acl_table(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """One KafkaUser per service and Kafka demo agent, named as its principal, its ACLs
    exactly spine_admin's (docs/security.md, "ACLs per principal"); and admin, with none."""
    docs = rendered[overlay]
    prefix = _prefix(docs)
    users = of_kind(docs, "KafkaUser")
    wanted = {}
    for process in PROCESSES:
        if process.kafka_native:
            grants = (
                service_grants(process.name, prefix)
                if process.name in SERVICES
                else agent_grants(process.name, prefix)
            )
            wanted[kafka_principal(process.name, prefix)] = {g.acl for g in grants}
    assert set(users) == {*wanted, "admin"}
    for name, acls in wanted.items():
        spec = users[name]["spec"]
        assert spec["authentication"] == {"type": "scram-sha-512"}, name
        assert spec["authorization"]["type"] == "simple", name
        assert _acls_of(users[name]) == acls, name
        assert users[name]["metadata"]["labels"]["strimzi.io/cluster"] == "spine"
    assert "authorization" not in users["admin"]["spec"], "a super user needs no ACLs"
    assert any(a.permission == "DENY" for acls in wanted.values() for a in acls)


def _env_items(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_deployment_logs_in_as_its_own_user(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Username and password from its own KafkaUser (the password from the Secret the User
    Operator makes for it); no other workload reads that Secret."""
    docs = rendered[overlay]
    prefix = _prefix(docs)
    users = of_kind(docs, "KafkaUser")
    deployments = of_kind(docs, "Deployment")
    readers: dict[str, set[str]] = {}
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, workload in of_kind(docs, kind).items():
            for container in workload["spec"]["template"]["spec"]["containers"]:
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] in users:
                        readers.setdefault(ref["name"], set()).add(name)
    for process in PROCESSES:
        container = _container(deployments[process.name])
        env, items = container_env(docs, container), _env_items(container)
        if not process.kafka_native:
            assert "KAFKA_SASL_USERNAME" not in items, f"{process.name} does not use Kafka"
            continue
        principal = kafka_principal(process.name, prefix)
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", process.name
        assert env.get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512") == "SCRAM-SHA-512"
        assert items["KAFKA_SASL_USERNAME"]["value"] == principal
        ref = items["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (principal, "password"), process.name
        assert not ref.get("optional"), f"{process.name} must not start without its login"
        assert principal in users and readers[principal] == {process.name}, readers
        assert not {"KAFKA_CREDENTIALS_FILE", "KAFKA_SASL_PASSWORD_FILE"} & set(env)
        settings = load_process_settings(process, env)
        assert settings.kafka_security.sasl_username == principal  # type: ignore[attr-defined]
    register = _container(of_kind(docs, "Job")["register-echo-http"])
    assert _env_items(register)["KAFKA_SASL_USERNAME"]["value"] == "admin"
    assert readers["admin"] == {"register-echo-http"}
    # the operator's registration names its owner: the registry takes that only from here
    script = register["command"][2]
    assert "owner=SYSTEM" in script and "cfg.topic(topics.REGISTRY_REQUESTS)" in script


def test_committed_users_are_generated_from_the_acl_table(topic_generator: ModuleType) -> None:
    users_file = ROOT / "deploy" / "k8s" / "base" / "kafka" / "users.yaml"
    assert users_file.read_text() == topic_generator.render_users(), (
        "deploy/k8s/base/kafka/users.yaml drifted from spine_admin.acls: "
        "run `uv run python deploy/k8s/generate.py`"
    )
    assert topic_generator.main(["--check"]) == 0


def test_the_generator_refuses_a_principal_kubernetes_cannot_name(
    topic_generator: ModuleType,
) -> None:
    with pytest.raises(ValueError, match="cannot be a KafkaUser"):
        topic_generator.kafka_users(prefix="Stage_")


# --- the console ----------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_console_is_probed_and_served_and_holds_no_secret_but_redis(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """DESIGN §13: its own Deployment, alive on /healthz, ready on /readyz (Redis and the
    gateway answer), a Service; an HTTP client of the gateway only — no Kafka login, no
    database, never the master key."""
    docs = rendered[overlay]
    container = _container(of_kind(docs, "Deployment")["console"])
    assert container["command"] == ["spine-console"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    for kind, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[kind]["httpGet"] == {"path": path, "port": "http"}, kind
    env = container_env(docs, container)
    assert env["SPINE_CONSOLE_HOST"] == "0.0.0.0"
    assert int(env["SPINE_CONSOLE_PORT"]) == ports["http"]
    gateway = of_kind(docs, "Service")["gateway"]
    [gateway_port] = gateway["spec"]["ports"]
    assert env["SPINE_CONSOLE_GATEWAY_URL"] == f"http://gateway:{gateway_port['port']}"
    assert env["SPINE_CONSOLE_COOKIE_SECURE"] == "true"
    secrets = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for item in container["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert secrets == {"REDIS_URL"}, "the console is given no key: users sign in with theirs"
    assert not {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} & set(env)
    service = of_kind(docs, "Service")["console"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]
    assert "console" not in of_kind(docs, "HorizontalPodAutoscaler")
    replicas = of_kind(docs, "Deployment")["console"]["spec"].get("replicas", 1)
    assert replicas >= (2 if overlay == "prod" else 1)


# --- the optional model agent (components/llm-agent) -----------------------------------------
_COMPONENT = "components:\n  - ../../components/llm-agent\n"
#: What docs/deploy.md tells an overlay to add: its model, patched into ai-spine-llm
#: (a patch: the overlay's own generators run before its components).
_MODEL_PATCH = """  - target:
      kind: ConfigMap
      name: ai-spine-llm
    patch: |-
      - op: replace
        path: /data/SPINE_LLM_MODEL
        value: qwen2.5
      - op: replace
        path: /data/SPINE_LLM_BASE_URL
        value: http://vllm.models:8000/v1
"""


def test_the_llm_agent_is_in_no_overlay_unless_asked_for(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        assert "llm" not in of_kind(docs, "Deployment"), name
        assert kafka_principal("llm") not in of_kind(docs, "KafkaUser"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_llm_component_in_an_overlay(
    kustomize: Callable[[Path], list[dict[str, Any]]], tmp_path: Path, overlay: str
) -> None:
    """An overlay that lists the component runs spine-agent-llm like a demo agent: its own
    KafkaUser and tasks topic (generated from the ACL table), hardened, probed, its model
    from a ConfigMap the overlay merges into, its provider key only from a Secret."""
    copied = tmp_path / "k8s"
    shutil.copytree(K8S, copied)
    kustomization = copied / "overlays" / overlay / "kustomization.yaml"
    text = kustomization.read_text() + "\n" + _COMPONENT
    # a key may appear once in a kustomization: join the overlay's patches when it has some
    if "\npatches:\n" in text:
        text = text.replace("\npatches:\n", "\npatches:\n" + _MODEL_PATCH, 1)
    else:
        text += "patches:\n" + _MODEL_PATCH
    kustomization.write_text(text)
    docs = kustomize(copied / "overlays" / overlay)
    for doc in docs:
        if doc["kind"] in ("Deployment", "ConfigMap"):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert strimzi.check(docs) == []
    deployments = of_kind(docs, "Deployment")
    llm, zoe = deployments["llm"], deployments["zoe"]
    assert llm["metadata"]["namespace"] == NAMESPACES[overlay]
    container, zoe_container = _container(llm), _container(zoe)
    assert container["command"] == [LLM_AGENT.script]
    assert container["image"] == zoe_container["image"]
    # hardened and probed like zoe
    pod, zoe_pod = llm["spec"]["template"]["spec"], zoe["spec"]["template"]["spec"]
    for key in ("securityContext", "automountServiceAccountToken", "enableServiceLinks"):
        assert pod[key] == zoe_pod[key], key
    assert container["securityContext"] == zoe_container["securityContext"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe] == zoe_container[probe], probe
    # the model from the overlay's ConfigMap; the key from the Secret, nowhere else
    env, items = container_env(docs, container), _env_items(container)
    key_ref = items["SPINE_LLM_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert (key_ref["name"], key_ref["key"]) == ("ai-spine-llm", "api-key")
    assert not key_ref.get("optional"), "a model agent without its key must not start"
    for config_map in of_kind(docs, "ConfigMap").values():
        assert "SPINE_LLM_API_KEY" not in config_map.get("data", {})
    settings = load_process_settings(LLM_AGENT, env)
    assert settings.llm_model == "qwen2.5"  # type: ignore[attr-defined]
    assert settings.llm_base_url == "http://vllm.models:8000/v1"  # type: ignore[attr-defined]
    assert settings.llm_provider == "openai"  # type: ignore[attr-defined]
    assert settings.llm_agent_id == "llm"  # type: ignore[attr-defined]
    assert not required_env(LLM_AGENT) - set(env)
    # its own login: the KafkaUser agent-llm with an agent's ACLs, read by no one else
    prefix = _prefix(docs)
    principal = kafka_principal("llm", prefix)
    assert items["KAFKA_SASL_USERNAME"]["value"] == principal
    password = items["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (password["name"], password["key"]) == (principal, "password")
    user = of_kind(docs, "KafkaUser")[principal]
    wanted = {
        (g.acl.resource_type, g.acl.name, g.acl.operation) for g in agent_grants("llm", prefix)
    }
    granted = {
        (r["resource"]["type"], r["resource"]["name"], op)
        for r in user["spec"]["authorization"]["acls"]
        for op in r["operations"]
    }
    assert {(t.lower(), n, o.capitalize()) for t, n, o in wanted} == {
        (t.lower(), n, o) for t, n, o in granted
    }
    # its tasks topic, with the stack's numbers (prod's patches reach it too)
    [topic] = [
        t
        for t in of_kind(docs, "KafkaTopic").values()
        if t["spec"]["topicName"].endswith("agents.llm.tasks")
    ]
    assert topic["spec"]["partitions"] == int(env["SPINE_TOPIC_PARTITIONS"])
    assert topic["spec"]["replicas"] == int(env["SPINE_TOPIC_REPLICATION"])
    # its signing key: a Secret mounted read-only where SPINE_AGENT_SIGNING_KEY_FILE says
    key_file = PurePosixPath(env["SPINE_AGENT_SIGNING_KEY_FILE"])
    [mount] = [
        m for m in container["volumeMounts"] if key_file.parent == PurePosixPath(m["mountPath"])
    ]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "ai-spine-llm-signing-key" and not secret.get("optional")
    assert secret["defaultMode"] & 0o007 == 0
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for name in ("ai-spine-llm", "ai-spine-llm-signing-key", "components/llm-agent"):
        assert name in guide, name


def test_the_llm_components_kafka_resources_are_generated(topic_generator: ModuleType) -> None:
    committed = (LLM_COMPONENT / "kafka.yaml").read_text()
    assert committed == topic_generator.render_llm_agent(), (
        "deploy/k8s/components/llm-agent/kafka.yaml drifted: run deploy/k8s/generate.py"
    )
