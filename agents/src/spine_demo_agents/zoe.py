"""zoe — conversational intake (agent type ``input``).

Zoe collects the fields a credit application needs, over as many turns as it takes:

* required fields come from ``config.required_fields`` (default: name, income,
  amount, term_months); ``debts`` is passed on too when someone gives it;
* values are read from the execution input (its fields and its ``user_message``) and then
  from every user turn of the conversation, later answers overriding earlier ones. A
  ``user_message`` may be a JSON object or ``key: value`` / ``key=value`` lines
  (case-insensitive keys, a few aliases such as ``monthly income``; numbers parsed);
* while something is missing or unusable she answers ``NeedsInput`` with a question that
  names exactly those fields (and ``missing_fields`` listing them);
* when everything is there the output is
  ``{"applicant": {name, income, amount, term_months[, debts]}, "message": ...}`` with
  money as floats and the term as an integer.

Asking again is the orchestrator's business (``max_turns``, ``input_timeout``).

With a model configured (``SPINE_LLM_PROVIDER``, ``SPINE_LLM_MODEL`` and the rest of
``spine-agent-llm``'s environment) the model words the question; what is missing is still
decided here, and the reply format stays ours (:mod:`.zoe_model`). Without one, or when the
model fails, she asks exactly as above: ``make demo`` stays deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spine_agent import Agent, AgentInfo, NeedsInput, Task, load_settings
from spine_agent.llm import LLMSettings

from .fields import FieldProblem, coerce, fields_of

if TYPE_CHECKING:
    from .zoe_model import Phraser

DEFAULT_REQUIRED: tuple[str, ...] = ("name", "income", "amount", "term_months")
#: Passed on when given, never asked for.
OPTIONAL: tuple[str, ...] = ("debts",)
LABELS: dict[str, str] = {
    "name": "your full name",
    "income": "your monthly income",
    "amount": "the loan amount",
    "term_months": "the loan term in months",
    "debts": "your monthly debt payments",
}
EXAMPLES: dict[str, str] = {
    "name": "Ana Díaz",
    "income": "3200",
    "amount": "15000",
    "term_months": "36",
    "debts": "250",
}


@dataclass(frozen=True)
class Intake:
    """What zoe made of the conversation so far."""

    values: dict[str, Any]
    missing: tuple[str, ...]
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing


def required_fields(config: dict[str, Any]) -> tuple[str, ...]:
    wanted = config.get("required_fields")
    if isinstance(wanted, list | tuple) and wanted:
        return tuple(str(f) for f in wanted)
    return DEFAULT_REQUIRED


def gather(task: Task) -> dict[str, Any]:
    """Every field given so far: the execution input, then each user turn in order."""
    found = fields_of(task.input)
    for turn in task.user_turns():
        found.update(fields_of(turn))
    return found


def assess(found: dict[str, Any], required: Sequence[str]) -> Intake:
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    wanted = list(required) + [f for f in OPTIONAL if f not in required and f in found]
    for name in wanted:
        if name not in found:
            continue
        try:
            values[name] = coerce(name, found[name])
        except FieldProblem as exc:
            problems[name] = str(exc)
    missing = tuple(name for name in required if name not in values)
    return Intake(values=values, missing=missing, problems=problems)


def _label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " "))


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def question(intake: Intake) -> str:
    """A friendly question naming exactly the missing fields."""
    name = intake.values.get("name")
    greeting = (
        f"Thanks, {name}!"
        if isinstance(name, str) and name
        else (
            "Thanks!" if intake.values else "Hi, I'm Zoe and I'll help you with your application."
        )
    )
    wanted = _join([f"{_label(f)} ({f})" for f in intake.missing])
    lines = [f"{greeting} To continue I still need {wanted}."]
    for f in intake.missing:
        if f in intake.problems:
            lines.append(f"I couldn't use what you gave for {f}: {intake.problems[f]}.")
    lines.append(reply_hint(intake))
    return "\n".join(lines)


def reply_hint(intake: Intake) -> str:
    """How to answer so that the parser reads it (kept under a model's wording too)."""
    example = "\n".join(f"{f}: {EXAMPLES.get(f, '...')}" for f in intake.missing)
    return f"You can reply with one 'field: value' per line, for example:\n{example}"


def summary(values: dict[str, Any]) -> str:
    parts = [
        f"{_label(k)}: {v:g}" if isinstance(v, float) else f"{_label(k)}: {v}"
        for k, v in values.items()
        if k != "name"
    ]
    who = values.get("name")
    head = f"Thanks, {who}! " if who else "Thanks! "
    return head + "I have everything I need (" + "; ".join(parts) + ")."


agent = Agent(
    AgentInfo(
        agent_id="zoe",
        name="Zoe Assistant",
        description="Conversational intake: asks for the application's missing fields.",
        capabilities=("conversation", "information_gathering"),
        agent_type="input",
    ),
    concurrency=64,
)


@dataclass
class Wording:
    """Who words zoe's questions: a model once :func:`use_model` started one, else zoe."""

    phraser: Phraser | None = None


wording = Wording()


async def respond(task: Task, phraser: Phraser | None = None) -> dict[str, Any] | NeedsInput:
    """zoe's answer to ``task``; ``phraser`` words the question (what is missing is ours)."""
    intake = assess(gather(task), required_fields(task.config))
    if not intake.complete:
        if phraser is None:
            return NeedsInput(question(intake), intake.missing)
        text, usage = await phraser.ask(task, intake)
        return NeedsInput(text, intake.missing, output={"usage": usage} if usage else None)
    return {"applicant": intake.values, "message": summary(intake.values)}


@agent.handler
async def handle(task: Task) -> dict[str, Any] | NeedsInput:
    return await respond(task, wording.phraser)


def use_model(settings: LLMSettings) -> None:
    """Word questions with the configured model: built at start-up, closed at shutdown."""
    from .zoe_model import Phraser

    settings.require_model()

    @agent.on_startup
    async def open_model() -> None:
        wording.phraser = Phraser(settings.build_llm())

    @agent.on_shutdown
    async def close_model() -> None:
        if wording.phraser is not None:
            await wording.phraser.aclose()
            wording.phraser = None


def main() -> None:
    settings = load_settings(LLMSettings)
    if settings.llm_provider or settings.llm_model:
        use_model(settings)
    agent.run(settings)


if __name__ == "__main__":
    main()
