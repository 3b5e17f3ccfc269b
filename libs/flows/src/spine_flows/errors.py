"""Errors raised while reading flows and evaluating their conditions.

    FlowError
    ├── FlowValidationError   a flow (file text, API body or dict) that cannot be used;
    │   │                     carries every :class:`Problem` found
    │   └── InvalidCondition  a ``when`` expression that does not compile (also a
    │                         ConditionError, so either ``except`` catches it)
    └── ConditionError        a condition that failed while being evaluated

The gateway maps ``FlowValidationError`` to 422; the orchestrator's flow loader keeps the
previous good version of a file that raises it; a ``ConditionError`` at run time fails the
execution, naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a flow, located as precisely as we can.

    ``node_id`` names the node when it has a usable id; otherwise ``node_index`` (0-based
    position in ``nodes``) locates it. ``field`` is a dotted path inside the node (or the
    flow when there is no node), e.g. ``config.timeout``.
    """

    source: str
    node_id: str | None
    field: str | None
    message: str
    node_index: int | None = None

    def __str__(self) -> str:
        parts = [self.source]
        if self.node_id is not None:
            parts.append(f"node {_quote(self.node_id)}")
        elif self.node_index is not None:
            parts.append(f"node #{self.node_index + 1}")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


def _quote(text: str) -> str:
    # repr() escapes control characters, so a hostile id cannot forge log lines
    return repr(text[:80] + ("…" if len(text) > 80 else ""))


class FlowError(ValueError):
    """Base of every error this package raises."""


class FlowValidationError(FlowError):
    """A flow that cannot be used, with every problem found (never empty)."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("FlowValidationError needs at least one problem")
        self.problems: list[Problem] = list(problems)
        # not super(): InvalidCondition also inherits ConditionError's __init__
        FlowError.__init__(self, "\n".join(str(p) for p in self.problems))

    @property
    def source(self) -> str:
        return self.problems[0].source

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class ConditionError(FlowError):
    """A ``when`` condition that could not be evaluated to a boolean."""

    def __init__(self, expression: str, message: str) -> None:
        self.expression = expression
        self.message = message
        FlowError.__init__(self, f"condition {_quote(expression)}: {message}")

    def __str__(self) -> str:
        return f"condition {_quote(self.expression)}: {self.message}"


class InvalidCondition(FlowValidationError, ConditionError):
    """A ``when`` condition that does not compile or uses an unknown variable.

    Its single problem has ``source`` ``"<condition>"`` and field ``when``; the flow
    validator re-locates ``message`` to the file and node. ``str()`` reads like a
    :class:`ConditionError`: ``condition 'input.x >': invalid condition (...)``.
    """

    def __init__(self, expression: str, message: str) -> None:
        self.expression = expression
        self.message = message
        FlowValidationError.__init__(self, [Problem("<condition>", None, "when", message)])

    def __str__(self) -> str:
        return ConditionError.__str__(self)
