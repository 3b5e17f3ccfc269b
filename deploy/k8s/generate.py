"""Strimzi manifests generated from the project's registries, so they never drift from the code.

* ``base/kafka/topics.yaml``: one ``KafkaTopic`` per topic of the topic registry
  (``spine_contracts.topics``), plus the demo agents' task topics, with exactly the config the
  services' own ``ensure_topics`` would create: the spec's ``kafka_config()`` plus
  ``min.insync.replicas``.
* ``base/kafka/users.yaml``: one ``KafkaUser`` per Kafka principal (DESIGN §12) — every
  service, every demo agent that logs in itself, and the operator's ``admin`` (a super user)
  — with SCRAM-SHA-512 and the ACLs of ``spine_admin.acls``, the table of docs/security.md
  that ``spine-admin`` applies everywhere else. The principal is the KafkaUser's name, and
  the Secret the User Operator makes for it (same name, key ``password``) is what the user's
  Deployment logs in with.
* ``components/llm-agent/kafka.yaml``: the same two for the optional model agent ``llm``
  (its tasks topic and its ``KafkaUser``), which only the ``llm-agent`` component deploys.

    uv run python deploy/k8s/generate.py           # rewrite the generated files
    uv run python deploy/k8s/generate.py --check   # exit 1 when a committed file is stale

The base carries the small-cluster numbers (2 partitions, 1 replica, min ISR 1, as in
tests and compose); ``overlays/prod`` patches every topic labelled
``ai-spine/partitions=default`` to 6 partitions and every topic to 3 replicas, min ISR 2.
Topics whose spec fixes a partition count (the metrics summary) keep it. tests/deploy
renders both and compares them with :func:`kafka_topics` and :func:`kafka_users`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from spine_admin import acls
from spine_admin.acls import Grant
from spine_contracts import topics
from spine_contracts.topics import TopicSpec

ROOT = Path(__file__).resolve().parents[2]
KAFKA_DIR = ROOT / "deploy" / "k8s" / "base" / "kafka"
TOPICS_FILE = KAFKA_DIR / "topics.yaml"
USERS_FILE = KAFKA_DIR / "users.yaml"
API_VERSION = "kafka.strimzi.io/v1beta2"
CLUSTER = "spine"
#: The demo agents of ``agents/`` (Kafka-native ones and the HTTP one behind the relay).
DEMO_AGENTS = ("zoe", "eddie", "echo", "echo-http")
#: The demo agents that log in to Kafka themselves (the relay serves echo-http's tasks).
KAFKA_AGENTS = ("zoe", "eddie", "echo")
#: The optional model agent (spine-agent-llm): only the llm-agent component deploys it.
LLM_AGENT = "llm"
LLM_FILE = ROOT / "deploy" / "k8s" / "components" / "llm-agent" / "kafka.yaml"
#: The operator's principal (spine-admin, the registration Job): a super user, no ACLs.
ADMIN_USER = "admin"
PARTITIONS_LABEL = "ai-spine/partitions"

_NOT_DNS = re.compile(r"[^a-z0-9.\-]+")


def resource_name(topic: str) -> str:
    """A valid Kubernetes name for a topic (lower case DNS subdomain, at most 253 chars)."""
    name = _NOT_DNS.sub("-", topic.lower()).strip("-.")
    if not name or len(name) > 253:
        raise ValueError(f"cannot name a KafkaTopic for {topic!r}")
    return name


def _config_value(value: str) -> str | int:
    """Numbers as YAML integers (``retention.ms: -1``), everything else as written."""
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def topic_config(spec: TopicSpec, min_isr: int) -> dict[str, str | int]:
    config = {k: _config_value(v) for k, v in spec.kafka_config().items()}
    config["min.insync.replicas"] = min_isr
    return dict(sorted(config.items()))


def kafka_topic(
    spec: TopicSpec,
    name: str,
    *,
    cluster: str = CLUSTER,
    partitions: int,
    replicas: int,
    min_isr: int,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "KafkaTopic",
        "metadata": {
            "name": resource_name(name),
            "labels": {
                "strimzi.io/cluster": cluster,
                PARTITIONS_LABEL: "default" if spec.partitions is None else "fixed",
            },
        },
        "spec": {
            "topicName": name,
            "partitions": spec.partitions or partitions,
            "replicas": replicas,
            "config": topic_config(spec, min_isr),
        },
    }


def kafka_topics(
    *,
    prefix: str = "",
    cluster: str = CLUSTER,
    partitions: int = 2,
    replicas: int = 1,
    min_isr: int = 1,
    agent_ids: tuple[str, ...] = DEMO_AGENTS,
) -> list[dict[str, Any]]:
    """Every static topic of the registry, then one tasks topic per agent id."""
    if min_isr > replicas:
        raise ValueError("min ISR cannot exceed the replication factor")
    common = {
        "cluster": cluster,
        "partitions": partitions,
        "replicas": replicas,
        "min_isr": min_isr,
    }
    out = [kafka_topic(spec, spec.name(prefix), **common) for spec in topics.STATIC]
    out += [
        kafka_topic(topics.AGENT_TASKS, topics.agent_tasks(agent, prefix), **common)
        for agent in agent_ids
    ]
    return out


# --- users ---------------------------------------------------------------------------------
#: spine_admin's names -> Strimzi's (``AclRule``: resource type, pattern type, operations).
_RESOURCE = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactionalId"}
_PATTERN = {"LITERAL": "literal", "PREFIXED": "prefix"}
_OPERATION = {"READ": "Read", "WRITE": "Write", "CREATE": "Create", "DESCRIBE": "Describe"}
#: A KafkaUser names its Secret and its principal: a lower-case DNS subdomain, no '_'.
_USER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def strimzi_acls(grants: Iterable[Grant]) -> list[dict[str, Any]]:
    """Strimzi ``AclRule``s for ``spine_admin`` grants: one rule per resource and permission
    with all its operations (the User Operator writes one Kafka ACL per operation)."""
    rules: dict[tuple[str, str, str, str], set[str]] = {}
    for grant in grants:
        acl = grant.acl
        key = (
            _RESOURCE[acl.resource_type],
            acl.name,
            _PATTERN[acl.pattern_type],
            acl.permission.lower(),
        )
        rules.setdefault(key, set()).add(_OPERATION[acl.operation])
    return [
        {
            "resource": {"type": kind, "name": name, "patternType": pattern},
            "operations": sorted(operations),
            "type": permission,
        }
        for (kind, name, pattern, permission), operations in sorted(rules.items())
    ]


def kafka_user(
    name: str, rules: list[dict[str, Any]] | None, *, cluster: str = CLUSTER
) -> dict[str, Any]:
    """A SCRAM-SHA-512 user; ``rules`` None: no ACLs at all (a super user's)."""
    if not _USER_NAME.fullmatch(name):
        raise ValueError(
            f"principal {name!r} cannot be a KafkaUser (lower case, digits, '-' and '.'): "
            "choose a SPINE_TOPIC_PREFIX that makes valid names"
        )
    spec: dict[str, Any] = {"authentication": {"type": "scram-sha-512"}}
    if rules is not None:
        spec["authorization"] = {"type": "simple", "acls": rules}
    return {
        "apiVersion": API_VERSION,
        "kind": "KafkaUser",
        "metadata": {"name": name, "labels": {"strimzi.io/cluster": cluster}},
        "spec": spec,
    }


def kafka_users(
    *, prefix: str = "", cluster: str = CLUSTER, agent_ids: tuple[str, ...] = KAFKA_AGENTS
) -> list[dict[str, Any]]:
    """The operator, every service, then every agent, each with its ACLs from the table."""
    if ADMIN_USER not in acls.SUPER_USERS:
        raise ValueError(f"{ADMIN_USER!r} is not one of spine_admin's super users")
    out = [kafka_user(ADMIN_USER, None, cluster=cluster)]
    for service in acls.SERVICES:
        rules = strimzi_acls(acls.service_grants(service, prefix))
        out.append(kafka_user(acls.service_principal(service, prefix), rules, cluster=cluster))
    for agent in agent_ids:
        rules = strimzi_acls(acls.agent_grants(agent, prefix))
        out.append(kafka_user(acls.agent_principal(agent, prefix), rules, cluster=cluster))
    return out


# --- files ---------------------------------------------------------------------------------
def _render(docs: list[dict[str, Any]], source: str) -> str:
    header = (
        f"# Generated by deploy/k8s/generate.py from {source}: do not edit.\n"
        "# Regenerate with `uv run python deploy/k8s/generate.py`; tests/deploy fails on drift.\n"
    )
    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=100)
    return header + "---\n" + body


