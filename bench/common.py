"""What every phase returns, and the small helpers they share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

WARMUP = 10  # executions run before the measured ones in each latency phase (not counted)

#: the shapes of the two workloads: nodes per stage (a 3-node chain, a 1→4→1 fan-out)
SHAPES: dict[str, tuple[int, ...]] = {"chain": (1, 1, 1), "fanout": (1, 4, 1)}
FLOW_IDS = {"chain": "echo_chain", "fanout": "echo_fanout"}


@dataclass
class Latency:
    samples_ms: list[float]
    failed: int = 0
    accepted_ms: list[float] = field(default_factory=list)  # time to the submit's answer
    truncated: bool = False  # stopped before the asked number of runs (time budget)
    breakdown: dict[str, Any] = field(default_factory=dict)  # where the time went (Spine)
    errors: dict[str, int] = field(default_factory=dict)  # why the failed runs failed
    warmup_runs: int = WARMUP  # unmeasured executions before the measured ones
    executions: set[str] = field(default_factory=set)  # accepted ids, warm-up included

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "runs": len(self.samples_ms),
            "failed": self.failed,
            "warmup_runs": self.warmup_runs,
        }
        if self.truncated:
            out["truncated_by_budget"] = True
        out.update(_percentiles(self.samples_ms))
        if self.accepted_ms:  # as many as samples_ms, so at least one
            acc = _percentiles(self.accepted_ms)
            out["accept_p50_ms"] = acc["p50_ms"]
            out["accept_p99_ms"] = acc["p99_ms"]
        if self.errors:
            out["errors"] = self.errors
        if self.breakdown:
            out["breakdown"] = self.breakdown
        return out


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    if len(samples) == 1:
        q = samples * 99
    else:
        q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_ms": round(q[49], 2),
        "p95_ms": round(q[94], 2),
        "p99_ms": round(q[98], 2),
        "mean_ms": round(statistics.fmean(samples), 2),
        "max_ms": round(max(samples), 2),
    }


@dataclass
class Throughput:
    submitted: int  # executions the system accepted
    completed: int  # of those, seen completed within the phase
    failed: int  # terminal but not completed, or refused at submission
    elapsed_s: float  # first submission → last completion (or → the phase's deadline)
    submit_s: float  # first submission → last submission answered
    unfinished: int = 0  # accepted, not terminal when the phase ended (deadline)
    lost: int | None = 0  # accepted and never seen terminal (None: not checked)
    errors: dict[str, int] = field(default_factory=dict)
    executions: set[str] = field(default_factory=set)  # accepted ids

    @property
    def finished(self) -> bool:
        """Every submission answered and every accepted execution terminal in the phase: only
        then is completed / elapsed a rate (a cut phase's count says nothing of a backlog)."""
        return self.unfinished == 0 and self.elapsed_s > 0

    def summary(self) -> dict[str, Any]:
        rate = round(self.completed / self.elapsed_s, 1) if self.finished else None
        out: dict[str, Any] = {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "unfinished_at_deadline": self.unfinished,
            "lost": self.lost,
            "elapsed_s": round(self.elapsed_s, 2),
            "submit_s": round(self.submit_s, 2),
            "executions_per_s": rate,
        }
        if not self.finished:
            out["not_finished"] = True
        if self.errors:
            out["errors"] = self.errors
        return out


def progress() -> Progress:
    return Progress(
        TextColumn("  {task.description:<34}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


Tick = Callable[[int], None]


def no_tick(_n: int = 1) -> None:
    return None


def out_of_time(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
