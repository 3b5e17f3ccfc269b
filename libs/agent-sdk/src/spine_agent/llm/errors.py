"""What can go wrong in a model call, each a :class:`~spine_agent.TaskFailed`.

A handler that lets one of these escape fails its task with exactly this message (no
traceback), which is what the flow's owner should read: the provider, the model and the
HTTP status, never the key and never mock data.

    LLMError (TaskFailed)
    ├── ProviderError        the provider answered an error or could not be reached
    ├── TemplateError        a system/prompt template does not render
    │   └── TemplateRefused  it reaches for Python internals (the sandbox said no)
    ├── ToolRoundsExceeded   the model kept calling tools past ``max_tool_rounds``
    ├── BudgetExhausted      the task's token budget pays for no more output
    ├── OutputInvalid        the structured answer does not validate against the model
    └── ConfigRefused        a node config names the endpoint or the key
"""

from __future__ import annotations

import re

from ..task import TaskFailed
from .turns import Usage

#: Longest provider message quoted back: enough to understand it, not a page of HTML.
MAX_REASON_CHARS = 300

# Provider keys as they look in the wild (sk-..., sk-ant-..., masked sk-proj-****abcd): a
# provider may echo a masked key in a 401 body, and the task's error travels on the bus.
_KEY_LIKE = re.compile(r"\b(?:sk|pk)-[A-Za-z0-9_\-*]{6,}")


class LLMError(TaskFailed):
    """Base of the kit's errors: the task fails with this message.

    ``usage`` is what the completion had consumed when it failed (rounds already answered
    were billed by the provider), ``None`` when it failed before any answer; the error
    result carries it as ``output["usage"]`` for metering (:meth:`spent`).
    """

    usage: Usage | None = None

    def spent(self, usage: Usage | None) -> None:
        """Record what the failed completion used, on the error and its result's output."""
        self.usage = usage
        if usage is not None:
            self.output["usage"] = usage.as_dict()


class ProviderError(LLMError):
    """``<provider> model '<model>': HTTP <status> <reason>`` (or what failed instead)."""

    def __init__(self, provider: str, model: str, status: int | None, reason: str) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        what = f"HTTP {status}" if status is not None else "request failed"
        super().__init__(f"{provider} model {model!r}: {what}: {reason}".rstrip(": "))


class TemplateError(LLMError):
    pass


class TemplateRefused(TemplateError):
    pass


class ToolRoundsExceeded(LLMError):
    pass


class BudgetExhausted(LLMError):
    pass


class OutputInvalid(LLMError):
    pass


class ConfigRefused(LLMError):
    pass


def provider_reason(exc: BaseException, *secrets: str | None) -> str:
    """The provider's own error message (from its JSON body when there is one), redacted.

    Both SDKs keep the body on the exception: OpenAI the ``error`` object, Anthropic the
    whole ``{"type": "error", "error": {...}}``.
    """
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return redact(str(message), *secrets)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without the given secrets or anything shaped like a provider key, shortened."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _KEY_LIKE.sub("[redacted]", text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
