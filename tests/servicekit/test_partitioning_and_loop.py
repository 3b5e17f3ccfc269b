"""Pure checks of two speed-ups: the cached key partitioner and the uvloop runner."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from spine_servicekit.kafka import key_partitioner
from spine_servicekit.runtime import run_loop

_JAVA_COMPATIBLE = DefaultPartitioner()


@given(key=st.binary(min_size=0, max_size=64), count=st.integers(min_value=1, max_value=64))
def test_a_key_lands_where_the_java_partitioner_puts_it(key: bytes, count: int) -> None:
    partitions = list(range(count))
    expected = _JAVA_COMPATIBLE(key, partitions, partitions)
    assert key_partitioner(key, partitions, partitions) == expected
    assert key_partitioner(key, partitions, partitions) == expected  # from the cache


def test_execution_ids_spread_like_the_default_partitioner() -> None:
    keys = [str(uuid.uuid4()).encode() for _ in range(500)]
    assert [key_partitioner(k, [0, 1, 2], []) for k in keys] == [
        _JAVA_COMPATIBLE(k, [0, 1, 2], []) for k in keys
    ]


def test_a_record_without_key_goes_to_an_available_partition() -> None:
    assert {key_partitioner(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_loop_uses_uvloop_unless_told_otherwise() -> None:
    assert run_loop(_loop_module()).startswith("uvloop")
    assert run_loop(_loop_module(), "asyncio").startswith("asyncio")
