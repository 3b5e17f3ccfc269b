"""A provider-neutral conversation with a model: what was said, what it asked for, usage.

Each provider module translates these to and from its own wire format, so the tool loop
in :mod:`.client` is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """The model asks for ``name(**arguments)``; ``arguments`` is its raw JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolResult:
    """What a tool call came to, as the text the model reads next."""

    call_id: str
    name: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class UserTurn:
    text: str


@dataclass(frozen=True)
class AssistantTurn:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class ToolResults:
    results: tuple[ToolResult, ...]


Turn = UserTurn | AssistantTurn | ToolResults


@dataclass(frozen=True)
class ToolSpec:
    """A tool as a provider announces it: name, description, JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class OutputSpec:
    """The JSON schema the final answer must follow (from a pydantic model)."""

    name: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """One model response, streamed to its end.

    ``structured`` is the answer's JSON text when the provider delivers structured output
    outside the text (Anthropic's forced answer tool); otherwise the text is the answer.
    """

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    structured: str | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens a completion used, every round of it together (what metering charges)."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0

    def plus(self, reply: Reply) -> Usage:
        return Usage(
            self.model,
            self.input_tokens + reply.input_tokens,
            self.output_tokens + reply.output_tokens,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True)
class Completion:
    """A model's final answer: its text, the validated ``data`` when asked for, usage."""

    text: str
    usage: Usage
    data: Any = None
    rounds: int = 1
    tool_calls: tuple[ToolCall, ...] = field(default=())

    def as_output(self) -> dict[str, Any]:
        """The agent output of DESIGN §14: ``{"text", "usage"[, "data"]}``."""
        out: dict[str, Any] = {"text": self.text, "usage": self.usage.as_dict()}
        if self.data is not None:
            dump = getattr(self.data, "model_dump", None)
            out["data"] = dump(mode="json") if callable(dump) else self.data
        return out
