"""Every broker the project deploys takes the records its producers may send: its
``message.max.bytes`` is at least ``SPINE_KAFKA_MAX_MESSAGE_BYTES`` (docs/limits.md), and no
deployment sets the producers' setting above it."""

from __future__ import annotations

from typing import Any

import yaml
from spine_kafka.settings import KafkaSettings

from .helpers import DEPLOY, K8S, environment

SETTING = "SPINE_KAFKA_MAX_MESSAGE_BYTES"


def _local() -> int:
    text = (DEPLOY / "local" / "kafka" / "server.properties.tmpl").read_text()
    [line] = [li for li in text.splitlines() if li.startswith("message.max.bytes=")]
    return int(line.partition("=")[2])


def _k8s() -> int:
    kafka = yaml.safe_load((K8S / "base" / "kafka" / "kafka.yaml").read_text())
    return int(kafka["spec"]["kafka"]["config"]["message.max.bytes"])


def test_every_broker_takes_the_largest_record_a_producer_sends(compose: dict[str, Any]) -> None:
    largest = KafkaSettings().kafka_max_message_bytes
    brokers = {
        "make up (server.properties.tmpl)": _local(),
        "compose": int(environment(compose["services"]["kafka"])["KAFKA_MESSAGE_MAX_BYTES"]),
        "k8s (Strimzi)": _k8s(),
    }
    assert all(limit >= largest for limit in brokers.values()), (brokers, largest)
    for name, service in compose["services"].items():
        assert SETTING not in environment(service), f"{name} overrides {SETTING}"
