"""echo: returns its input; fail, fail_times (by attempt), delay_ms and needs_input knobs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from spine_agent import NeedsInput, Task
from spine_agent.testing import task_message
from spine_demo_agents import echo
from spine_demo_agents.echo import EchoFailure, should_fail


def _task(attempt: int = 1, conversation: tuple[dict[str, Any], ...] = (), **config: Any) -> Task:
    return Task.from_message(
        task_message(
            "echo",
            node_id="n1",
            attempt=attempt,
            input={"x": 1},
            dependencies={"a": {"y": 2}},
            conversation=conversation,
            config=config,
        )
    )


def test_returns_its_input() -> None:
    out = asyncio.run(echo.handle(_task()))
    assert out == {
        "echo": {"x": 1},
        "dependencies": {"a": {"y": 2}},
        "node_id": "n1",
        "attempt": 1,
        "conversation": [],
    }


@pytest.mark.parametrize(
    ("times", "attempt", "fails"),
    [
        (0, 1, False),
        (1, 1, True),
        (1, 2, False),
        (3, 3, True),
        (3, 4, False),
    ],
)
def test_fail_times_is_decided_by_the_attempt(times: int, attempt: int, fails: bool) -> None:
    assert (should_fail({"fail_times": times}, attempt) is not None) is fails
    if fails:
        with pytest.raises(EchoFailure, match=f"attempt {attempt}"):
            asyncio.run(echo.handle(_task(attempt, fail_times=times)))
    else:
        assert asyncio.run(echo.handle(_task(attempt, fail_times=times)))["attempt"] == attempt


def test_fail_always_fails() -> None:
    for attempt in (1, 2, 10):
        with pytest.raises(EchoFailure):
            asyncio.run(echo.handle(_task(attempt, fail=True)))


def test_delay_is_awaited() -> None:
    async def run() -> bool:
        task = asyncio.create_task(echo.handle(_task(delay_ms=200)))
        await asyncio.sleep(0)
        done_early = task.done()
        await task
        return done_early

    assert asyncio.run(run()) is False


def test_needs_input_asks_once() -> None:
    first = asyncio.run(echo.handle(_task(needs_input=True)))
    assert isinstance(first, NeedsInput) and first.missing_fields == ("message",)
    answered = (
        {"role": "agent", "content": first.question},
        {"role": "user", "content": {"message": "hi"}},
    )
    out = asyncio.run(echo.handle(_task(2, answered, needs_input=True)))
    assert out["conversation"][-1] == {"role": "user", "content": {"message": "hi"}}


def test_bad_knob_is_an_error() -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        asyncio.run(echo.handle(_task(delay_ms="soon")))
