"""OpenAI and every OpenAI-compatible server (vLLM, llama.cpp, Ollama, LM Studio) through
the official ``openai`` SDK's ``AsyncOpenAI``: chat completions, streamed.

* usage from the stream's last chunk (``stream_options={"include_usage": True}``);
* tool calls assembled from their deltas (``index``, then ``id``/``name``/``arguments``
  pieces);
* structured output as ``response_format={"type": "json_schema", ...}`` (not ``strict``:
  a pydantic schema is rarely strict-mode shaped; the kit validates the answer itself).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import openai

from .errors import ProviderError, provider_reason
from .provider import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, TokenCallback
from .turns import AssistantTurn, OutputSpec, Reply, ToolCall, ToolResults, ToolSpec, Turn

#: Local servers ask for no key, while the SDK refuses to start without one.
NO_KEY = "unused"


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float = DEFAULT_TIMEOUT_S,
        token_limit: Literal["max_tokens", "max_completion_tokens"] | None = None,
    ) -> None:
        key = api_key or os.environ.get("OPENAI_API_KEY") or (NO_KEY if base_url else None)
        self._key = key
        self.client = openai.AsyncOpenAI(
            api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout
        )
        # OpenAI's own newer models refuse max_tokens; compatible servers know max_tokens
        # (some do not know the newer name yet).
        self.token_limit = token_limit or ("max_tokens" if base_url else "max_completion_tokens")

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
            "messages": _messages(system, turns),
            "stream": True,
            "stream_options": {"include_usage": True},
            self.token_limit: max_tokens,
        }
        if temperature is not None:
            params["temperature"] = temperature
        if tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        if output is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": output.name, "schema": output.schema},
            }
        try:
            return await self._stream(params, on_token)
        except openai.APIStatusError as exc:
            raise ProviderError(self.name, model, exc.status_code, self._reason(exc)) from None
        except openai.APITimeoutError:
            raise ProviderError(self.name, model, None, "timed out") from None
        except openai.APIConnectionError as exc:
            raise ProviderError(self.name, model, None, self._reason(exc)) from None
        except openai.OpenAIError as exc:
            raise ProviderError(self.name, model, None, self._reason(exc)) from None

    async def _stream(self, params: dict[str, Any], on_token: TokenCallback | None) -> Reply:
        stream = await self.client.chat.completions.create(**params)
        text: list[str] = []
        calls: dict[int, _PartialCall] = {}
        usage_in = usage_out = 0
        stop: str | None = None
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage_in = chunk.usage.prompt_tokens
                    usage_out = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        if on_token is not None:
                            await on_token(delta.content)
                    for piece in delta.tool_calls or ():
                        call = calls.setdefault(piece.index, _PartialCall())
                        call.id = piece.id or call.id
                        if piece.function is not None:
                            call.name = piece.function.name or call.name
                            call.arguments.append(piece.function.arguments or "")
                    if choice.finish_reason:
                        stop = choice.finish_reason
        return Reply(
            text="".join(text),
            tool_calls=tuple(
                ToolCall(c.id or f"call_{i}", c.name, "".join(c.arguments))
                for i, c in sorted(calls.items())
            ),
            input_tokens=usage_in,
            output_tokens=usage_out,
            stop_reason=stop,
        )

    def _reason(self, exc: openai.OpenAIError) -> str:
        return provider_reason(exc, self._key)


def _messages(system: str | None, turns: Sequence[Turn]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for turn in turns:
        if isinstance(turn, AssistantTurn):
            message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
            if turn.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments or "{}"},
                    }
                    for c in turn.tool_calls
                ]
            out.append(message)
        elif isinstance(turn, ToolResults):
            out.extend(
                {"role": "tool", "tool_call_id": r.call_id, "content": r.content}
                for r in turn.results
            )
        else:
            out.append({"role": "user", "content": turn.text})
    return out
