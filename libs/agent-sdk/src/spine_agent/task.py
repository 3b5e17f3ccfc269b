"""What a handler receives (:class:`Task`), how it asks the human (:class:`NeedsInput`)
and how it fails a task with a message of its own (:class:`TaskFailed`).

The orchestrator's :class:`~spine_contracts.AgentMessage` carries
``payload = {"input", "dependencies", "conversation", "node_type"}`` and the node's
``config``; :class:`Task` gives those names and types so a handler never digs in dicts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spine_contracts import AgentMessage
from spine_contracts.metering import TokenBudget


class NeedsInput(Exception):  # noqa: N818 - it is an answer, not an error
    """Ask the human for more: ``return NeedsInput(...)`` or ``raise NeedsInput(...)``.

    ``missing_fields`` names what is missing so a client can render a form. ``output``
    travels with the question: e.g. the ``usage`` of a model that worded it (metered).
    """

    def __init__(
        self,
        question: str,
        missing_fields: Iterable[str] = (),
        *,
        output: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(question)
        self.question = str(question)
        self.missing_fields = tuple(str(name) for name in missing_fields)
        self.output: dict[str, Any] = dict(output or {})

    def __repr__(self) -> str:
        return f"NeedsInput({self.question!r}, missing_fields={self.missing_fields!r})"


class TaskFailed(Exception):  # noqa: N818 - it is an answer, not a crash
    """Fail the task with exactly this message: ``raise TaskFailed("HTTP 500 from ...")``.

    Any other exception also fails the task, described as ``"<Type>: message"`` and logged
    with its traceback; this one is an expected outcome, so its text is the whole
    ``error_message`` and no traceback is logged. ``output`` travels with the error result:
    what the failed work still has to report, e.g. the ``usage`` of a model that was paid.
    """

    def __init__(self, message: str, *, output: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = str(message)
        self.output: dict[str, Any] = dict(output or {})


#: ``(text, tokens, status)``: where :meth:`Task.progress` goes (the worker's coalescer)
ProgressSink = Callable[[str | None, int | None, str | None], Awaitable[None]]


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class Task:
    """One unit of work: a node of an execution, at one attempt.

    ``input`` is the execution's ``input_data``; ``dependencies`` maps each dependency's
    node id to its output; ``conversation`` holds the turns of an input node
    (``{"role": "agent", "content": question}`` then ``{"role": "user", "content": {...}}``);
    ``config`` is the node's config from the flow, extra keys included.
    """

    message: AgentMessage
    input: dict[str, Any]
    dependencies: dict[str, dict[str, Any]]
    conversation: tuple[dict[str, Any], ...]
    config: dict[str, Any]
    node_type: str | None
    #: set by the agent that runs the task; a task built elsewhere (tests) reports nowhere
    progress_sink: ProgressSink | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_message(cls, message: AgentMessage, progress: ProgressSink | None = None) -> Task:
        payload = message.data.payload
        deps = _mapping(payload.get("dependencies"))
        turns = payload.get("conversation")
        node_type = payload.get("node_type")
        return cls(
            message=message,
            input=_mapping(payload.get("input")),
            dependencies={k: _mapping(v) for k, v in deps.items()},
            conversation=tuple(
                dict(t) for t in (turns if isinstance(turns, list) else ()) if isinstance(t, dict)
            ),
            config=dict(message.data.config),
            node_type=node_type if isinstance(node_type, str) else None,
            progress_sink=progress,
        )

    async def progress(
        self, text: str | None = None, tokens: int | None = None, status: str | None = None
    ) -> None:
        """Report partial output, shown live on the execution's streams and never stored:
        ``text`` what came since the last call (a delta), ``tokens`` output tokens so far,
        ``status`` a short line (at most 200 characters). Coalesced to about 10 messages a
        second, signed, sent in the background: it returns at once and never fails the task.
        """
        if self.progress_sink is not None:
            await self.progress_sink(text, tokens, status)

    @property
    def execution_id(self) -> str:
        return self.message.data.execution_id

    @property
    def node_id(self) -> str:
        return self.message.data.node_id

    @property
    def attempt(self) -> int:
        return self.message.data.attempt

    @property
    def idempotency_key(self) -> str:
        """``execution_id:node_id:attempt``; the same on every redelivery of this task."""
        return self.message.data.idempotency_key

    @property
    def deadline(self) -> datetime | None:
        return self.message.data.deadline

    @property
    def budget(self) -> TokenBudget | None:
        """A priced flow's credits left for tokens and their prices (DESIGN §14); a model
        call bounds its ``max_tokens`` by it. ``None``: the flow prices no tokens."""
        return self.message.data.budget

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.message.data.metadata)

    @property
    def correlation_id(self) -> str | None:
        return self.message.correlation_id

    @property
    def tenant_id(self) -> str | None:
        return self.message.tenant_id

    def user_turns(self) -> list[dict[str, Any]]:
        """The human's answers, oldest first (the ``content`` of each user turn)."""
        return [_mapping(t.get("content")) for t in self.conversation if t.get("role") == "user"]
