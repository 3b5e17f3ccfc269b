"""The original product's published Python client, ``ai-spine-sdk`` 2.3.1 from PyPI (a
test-only dependency), against our gateway on a real stack: health, list flows and
agents, execute ``credit_analysis``, wait, result, plus the error paths it maps.

The SDK is synchronous (requests); its calls run in a thread so the stack's followers
keep running on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from ai_spine import AISpine, APIError, AuthenticationError
from ai_spine.models import Agent, Execution, Flow, HealthStatus, Metrics
from spine_servicekit.kafka import KafkaConfig

from tests.e2e.test_gateway_e2e import APPLICANT, Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(kafka, infra, topic_prefix) as client:
        yield client


async def sdk(call: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(call, *args, **kwargs)


async def test_the_original_sdk_runs_a_whole_credit_analysis(api: Api) -> None:
    user = await api.create_user(credits=3)
    client = AISpine(api_key=user["api_key"], base_url=str(api.http.base_url), timeout=30)
    try:
        health = await sdk(client.health_check)
        assert HealthStatus.from_dict(health).is_healthy

        flows = await sdk(client.list_flows)
        assert "credit_analysis" in {f["flow_id"] for f in flows}
        assert all(Flow.from_dict(f).name for f in flows)
        flow = await sdk(client.get_flow, "credit_analysis")
        assert Flow.from_dict(flow).nodes
        agents = await sdk(client.list_agents)
        assert {"zoe", "eddie"} <= {Agent.from_dict(a).agent_id for a in agents}

        started = await sdk(client.execute_flow, "credit_analysis", APPLICANT, {"via": "sdk"})
        assert set(started) >= {"execution_id", "status", "created_at"}
        eid = started["execution_id"]
        result = await sdk(client.wait_for_execution, eid, timeout=120, interval=1)
        execution = Execution.from_dict(result)
        assert execution.is_successful and execution.completed_at is not None
        assert execution.output_data["result"]["decision"] in {"approve", "review", "reject"}
        assert execution.metadata == {"via": "sdk"}

        assert await sdk(client.check_credits) == 2
        me = await sdk(client.get_current_user)
        assert me["user_id"] == user["user_id"] and "usage" in me
        # Accept: application/json → the JSON summary; a user's key gets their own figures
        metrics = await sdk(client.get_metrics)
        assert Metrics.from_dict(metrics).executions_total == 1
        assert metrics["scope"] == "user" and metrics["user_id"] == user["user_id"]
        status = await sdk(client.get_status)  # liveness only: no instances, no lag
        assert status["status"] == "healthy" and status["uptime"] > 0
        assert "services" not in status and "consumer_groups" not in status

        # agents in the SDK README's shape, then deleted (a second delete is False: 404)
        made = await sdk(
            client.create_agent,
            {"name": "SDK Agent", "type": "processor", "configuration": {"model": "x"}},
        )
        assert Agent.from_dict(made).agent_id == "sdk-agent"
        assert await sdk(client.delete_agent, "sdk-agent") is True
        assert await sdk(client.delete_agent, "sdk-agent") is False
    finally:
        client.close()


async def test_the_original_sdk_sees_our_errors(api: Api) -> None:
    user = await api.create_user(credits=1)
    base = str(api.http.base_url)
    bad = AISpine(api_key="sk_" + "1" * 43, base_url=base, max_retries=0)
    with pytest.raises(AuthenticationError):
        await sdk(bad.list_flows)
    bad.close()

    client = AISpine(api_key=user["api_key"], base_url=base, max_retries=0)
    try:
        with pytest.raises(APIError) as missing:
            await sdk(client.get_execution, "no-such-execution")
        assert missing.value.status_code == 404
        assert missing.value.details["error_code"] == "EXECUTION_NOT_FOUND"

        eid = (await sdk(client.execute_flow, "echo_chain", {"x": 1}))["execution_id"]
        done = await sdk(client.wait_for_execution, eid, timeout=120, interval=1)
        assert done["status"] == "completed"
        with pytest.raises(APIError) as terminal:  # cancelling what already ended: 409
            await sdk(client.cancel_execution, eid)
        assert terminal.value.status_code == 409

        # out of credits: 402 with error_code INSUFFICIENT_CREDITS (docs/api.md)
        with pytest.raises(APIError) as broke:
            await sdk(client.execute_flow, "echo_chain", {"x": 2})
        assert broke.value.status_code == 402
        assert broke.value.details["error_code"] == "INSUFFICIENT_CREDITS"
        assert "insufficient credits" in broke.value.message
    finally:
        client.close()