def render(resources: list[dict[str, Any]] | None = None) -> str:
    """topics.yaml."""
    docs = resources if resources is not None else kafka_topics()
    return _render(docs, "spine_contracts.topics")


def render_users(resources: list[dict[str, Any]] | None = None) -> str:
    """users.yaml."""
    docs = resources if resources is not None else kafka_users()
    return _render(docs, "spine_admin.acls (docs/security.md)")


def llm_agent_resources(*, prefix: str = "", cluster: str = CLUSTER) -> list[dict[str, Any]]:
    """The optional llm agent's tasks topic and KafkaUser, as the base makes zoe's."""
    topic = kafka_topics(prefix=prefix, cluster=cluster, agent_ids=(LLM_AGENT,))[-1]
    rules = strimzi_acls(acls.agent_grants(LLM_AGENT, prefix))
    user = kafka_user(acls.agent_principal(LLM_AGENT, prefix), rules, cluster=cluster)
    return [topic, user]


def render_llm_agent(resources: list[dict[str, Any]] | None = None) -> str:
    """components/llm-agent/kafka.yaml."""
    docs = resources if resources is not None else llm_agent_resources()
    return _render(docs, "spine_contracts.topics and spine_admin.acls")


def outputs() -> dict[Path, str]:
    return {TOPICS_FILE: render(), USERS_FILE: render_users(), LLM_FILE: render_llm_agent()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args(argv)
    stale = [path for path, text in outputs().items() if _read(path) != text]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run deploy/k8s/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        if path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    return 0


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


if __name__ == "__main__":
    sys.exit(main())
