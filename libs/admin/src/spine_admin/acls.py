"""The ACL table: what each Kafka principal may do, and nothing more (DESIGN §12).

Pure (no I/O), so the table is a value that unit tests, ``docs/security.md``, the Strimzi
``KafkaUser`` manifests and :mod:`.principals` (which applies it to a broker) all read.

Each service's :class:`Role` is read off its code: the topics it consumes and produces
(the per-topic table of docs/guarantees.md), its consumer groups (``group_id=`` in
``services/``), its transactional ids and what it creates. Rules:

* a topic a role reads is ``READ``, one it writes ``WRITE`` — both imply ``DESCRIBE``; every
  other static topic is ``DESCRIBE`` only, because every service's start-up
  (``spine_servicekit.runtime``) lists the static topics and would try to create one it
  cannot see; nothing else needs topic creation rights, as ``spine-admin issue-services``
  creates the static topics beforehand (with the admin's login);
* groups are ``LITERAL``; transactional ids are ``PREFIXED`` with the namespace the service
  owns (``<prefix>auth-`` covers ``<prefix>auth-0``, ``<prefix>auth-1``...);
* idempotent producers need no ``IdempotentWrite`` on the cluster: since Kafka 3.0
  (KIP-679) ``WRITE`` on any topic is enough;
* agents' tasks topics (``spine.agents.<id>.tasks``) are dynamic, so the three services
  that handle all of them — the orchestrator writes them, the relay reads them for HTTP
  agents, the registry creates them at an HTTP agent's registration — hold ``PREFIXED``
  ACLs on ``<prefix>spine.agents.``. That prefix also matches the shared
  ``spine.agents.results`` and ``spine.agents.progress``, so each such grant comes with an
  explicit ``DENY`` of that operation on both (a ``DENY`` wins over any ``ALLOW``);
* an agent gets ``LITERAL`` ACLs only: ``READ`` on its own tasks topic and its consumer
  group, ``WRITE`` on the shared results, progress, registry-commands and heartbeats
  topics. A
  ``PREFIXED`` ACL for agent ``a`` would also match ``a2``'s and ``a.b``'s names, and agent
  ids contain no ``.`` so that a literal name never straddles two agents either.

The topic prefix (``SPINE_TOPIC_PREFIX``) is part of every name, and of every principal's
name too, so installations sharing a cluster never share a principal:
``<prefix><service>`` and ``<prefix>agent-<agent_id>``. ``admin``, ``broker`` and
``controller`` are the broker's super users (deploy/local/kafka/listeners.sasl.tmpl) and
have no ACLs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from spine_contracts import topics
from spine_contracts.topics import TopicSpec

__all__ = [
    "AGENT_PRODUCES",
    "ALL_TOPICS_READ_BY_THE_OPERATOR",
    "ALL_TOPICS_WRITTEN_BY_THE_OPERATOR",
    "SERVICES",
    "SUPER_USERS",
    "Acl",
    "Grant",
    "Role",
    "agent_grants",
    "agent_group",
    "agent_principal",
    "check_agent_id",
    "service_grants",
    "service_principal",
]

ResourceType = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER"]
PatternType = Literal["LITERAL", "PREFIXED"]
Operation = Literal["READ", "WRITE", "CREATE", "DESCRIBE"]
Permission = Literal["ALLOW", "DENY"]

#: The broker's super users: every operation, no ACLs (``super.users``).
SUPER_USERS = ("admin", "broker", "controller")
#: Read by nobody but the operator (as ``admin``): dead letters are inspected by hand.
ALL_TOPICS_READ_BY_THE_OPERATOR: tuple[TopicSpec, ...] = (topics.DEADLETTER,)
#: Written by nobody but the operator (``spine-admin``, as ``admin``): agents' keys and owners.
ALL_TOPICS_WRITTEN_BY_THE_OPERATOR: tuple[TopicSpec, ...] = (topics.REGISTRY_ADMIN,)
#: The tasks topics' namespace: ``spine.agents.<agent_id>.tasks``.
AGENTS_NAMESPACE = topics.AGENT_TASKS.base.split("{", 1)[0]


@dataclass(frozen=True, order=True)
class Acl:
    """One ACL binding of a principal (any host)."""

    resource_type: ResourceType
    pattern_type: PatternType
    name: str
    operation: Operation
    permission: Permission = "ALLOW"


@dataclass(frozen=True)
class Grant:
    """An ACL and why the principal needs it (the docs' last column)."""

    acl: Acl
    why: str = field(compare=False)


@dataclass(frozen=True)
class Role:
    """What one service does on the bus. Topic names are bases; groups and transactional
    id namespaces are bases too (the installation's prefix goes in front)."""

    consumes: tuple[TopicSpec, ...]
    produces: tuple[TopicSpec, ...]
    groups: tuple[str, ...] = ()
    transactional_ids: tuple[str, ...] = ()
    #: dispatches to every agent's tasks topic (orchestrator)
    writes_agent_tasks: bool = False
    #: consumes every agent's tasks topic in the agent's own group (relay, for HTTP agents)
    reads_agent_tasks: bool = False
    #: creates agents' tasks topics (registry, at an HTTP agent's registration)
    creates_agent_tasks: bool = False
    #: measures every consumer group's lag (gateway, ``/status``)
    describes_groups: bool = False


T = topics
# fmt: off
#: Every Kafka-connected service (the console is an HTTP client only). Read off the code:
#: keep in step with it (tests/admin/test_acls.py names the places).
SERVICES: dict[str, Role] = {
    "gateway": Role(
        consumes=(T.AUTH_EVENTS, T.FLOWS, T.REGISTRY_EVENTS, T.EXECUTION_EVENTS, T.USAGE,
                  T.AUDIT, T.GATEWAY_REPLIES, T.SERVICE_HEARTBEATS, T.METRICS_SUMMARY,
                  T.REGISTRY_HEARTBEATS, T.AGENT_PROGRESS),
        produces=(T.AUTH_COMMANDS, T.EXECUTION_COMMANDS, T.FLOW_COMMANDS, T.REGISTRY_REQUESTS,
                  T.USAGE, T.SERVICE_HEARTBEATS, T.DEADLETTER),
        describes_groups=True,
    ),
    "orchestrator": Role(
        consumes=(T.EXECUTION_COMMANDS, T.AGENT_RESULTS, T.EXECUTION_SNAPSHOTS,
                  T.EXECUTION_EVENTS, T.REGISTRY_EVENTS, T.FLOWS, T.FLOW_COMMANDS),
        produces=(T.EXECUTION_EVENTS, T.EXECUTION_SNAPSHOTS, T.EXECUTION_COMMANDS,
                  T.AUTH_COMMANDS, T.FLOW_COMMANDS, T.FLOWS, T.AUDIT, T.GATEWAY_REPLIES,
                  T.DEADLETTER, T.SERVICE_HEARTBEATS),
        groups=("orchestrator", "flow-catalog"),
        transactional_ids=("orchestrator", "flow-catalog"),
        writes_agent_tasks=True,
    ),
    "auth": Role(
        consumes=(T.AUTH_COMMANDS, T.AUTH_EVENTS),
        produces=(T.AUTH_EVENTS, T.EXECUTION_COMMANDS, T.GATEWAY_REPLIES, T.DEADLETTER,
                  T.SERVICE_HEARTBEATS),
        groups=("auth", "auth-projector"),
        transactional_ids=("auth",),
    ),
    "registry": Role(
        consumes=(T.REGISTRY_COMMANDS, T.REGISTRY_REQUESTS, T.REGISTRY_ADMIN,
                  T.REGISTRY_HEARTBEATS, T.REGISTRY_EVENTS),
        produces=(T.REGISTRY_EVENTS, T.AUDIT, T.GATEWAY_REPLIES, T.DEADLETTER,
                  T.SERVICE_HEARTBEATS),
        groups=("registry",),
        transactional_ids=("registry",),
        creates_agent_tasks=True,
    ),
    "relay": Role(
        consumes=(T.REGISTRY_EVENTS,),
        produces=(T.AGENT_RESULTS, T.REGISTRY_HEARTBEATS, T.DEADLETTER, T.SERVICE_HEARTBEATS),
        reads_agent_tasks=True,
    ),
    "metrics": Role(
        consumes=(T.EXECUTION_EVENTS, T.AUTH_EVENTS, T.REGISTRY_EVENTS),
        produces=(T.METRICS_SUMMARY, T.SERVICE_HEARTBEATS),
    ),
}
#: What an agent writes: results and progress (SDK), its registration and its liveness beats.
AGENT_PRODUCES: tuple[TopicSpec, ...] = (T.AGENT_RESULTS, T.AGENT_PROGRESS, T.REGISTRY_COMMANDS,
                                         T.REGISTRY_HEARTBEATS)
#: The shared topics inside the tasks topics' namespace, kept out of its prefixed grants.
SHARED_IN_AGENTS_NAMESPACE: tuple[TopicSpec, ...] = (T.AGENT_RESULTS, T.AGENT_PROGRESS)
# fmt: on


def check_agent_id(agent_id: str) -> str:
    """The id, if it may be a principal: the tasks topic's legal characters, no ``.``
    (``spine_contracts.topics.agent_tasks`` holds the one rule)."""
    topics.agent_tasks(agent_id)
    return agent_id


def service_principal(service: str, prefix: str = "") -> str:
    if service not in SERVICES:
        raise KeyError(f"unknown service {service!r} (one of {', '.join(SERVICES)})")
    return f"{prefix}{service}"


def agent_principal(agent_id: str, prefix: str = "") -> str:
    return f"{prefix}agent-{check_agent_id(agent_id)}"


def agent_group(agent_id: str, prefix: str = "") -> str:
    """The consumer group every replica of the agent joins (``spine_agent.Agent.group_id``)."""
    return f"{prefix}agent.{check_agent_id(agent_id)}"


def _topic(spec: TopicSpec, prefix: str, op: Operation, why: str) -> Grant:
    return Grant(Acl("TOPIC", "LITERAL", spec.name(prefix), op), why)


def service_grants(service: str, prefix: str = "") -> list[Grant]:
    """The service's ACLs for an installation's ``prefix``, sorted, without duplicates."""
    role = SERVICES[service]
    out: list[Grant] = []
    for spec in role.consumes:
        out.append(_topic(spec, prefix, "READ", "consumes"))
    for spec in role.produces:
        out.append(_topic(spec, prefix, "WRITE", "produces"))
    used = set(role.consumes) | set(role.produces)
    for spec in topics.STATIC:
        if spec not in used:
            out.append(_topic(spec, prefix, "DESCRIBE", "start-up check: sees every static topic"))
    for group in role.groups:
        out.append(Grant(Acl("GROUP", "LITERAL", f"{prefix}{group}", "READ"), "its consumer group"))
    for txid in role.transactional_ids:
        out.append(
            Grant(
                Acl("TRANSACTIONAL_ID", "PREFIXED", f"{prefix}{txid}-", "WRITE"),
                "its transactional producers, one per input partition",
            )
        )
    tasks = f"{prefix}{AGENTS_NAMESPACE}"
    shared = tuple(spec.name(prefix) for spec in SHARED_IN_AGENTS_NAMESPACE)
    if role.writes_agent_tasks:
        out += _agents_namespace(tasks, shared, "WRITE", "dispatches to every agent's tasks topic")
    if role.reads_agent_tasks:
        out += _agents_namespace(tasks, shared, "READ", "serves HTTP agents' tasks topics")
        out.append(
            Grant(
                Acl("GROUP", "PREFIXED", f"{prefix}agent.", "READ"),
                "joins each HTTP agent's group, as its SDK would",
            )
        )
    if role.creates_agent_tasks:
        out += _agents_namespace(tasks, shared, "CREATE", "creates an HTTP agent's tasks topic")
        out.append(
            Grant(
                Acl("TOPIC", "PREFIXED", tasks, "DESCRIBE"),
                "sees the tasks topics it creates",
            )
        )
    if role.describes_groups:
        for group in sorted({g for r in SERVICES.values() for g in r.groups}):
            out.append(
                Grant(Acl("GROUP", "LITERAL", f"{prefix}{group}", "DESCRIBE"), "consumer lag")
            )
        out.append(Grant(Acl("GROUP", "PREFIXED", f"{prefix}agent.", "DESCRIBE"), "consumer lag"))
        out.append(Grant(Acl("TOPIC", "PREFIXED", tasks, "DESCRIBE"), "consumer lag"))
    return _unique(out)


def _agents_namespace(tasks: str, shared: tuple[str, ...], op: Operation, why: str) -> list[Grant]:
    return [
        Grant(Acl("TOPIC", "PREFIXED", tasks, op), why),
        *(
            Grant(
                Acl("TOPIC", "LITERAL", name, op, "DENY"),
                f"keeps the prefixed {op} off the shared results and progress topics",
            )
            for name in shared
        ),
    ]


def agent_grants(agent_id: str, prefix: str = "") -> list[Grant]:
    """An agent's ACLs: its own tasks topic and group, the four shared topics it writes."""
    check_agent_id(agent_id)
    return _agent_grants(agent_id, prefix)


def _agent_grants(agent_id: str, prefix: str) -> list[Grant]:
    out = [
        Grant(
            Acl("TOPIC", "LITERAL", f"{prefix}{AGENTS_NAMESPACE}{agent_id}.tasks", "READ"),
            "its own tasks",
        ),
        Grant(Acl("GROUP", "LITERAL", f"{prefix}agent.{agent_id}", "READ"), "its own group"),
    ]
    out += [_topic(spec, prefix, "WRITE", "produces") for spec in AGENT_PRODUCES]
    return _unique(out)


def _unique(grants: Iterable[Grant]) -> list[Grant]:
    seen: dict[Acl, Grant] = {}
    for grant in grants:
        seen.setdefault(grant.acl, grant)
    return sorted(seen.values(), key=lambda g: g.acl)
