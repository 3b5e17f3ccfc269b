"""The checks every contestant's results go through (pure: no I/O).

A figure from a run that lost, doubled or corrupted work is not a figure. Each contestant's
observers fill a :class:`Tally` while it runs; :func:`audit` turns it into a verdict:

* a **failure** fails the run (non-zero exit, printed): an output that differs from what the
  flow must produce, an execution that ended other than completed, a second dispatch of one
  task (execution, node, attempt), a second terminal event of one execution, an accepted
  execution never seen terminal (lost), and — AI Spine only — a final balance other than
  what ``docs/credits.md`` charges (:func:`balance_failure`);
* a **re-run** is reported, not failed: agents run tasks at least once by design, so an agent
  that ran one task twice (after a kill, or Celery's ``acks_late`` redelivery) is counted
  from the agent side, by the task's idempotency key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 5  # examples kept per kind of failure (the counts are always complete)


@dataclass
class Tally:
    """What one contestant's phase saw, from its own observation points.

    ``dispatches`` stays empty where a system has no observable dispatch (Celery's broker
    message is its dispatch; a redelivery shows up as a re-run in ``runs``).
    """

    accepted: set[str] = field(default_factory=set)
    terminal: Counter[str] = field(default_factory=Counter)  # execution -> terminal events
    status: dict[str, str] = field(default_factory=dict)  # execution -> first terminal kind
    outputs: dict[str, Any] = field(default_factory=dict)  # execution -> first output
    dispatches: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    runs: Counter[str] = field(default_factory=Counter)  # idempotency key -> agent runs
    agent_work: set[str] = field(default_factory=set)  # executions where an agent node completed

    def end(self, execution: str, kind: str, output: Any = None) -> None:
        """One terminal event; the first one decides the status and the output."""
        self.terminal[execution] += 1
        if execution not in self.status:
            self.status[execution] = kind
            if kind == "completed":
                self.outputs[execution] = output

    def merge(self, other: Tally) -> None:
        self.accepted |= other.accepted
        self.terminal.update(other.terminal)
        for execution, kind in other.status.items():
            self.status.setdefault(execution, kind)
        for execution, output in other.outputs.items():
            self.outputs.setdefault(execution, output)
        self.dispatches.update(other.dispatches)
        self.runs.update(other.runs)
        self.agent_work |= other.agent_work


@dataclass
class Audit:
    checked: int = 0  # accepted executions looked at
    failures: dict[str, int] = field(default_factory=dict)  # kind -> count
    examples: dict[str, list[str]] = field(default_factory=dict)
    reruns: int = 0  # agent-side runs beyond the first, per idempotency key
    rerun_tasks: int = 0  # tasks run more than once

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, kind: str, example: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(example)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checked": self.checked,
            "ok": self.ok,
            "failures": dict(self.failures),
            "agent_reruns": self.reruns,
            "rerun_tasks": self.rerun_tasks,
        }
        if self.examples:
            out["examples"] = {k: list(v) for k, v in self.examples.items()}
        return out


def audit(
    tally: Tally,
    expected: Callable[[str], Any],
    *,
    pending: Iterable[str] = (),
) -> Audit:
    """Check every accepted execution of ``tally``; ``expected(execution)`` is the output it
    must have. ``pending``: accepted executions that may still be running (a phase cut by its
    budget whose tail is drained elsewhere), not counted as lost here."""
    out = Audit(checked=len(tally.accepted))
    waiting = set(pending)
    for execution in sorted(tally.accepted):
        kind = tally.status.get(execution)
        if kind is None:
            if execution not in waiting:
                out.fail("lost", f"{execution}: accepted, never seen terminal")
            continue
        if tally.terminal[execution] > 1:
            out.fail(
                "double_terminal",
                f"{execution}: {tally.terminal[execution]} terminal events",
            )
        if kind != "completed":
            out.fail("not_completed", f"{execution}: ended {kind}")
            continue
        want = expected(execution)
        got = tally.outputs.get(execution)
        if got != want:
            out.fail("wrong_output", f"{execution}: output {_short(got)} != {_short(want)}")
    for (execution, node, attempt), n in sorted(tally.dispatches.items()):
        if n > 1 and (not tally.accepted or execution in tally.accepted):
            out.fail("double_dispatch", f"{execution}/{node}/attempt {attempt}: {n} dispatches")
    for n in tally.runs.values():
        if n > 1:
            out.reruns += n - 1
            out.rerun_tasks += 1
    return out


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- what the flows must produce -----------------------------------------------------------------


def spine_echo_output(flow: dict[str, Any], input_data: dict[str, Any]) -> dict[str, Any]:
    """The output of a flow of echo processors and output nodes (``flows/echo_*.yaml``), as
    the echo agent and the orchestrator define it: each echo node answers
    ``{"echo": input, "dependencies": {dep: its output}, "node_id", "attempt": 1,
    "conversation": []}``; an output node's result is its dependencies' outputs, and the
    execution's output is every output node's result by node id.
    """
    nodes = {n["id"]: n for n in flow["nodes"]}
    done: dict[str, Any] = {}

    def output_of(node_id: str) -> Any:
        if node_id in done:
            return done[node_id]
        node = nodes[node_id]
        deps = list(node.get("depends_on") or [])
        kind = node.get("type", "processor")
        if kind == "output":
            value: Any = output_of(deps[0]) if len(deps) == 1 else {d: output_of(d) for d in deps}
        elif node.get("agent_id") == "echo":
            value = {
                "echo": input_data,
                "dependencies": {d: output_of(d) for d in deps},
                "node_id": node_id,
                "attempt": 1,
                "conversation": [],
            }
        else:
            raise ValueError(f"node {node_id}: only echo and output nodes are modelled")
        done[node_id] = value
        return value

    return {n: output_of(n) for n, node in nodes.items() if node.get("type") == "output"}


def floor_output(stages: tuple[int, ...], input_data: Any) -> Any:
    """The floor's completed event carries the last result: one ``{"echo": ...}`` per stage."""
    value = input_data
    for _ in stages:
        value = {"echo": value}
    return value


# -- credits (docs/credits.md, "The policy") ----------------------------------------------------


def charge(kind: str | None, cost: int, agent_work: bool) -> int:
    """What an accepted execution costs once it ended (``kind``), or holds while it runs."""
    if kind is None:
        return cost  # still reserved
    if kind == "completed":
        return cost
    if kind == "cancelled":
        return cost if agent_work else 0
    return 0  # failed: the whole reservation comes back


def expected_balance(start: int, tally: Tally, cost: Callable[[str], int]) -> int:
    return start - sum(
        charge(tally.status.get(e), cost(e), e in tally.agent_work) for e in tally.accepted
    )


def balance_failure(
    start: int, final: int | None, tally: Tally, cost: Callable[[str], int]
) -> str | None:
    """Why the bench user's final balance is wrong, or ``None``."""
    want = expected_balance(start, tally, cost)
    if final == want:
        return None
    return (
        f"final balance {final} != {want} (start {start}, {len(tally.accepted)} accepted, "
        f"{sum(1 for k in tally.status.values() if k == 'completed')} completed)"
    )
