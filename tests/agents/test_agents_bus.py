"""The demo agents over the real bus, served in-process: the credit-analysis conversation
(zoe asks, the human answers, eddie scores) and echo's failing-then-passing attempts."""

from __future__ import annotations

from typing import Any

import pytest
from spine_agent.testing import TopicReader, publish_tasks, serving, task_message
from spine_contracts import AgentResult, topics
from spine_demo_agents import echo, eddie, zoe
from spine_servicekit.kafka import KafkaConfig

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def _ask(reader: TopicReader, cfg: KafkaConfig, agent_id: str, **task: Any) -> AgentResult:
    message = task_message(agent_id, **task)
    await publish_tasks(cfg, agent_id, message, transactional=True)
    [result] = await reader.wait_for(
        lambda m: isinstance(m, AgentResult) and m.causation_id == str(message.message_id)
    )
    assert isinstance(result, AgentResult)
    assert result.data.agent_id == agent_id
    return result


async def test_credit_analysis_conversation(kafka: KafkaConfig) -> None:
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        serving(zoe.agent, kafka),
        serving(eddie.agent, kafka),
    ):
        first_input = {"user_message": "Name: Ana\nMonthly income: 3,000"}
        config = {"max_turns": 5, "required_fields": ["name", "income", "amount", "term_months"]}
        asked = await _ask(
            results,
            kafka,
            "zoe",
            execution_id="exec-credit",
            node_id="zoe",
            input=first_input,
            config=config,
            node_type="input",
        )
        assert asked.data.status == "needs_input"
        assert asked.data.missing_fields == ("amount", "term_months")
        assert asked.data.question and "amount" in asked.data.question

        conversation = [
            {"role": "agent", "content": asked.data.question},
            {"role": "user", "content": {"user_message": "amount: 10000\nterm_months: 24"}},
        ]
        intake = await _ask(
            results,
            kafka,
            "zoe",
            execution_id="exec-credit",
            node_id="zoe",
            attempt=2,
            input=first_input,
            conversation=conversation,
            config=config,
            node_type="input",
        )
        assert intake.data.status == "success"
        assert intake.data.output["applicant"] == {
            "name": "Ana",
            "income": 3000.0,
            "amount": 10000.0,
            "term_months": 24,
        }

        scored = await _ask(
            results,
            kafka,
            "eddie",
            execution_id="exec-credit",
            node_id="eddie",
            input=first_input,
            dependencies={"zoe": intake.data.output},
            config={"timeout": 30, "retries": 2, "risk_threshold": 0.7},
        )
        assert scored.data.status == "success"
        assert scored.data.output["decision"] == "approve"
        assert scored.data.output["score"] == 0.7963
        assert scored.data.output["monthly_payment"] == 416.67

        refused = await _ask(results, kafka, "eddie", input={"income": 3000})
        assert refused.data.status == "error"
        assert refused.data.error_message == (
            "InvalidApplication: cannot score without amount, term_months (looked in the "
            "dependencies' outputs and the execution input)"
        )


async def test_echo_fail_times_then_success(kafka: KafkaConfig) -> None:
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        serving(echo.agent, kafka),
    ):
        common: dict[str, Any] = {
            "execution_id": "exec-echo",
            "node_id": "e",
            "input": {"hello": "world"},
            "config": {"fail_times": 1, "delay_ms": 20},
        }
        failed = await _ask(results, kafka, "echo", attempt=1, **common)
        assert failed.data.status == "error"
        assert (failed.data.error_message or "").startswith("EchoFailure: configured to fail")
        passed = await _ask(results, kafka, "echo", attempt=2, **common)
        assert passed.data.status == "success"
        assert passed.data.output["echo"] == {"hello": "world"}
        assert passed.data.output["attempt"] == 2
        assert passed.data.metrics["duration_ms"] >= 20
