"""zoe's question, worded by a model (when one is configured).

The model only phrases: zoe decides what is missing, and the ``field: value`` hint the
parser needs follows the model's text unchanged. Its text is untrusted — bounded, reduced
to plain text — and any failure (provider error, timeout, empty answer) falls back to
zoe's own question: a model never fails an intake node.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from spine_agent import Task, get_logger
from spine_agent.llm import LLM

from .zoe import LABELS, Intake, question, reply_hint

log = get_logger("spine_demo_agents.zoe")

#: Longest question text taken from the model (the reply hint is added after it).
MAX_QUESTION_CHARS = 600
#: A question that takes longer than this is asked zoe's way instead.
TIMEOUT_S = 20.0
#: Output tokens asked for: a few sentences.
MAX_TOKENS = 200

SYSTEM = (
    "You are Zoe, a friendly assistant taking a loan application. Write one short message "
    "(at most three sentences) that asks the applicant for exactly the information listed, "
    "explaining any problem given. Plain text only: no markdown, no lists, no links. Ask "
    "for nothing else and never promise or decide anything about the loan."
)

_TAG = re.compile(r"<[^>]{0,200}>")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f]")
_MARKUP = re.compile(r"[`*]+|^\s*(?:#{1,6}|>+|[-+]\s)\s*", re.MULTILINE)


def prompt_for(intake: Intake) -> str:
    """What the model is told: the missing fields (zoe's decision) and why, nothing else."""
    lines = []
    name = intake.values.get("name")
    if isinstance(name, str) and name:
        lines.append(f"The applicant's name: {name[:100]}")
    elif not intake.values:
        lines.append("This is the first message of the conversation; introduce yourself.")
    lines.append("Still needed:")
    for f in intake.missing:
        problem = intake.problems.get(f)
        label = LABELS.get(f, f.replace("_", " "))
        lines.append(
            f"- {label} ({f})" + (f"; what they gave was unusable: {problem}" if problem else "")
        )
    return "\n".join(lines)


def plain_text(text: str, limit: int = MAX_QUESTION_CHARS) -> str:
    """The model's text as plain, bounded text: no tags, markup or control characters."""
    text = _CONTROL.sub("", _TAG.sub("", text))
    text = _MARKUP.sub("", text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    text = "\n".join(line for line in lines if line).strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "…"


class Phraser:
    """Words zoe's questions with ``llm``; cheap to share between concurrent tasks."""

    def __init__(self, llm: LLM, *, timeout_s: float = TIMEOUT_S) -> None:
        self.llm = llm
        self.timeout_s = timeout_s

    async def aclose(self) -> None:
        await self.llm.aclose()

    async def ask(self, task: Task, intake: Intake) -> tuple[str, dict[str, Any] | None]:
        """The model's question followed by zoe's reply hint, or zoe's own question; and
        what the model used (``None``: no call was paid), which zoe's result reports."""
        try:
            async with asyncio.timeout(self.timeout_s):
                done = await self.llm.complete(
                    prompt_for(intake), system=SYSTEM, max_tokens=MAX_TOKENS, budget=task.budget
                )
        except Exception as exc:  # noqa: BLE001 - zoe's own question is a whole answer
            # LLMError messages are redacted (provider, model, status); others: type only
            reason = getattr(exc, "message", None) or type(exc).__name__
            log.warning("zoe_model_question_failed", reason=str(reason), fallback="deterministic")
            spent = getattr(exc, "usage", None)
            return question(intake), (spent.as_dict() if spent is not None else None)
        used = done.usage.as_dict()
        text = plain_text(done.text)
        if not text:
            log.warning("zoe_model_question_empty", fallback="deterministic")
            return question(intake), used
        return f"{text}\n{reply_hint(intake)}", used
