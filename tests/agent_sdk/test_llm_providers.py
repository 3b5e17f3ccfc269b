"""The LLM kit against local servers speaking OpenAI's and Anthropic's real protocols,
through the official SDK clients: text, usage, streaming, tools, structured output,
retries and errors."""

from __future__ import annotations

import json
import logging
from typing import Literal

import pytest
import structlog
from agent_sdk.llm_servers import Calls, Fail, FakeModelServer, Json, Text
from pydantic import BaseModel, Field
from spine_agent import TaskFailed
from spine_agent.llm import (
    LLM,
    OutputInvalid,
    ProviderError,
    Tool,
    ToolRoundsExceeded,
)

KINDS = ("openai", "anthropic")
KEY = "sk-test-Do-Not-Leak-0123456789abcdef"
MODEL = "fake-model-1"

pytestmark = pytest.mark.parametrize("kind", KINDS)


def _llm(server: FakeModelServer, **kwargs: object) -> LLM:
    return LLM.connect(server.kind, MODEL, api_key=KEY, base_url=server.base_url, **kwargs)  # type: ignore[arg-type]


async def test_plain_completion_returns_text_and_usage(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    server.script(f"{kind}: say hello", Text("Hello from the fake model."))
    llm = _llm(server)
    try:
        done = await llm.complete(f"{kind}: say hello", system="Be kind.")
    finally:
        await llm.aclose()
    assert done.text == "Hello from the fake model."
    assert done.usage.model == MODEL
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.as_output() == {
        "text": "Hello from the fake model.",
        "usage": {
            "model": MODEL,
            "input_tokens": done.usage.input_tokens,
            "output_tokens": done.usage.output_tokens,
        },
    }
    [request] = server.requests_for(f"{kind}: say hello")
    assert request.body["stream"] is True
    if kind == "openai":
        assert request.body["stream_options"] == {"include_usage": True}
        assert request.body["messages"][0] == {"role": "system", "content": "Be kind."}
        assert request.headers["authorization"] == f"Bearer {KEY}"
    else:
        assert request.body["system"] == "Be kind."
        # the SDK sends the key as x-api-key or (2.x) as a bearer token
        sent = {request.headers.get("x-api-key"), request.headers.get("authorization")}
        assert sent & {KEY, f"Bearer {KEY}"}


async def test_text_deltas_reach_the_callback_in_order(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    text = "one two three four five six"
    server.script(f"{kind}: count", Text(text))
    seen: list[str] = []

    async def on_token(delta: str) -> None:
        seen.append(delta)

    llm = _llm(server)
    try:
        done = await llm.complete(f"{kind}: count", on_token=on_token)
    finally:
        await llm.aclose()
    assert seen == ["one ", "two ", "three ", "four ", "five ", "six"]
    assert "".join(seen) == done.text == text


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_tool_round_trip_validates_arguments(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: what is 2 + 3?"
    server.script(
        prompt,
        Calls((("add", {"a": "two", "b": 3}),)),  # a bad argument first
        Calls((("add", {"a": 2, "b": 3}), ("nope", {}))),
        Text("2 + 3 = 5"),
    )
    llm = _llm(server)
    try:
        done = await llm.complete(prompt, tools=[add])
    finally:
        await llm.aclose()
    assert done.text == "2 + 3 = 5" and done.rounds == 3
    first, second, third = server.requests_for(prompt)
    if kind == "openai":
        [tool] = first.body["tools"]
        assert tool["function"]["name"] == "add"
        assert tool["function"]["description"] == "Add two integers."
        assert tool["function"]["parameters"]["required"] == ["a", "b"]
        bad = second.body["messages"][-1]
        assert bad["role"] == "tool" and bad["tool_call_id"] == "call_0"
        results = [m["content"] for m in third.body["messages"][-2:]]
    else:
        [tool] = first.body["tools"]
        assert tool["name"] == "add" and tool["input_schema"]["required"] == ["a", "b"]
        [bad] = second.body["messages"][-1]["content"]
        assert bad["type"] == "tool_result" and bad["is_error"] is True
        results = [r["content"] for r in third.body["messages"][-1]["content"]]
        assert [r["is_error"] for r in third.body["messages"][-1]["content"]] == [False, True]
    assert "invalid arguments" in bad["content"] and "a:" in bad["content"]
    assert results[0] == "5"
    assert "no tool named 'nope'" in results[1]
    # usage covers every round: each was billed
    assert done.usage.output_tokens >= 3


async def test_tool_rounds_are_bounded(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: loop forever"
    server.script(prompt, Calls((("add", {"a": 1, "b": 1}),)))  # repeats every round
    llm = _llm(server, max_tool_rounds=2)
    try:
        with pytest.raises(ToolRoundsExceeded) as caught:
            await llm.complete(prompt, tools=[Tool.from_function(add)])
    finally:
        await llm.aclose()
    assert "after 2 rounds" in caught.value.message and MODEL in caught.value.message
    assert caught.value.usage is not None and caught.value.usage.output_tokens > 0  # billed
    assert isinstance(caught.value, TaskFailed)
    assert len(server.requests_for(prompt)) == 3  # the first answer and two tool rounds


class Verdict(BaseModel):
    label: Literal["approve", "reject"]
    score: float = Field(ge=0, le=1)


async def test_structured_output_is_validated(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    server.script(f"{kind}: judge", Json({"label": "approve", "score": 0.9}))
    server.script(f"{kind}: judge badly", Json({"label": "maybe", "score": 7}))
    llm = _llm(server)
    try:
        done = await llm.complete(f"{kind}: judge", output=Verdict)
        with pytest.raises(OutputInvalid) as caught:
            await llm.complete(f"{kind}: judge badly", output=Verdict)
    finally:
        await llm.aclose()
    assert done.data == Verdict(label="approve", score=0.9)
    assert done.as_output()["data"] == {"label": "approve", "score": 0.9}
    assert json.loads(done.text) == {"label": "approve", "score": 0.9}
    message = caught.value.message
    assert "does not match Verdict" in message and "label:" in message and "score:" in message
    [request] = server.requests_for(f"{kind}: judge")
    if kind == "openai":
        fmt = request.body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Verdict"
    else:
        assert request.body["tool_choice"] == {"type": "tool", "name": "final_answer"}


async def test_429_then_200_is_retried(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: busy"
    server.script(prompt, Text("finally"), fail=(Fail(429, retry_after="1", retry_after_ms=20),))
    llm = _llm(server, max_retries=2)
    try:
        done = await llm.complete(prompt)
    finally:
        await llm.aclose()
    assert done.text == "finally"
    assert len(server.requests_for(prompt)) == 2


async def test_persistent_500_is_a_clear_error_without_the_key(
    kind: str, model_servers: dict[str, FakeModelServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: broken"
    server.script(prompt, Text("never"), fail=(Fail(500, times=None),))
    caplog.set_level(logging.DEBUG)  # the SDKs' and httpx's own debug logs included
    llm = _llm(server, max_retries=2)
    try:
        with structlog.testing.capture_logs() as events, pytest.raises(ProviderError) as caught:
            await llm.complete(prompt)
    finally:
        await llm.aclose()
    error = caught.value
    assert error.message == f"{kind} model {MODEL!r}: HTTP 500: scripted HTTP 500"
    assert (error.provider, error.model, error.status) == (kind, MODEL, 500)
    assert error.usage is None  # no round was answered
    assert len(server.requests_for(prompt)) == 3  # the SDK's own retries: 1 + max_retries
    assert KEY not in error.message and KEY not in repr(error)
    assert KEY not in caplog.text and KEY[-12:] not in caplog.text
    assert KEY not in json.dumps(events, default=str)


async def test_a_key_echoed_by_the_provider_is_redacted(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: unauthorised"
    server.script(prompt, Text("never"), fail=(Fail(401, times=None),))
    llm = _llm(server)
    # the provider's body quotes the key back, as OpenAI's 401 does (masked or not)
    original = server._error

    def echoing(fail: Fail, message: str | None = None) -> object:
        return original(fail, f"Incorrect API key provided: {KEY}. Masked: sk-test-****cdef")

    server._error = echoing  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(ProviderError) as caught:
            await llm.complete(prompt)
    finally:
        server._error = original  # type: ignore[method-assign]
        await llm.aclose()
    assert caught.value.status == 401
    assert KEY not in caught.value.message and "sk-test-" not in caught.value.message
    assert "Incorrect API key provided: [redacted]" in caught.value.message


async def test_an_unreachable_server_is_a_clear_error(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    llm = LLM.connect(kind, MODEL, api_key=KEY, base_url="http://127.0.0.1:9/v1", max_retries=0)  # type: ignore[arg-type]
    try:
        with pytest.raises(ProviderError) as caught:
            await llm.complete("anyone there?")
    finally:
        await llm.aclose()
    assert caught.value.status is None
    assert caught.value.message.startswith(f"{kind} model {MODEL!r}: request failed")


async def test_structured_answer_after_a_failing_async_tool(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: judge customer 7"

    async def history(customer_id: int) -> list[str]:
        """The customer's past tickets."""
        raise ValueError(f"no history for {customer_id}")

    server.script(
        prompt,
        Calls((("history", {"customer_id": 7}),)),
        Json({"label": "reject", "score": 0.2}),
    )
    llm = _llm(server)
    try:
        done = await llm.complete(prompt, tools=[history], output=Verdict)
    finally:
        await llm.aclose()
    assert done.data == Verdict(label="reject", score=0.2) and done.rounds == 2
    first, second = server.requests_for(prompt)
    if kind == "openai":
        failed = second.body["messages"][-1]["content"]
        assert first.body["response_format"]["type"] == "json_schema"
    else:
        [result] = second.body["messages"][-1]["content"]
        failed = result["content"]
        assert result["is_error"] is True
        # with tools of its own the model must call some tool; its answer is final_answer
        assert first.body["tool_choice"] == {"type": "any"}
        assert [t["name"] for t in first.body["tools"]] == ["history", "final_answer"]
    assert failed == "tool 'history' failed: ValueError: no history for 7"
