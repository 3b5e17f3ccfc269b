"""Local model servers that speak the providers' real HTTP protocols, for the LLM kit's tests.

No model can be downloaded here, so these answer from a script: per prompt (the first user
message), one step per round of the conversation (the number of assistant turns already
in the request), the last step repeating. They stream what the real APIs stream:

* OpenAI-compatible ``POST /v1/chat/completions``: ``chat.completion.chunk`` SSE frames,
  tool calls as ``delta.tool_calls`` pieces (``index``, then ``id``/``name``/arguments in
  fragments), a finish chunk, the final ``usage`` chunk (``choices: []``) when
  ``stream_options.include_usage`` asks for it, then ``data: [DONE]``;
* Anthropic-compatible ``POST /v1/messages``: ``message_start``, ``content_block_start``,
  ``ping``, ``content_block_delta`` (``text_delta`` / ``input_json_delta``),
  ``content_block_stop``, ``message_delta`` (stop reason, cumulative output tokens),
  ``message_stop``.

Scripted failures come first (``fail=[Fail(429, retry_after_ms=10)]``) with the providers'
error bodies and ``Retry-After``/``retry-after-ms`` headers. Every request is recorded
(body and headers) so a test can assert what the kit sent.

The real ``openai``/``anthropic`` clients run against :attr:`FakeModelServer.base_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Kind = Literal["openai", "anthropic"]


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone: the test
    process's SIGTERM handler must not become a bound method of this server, or
    sse-starlette (which finds "the" uvicorn server through that handler) takes its
    shutdown for the process's and ends every later SSE response in the session."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass(frozen=True)
class Text:
    """Answer with this text, streamed a word at a time (``delay`` seconds apart: the pace
    of a model, so that a reader sees the text arrive in several pieces)."""

    text: str
    delay: float = 0.0


@dataclass(frozen=True)
class Calls:
    """Ask for tools: ``(name, arguments)``; arguments a dict or raw (maybe broken) JSON."""

    calls: tuple[tuple[str, dict[str, Any] | str], ...]


@dataclass(frozen=True)
class Json:
    """Answer with this structured value (OpenAI: JSON text; Anthropic: the forced tool)."""

    value: Any


@dataclass
class Fail:
    """Answer ``status`` (``times`` times; ``None``: always) before the script runs."""

    status: int
    times: int | None = 1
    retry_after: str | None = None
    retry_after_ms: int | None = None


Step = Text | Calls | Json


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeModelServer:
    kind: Kind
    scripts: dict[str, list[Step]] = field(default_factory=dict)
    failures: dict[str, list[Fail]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    # --- scripting ---------------------------------------------------------------------
    def script(self, prompt: str, *steps: Step, fail: tuple[Fail, ...] = ()) -> None:
        self.scripts[prompt] = list(steps)
        self.failures[prompt] = list(fail)

    def requests_for(self, prompt: str) -> list[Recorded]:
        return [r for r in self.requests if _prompt(self.kind, r.body) == prompt]

    @property
    def base_url(self) -> str:
        root = f"http://127.0.0.1:{self.port}"
        return f"{root}/v1" if self.kind == "openai" else root

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        path = "/v1/chat/completions" if self.kind == "openai" else "/v1/messages"
        app = Starlette(routes=[Route(path, self._handle, methods=["POST"])])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = _QuietServer(config)
        # Listening before uvicorn runs: a client that connects at once waits in the
        # backlog instead of being refused, so there is nothing to wait for here.
        sock.listen(128)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    # --- the protocol ------------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(Recorded(request.url.path, dict(request.headers), body))
        prompt = _prompt(self.kind, body)
        pending = self.failures.get(prompt, [])
        if pending:
            fail = pending[0]
            if fail.times is not None:
                fail.times -= 1
                if fail.times <= 0:
                    pending.pop(0)
            return self._error(fail)
        steps = self.scripts.get(prompt)
        if not steps:
            return self._error(Fail(404), f"no recorded answer for prompt {prompt!r}")
        rounds = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        step = steps[min(rounds, len(steps) - 1)]
        if isinstance(step, Json):
            problem = self._structured_problem(body)
            if problem:
                return self._error(Fail(400), problem)
        frames = self._openai(body, step) if self.kind == "openai" else self._anthropic(body, step)
        return StreamingResponse(frames, media_type="text/event-stream")

    def _error(self, fail: Fail, message: str | None = None) -> Response:
        text = message or f"scripted HTTP {fail.status}"
        headers: dict[str, str] = {}
        if fail.retry_after is not None:
            headers["retry-after"] = fail.retry_after
        if fail.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fail.retry_after_ms)
        if fail.status >= 500 and not headers:
            headers["retry-after-ms"] = "10"  # keep a test's retries quick
        if self.kind == "openai":
            content: dict[str, Any] = {
                "error": {"message": text, "type": "server_error", "param": None, "code": None}
            }
        else:
            content = {"type": "error", "error": {"type": "api_error", "message": text}}
        return JSONResponse(content, status_code=fail.status, headers=headers)

    def _structured_problem(self, body: dict[str, Any]) -> str | None:
        if self.kind == "openai":
            fmt = body.get("response_format") or {}
            if fmt.get("type") != "json_schema" or "schema" not in fmt.get("json_schema", {}):
                return "structured answer recorded but no response_format json_schema sent"
            return None
        names = {t.get("name") for t in body.get("tools", [])}
        if "final_answer" not in names:
            return "structured answer recorded but no final_answer tool offered"
        return None

    def _openai(self, body: dict[str, Any], step: Step) -> AsyncIterator[str]:
        model = body["model"]
        input_tokens = _count_tokens(body)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            frame = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(frame)}\n\n"

        async def frames() -> AsyncIterator[str]:
            out = 0
            yield chunk({"role": "assistant", "content": ""})
            if isinstance(step, Calls):
                for i, (name, args) in enumerate(step.calls):
                    raw = args if isinstance(args, str) else json.dumps(args)
                    yield chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": i,
                                    "id": f"call_{i}",
                                    "type": "function",
                                    "function": {"name": name, "arguments": ""},
                                }
                            ]
                        }
                    )
                    for piece in _pieces(raw, 7):
                        out += 1
                        yield chunk(
                            {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                        )
                finish = "tool_calls"
            else:
                text = step.text if isinstance(step, Text) else json.dumps(step.value)
                for word in _words(text):
                    out += 1
                    yield chunk({"content": word})
                    await _pace(step)
                finish = "stop"
            yield chunk({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": input_tokens,
                    "completion_tokens": out,
                    "total_tokens": input_tokens + out,
                }
                frame = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(frame)}\n\n"
            yield "data: [DONE]\n\n"

        return frames()

    def _anthropic(self, body: dict[str, Any], step: Step) -> AsyncIterator[str]:
        model = body["model"]
        input_tokens = _count_tokens(body)

        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

        async def frames() -> AsyncIterator[str]:
            out = 1
            yield event(
                "message_start",
                {
                    "message": {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": model,
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                    }
                },
            )
            yield event("ping", {})
            if isinstance(step, Text):
                yield event(
                    "content_block_start",
                    {"index": 0, "content_block": {"type": "text", "text": ""}},
                )
                for word in _words(step.text):
                    out += 1
                    yield event(
                        "content_block_delta",
                        {"index": 0, "delta": {"type": "text_delta", "text": word}},
                    )
                    await _pace(step)
                yield event("content_block_stop", {"index": 0})
                stop = "end_turn"
            else:
                calls = step.calls if isinstance(step, Calls) else (("final_answer", step.value),)
                for i, (name, args) in enumerate(calls):
                    raw = args if isinstance(args, str) else json.dumps(args)
                    yield event(
                        "content_block_start",
                        {
                            "index": i,
                            "content_block": {
                                "type": "tool_use",
                                "id": f"toolu_{i}",
                                "name": name,
                                "input": {},
                            },
                        },
                    )
                    for piece in _pieces(raw, 7):
                        out += 1
                        yield event(
                            "content_block_delta",
                            {
                                "index": i,
                                "delta": {"type": "input_json_delta", "partial_json": piece},
                            },
                        )
                    yield event("content_block_stop", {"index": i})
                stop = "tool_use"
            yield event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": out},
                },
            )
            yield event("message_stop", {})

        return frames()


async def _pace(step: Step) -> None:
    if isinstance(step, Text) and step.delay > 0:
        await asyncio.sleep(step.delay)


def _prompt(kind: Kind, body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _count_tokens(body: dict[str, Any]) -> int:
    """A deterministic stand-in for a tokenizer: words in the messages and the system."""
    text = json.dumps(body.get("messages", [])) + str(body.get("system", ""))
    return len(text.split())


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if words else []


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
