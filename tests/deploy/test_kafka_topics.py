"""The KafkaTopic manifests never drift from the topic registry (spine_contracts.topics)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from spine_contracts import topics

from .helpers import DEMO_AGENT_IDS, K8S, of_kind

pytestmark = pytest.mark.timeout(900)

TOPICS_FILE = K8S / "base" / "kafka" / "topics.yaml"
#: What each overlay's KafkaTopics must say: (partitions, replicas, min ISR).
NUMBERS = {"dev": (2, 1, 1), "prod": (6, 3, 2)}


def test_committed_manifests_are_generated_from_the_registry(topic_generator: ModuleType) -> None:
    assert TOPICS_FILE.read_text() == topic_generator.render(), (
        "deploy/k8s/base/kafka/topics.yaml drifted from spine_contracts.topics: "
        "run `uv run python deploy/k8s/generate.py`"
    )
    assert topic_generator.main(["--check"]) == 0


def test_generator_covers_every_topic(topic_generator: ModuleType) -> None:
    generated = {t["spec"]["topicName"]: t for t in topic_generator.kafka_topics()}
    expected = {spec.name() for spec in topics.STATIC}
    expected |= {topics.agent_tasks(agent) for agent in DEMO_AGENT_IDS}
    assert set(generated) == expected
    for spec in topics.STATIC:
        config = generated[spec.name()]["spec"]["config"]
        assert config["cleanup.policy"] == spec.cleanup_policy
        if spec.cleanup_policy == "delete":
            assert config["retention.ms"] == spec.retention_ms
        for key, value in spec.extra_config.items():
            assert str(config[key]) == value
    assert tuple(topic_generator.DEMO_AGENTS) == DEMO_AGENT_IDS


def test_generated_config_is_what_ensure_topics_creates(topic_generator: ModuleType) -> None:
    from spine_kafka.security import KafkaSecurity
    from spine_servicekit.kafka import KafkaConfig, new_topic

    cfg = KafkaConfig(
        "unused:9092", partitions=6, replication=3, min_isr=2, security=KafkaSecurity()
    )
    for spec in topics.STATIC:
        wanted = new_topic(cfg, spec)
        manifest = topic_generator.kafka_topic(
            spec, spec.name(), partitions=6, replicas=3, min_isr=2
        )
        assert manifest["spec"]["partitions"] == wanted.num_partitions
        assert manifest["spec"]["replicas"] == wanted.replication_factor
        config = {k: str(v) for k, v in manifest["spec"]["config"].items()}
        assert config == dict(wanted.topic_configs), spec.base


@pytest.mark.parametrize("overlay", sorted(NUMBERS))
def test_rendered_overlay_topics_match_the_registry(
    rendered: dict[str, list[dict[str, Any]]], topic_generator: ModuleType, overlay: str
) -> None:
    partitions, replicas, min_isr = NUMBERS[overlay]
    wanted = {
        t["metadata"]["name"]: t
        for t in topic_generator.kafka_topics(
            partitions=partitions, replicas=replicas, min_isr=min_isr
        )
    }
    got = of_kind(rendered[overlay], "KafkaTopic")
    assert set(got) == set(wanted)
    for name, topic in got.items():
        assert topic["spec"] == wanted[name]["spec"], name
        labels = topic["metadata"]["labels"]
        assert labels.items() >= wanted[name]["metadata"]["labels"].items()


def test_co_partitioned_topics_share_a_partition_count(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay in NUMBERS:
        got = {
            t["spec"]["topicName"]: t["spec"]["partitions"]
            for t in of_kind(rendered[overlay], "KafkaTopic").values()
        }
        counts = {got[spec.name()] for spec in topics.ALL if spec.co_partitioned}
        assert len(counts) == 1, f"{overlay}: co-partitioned topics differ: {counts}"
