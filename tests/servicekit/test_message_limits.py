"""One setting, SPINE_KAFKA_MAX_MESSAGE_BYTES, and what follows from it (spine_kafka.limits):
the largest message value, the record overhead it leaves, encodings made once, dead
letters that always fit. No broker."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from spine_contracts import MESSAGE_TYPES, CancelExecution, ExecutionFailed, parse, to_bytes
from spine_contracts.signing import KEY_ID_HEADER, SIGNATURE_HEADER
from spine_kafka import clients
from spine_kafka.clients import (
    MESSAGE_TYPE_HEADER,
    REPLY_TO_HEADER,
    TRACEPARENT_HEADER,
    KafkaConfig,
    Outgoing,
    dead_letter,
    make_producer,
)
from spine_kafka.limits import (
    RECORD_OVERHEAD_BYTES,
    max_value_bytes,
    record_size,
    record_size_bound,
    too_large,
)
from spine_kafka.security import KafkaSecurity
from spine_kafka.settings import KafkaSettings

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def cfg(max_message_bytes: int = 1_048_576) -> KafkaConfig:
    return KafkaConfig("k:9092", max_message_bytes=max_message_bytes, security=KafkaSecurity())


def test_the_setting_and_the_limits_it_gives() -> None:
    assert KafkaSettings().kafka_max_message_bytes == 1_048_576 == cfg().max_message_bytes
    assert cfg().max_value_bytes == max_value_bytes(1_048_576) == 1_046_528
    assert cfg(200_000).max_value_bytes == 197_952
    assert too_large("result", 812_345, 1_046_528) == (
        "result of 812,345 bytes exceeds the 1,046,528-byte message limit"
    )


def test_the_record_overhead_bounds_the_largest_key_and_headers() -> None:
    """What a record adds to its value, at worst: a 128-character key, the longest message
    type, a traceparent, a reply-to naming a replica on a 253-character host name, an
    agent's signature and key id — within RECORD_OVERHEAD_BYTES, as aiokafka counts it."""
    longest_type = max(MESSAGE_TYPES, key=len).encode()
    headers = [
        (MESSAGE_TYPE_HEADER, longest_type),
        (TRACEPARENT_HEADER, TRACE.encode()),
        (REPLY_TO_HEADER, ("gateway-" + "h" * 253 + "-0123abcd").encode()),
        (SIGNATURE_HEADER, b"s" * 88),  # base64 of an Ed25519 signature
        (KEY_ID_HEADER, b"k" * 16),
    ]
    value = b"v" * 1000
    overhead = record_size(b"e" * 128, value, headers) - len(value)
    assert overhead <= RECORD_OVERHEAD_BYTES // 2, overhead  # and room to spare


def test_a_value_within_the_limit_is_a_record_the_producer_takes() -> None:
    c = cfg()
    message = CancelExecution.build(execution_id="e" * 128, reason="x", trace=TRACE)
    padding = c.max_value_bytes - len(to_bytes(message))
    fat = CancelExecution.build(execution_id="e" * 128, reason="x" * (1 + padding), trace=TRACE)
    item = Outgoing("spine.executions.commands", "e" * 128, fat, reply_to="gateway-" + "h" * 253)
    assert len(item.value) == c.max_value_bytes
    assert item.size() <= c.max_message_bytes  # aiokafka's own check passes
    assert item.fits(c.max_message_bytes) and not item.fits(item.size() - 1)
    key, value, headers = item.encode()
    assert 0 <= record_size_bound(key, value, headers) - item.size() <= 5 * (3 + 2 * 3)


def test_an_outgoing_is_encoded_once_and_afresh_when_replaced() -> None:
    event = ExecutionFailed.build(execution_id="e1", seq=1, error_message="boom")
    item = Outgoing("events", "e1", event)
    assert item.value is item.value and parse(item.value) == event
    assert item.encode()[1] is item.value
    given = Outgoing("events", "e1", event).with_value(b"as measured")
    assert given.value == b"as measured"  # the bytes measured are the bytes sent
    restamped = dataclasses.replace(given, message=event.model_copy(update={"trace": TRACE}))
    assert parse(restamped.value).trace == TRACE  # a replaced message is encoded again


def _record(value: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic="spine.agents.results",
        partition=1,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=b"e1",
        value=value,
        checksum=None,
        serialized_key_size=2,
        serialized_value_size=len(value),
        headers=(),
    )


def test_a_dead_letter_keeps_a_payload_that_fits_and_leaves_out_one_that_does_not() -> None:
    small = dead_letter(_record(b"garbage"), ValueError("bad"), "orchestrator")
    assert small.data.payload_b64 and small.data.error == "bad"

    huge = _record(b"z" * 900_000)  # base64 makes it 1.2 MB
    letter = dead_letter(huge, ValueError("bad"), "orchestrator", max_bytes=1_046_528)
    assert letter.data.payload_b64 == ""
    assert letter.data.error == (
        "bad [payload of 900,000 bytes left out: too large for a dead letter]"
    )
    assert (letter.data.origin_topic, letter.data.origin_offset) == ("spine.agents.results", 7)
    assert len(to_bytes(letter)) <= 1_046_528
    # the default is the default setting's limit
    assert dead_letter(huge, ValueError("bad"), "orchestrator").data.payload_b64 == ""


@pytest.mark.parametrize(("setting", "batch"), [(1_048_576, 256 * 1024), (100_000, 100_000)])
def test_a_producer_batch_never_exceeds_the_setting(
    monkeypatch: pytest.MonkeyPatch, setting: int, batch: int
) -> None:
    built: dict[str, Any] = {}
    monkeypatch.setattr(clients, "AIOKafkaProducer", lambda **kw: built.update(kw))
    make_producer(cfg(setting))
    assert built["max_request_size"] == setting and built["max_batch_size"] == batch
