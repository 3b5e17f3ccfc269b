"""Anthropic through the official ``anthropic`` SDK's ``AsyncAnthropic``: messages, streamed.

* input tokens from ``message_start`` (cache writes and reads included: they are billed),
  output tokens from the last ``message_delta`` (cumulative);
* tool calls from ``tool_use`` blocks, their input assembled from ``input_json_delta``;
* structured output through a forced tool: the answer is the input of a tool named
  ``final_answer`` whose schema is the output model's. Anthropic's tool input is the most
  widely supported way to get schema-shaped JSON (compatible servers included); the
  answer's text is then not streamed as tokens. With other tools present the model must
  call some tool (``tool_choice: any``) and its answer is the ``final_answer`` call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic

from .errors import ProviderError, provider_reason
from .provider import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, TokenCallback
from .turns import AssistantTurn, OutputSpec, Reply, ToolCall, ToolResults, ToolSpec, Turn

#: The forced tool whose input is the structured answer.
ANSWER_TOOL = "final_answer"
#: Local servers ask for no key, while the SDK wants some authentication.
NO_KEY = "unused"


@dataclass
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)


class AnthropicProvider:
    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        key = api_key or os.environ.get("ANTHROPIC_API_KEY") or (NO_KEY if base_url else None)
        self._key = key
        self.client = anthropic.AsyncAnthropic(
            api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def reply(
        self,
        *,
        model: str,
        system: str | None,
        turns: Sequence[Turn],
        tools: Sequence[ToolSpec],
        output: OutputSpec | None,
        max_tokens: int,
        temperature: float | None,
        on_token: TokenCallback | None,
    ) -> Reply:
        params: dict[str, Any] = {
            "model": model,
            "messages": _messages(turns),
            "max_tokens": max_tokens,
            "stream": True,
        }
        if system:
            params["system"] = system
        if temperature is not None:
            params["temperature"] = temperature
        wire_tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in tools
        ]
        if output is not None:
            wire_tools.append(
                {
                    "name": ANSWER_TOOL,
                    "description": f"Give the final answer ({output.name}) in this shape.",
                    "input_schema": output.schema,
                }
            )
            params["tool_choice"] = (
                {"type": "any"} if tools else {"type": "tool", "name": ANSWER_TOOL}
            )
        if wire_tools:
            params["tools"] = wire_tools
        try:
            reply = await self._stream(params, on_token)
        except anthropic.APIStatusError as exc:
            raise ProviderError(self.name, model, exc.status_code, self._reason(exc)) from None
        except anthropic.APITimeoutError:
            raise ProviderError(self.name, model, None, "timed out") from None
        except anthropic.AnthropicError as exc:
            raise ProviderError(self.name, model, None, self._reason(exc)) from None
        if output is None:
            return reply
        answer = next((c for c in reply.tool_calls if c.name == ANSWER_TOOL), None)
        if answer is None:
            return reply
        return Reply(
            text=reply.text,
            tool_calls=(),
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            stop_reason=reply.stop_reason,
            structured=answer.arguments or "{}",
        )

    async def _stream(self, params: dict[str, Any], on_token: TokenCallback | None) -> Reply:
        stream = await self.client.messages.create(**params)
        blocks: dict[int, _Block] = {}
        usage_in = usage_out = 0
        stop: str | None = None
        async with stream:
            async for event in stream:
                if event.type == "message_start":
                    u = event.message.usage
                    usage_in = (
                        u.input_tokens
                        + (u.cache_creation_input_tokens or 0)
                        + (u.cache_read_input_tokens or 0)
                    )
                    usage_out = u.output_tokens
                elif event.type == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        blocks[event.index] = _Block("tool_use", block.id, block.name)
                    elif block.type == "text":
                        blocks[event.index] = _Block(
                            "text", parts=[block.text] if block.text else []
                        )
                elif event.type == "content_block_delta":
                    delta = event.delta
                    target = blocks.get(event.index)
                    if target is None:
                        continue
                    if delta.type == "text_delta":
                        target.parts.append(delta.text)
                        if on_token is not None and delta.text:
                            await on_token(delta.text)
                    elif delta.type == "input_json_delta":
                        target.parts.append(delta.partial_json)
                elif event.type == "message_delta":
                    usage_out = event.usage.output_tokens
                    if event.usage.input_tokens is not None:
                        usage_in = max(usage_in, event.usage.input_tokens)
                    stop = event.delta.stop_reason or stop
        ordered = [blocks[i] for i in sorted(blocks)]
        return Reply(
            text="".join("".join(b.parts) for b in ordered if b.kind == "text"),
            tool_calls=tuple(
                ToolCall(b.id, b.name, "".join(b.parts)) for b in ordered if b.kind == "tool_use"
            ),
            input_tokens=usage_in,
            output_tokens=usage_out,
            stop_reason=stop,
        )

    def _reason(self, exc: anthropic.AnthropicError) -> str:
        return provider_reason(exc, self._key)


def _tool_input(arguments: str) -> dict[str, Any]:
    # The history must carry the input as an object; the model's own text, when it was not
    # JSON, was already answered with a tool error.
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _messages(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for turn in turns:
        if isinstance(turn, AssistantTurn):
            content: list[dict[str, Any]] = (
                [{"type": "text", "text": turn.text}] if turn.text else []
            )
            content.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments)}
                for c in turn.tool_calls
            )
            out.append({"role": "assistant", "content": content})
        elif isinstance(turn, ToolResults):
            out.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": r.call_id,
                            "content": r.content,
                            "is_error": r.is_error,
                        }
                        for r in turn.results
                    ],
                }
            )
        else:
            out.append({"role": "user", "content": turn.text})
    return out
