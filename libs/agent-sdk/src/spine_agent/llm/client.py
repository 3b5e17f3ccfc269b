"""``LLM``: one provider and model, and the loop that turns a prompt into a final answer.

::

    llm = LLM.openai("gpt-4o-mini")            # key from OPENAI_API_KEY
    llm = LLM.openai("qwen2.5", base_url="http://127.0.0.1:11434/v1")   # Ollama
    llm = LLM.anthropic("claude-sonnet-4-5", api_key=key)
    done = await llm.complete("Summarise: ...", system="Be brief.", tools=[weather])
    done.text, done.usage

The loop: ask the model; while it asks for tools, run them (arguments validated, errors
reported back to it) and ask again, at most ``max_tool_rounds`` times; then validate the
answer against ``output`` when one is given. Usage sums every round, since every round
was billed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from spine_contracts.metering import TokenBudget
from spine_kafka.logging import get_logger

from .budget import round_max_tokens
from .errors import LLMError, OutputInvalid, ToolRoundsExceeded
from .provider import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, Provider, TokenCallback
from .tools import Tool, as_tool, describe_validation, unknown_tool
from .turns import (
    AssistantTurn,
    Completion,
    OutputSpec,
    ToolCall,
    ToolResults,
    Turn,
    Usage,
    UserTurn,
)

log = get_logger("spine_agent.llm")

DEFAULT_MAX_TOKENS = 1024
DEFAULT_MAX_TOOL_ROUNDS = 5
ProviderName = Literal["openai", "anthropic"]


class LLM:
    """A model behind a provider; cheap to share between concurrent tasks."""

    def __init__(
        self,
        provider: Provider,
        model: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float | None = None,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> None:
        if not model:
            raise ValueError("a model name is required")
        if max_tokens < 1 or max_tool_rounds < 0:
            raise ValueError("max_tokens must be positive and max_tool_rounds not negative")
        self.provider = provider
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_tool_rounds = max_tool_rounds

    @classmethod
    def connect(
        cls,
        provider: ProviderName,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float = DEFAULT_TIMEOUT_S,
        **options: Any,
    ) -> LLM:
        """An LLM on ``provider`` (``openai`` — any compatible server — or ``anthropic``)."""
        client: Provider
        # Imported here: each SDK takes seconds to import, and an agent uses one of them.
        if provider == "openai":
            from .openai_provider import OpenAIProvider

            client = OpenAIProvider(
                api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout
            )
        elif provider == "anthropic":
            from .anthropic_provider import AnthropicProvider

            client = AnthropicProvider(
                api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout
            )
        else:
            raise ValueError(f"unknown provider {provider!r}: openai or anthropic")
        return cls(client, model, **options)

    @classmethod
    def openai(cls, model: str, **kwargs: Any) -> LLM:
        return cls.connect("openai", model, **kwargs)

    @classmethod
    def anthropic(cls, model: str, **kwargs: Any) -> LLM:
        return cls.connect("anthropic", model, **kwargs)

    async def aclose(self) -> None:
        await self.provider.aclose()

    async def complete(
        self,
        prompt: str,
        *,
        system: str | None = None,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        output: type[BaseModel] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_token: TokenCallback | None = None,
        budget: TokenBudget | None = None,
    ) -> Completion:
        """The model's final answer to ``prompt``; raises an :class:`~.errors.LLMError`.

        ``max_tokens`` caps each round's answer; ``budget`` (a task's) lowers that cap to
        what the credits left after the earlier rounds still pay for, and stops the loop
        with :class:`~.errors.BudgetExhausted` before a round it pays no output token of.
        ``on_token`` receives text deltas as they stream, in order.
        """
        toolbox = {t.name: t for t in (as_tool(item) for item in tools)}
        wanted = _output_spec(output)
        run = _Run(turns=[UserTurn(prompt)], usage=Usage(self.model))
        try:
            return await self._rounds(
                run,
                system=system,
                toolbox=toolbox,
                output=output,
                wanted=wanted,
                max_tokens=max_tokens or self.max_tokens,
                temperature=temperature if temperature is not None else self.temperature,
                on_token=on_token,
                budget=budget,
            )
        except LLMError as exc:
            # the rounds answered before the failure were billed: metering reads this
            exc.spent(run.usage if run.rounds else None)
            raise

    async def _rounds(
        self,
        run: _Run,
        *,
        system: str | None,
        toolbox: dict[str, Tool],
        output: type[BaseModel] | None,
        wanted: OutputSpec | None,
        max_tokens: int,
        temperature: float | None,
        on_token: TokenCallback | None,
        budget: TokenBudget | None,
    ) -> Completion:
        specs = [t.spec() for t in toolbox.values()]
        started = time.monotonic()
        while True:
            reply = await self.provider.reply(
                model=self.model,
                system=system,
                turns=run.turns,
                tools=specs,
                output=wanted,
                max_tokens=round_max_tokens(max_tokens, budget, run.usage),
                temperature=temperature,
                on_token=on_token,
            )
            run.rounds += 1
            run.usage = run.usage.plus(reply)
            if not reply.tool_calls:
                text = reply.structured if reply.structured is not None else reply.text
                data = _validated(output, text, self.provider.name, self.model)
                log.info(
                    "llm_completed",
                    provider=self.provider.name,
                    model=self.model,
                    rounds=run.rounds,
                    tool_calls=len(run.calls),
                    input_tokens=run.usage.input_tokens,
                    output_tokens=run.usage.output_tokens,
                    duration_ms=round((time.monotonic() - started) * 1000, 1),
                )
                return Completion(text, run.usage, data, run.rounds, tuple(run.calls))
            if run.rounds > self.max_tool_rounds:
                raise ToolRoundsExceeded(
                    f"{self.provider.name} model {self.model!r} still called tools after "
                    f"{self.max_tool_rounds} rounds (max_tool_rounds); usage so far: "
                    f"{run.usage.input_tokens} input, {run.usage.output_tokens} output tokens"
                )
            run.calls.extend(reply.tool_calls)
            run.turns.append(AssistantTurn(reply.text, reply.tool_calls))
            results = [
                await toolbox[c.name].call(c) if c.name in toolbox else unknown_tool(c, [*toolbox])
                for c in reply.tool_calls
            ]
            run.turns.append(ToolResults(tuple(results)))


@dataclass
class _Run:
    """One completion's conversation so far, and what it has cost."""

    turns: list[Turn]
    usage: Usage
    rounds: int = 0
    calls: list[ToolCall] = field(default_factory=list)


def _output_spec(output: type[BaseModel] | None) -> OutputSpec | None:
    if output is None:
        return None
    schema = output.model_json_schema()
    return OutputSpec(output.__name__, schema)


def _validated(output: type[BaseModel] | None, text: str, provider: str, model: str) -> Any:
    if output is None:
        return None
    try:
        return output.model_validate(json.loads(text))
    except ValueError as exc:
        problem = describe_validation(exc) if isinstance(exc, ValidationError) else "not JSON"
        raise OutputInvalid(
            f"{provider} model {model!r}: the answer does not match {output.__name__}: {problem}"
        ) from None
