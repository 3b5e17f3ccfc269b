"""How large one message may be: one setting, and every limit derived from it (docs/limits.md).

``SPINE_KAFKA_MAX_MESSAGE_BYTES`` (:attr:`KafkaConfig.max_message_bytes`, default 1,048,576)
is every producer's ``max_request_size``: aiokafka refuses a record whose key, value,
headers and framing come to more. The broker's ``message.max.bytes`` (and a topic's
``max.message.bytes``, which overrides it) must be at least as large; every deployment here
sets the broker's to 1,048,588 (Kafka's default: 1 MiB plus the 12 bytes of log overhead).

A record is more than its value, the message's JSON: :data:`RECORD_OVERHEAD_BYTES` bounds its
key (an id of at most 128 characters), its headers (type, traceparent, reply-to, an agent's
signature and key id) and Kafka's framing of a record alone in its batch. So the largest
message is :func:`max_value_bytes` of the setting — 1,046,528 bytes of JSON by default — and
that is the limit every check uses and every error names: the orchestrator's events, tasks
and snapshots, the agent SDK's results, the gateway's commands (less its headroom).
:func:`record_size` is the producer's own count of a whole record, for a last check before
a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.record.default_records import DefaultRecordBatchBuilder

__all__ = [
    "RECORD_OVERHEAD_BYTES",
    "MessageTooLarge",
    "max_value_bytes",
    "record_size",
    "record_size_bound",
    "too_large",
]

#: what a record adds to its value, at most: key, headers and framing (see the module doc;
#: ``tests/servicekit/test_limits.py`` checks the worst case against aiokafka's count)
RECORD_OVERHEAD_BYTES = 2048


def max_value_bytes(max_message_bytes: int) -> int:
    """The largest encoded message (its JSON) that fits in one record of the setting."""
    return max_message_bytes - RECORD_OVERHEAD_BYTES


def record_size(key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    """The size aiokafka checks against ``max_request_size``: value, key, headers, framing."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
    return size


#: aiokafka's framing of a record alone in its batch: the v2 batch header and the record's
#: fixed fields (``DefaultRecordBatchBuilder.HEADER_STRUCT`` and ``MAX_RECORD_OVERHEAD``)
_FRAMING_BYTES = 61 + 21
_VARINT_MAX = 5


def record_size_bound(key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    """:func:`record_size` or a little more (every length counted as a 5-byte varint), by
    additions only: the cheap test, :func:`record_size` only for records close to a limit."""
    size = _FRAMING_BYTES + len(value) + (len(key) if key else 0) + _VARINT_MAX * 3
    for name, header_value in headers:
        size += len(name) + len(header_value) + 2 * _VARINT_MAX
    return size


def too_large(what: str, size: int, limit: int) -> str:
    """The one wording of a size error: ``"result of 812,345 bytes exceeds the
    1,046,528-byte message limit"``."""
    return f"{what} of {size:,} bytes exceeds the {limit:,}-byte message limit"


class MessageTooLarge(ValueError):
    """A message refused before it was sent, because it would not fit (:func:`too_large`)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(too_large(what, size, limit))
        self.what = what
        self.size = size
        self.limit = limit
