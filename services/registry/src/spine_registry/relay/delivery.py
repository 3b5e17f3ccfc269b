"""One task to one HTTP agent: the request, the retries and the answer (docs/agents.md).

* :func:`build_request` maps a :class:`~spine_agent.Task` onto the original ``POST
  /execute`` body;
* :func:`output_from_response` maps the agent's answer onto the result's output, or
  raises :class:`DeliveryFailed` naming what was wrong with it;
* :class:`RetryPolicy` says which failures are retried and after how long;
* :func:`deliver` does the call: per-call timeout ``min(node timeout, time left to the
  task's deadline)``, retries with exponential backoff and jitter on 429 (honouring
  ``Retry-After``), 5xx and connection errors, never past the deadline.

Every failure ends as :class:`DeliveryFailed`, whose message becomes the
``AgentResult``'s ``error_message`` verbatim ("HTTP 500 from http://...: <body>",
"timed out after 1s: POST http://...", "connection refused: POST http://...",
"refused to connect to 10.0.0.5: private address, not allowed by
SPINE_RELAY_ALLOWED_NETWORKS: POST http://..."). An address the SSRF guard refuses
(:mod:`.guard`) and a redirect are never retried. Nothing is ever made up in place of the
agent's answer.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from spine_agent import NeedsInput, Task, TaskFailed
from spine_agent.http import HttpExecuteInput, HttpExecuteOutput, HttpExecuteRequest
from spine_servicekit import tracing
from spine_servicekit.logging import get_logger

from ..addresses import AddressRefused
from .signing import Sign

log = get_logger(__name__)

#: How much of an agent's body an error message quotes.
EXCERPT_CHARS = 300
#: How many validation problems an "invalid response" message lists.
MAX_PROBLEMS = 3

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class DeliveryFailed(TaskFailed):
    """The task failed; the message says why, for the user reading the execution."""


# --- the request -----------------------------------------------------------------------
def user_message(task: Task) -> str | None:
    """The latest user turn's ``user_message``, else the execution input's."""
    turns = task.user_turns()
    if turns and isinstance(turns[-1].get("user_message"), str):
        return str(turns[-1]["user_message"])
    message = task.input.get("user_message")
    return message if isinstance(message, str) else None


def build_context(task: Task) -> dict[str, Any]:
    """The caller's ``input.context`` with the relay's keys added where it has none.

    On a clash the caller's value wins: the contract promises the agent the context its
    caller sent (agents written for the original product read their own keys there),
    while everything the relay adds is also available elsewhere (``input`` and the
    dependencies are the task's, the idempotency key is also the ``Idempotency-Key``
    header)."""
    relay: dict[str, Any] = {
        "input": task.input,
        "dependencies": task.dependencies,
        "attempt": task.attempt,
        "idempotency_key": task.idempotency_key,
        "node_type": task.node_type,
    }
    caller = task.input.get("context")
    return {**relay, **caller} if isinstance(caller, dict) else relay


def build_request(task: Task) -> dict[str, Any]:
    """The ``POST /execute`` body for ``task``, as JSON-ready data."""
    request = HttpExecuteRequest(
        execution_id=task.execution_id,
        node_id=task.node_id,
        input=HttpExecuteInput(
            user_message=user_message(task),
            context=build_context(task),
            previous_messages=list(task.conversation),
        ),
        config=task.config,
    )
    return request.model_dump(mode="json")


# --- the answer ------------------------------------------------------------------------
def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _problems(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors()[:MAX_PROBLEMS]:
        where = ".".join(str(part) for part in err["loc"]) or "body"
        lines.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - MAX_PROBLEMS
    return "; ".join(lines) + (f" (and {more} more)" if more > 0 else "")


class _Answer(BaseModel):
    """``POST /execute``'s answer as the relay reads it: ``spine_agent.http``'s
    :class:`~spine_agent.http.HttpExecuteResponse` plus what docs/agents.md also allows
    (``needs_input`` with ``question``/``missing_fields``, ``"output": null`` with an
    error)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["success", "error", "needs_input"]
    output: HttpExecuteOutput | None = None
    error_message: str | None = None
    execution_id: str
    question: str | None = None
    missing_fields: list[str] = Field(default_factory=list)


def output_from_response(task: Task, body: bytes) -> dict[str, Any] | NeedsInput:
    """The output of a 2xx answer, a :class:`NeedsInput` when the agent asks for more,
    or :class:`DeliveryFailed` (agent error, bad body)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = excerpt(body.decode(errors="replace")) or "(empty)"
        raise DeliveryFailed(f"invalid response from agent: body is not JSON: {text}") from None
    try:
        response = _Answer.model_validate(data)
    except ValidationError as exc:
        raise DeliveryFailed(f"invalid response from agent: {_problems(exc)}") from None
    if response.execution_id != task.execution_id:
        raise DeliveryFailed(
            f"invalid response from agent: execution_id {response.execution_id!r} "
            f"does not match {task.execution_id!r}"
        )
    if response.status == "error":
        raise DeliveryFailed(response.error_message or "the agent reported an error")
    if response.status == "needs_input":
        question = response.question or (response.output.message if response.output else "")
        if not question:
            raise DeliveryFailed("invalid response from agent: needs_input without a question")
        return NeedsInput(question, response.missing_fields)
    output: dict[str, Any] = (response.output or HttpExecuteOutput()).model_dump(mode="json")
    return output


# --- retries ---------------------------------------------------------------------------
def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` retries after the first call; delays double from ``backoff_s``.

    ``jitter`` is the share of each delay that is random (0.5: between half and all of
    it), so agents that failed together are not all called again at the same instant.
    """

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    jitter: float = 0.5

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The delay before retry number ``retry`` (1 for the first)."""
        base = min(self.max_backoff_s, self.backoff_s * 2.0 ** (retry - 1))
        return base * (1 - self.jitter * rng.random())

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """The agent's ``Retry-After`` when it gave one, else the backoff."""
        return retry_after if retry_after is not None else self.backoff(retry, rng)


