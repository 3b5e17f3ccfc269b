"""`make bench` fails when AI Spine misbehaves: a short real run, clean and then broken on
purpose (a task and a terminal event produced twice on the bus; a credit added behind the
bench's back). The wrong output is in ``test_bench_wrong_output.py`` (it needs a lying agent).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from e2e.test_gateway_e2e import Api, gateway_stack
from spine_servicekit.kafka import KafkaConfig

from .helpers import checked, run_bench, spine_failures

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("registry", "orchestrator", "auth", "echo", "gateway"),
        agents=("echo",),
        flows=("echo_chain", "echo_fanout"),
    ) as client:
        yield client


async def test_a_clean_short_run_passes_every_check(api: Api, tmp_path: Path) -> None:
    code, record, text = await run_bench(api, tmp_path)
    assert code == 0, text[-3000:]
    checks = record["headline"]["checks"]
    assert checks["ok"] and checks["failures"] == {}
    # every execution was looked at: 10 warm-up + 3 measured per latency phase, n per throughput
    assert checked(record, "chain") == 13 + 12 and checked(record, "fanout") == 13 + 6
    balance = checks["balance"]
    assert balance["problem"] is None
    assert balance["final"] == balance["start"] - (25 + 19)  # each completed execution costs 1
    assert "checks: every output" in text


async def test_a_doubled_task_and_terminal_event_fail_the_run(api: Api, tmp_path: Path) -> None:
    code, record, text = await run_bench(api, tmp_path, "--inject", "double")
    assert code == 1, text[-3000:]
    failures = spine_failures(record)
    assert failures.get("double_dispatch") == 1 and failures.get("double_terminal") == 1, failures
    assert set(failures) <= {"double_dispatch", "double_terminal"}, failures
    assert "CHECKS FAILED" in text and "spine double_terminal:" in text


async def test_a_balance_error_fails_the_run(api: Api, tmp_path: Path) -> None:
    code, record, text = await run_bench(api, tmp_path, "--inject", "balance")
    assert code == 1, text[-3000:]
    assert spine_failures(record) == {"balance": 1}
    balance = record["headline"]["checks"]["balance"]
    assert balance["final"] == balance["start"] - (25 + 19) + 1, balance  # the injected credit
    assert "spine balance:" in text
