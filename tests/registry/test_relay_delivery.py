"""The relay's call to an HTTP agent: request and answer mapping, retries, timeouts.

The agent is faked at the transport boundary (``httpx.MockTransport``); sleeps between
retries are recorded instead of slept, except where a test is about real time.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from spine_agent import Task, result_for
from spine_agent.testing import task_message
from spine_registry.relay.delivery import (
    DeliveryFailed,
    RetryPolicy,
    build_request,
    deliver,
    output_from_response,
    parse_retry_after,
    user_message,
)

ENDPOINT = "http://agent.test:8080"
URL = f"{ENDPOINT}/execute"
POLICY = RetryPolicy(max_retries=3, backoff_s=0.5, max_backoff_s=10.0)


def make_task(
    *,
    execution_id: str = "exec-1",
    config: dict[str, Any] | None = None,
    deadline_in: float | None = 30.0,
    **kw: Any,
) -> Task:
    deadline = None if deadline_in is None else datetime.now(UTC) + timedelta(seconds=deadline_in)
    return Task.from_message(
        task_message(
            "echo-http",
            execution_id=execution_id,
            node_id="n1",
            attempt=2,
            config=config or {},
            deadline=deadline,
            **kw,
        )
    )


def answer(status: str = "success", execution_id: str = "exec-1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": status,
        "output": {"message": "hi", "data": {"x": 1}, "metadata": {"m": True}},
        "error_message": None,
        "execution_id": execution_id,
    }
    body.update(fields)
    return body


class Agent:
    """A scripted HTTP agent: one response (or exception) per call, the last one repeats."""

    def __init__(self, *script: httpx.Response | Exception | Callable[[], Any]) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if callable(step) and not isinstance(step, httpx.Response):
            step = await step()
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, httpx.Response)
        return step

    @property
    def calls(self) -> int:
        return len(self.requests)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def run(agent: Agent, task: Task, sleeps: Sleeps | None = None, **kw: Any) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(agent)) as client:
        return await deliver(
            client, ENDPOINT, task, POLICY, sleep=sleeps or Sleeps(), rng=random.Random(7), **kw
        )


def refused() -> httpx.ConnectError:
    try:
        raise httpx.ConnectError("All connection attempts failed") from ConnectionRefusedError(
            111, "Connection refused"
        )
    except httpx.ConnectError as exc:
        return exc


# --- the request -----------------------------------------------------------------------
def test_request_maps_the_task_onto_the_original_contract() -> None:
    task = make_task(
        input={"user_message": "first", "amount": 5},
        dependencies={"zoe": {"name": "Ana"}},
        conversation=[
            {"role": "agent", "content": "what is your income?"},
            {"role": "user", "content": {"user_message": "income: 10"}},
        ],
        config={"delay_ms": 10, "timeout": 3},
    )
    assert build_request(task) == {
        "execution_id": "exec-1",
        "node_id": "n1",
        "input": {
            "user_message": "income: 10",
            "context": {
                "input": {"user_message": "first", "amount": 5},
                "dependencies": {"zoe": {"name": "Ana"}},
                "attempt": 2,
                "idempotency_key": "exec-1:n1:2",
                "node_type": "processor",
            },
            "previous_messages": [
                {"role": "agent", "content": "what is your income?"},
                {"role": "user", "content": {"user_message": "income: 10"}},
            ],
        },
        "config": {"delay_ms": 10, "timeout": 3},
    }


def test_user_message_falls_back_to_the_execution_input() -> None:
    assert user_message(make_task(input={"user_message": "hello"})) == "hello"
    structured_turn = [{"role": "user", "content": {"term_months": 12}}]
    task = make_task(input={"user_message": "hello"}, conversation=structured_turn)
    assert user_message(task) == "hello"
    assert user_message(make_task(input={"user_message": 42})) is None
    assert user_message(make_task()) is None


# --- the answer ------------------------------------------------------------------------
def test_success_output_is_the_agents_output() -> None:
    output = output_from_response(make_task(), orjson.dumps(answer()))
    assert output == {"message": "hi", "data": {"x": 1}, "metadata": {"m": True}}


def test_error_answer_fails_with_the_agents_message_verbatim() -> None:
    task = make_task()
    body = answer("error", error_message="credit bureau unreachable")
    with pytest.raises(DeliveryFailed) as info:
        output_from_response(task, orjson.dumps(body))
    result = result_for(task.message, "echo-http", info.value, duration_ms=1.0)
    assert result.data.status == "error"
    assert result.data.error_message == "credit bureau unreachable"
    assert result.data.output == {}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>oops</html>", "invalid response from agent: body is not JSON: <html>oops</html>"),
        (b"", "invalid response from agent: body is not JSON: (empty)"),
        (orjson.dumps({"output": {}}), "invalid response from agent: status: Field required"),
        (
            orjson.dumps(answer(status="ok")),
            "invalid response from agent: status: "
            "Input should be 'success', 'error' or 'needs_input'",
        ),
        (orjson.dumps([1, 2]), "invalid response from agent: "),
        (
            orjson.dumps(answer(execution_id="other")),
            "invalid response from agent: execution_id 'other' does not match 'exec-1'",
        ),
        (
            orjson.dumps(answer(output={"data": "not a dict"})),
            "invalid response from agent: output.data: Input should be a valid dictionary",
        ),
    ],
)
def test_a_body_off_the_contract_is_an_invalid_response(body: bytes, expected: str) -> None:
    with pytest.raises(DeliveryFailed) as info:
        output_from_response(make_task(), body)
    assert str(info.value).startswith(expected), str(info.value)


# --- the call --------------------------------------------------------------------------
async def test_success_sends_the_contract_body_once() -> None:
    agent = Agent(httpx.Response(200, json=answer()))
    task = make_task(input={"user_message": "hello"})
    assert (await run(agent, task))["message"] == "hi"
    assert agent.calls == 1
    request = agent.requests[0]
    assert request.method == "POST" and str(request.url) == URL
    assert orjson.loads(request.content) == build_request(task)
    assert request.headers["idempotency-key"] == "exec-1:n1:2"
    assert request.headers["content-type"] == "application/json"


async def test_5xx_is_retried_with_growing_jittered_backoff() -> None:
    agent = Agent(
        httpx.Response(500, text="boom"),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(503, text="busy"),
        httpx.Response(200, json=answer()),
    )
    sleeps = Sleeps()
    assert (await run(agent, make_task(), sleeps))["data"] == {"x": 1}
    assert agent.calls == 4
    assert len(sleeps.delays) == 3
    for retry, delay in enumerate(sleeps.delays, start=1):
        base = 0.5 * 2 ** (retry - 1)
        assert base * 0.5 <= delay <= base


async def test_persistent_5xx_fails_naming_status_url_and_body() -> None:
    agent = Agent(httpx.Response(500, json={"detail": "echo-http: configured status 500"}))
    with pytest.raises(DeliveryFailed) as info:
        await run(agent, make_task())
    assert str(info.value) == (
        f'HTTP 500 from {URL}: {{"detail":"echo-http: configured status 500"}} (after 4 attempts)'
    )
    assert agent.calls == 4


async def test_zero_retries_means_one_call() -> None:
    agent = Agent(httpx.Response(503, text="busy"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(agent)) as client:
        with pytest.raises(DeliveryFailed, match=r"HTTP 503 .* \(after 1 attempts\)"):
            await deliver(client, ENDPOINT, make_task(), RetryPolicy(max_retries=0), sleep=Sleeps())
    assert agent.calls == 1


async def test_429_honours_retry_after() -> None:
    agent = Agent(
        httpx.Response(429, headers={"Retry-After": "2"}, text="slow down"),
        httpx.Response(200, json=answer()),
    )
    sleeps = Sleeps()
    await run(agent, make_task(), sleeps)
    assert agent.calls == 2
    assert sleeps.delays == [2.0]


async def test_429_without_retry_after_backs_off() -> None:
    agent = Agent(httpx.Response(429), httpx.Response(429), httpx.Response(200, json=answer()))
    sleeps = Sleeps()
    await run(agent, make_task(), sleeps)
    assert agent.calls == 3 and len(sleeps.delays) == 2
    assert 0.25 <= sleeps.delays[0] <= 0.5 and 0.5 <= sleeps.delays[1] <= 1.0


async def test_retry_after_beyond_the_deadline_fails_at_once() -> None:
    agent = Agent(httpx.Response(429, headers={"Retry-After": "60"}, text="later"))
    sleeps = Sleeps()
    with pytest.raises(DeliveryFailed) as info:
        await run(agent, make_task(deadline_in=5), sleeps)
    message = str(info.value)
    assert message.startswith(f"HTTP 429 from {URL}: later (after 1 attempt; no time left")
    assert agent.calls == 1 and sleeps.delays == []


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
async def test_4xx_other_than_429_is_not_retried(status: int) -> None:
    agent = Agent(httpx.Response(status, json={"detail": "nope"}))
    with pytest.raises(DeliveryFailed) as info:
        await run(agent, make_task())
    assert str(info.value) == f'HTTP {status} from {URL}: {{"detail":"nope"}}'
    assert agent.calls == 1


async def test_long_bodies_are_quoted_as_an_excerpt() -> None:
    agent = Agent(httpx.Response(400, text="x" * 5000))
    with pytest.raises(DeliveryFailed) as info:
        await run(agent, make_task())
    assert len(str(info.value)) < 400 and str(info.value).endswith("…")


async def test_connection_refused_is_retried_then_named() -> None:
    agent = Agent(refused())
    sleeps = Sleeps()
    with pytest.raises(DeliveryFailed) as info:
        await run(agent, make_task(), sleeps)
    assert str(info.value) == f"connection refused: POST {URL} (after 4 attempts)"
    assert agent.calls == 4 and len(sleeps.delays) == 3


async def test_a_dropped_connection_is_retried() -> None:
    agent = Agent(httpx.RemoteProtocolError("peer closed"), httpx.Response(200, json=answer()))
    assert (await run(agent, make_task()))["message"] == "hi"
    assert agent.calls == 2


async def test_a_hanging_agent_times_out_at_the_node_timeout_without_retry() -> None:
    async def hang() -> None:
        await asyncio.sleep(30)

    agent = Agent(hang)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeliveryFailed) as info:
        await run(agent, make_task(config={"timeout": 0.2}))
    assert str(info.value) == f"timed out after 0.2s: POST {URL}"
    assert 0.15 <= loop.time() - started < 2
    assert agent.calls == 1


async def test_the_deadline_shortens_the_call_timeout() -> None:
    # What is checked is the timeout the call is given, not how long a hang lasts: the
    # agent times out at once, and the deadline is far enough that a slow machine's
    # seconds between building the task and calling cannot blur the difference.
    async def timed_out() -> None:
        raise httpx.ReadTimeout("agent too slow")

    agent = Agent(timed_out)
    with pytest.raises(DeliveryFailed) as info:
        await run(agent, make_task(config={"timeout": 600}, deadline_in=300))
    given = [float(t) for t in agent.requests[0].extensions["timeout"].values()]
    said = re.fullmatch(r"timed out after ([0-9.]+)s: POST " + re.escape(URL), str(info.value))
    assert said is not None, str(info.value)
    assert 240 < float(said.group(1)) <= 300  # the deadline's 300 s, not the node's 600 s
    assert given and all(240 < t <= 300 for t in given), given
    assert agent.calls == 1


async def test_without_node_timeout_or_deadline_the_default_applies() -> None:
    async def hang() -> None:
        await asyncio.sleep(30)

    with pytest.raises(DeliveryFailed, match=r"^timed out after 0\.1s"):
        await run(Agent(hang), make_task(deadline_in=None), default_timeout_s=0.1)


async def test_an_expired_deadline_calls_nobody() -> None:
    agent = Agent(httpx.Response(200, json=answer()))
    with pytest.raises(DeliveryFailed, match="deadline passed"):
        await run(agent, make_task(deadline_in=-1))
    assert agent.calls == 0


async def test_an_error_answer_is_not_retried() -> None:
    agent = Agent(httpx.Response(200, json=answer("error", error_message="no such applicant")))
    with pytest.raises(DeliveryFailed, match="^no such applicant$"):
        await run(agent, make_task())
    assert agent.calls == 1


# --- the policy ------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=5.0, jitter=0.5)
    rng = random.Random(1)
    for retry, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0)]:
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base * 0.3  # jitter really spreads them
    assert RetryPolicy(backoff_s=1.0, jitter=0).backoff(3, rng) == 4.0
    assert policy.delay(1, 7.5, rng) == 7.5


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:10 GMT", now) == 10.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


@pytest.mark.parametrize("endpoint", ["agent.test:8080", "ftp://agent.test", "http://[::1"])
async def test_a_bad_endpoint_fails_without_retries(endpoint: str) -> None:
    sleeps = Sleeps()
    async with httpx.AsyncClient() as client:  # fails before any connection is attempted
        with pytest.raises(DeliveryFailed, match=r"^invalid agent endpoint "):
            await deliver(client, endpoint, make_task(), POLICY, sleep=sleeps)
    assert sleeps.delays == []
