"""Tools: plain Python functions the model may call, with arguments validated by pydantic.

::

    async def weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, float]:
        \"\"\"Current temperature in a city.\"\"\"

    Tool.from_function(weather)

The function's type annotations are the contract: they become the JSON schema the
provider shows the model, and the model's arguments are validated against them before the
function runs. Arguments that do not validate, an unknown tool and a tool that raises are
reported back to the model as a tool error (it may correct itself); only
:class:`~spine_agent.TaskFailed` and :class:`~spine_agent.NeedsInput` from a tool end the
task. A tool gets its arguments and nothing else: no task, no bus, no credentials.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ..task import NeedsInput, TaskFailed
from .turns import ToolCall, ToolResult, ToolSpec

#: Longest tool result handed back to the model; the rest is cut (and says so).
MAX_RESULT_CHARS = 50_000
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def describe_validation(exc: ValidationError) -> str:
    """``field: problem; field: problem`` — short enough for a model or an error result."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    arguments: type[BaseModel]

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        """A tool from a function whose every parameter is type-annotated."""
        tool_name = name or fn.__name__
        if not _NAME.fullmatch(tool_name):
            raise ValueError(f"tool name {tool_name!r} must match {_NAME.pattern}")
        hints = get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {tool_name!r}: *args/**kwargs cannot be described")
            if param.name not in hints:
                raise TypeError(f"tool {tool_name!r}: parameter {param.name!r} needs a type")
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hints[param.name], default)
        model = create_model(
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        doc = description if description is not None else inspect.getdoc(fn) or ""
        return cls(tool_name, doc.strip(), fn, model)

    def spec(self) -> ToolSpec:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return ToolSpec(self.name, self.description, schema)

    async def call(self, call: ToolCall) -> ToolResult:
        """Validate the model's arguments, run the function, and say what came of it."""
        try:
            raw = json.loads(call.arguments or "{}")
        except ValueError as exc:
            return self._error(call, f"arguments are not JSON ({exc})")
        if not isinstance(raw, dict):
            return self._error(call, "arguments must be a JSON object")
        try:
            parsed = self.arguments.model_validate(raw)
        except ValidationError as exc:
            return self._error(call, f"invalid arguments: {describe_validation(exc)}")
        kwargs = {k: getattr(parsed, k) for k in type(parsed).model_fields}
        try:
            if inspect.iscoroutinefunction(self.fn):
                result = await self.fn(**kwargs)
            else:  # a sync tool may block (files, HTTP): never on the event loop
                result = await asyncio.to_thread(self.fn, **kwargs)
        except (TaskFailed, NeedsInput):
            raise
        except Exception as exc:
            return self._error(call, f"failed: {type(exc).__name__}: {exc}")
        return ToolResult(call.id, self.name, _as_text(result))

    def _error(self, call: ToolCall, problem: str) -> ToolResult:
        return ToolResult(call.id, self.name, f"tool {self.name!r} {problem}", is_error=True)


def unknown_tool(call: ToolCall, known: list[str]) -> ToolResult:
    names = ", ".join(known) or "none"
    return ToolResult(
        call.id, call.name, f"no tool named {call.name!r} (tools: {names})", is_error=True
    )


def as_tool(item: Tool | Callable[..., Any]) -> Tool:
    return item if isinstance(item, Tool) else Tool.from_function(item)


def _as_text(result: Any) -> str:
    text = result if isinstance(result, str) else pydantic_core.to_json(result).decode()
    if len(text) > MAX_RESULT_CHARS:
        return text[:MAX_RESULT_CHARS] + f"… [cut at {MAX_RESULT_CHARS} characters]"
    return text
