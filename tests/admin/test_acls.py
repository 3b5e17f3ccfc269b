"""The ACL table (spine_admin.acls) against the code it is read from, and its rules.

The table is written by hand from what each service does; these tests tie it back to the
code (consumer groups and transactional ids as the services spell them, the agent SDK's
group), to the topic registry (every topic has a writer and a reader) and to DESIGN §12's
rules (prefixed only where a namespace is owned, agents literal, no topic creation).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from spine_admin import acls
from spine_admin.acls import SERVICES, Acl, agent_grants, service_grants
from spine_contracts import topics

ROOT = Path(__file__).resolve().parents[2]
AGENTS_NS = "spine.agents."


def _all_service_acls(prefix: str = "") -> dict[str, set[Acl]]:
    return {s: {g.acl for g in service_grants(s, prefix)} for s in SERVICES}


def _source(*globs: str) -> str:
    return "\n".join(p.read_text() for g in globs for p in sorted(ROOT.glob(g)))


def test_groups_and_transactional_ids_are_those_the_services_use() -> None:
    code = _source("services/*/src/**/*.py")
    groups = set(re.findall(r'group_id=f"\{cfg\.prefix\}([a-z-]+)"', code))
    txids = set(re.findall(r'transactional_id_prefix=f"\{cfg\.prefix\}([a-z-]+)"', code))
    # the registry's transactional ids are built in producers.py: <prefix>registry-<p>
    assert 'f"{self._cfg.prefix}registry-{partition}"' in code
    txids.add("registry")
    assert groups == {g for r in SERVICES.values() for g in r.groups}
    assert txids == {t for r in SERVICES.values() for t in r.transactional_ids}


def test_the_agent_group_is_the_sdks() -> None:
    sdk = _source("libs/agent-sdk/src/spine_agent/agent.py")
    assert 'return f"{cfg.prefix}agent.{self.agent_id}"' in sdk
    assert acls.agent_group("echo", "t-") == "t-agent.echo"


def test_every_topic_has_a_writer_and_a_reader() -> None:
    writers = {s for r in SERVICES.values() for s in r.produces} | set(acls.AGENT_PRODUCES)
    writers |= set(acls.ALL_TOPICS_WRITTEN_BY_THE_OPERATOR)
    readers = {s for r in SERVICES.values() for s in r.consumes}
    readers |= set(acls.ALL_TOPICS_READ_BY_THE_OPERATOR)
    for spec in topics.STATIC:
        assert spec in writers, f"nobody writes {spec.base}"
        assert spec in readers, f"nobody reads {spec.base}"
    # the tasks topics: the orchestrator writes them, agents and the relay read them
    assert [n for n, r in SERVICES.items() if r.writes_agent_tasks] == ["orchestrator"]
    assert [n for n, r in SERVICES.items() if r.reads_agent_tasks] == ["relay"]
    assert set(topics.ALL) - set(topics.STATIC) == {topics.AGENT_TASKS}


@pytest.mark.parametrize("service", list(SERVICES))
def test_a_service_sees_every_static_topic_and_reads_only_its_own(service: str) -> None:
    granted = {g.acl for g in service_grants(service)}
    literal = {
        (a.name, a.operation)
        for a in granted
        if a.resource_type == "TOPIC" and a.pattern_type == "LITERAL" and a.permission == "ALLOW"
    }
    role = SERVICES[service]
    for spec in topics.STATIC:
        ops = {op for name, op in literal if name == spec.base}
        assert ops, f"{service} cannot even describe {spec.base} (its start-up lists it)"
        assert ("READ" in ops) == (spec in role.consumes)
        assert ("WRITE" in ops) == (spec in role.produces)
        if spec not in role.consumes and spec not in role.produces:
            assert ops == {"DESCRIBE"}


def test_prefixed_acls_only_for_namespaces_a_service_owns() -> None:
    for service, granted in _all_service_acls("t1-").items():
        for a in granted:
            if a.pattern_type != "PREFIXED":
                continue
            if a.resource_type == "TRANSACTIONAL_ID":
                assert a.name[len("t1-") : -1] in SERVICES[service].transactional_ids
                assert a.name.endswith("-")
            elif a.resource_type == "TOPIC":
                assert a.name == f"t1-{AGENTS_NS}"
            else:
                assert (a.resource_type, a.name) == ("GROUP", "t1-agent.")


@pytest.mark.parametrize(
    "shared", [topics.AGENT_RESULTS, topics.AGENT_PROGRESS], ids=lambda s: s.base
)
def test_a_prefixed_tasks_grant_never_reaches_the_shared_agent_topics(
    shared: topics.TopicSpec,
) -> None:
    name = shared.name("t1-")
    assert name.startswith("t1-" + AGENTS_NS)  # inside the namespace: the DENY is needed
    for service, granted in _all_service_acls("t1-").items():
        for a in granted:
            if a.resource_type == "TOPIC" and a.pattern_type == "PREFIXED":
                if a.operation == "DESCRIBE":
                    continue  # metadata only
                deny = Acl("TOPIC", "LITERAL", name, a.operation, "DENY")
                assert deny in granted, f"{service}: {a.operation} on {a.name} without a DENY"


def test_the_gateway_reads_progress_and_agents_write_it() -> None:
    progress = topics.AGENT_PROGRESS.name("p-")
    assert Acl("TOPIC", "LITERAL", progress, "READ") in _all_service_acls("p-")["gateway"]
    assert Acl("TOPIC", "LITERAL", progress, "WRITE") in {g.acl for g in agent_grants("a", "p-")}


def test_only_the_registry_creates_topics_and_only_tasks_topics() -> None:
    creators = {
        s: [a for a in granted if a.operation == "CREATE" and a.permission == "ALLOW"]
        for s, granted in _all_service_acls().items()
    }
    assert {s for s, found in creators.items() if found} == {"registry"}
    assert creators["registry"] == [Acl("TOPIC", "PREFIXED", AGENTS_NS, "CREATE")]


def test_no_cluster_rights_for_anyone() -> None:
    for granted in _all_service_acls().values():
        assert all(a.resource_type != "CLUSTER" for a in granted)
    assert all(g.acl.resource_type != "CLUSTER" for g in agent_grants("a"))


def test_every_name_carries_the_installation_prefix() -> None:
    for granted in _all_service_acls("t9.").values():
        assert all(a.name.startswith("t9.") for a in granted)
    assert all(g.acl.name.startswith("t9.") for g in agent_grants("a", "t9."))


def test_an_agent_gets_six_literal_acls_on_its_own_names() -> None:
    granted = {g.acl for g in agent_grants("a", "p-")}
    assert granted == {
        Acl("TOPIC", "LITERAL", "p-spine.agents.a.tasks", "READ"),
        Acl("GROUP", "LITERAL", "p-agent.a", "READ"),
        Acl("TOPIC", "LITERAL", "p-spine.agents.results", "WRITE"),
        Acl("TOPIC", "LITERAL", "p-spine.agents.progress", "WRITE"),
        Acl("TOPIC", "LITERAL", "p-spine.registry.commands", "WRITE"),
        Acl("TOPIC", "LITERAL", "p-spine.registry.heartbeats", "WRITE"),
    }


def test_agents_a_and_a2_share_no_read() -> None:
    def reads(agent: str) -> set[Acl]:
        return {g.acl for g in agent_grants(agent) if g.acl.operation == "READ"}

    assert not reads("a") & reads("a2")
    assert all(a.pattern_type == "LITERAL" for a in reads("a") | reads("a2"))


@pytest.mark.parametrize("bad", ["a.b", "a b", "", "a/b", "x" * 129, "agent.a"])
def test_an_agent_id_with_a_dot_or_worse_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        agent_grants(bad)
    with pytest.raises(ValueError):
        acls.agent_principal(bad)


def test_principal_names() -> None:
    assert acls.service_principal("gateway") == "gateway"
    assert acls.service_principal("auth", "t1-") == "t1-auth"
    assert acls.agent_principal("echo") == "agent-echo"
    assert acls.agent_principal("echo", "t1-") == "t1-agent-echo"
    names = {acls.service_principal(s) for s in SERVICES}
    assert not names & set(acls.SUPER_USERS)
    with pytest.raises(KeyError):
        acls.service_principal("console")


def test_the_doc_shows_the_table() -> None:
    from spine_admin import acl_doc

    doc = (ROOT / "docs" / "security.md").read_text()
    assert acl_doc.replace_block(doc, acl_doc.render()) == doc, (
        "docs/security.md's ACL table is stale: run `uv run python -m spine_admin.acl_doc --write`"
    )


def test_nobody_but_the_operator_writes_the_agents_keys() -> None:
    for name in SERVICES:
        writes = {g.acl.name for g in acls.service_grants(name) if g.acl.operation == "WRITE"}
        assert topics.REGISTRY_ADMIN.base not in writes, name
    agent = {g.acl.name for g in acls.agent_grants("echo") if g.acl.operation == "WRITE"}
    assert topics.REGISTRY_ADMIN.base not in agent
