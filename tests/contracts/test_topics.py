"""The topic registry matches docs/guarantees.md, Per topic, and topic names live nowhere else."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from spine_contracts import MESSAGE_TYPES, Message, RegisterAgent, topics

ROOT = Path(__file__).resolve().parents[2]

# the per-topic table of docs/guarantees.md, by topic.
TOPIC_RETENTION = {
    "spine.flows": "compacted",
    "spine.flows.commands": "7 d",
    "spine.audit": "forever",
    "spine.auth.commands": "7 d",
    "spine.auth.events": "forever",
    "spine.executions.commands": "7 d",
    "spine.executions.events": "forever",
    "spine.executions.snapshots": "compacted",
    "spine.agents.{agent_id}.tasks": "7 d",
    "spine.agents.results": "7 d",
    "spine.agents.progress": "1 h",
    "spine.registry.commands": "7 d",
    "spine.registry.requests": "7 d",
    "spine.registry.admin": "7 d",
    "spine.registry.events": "compacted",
    "spine.registry.heartbeats": "1 h",
    "spine.services.heartbeats": "1 h",
    "spine.gateway.replies": "1 h",
    "spine.usage": "30 d",
    "spine.metrics.summary": "compacted",
    "spine.deadletter": "30 d",
}
CO_PARTITIONED = {
    "spine.executions.commands",
    "spine.executions.events",
    "spine.executions.snapshots",
    "spine.agents.results",
}


def _all_message_classes() -> set[type[Message]]:
    found: set[type[Message]] = set()
    pending = list(Message.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("spine_contracts."):
            found.add(cls)
    return found


def test_topic_names_are_unique() -> None:
    names = Counter(spec.base for spec in topics.ALL)
    assert [name for name, n in names.items() if n > 1] == []


def test_registry_is_the_design_table() -> None:
    assert {spec.base for spec in topics.ALL} == set(TOPIC_RETENTION)


@pytest.mark.parametrize("spec", topics.ALL, ids=lambda s: s.base)
def test_retention_matches_design(spec: topics.TopicSpec) -> None:
    assert spec.retention_label == TOPIC_RETENTION[spec.base]


def test_every_message_type_is_on_exactly_one_topic() -> None:
    homes = Counter(cls for spec in topics.ALL for cls in spec.messages)
    # the one exception: who may write the topic says who registers — an agent itself
    # (commands, signed) or the gateway for a user (requests, naming the owner)
    assert [cls.__name__ for cls, n in homes.items() if n > 1] == ["RegisterAgent"]
    assert [s.base for s in topics.ALL if RegisterAgent in s.messages] == [
        "spine.registry.commands",
        "spine.registry.requests",
    ]
    assert set(homes) == set(MESSAGE_TYPES.values())
    assert len(MESSAGE_TYPES) == len(homes), "two classes share one type string"


def test_every_message_class_is_on_a_topic() -> None:
    # A message defined but never placed on a topic could not be parsed by anyone.
    unplaced = _all_message_classes() - set(MESSAGE_TYPES.values())
    assert sorted(cls.__name__ for cls in unplaced) == []


def test_type_strings_match_their_classes() -> None:
    for message_type, cls in MESSAGE_TYPES.items():
        assert cls.model_fields["type"].default == message_type
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", message_type), message_type


@pytest.mark.parametrize("prefix", ["", "test-1234.", "acme_"])
@pytest.mark.parametrize("spec", topics.STATIC, ids=lambda s: s.base)
def test_spec_for_round_trips_names(spec: topics.TopicSpec, prefix: str) -> None:
    name = spec.name(prefix)
    assert name == prefix + spec.base
    assert topics.spec_for(name, prefix) is spec


@pytest.mark.parametrize("prefix", ["", "test-1234."])
@pytest.mark.parametrize("agent_id", ["echo", "summarizer-v2", "a-b_c", "results", "x" * 128])
def test_spec_for_agent_task_topics(agent_id: str, prefix: str) -> None:
    name = topics.agent_tasks(agent_id, prefix)
    assert name == f"{prefix}spine.agents.{agent_id}.tasks"
    assert topics.spec_for(name, prefix) is topics.AGENT_TASKS


def test_spec_for_rejects_unknown_or_unprefixed_names() -> None:
    for name, prefix in [
        ("spine.nope", ""),
        ("spine.flows", "test-1."),
        ("test-2.spine.flows", "test-1."),
        ("spine.flowsx", ""),
    ]:
        with pytest.raises(KeyError):
            topics.spec_for(name, prefix)


@pytest.mark.parametrize(
    "agent_id",
    ["", "has space", "a/b", "a:b", "ü", "x" * 129, "abc\n", "\nabc", "{agent_id}", "a.b", "."],
)
def test_agent_tasks_rejects_illegal_ids(agent_id: str) -> None:
    with pytest.raises(ValueError):
        topics.agent_tasks(agent_id)


def test_static_topics_are_all_but_the_per_agent_ones() -> None:
    assert topics.AGENT_TASKS not in topics.STATIC
    assert set(topics.STATIC) | {topics.AGENT_TASKS} == set(topics.ALL)
    assert all("{" not in spec.base for spec in topics.STATIC)


def test_co_partitioned_topics_share_key_and_partition_count() -> None:
    co = [spec for spec in topics.ALL if spec.co_partitioned]
    assert {spec.base for spec in co} == CO_PARTITIONED
    assert {spec.key for spec in co} == {"execution_id"}
    assert len({spec.partitions for spec in co}) == 1


def test_compacted_topics_have_cleanup_compact() -> None:
    compacted = {base for base, label in TOPIC_RETENTION.items() if label == "compacted"}
    for spec in topics.ALL:
        config = spec.kafka_config()
        if spec.base in compacted:
            assert spec.cleanup_policy == "compact"
            assert config["cleanup.policy"] == "compact"
            assert "retention.ms" not in config
        else:
            assert spec.cleanup_policy == "delete"
            assert config["cleanup.policy"] == "delete"
            assert int(config["retention.ms"]) == spec.retention_ms


def test_forever_topics_never_expire() -> None:
    for spec in topics.ALL:
        if spec.retention_label == "forever":
            assert spec.kafka_config()["retention.ms"] == "-1"


def test_keys_follow_design() -> None:
    keys = {spec.base: spec.key for spec in topics.ALL}
    assert keys["spine.flows"] == "flow_id"
    assert keys["spine.auth.commands"] == keys["spine.auth.events"] == "user_id"
    assert keys["spine.usage"] == "user_id"
    assert keys["spine.agents.{agent_id}.tasks"] == "execution_id"
    for base in ("commands", "requests", "admin", "events", "heartbeats"):
        assert keys[f"spine.registry.{base}"] == "agent_id"


def _python_sources() -> list[Path]:
    skip = {".venv", "__pycache__", "build", "dist", "node_modules", ".git"}
    files: list[Path] = []
    for top in ("libs", "services", "agents"):
        root = ROOT / top
        if root.is_dir():
            files += [p for p in root.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]
    return files


def test_topic_names_live_only_in_the_registry() -> None:
    literal = re.compile(r"""["']spine\.""")
    sources = _python_sources()
    registries = [p for p in sources if p.parts[-2:] == ("spine_contracts", "topics.py")]
    assert len(registries) == 1, "the scan must see the contracts' topic registry"

    offenders = [
        f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}"
        for path in sources
        if path not in registries
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if literal.search(line)
    ]

    assert offenders == [], "use spine_contracts.topics instead of topic names:\n" + "\n".join(
        offenders
    )