def _seconds(value: float) -> str:
    return f"{round(value, 2):g}s"


def _refused(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ConnectionRefusedError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def describe_transport_error(exc: httpx.TransportError, method: str, url: str) -> str:
    if _refused(exc):
        return f"connection refused: {method} {url}"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connection timed out: {method} {url}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {method} {url}: {exc}"
    return f"connection failed ({type(exc).__name__}: {exc}): {method} {url}"


def invalid_endpoint(endpoint: str, exc: Exception) -> str:
    return f"invalid agent endpoint {endpoint!r}: {exc}"


def node_timeout(config: dict[str, Any]) -> float | None:
    value = config.get("timeout")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class _Retryable:
    error: str
    retry_after: float | None = None


async def deliver(
    client: httpx.AsyncClient,
    endpoint: str,
    task: Task,
    policy: RetryPolicy,
    *,
    default_timeout_s: float = 300.0,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    rng: random.Random | None = None,
    sign: Sign | None = None,
) -> dict[str, Any] | NeedsInput:
    """Call ``POST {endpoint}/execute`` for ``task``; the output (or the agent's
    :class:`NeedsInput`), or :class:`DeliveryFailed`. ``sign`` adds the relay's signature
    headers for the body (:mod:`.signing`) to every attempt."""
    rng = rng or random.Random()
    url = endpoint.rstrip("/") + "/execute"
    body = orjson.dumps(build_request(task))
    headers = {"content-type": "application/json", "idempotency-key": task.idempotency_key}
    per_call = node_timeout(task.config)
    deadline: float | None = None
    if task.deadline is not None:
        deadline = clock() + (task.deadline - datetime.now(UTC)).total_seconds()
    calls = 0
    while True:
        left = None if deadline is None else deadline - clock()
        if left is not None and left <= 0:
            raise DeliveryFailed(f"the task's deadline passed before POST {url}")
        limits = [t for t in (per_call, left) if t is not None]
        timeout = min(limits) if limits else default_timeout_s
        calls += 1
        try:
            with tracing.span(
                "relay POST /execute",
                kind=tracing.SpanKind.CLIENT,
                attributes={"url.full": url, "aispine.attempt": calls},
            ) as span:
                signed = {**headers, **sign(body)} if sign is not None else headers
                async with asyncio.timeout(timeout):
                    response = await client.post(
                        url,
                        content=body,
                        headers=tracing.inject(signed),
                        timeout=httpx.Timeout(timeout),
                    )
                if span is not None:
                    span.set_attribute("http.response.status_code", response.status_code)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise DeliveryFailed(invalid_endpoint(endpoint, exc)) from None
        except AddressRefused as exc:  # policy, not a passing failure: never retried
            raise DeliveryFailed(f"{exc}: POST {url}") from None
        except httpx.ConnectTimeout as exc:
            failure = _Retryable(describe_transport_error(exc, "POST", url))
        except (TimeoutError, httpx.TimeoutException):
            # The agent may still be working: calling it again could run the task twice
            # at once, and the time it was given is used up anyway.
            suffix = f" (call {calls})" if calls > 1 else ""
            raise DeliveryFailed(
                f"timed out after {_seconds(timeout)}: POST {url}{suffix}"
            ) from None
        except httpx.TransportError as exc:
            failure = _Retryable(describe_transport_error(exc, "POST", url))
        else:
            if 200 <= response.status_code < 300:
                return output_from_response(task, response.content)
            if response.is_redirect:
                location = response.headers.get("location", "")
                raise DeliveryFailed(
                    f"HTTP {response.status_code} from {url}: redirects are not followed "
                    f"(to {excerpt(location) or '(no location)'})"
                )
            error = (
                f"HTTP {response.status_code} from {url}: "
                f"{excerpt(response.text) or '(empty body)'}"
            )
            if not retryable_status(response.status_code):
                raise DeliveryFailed(error)
            failure = _Retryable(error, parse_retry_after(response.headers.get("retry-after")))
        if calls > policy.max_retries:
            raise DeliveryFailed(f"{failure.error} (after {calls} attempts)")
        delay = policy.delay(calls, failure.retry_after, rng)
        if deadline is not None and clock() + delay >= deadline:
            raise DeliveryFailed(
                f"{failure.error} (after {calls} attempt{'s' if calls > 1 else ''}; "
                f"no time left before the task's deadline to retry in {_seconds(delay)})"
            )
        log.warning("relay_retry", url=url, attempt=calls, error=failure.error, delay_s=delay)
        await sleep(delay)
