"""`make bench` fails on a wrong output: the echo agent is replaced by one that tampers with
node ``b``'s output, so every echo_chain execution ends completed but wrong (echo_fanout has
no node ``b`` and stays right)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from e2e import harness
from e2e.test_gateway_e2e import Api, gateway_stack
from spine_servicekit.kafka import KafkaConfig

from .helpers import checked, run_bench, spine_failures

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
]

harness.COMMANDS.setdefault("liar-echo", ["python", str(Path(__file__).with_name("liar_echo.py"))])
harness.ISSUED.setdefault("liar-echo", "echo")  # it runs as echo: issued as echo


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("registry", "orchestrator", "auth", "liar-echo", "gateway"),
        agents=("echo",),
        flows=("echo_chain", "echo_fanout"),
    ) as client:
        yield client


async def test_a_wrong_output_fails_the_run_and_is_shown(api: Api, tmp_path: Path) -> None:
    code, record, text = await run_bench(api, tmp_path)
    assert code == 1, text[-3000:]
    chain = checked(record, "chain")
    assert chain == 13 + 12
    assert spine_failures(record) == {"wrong_output": chain}  # every chain, no fan-out
    assert "spine wrong_output:" in text and "tampered" in text
