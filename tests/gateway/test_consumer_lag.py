"""Consumer-group lag for /status: which groups count, the arithmetic, and the cache that
answers at once while a new measurement runs (fakes of the admin client and consumer)."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from spine_gateway.adapters.kafka import ConsumerLag
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import KafkaConfig

P = "t1."


class FakeAdmin:
    def __init__(self, groups: dict[str, dict[TopicPartition, int]]) -> None:
        self.groups = groups
        self.listed = 0

    async def list_consumer_groups(self) -> list[tuple[str, str]]:
        self.listed += 1
        return [(name, "consumer") for name in self.groups]

    async def list_consumer_group_offsets(self, name: str) -> dict[TopicPartition, Any]:
        return {tp: OffsetAndMetadata(o, "") for tp, o in self.groups[name].items()}

    async def close(self) -> None:
        pass


class FakeConsumer:
    def __init__(self, ends: dict[TopicPartition, int]) -> None:
        self.ends = ends

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in tps}

    async def stop(self) -> None:
        pass


def _lag(admin: FakeAdmin, consumer: FakeConsumer, cache_s: float = 60.0) -> ConsumerLag:
    lag = ConsumerLag(
        KafkaConfig("nowhere:9092", prefix=P, security=KafkaSecurity()), cache_s=cache_s
    )

    async def connect() -> Any:
        return admin, consumer

    lag._connect = connect  # type: ignore[method-assign]
    return lag


CMDS0 = TopicPartition(f"{P}spine.executions.commands", 0)
CMDS1 = TopicPartition(f"{P}spine.executions.commands", 1)
RESULTS0 = TopicPartition(f"{P}spine.agents.results", 0)
OTHER = TopicPartition("t2.spine.executions.commands", 0)


async def test_lag_per_group_and_topic_for_this_installation_only() -> None:
    admin = FakeAdmin(
        {
            f"{P}orchestrator": {CMDS0: 5, CMDS1: 7, RESULTS0: 10},
            f"{P}agent.echo": {},  # nothing committed yet: not shown
            f"{P}stray": {OTHER: 1},  # another installation's topics
            "t2.orchestrator": {OTHER: 0},  # another prefix
        }
    )
    consumer = FakeConsumer({CMDS0: 9, CMDS1: 7, RESULTS0: 12, OTHER: 3})
    groups = await _lag(admin, consumer).groups()
    assert groups == {
        f"{P}orchestrator": {
            "lag": 6,
            "partitions": 3,
            "topics": {f"{P}spine.executions.commands": 4, f"{P}spine.agents.results": 2},
        }
    }


async def test_a_stale_measurement_is_answered_while_a_new_one_runs() -> None:
    admin = FakeAdmin({f"{P}auth": {CMDS0: 1}})
    consumer = FakeConsumer({CMDS0: 4})
    lag = _lag(admin, consumer, cache_s=0.0)
    assert lag.age_s is None
    first = await lag.groups()  # the first call waits for a measurement
    assert first[f"{P}auth"]["lag"] == 3 and lag.age_s is not None
    consumer.ends[CMDS0] = 10
    assert (await lag.groups())[f"{P}auth"]["lag"] == 3  # the last one, at once
    assert lag._task is not None
    await lag._task  # the background measurement finishes
    assert (await lag.groups())[f"{P}auth"]["lag"] == 9
    await lag.stop()


async def test_a_failed_measurement_is_shown_as_such() -> None:
    class Broken(FakeAdmin):
        async def list_consumer_groups(self) -> list[tuple[str, str]]:
            raise ConnectionError("broker away")

    lag = _lag(Broken({}), FakeConsumer({}))
    assert await lag.groups() == {"error": "ConnectionError"}
