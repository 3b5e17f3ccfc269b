"""The small chaos run of ``make test`` (``make chaos`` is the big one, tests/chaos/run.py).

A few dozen executions of mixed flows in flight while the orchestrator, auth, the registry,
the relay, the gateway, metrics and the echo agent are each killed -9 once and restarted,
and the Kafka broker is restarted once; then every execution ended exactly once, nothing
was dispatched twice, every balance is what docs/credits.md charges and every projection
equals its rebuild.
"""

from __future__ import annotations

import pytest
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import KafkaConfig

from .run import VICTIMS, ChaosOptions, run_chaos

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(420),
]


async def test_kill_every_service_and_restart_the_broker_loses_and_doubles_nothing(
    infra: dict[str, str],
) -> None:
    options = ChaosOptions(
        executions=48, gap=(1.0, 3.0), slow=2.0, first_wave=0.25, settle_timeout=150.0
    )
    kafka = KafkaConfig(
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], security=KafkaSecurity.from_env(infra)
    )
    report = await run_chaos(kafka, infra, options)
    print(report.details())
    assert report.kills == len(VICTIMS) and report.broker_restarts == 1, report.details()
    assert not report.problems, report.details()
    assert report.executions == options.executions, report.details()
    assert report.started >= report.executions
    assert not report.lost, report.details()
    assert not report.duplicated, report.details()
    assert not report.balance_errors, report.details()
    assert not report.projection_errors and len(report.projections) == 4, report.details()
    # the mix really mixed: runs completed, failed (and were refunded) and were cancelled
    assert report.outcomes["completed"] and report.outcomes["failed"], report.details()
    assert report.dispatches == report.tasks > report.executions
