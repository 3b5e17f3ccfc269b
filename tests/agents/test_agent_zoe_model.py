"""zoe with a model: the model words the question, zoe decides what is missing; a failing
model means zoe's own question, never a failed node. Against the local OpenAI-compatible
server, through the real ``openai`` client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import structlog
from agent_sdk.llm_servers import Fail, FakeModelServer, Text
from spine_agent import NeedsInput, SettingsError, Task, load_settings
from spine_agent.llm import LLM, LLMSettings
from spine_agent.testing import task_message
from spine_contracts.metering import TokenBudget, TokenPrice
from spine_demo_agents import zoe
from spine_demo_agents.zoe_model import MAX_QUESTION_CHARS, Phraser, plain_text, prompt_for

MODEL = "fake-zoe-model"


@pytest_asyncio.fixture(scope="module")
async def server() -> AsyncIterator[FakeModelServer]:
    fake = FakeModelServer("openai")
    await fake.start()
    yield fake
    await fake.stop()


def _task(input: dict[str, Any], budget: TokenBudget | None = None) -> Task:  # noqa: A002
    return Task.from_message(task_message("zoe", input=input, node_type="input", budget=budget))


def _intake(task: Task) -> zoe.Intake:
    return zoe.assess(zoe.gather(task), zoe.required_fields(task.config))


def _phraser(server: FakeModelServer) -> Phraser:
    llm = LLM.openai(
        MODEL, api_key="sk-zoe-Secret-4455667788", base_url=server.base_url, max_retries=0
    )
    return Phraser(llm)


async def test_the_model_words_the_question_and_zoe_decides_what_is_missing(
    server: FakeModelServer,
) -> None:
    task = _task({"user_message": "name: Ana\nincome: lots"})
    intake = _intake(task)
    prompt = prompt_for(intake)
    assert "The applicant's name: Ana" in prompt
    assert "income must be a number" in prompt and "(term_months)" in prompt
    server.script(
        prompt,
        Text(
            "Thanks Ana! Could you tell me your **monthly income** as a number, the loan "
            "amount and the term in months?"
        ),
    )
    phraser = _phraser(server)
    try:
        outcome = await zoe.respond(task, phraser)
    finally:
        await phraser.aclose()
    assert isinstance(outcome, NeedsInput)
    assert outcome.missing_fields == ("income", "amount", "term_months")
    without = await zoe.respond(task)
    assert isinstance(without, NeedsInput) and without.missing_fields == outcome.missing_fields
    assert outcome.question.startswith(
        "Thanks Ana! Could you tell me your monthly income as a number"
    )
    # the reply format the parser reads is still zoe's
    assert outcome.question.endswith(zoe.reply_hint(intake))
    [request] = server.requests_for(prompt)
    assert request.body["model"] == MODEL and request.body["max_tokens"] <= 200
    # what the model used travels with the question, to be metered (docs/credits.md)
    usage = outcome.output["usage"]
    assert usage["model"] == MODEL and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert without.output == {}


async def test_a_failing_model_means_zoes_own_question(server: FakeModelServer) -> None:
    task = _task({"user_message": "name: Bo"})
    intake = _intake(task)
    server.script(prompt_for(intake), Text("unused"), fail=(Fail(500, times=None),))
    phraser = _phraser(server)
    try:
        with structlog.testing.capture_logs() as logs:
            outcome = await zoe.respond(task, phraser)
    finally:
        await phraser.aclose()
    assert isinstance(outcome, NeedsInput)
    assert outcome.question == zoe.question(intake)  # exactly the deterministic question
    assert outcome.missing_fields == ("income", "amount", "term_months")
    assert len(server.requests_for(prompt_for(intake))) == 1
    [warning] = [e for e in logs if e["event"] == "zoe_model_question_failed"]
    assert "HTTP 500" in warning["reason"] and "sk-zoe" not in str(warning)


async def test_an_empty_answer_or_no_budget_also_falls_back(server: FakeModelServer) -> None:
    task = _task({"user_message": "name: Cy\nincome: 2000"})
    intake = _intake(task)
    server.script(prompt_for(intake), Text("<p>  </p>"))
    phraser = _phraser(server)
    poor = TokenBudget(credits=0, pricing={"*": TokenPrice(input=1, output=1)})
    try:
        empty = await zoe.respond(task, phraser)
        before = len(server.requests)
        broke = await zoe.respond(_task(task.input, budget=poor), phraser)
    finally:
        await phraser.aclose()
    assert isinstance(empty, NeedsInput) and empty.question == zoe.question(intake)
    assert isinstance(broke, NeedsInput) and broke.question == zoe.question(intake)
    assert len(server.requests) == before  # an exhausted budget asks no model
    assert empty.output["usage"]["output_tokens"] > 0  # an empty answer was still paid
    assert broke.output == {}  # no call, nothing to pay


async def test_a_complete_application_never_calls_the_model(server: FakeModelServer) -> None:
    before = len(server.requests)
    task = _task({"name": "Di", "income": 3000, "amount": 9000, "term_months": 12})
    phraser = _phraser(server)
    try:
        outcome = await zoe.respond(task, phraser)
    finally:
        await phraser.aclose()
    assert outcome == await zoe.respond(task)
    assert len(server.requests) == before


def test_without_a_model_zoe_is_deterministic() -> None:
    assert zoe.wording.phraser is None  # nothing configured in the test process


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("**Hi!** What is your `income`?", "Hi! What is your income?"),
        ("<script>alert(1)</script>Your <b>name</b>?", "alert(1)Your name?"),
        ("# Title\n- first\n> quoted", "Title\nfirst\nquoted"),
        ("a\u202eb\x00c\x1b[31m  d\n\n\ne", "abc[31m d\ne"),
        ("   \n  ", ""),
    ],
)
def test_the_models_text_becomes_plain_text(raw: str, plain: str) -> None:
    assert plain_text(raw) == plain


def test_the_models_text_is_bounded() -> None:
    text = plain_text("word " * 1000)
    assert len(text) <= MAX_QUESTION_CHARS and text.endswith("word…")


def test_a_half_configured_model_stops_zoe_before_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPINE_LLM_MODEL", "SPINE_LLM_BASE_URL", "SPINE_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPINE_LLM_PROVIDER", "openai")
    with pytest.raises(SettingsError, match="a model agent needs SPINE_LLM_MODEL"):
        zoe.use_model(load_settings(LLMSettings))
    assert zoe.wording.phraser is None
