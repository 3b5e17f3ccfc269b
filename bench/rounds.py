"""Per-round ratios and the headline (pure: no I/O).

The contestants run in rounds (floor, AI Spine, Celery fast, Celery matched, repeated), so
a ratio compares figures taken minutes apart at most, on a machine whose speed drifts. Each
ratio is computed inside a round; the headline gives every round's value and their median.
A throughput that a phase's budget cut off is not a rate: it is reported as
:data:`NOT_FINISHED`, and a ratio that needs it is too.
"""

from __future__ import annotations

import statistics
from typing import Any

CONTESTANTS = ("floor", "spine", "celery-fast", "celery-matched")
PEERS = ("floor", "celery-fast", "celery-matched")
SHAPES = ("chain", "fanout")
NOT_FINISHED = "not finished"

DESCRIPTIONS = {
    "floor": "bare aiokafka, the same Kafka transactions, nothing else (frozen, bench/README.md)",
    "spine": "AI Spine as make up runs it, through its HTTP API",
    "celery-fast": "Celery 5 prefork -c 2, acks on receipt, Redis without persistence",
    "celery-matched": (
        "Celery 5 prefork -c 2, acks_late, task_reject_on_worker_lost, prefetch 1, "
        "its own Redis with appendonly yes / appendfsync everysec"
    ),
}

Round = dict[str, dict[str, dict[str, dict[str, Any]]]]  # contestant -> shape -> kind -> summary


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if _num(a) and _num(b) and b else None


def rate(summary: dict[str, Any] | None) -> float | str | None:
    """A throughput phase's rate, :data:`NOT_FINISHED` when its budget cut it off, ``None``
    when it did not run."""
    if not summary:
        return None
    value = summary.get("executions_per_s")
    return value if _num(value) else NOT_FINISHED


def round_ratios(rnd: Round) -> dict[str, float | str | None]:
    """Every ratio of one round: AI Spine's p50 against each peer's (lower is better for
    AI Spine below 1) and AI Spine's throughput against each peer's (higher is better)."""
    out: dict[str, float | str | None] = {}
    for shape in SHAPES:
        spine_p50 = _get(rnd, "spine", shape, "latency", "p50_ms")
        for peer in PEERS:
            out[f"{shape} p50 spine/{peer}"] = _ratio(
                spine_p50, _get(rnd, peer, shape, "latency", "p50_ms")
            )
        spine_rate = rate(_get(rnd, "spine", shape, "throughput"))
        for peer in PEERS:
            peer_rate = rate(_get(rnd, peer, shape, "throughput"))
            if NOT_FINISHED in (spine_rate, peer_rate):
                out[f"{shape} throughput spine/{peer}"] = NOT_FINISHED
            else:
                out[f"{shape} throughput spine/{peer}"] = _ratio(spine_rate, peer_rate)
    return out


def median_of(values: list[Any]) -> float | str | None:
    """The median of the rounds that produced a number; :data:`NOT_FINISHED` if a round was
    cut off and none produced one."""
    numbers = [v for v in values if _num(v)]
    if numbers:
        return round(statistics.median(numbers), 2)
    return NOT_FINISHED if NOT_FINISHED in values else None


def per_contestant(rounds: list[Round], *path: str) -> dict[str, dict[str, Any]]:
    """``{contestant: {shape: {"median": ..., "rounds": [...]}}}`` of one figure."""
    out: dict[str, dict[str, Any]] = {}
    for c in CONTESTANTS:
        for shape in SHAPES:
            values = [_get(r, c, shape, *path) for r in rounds]
            if path[-1] == "executions_per_s":
                values = [rate(_get(r, c, shape, "throughput")) for r in rounds]
            if all(v is None for v in values):
                continue
            out.setdefault(c, {})[shape] = {"median": median_of(values), "rounds": values}
    return out


def headline(
    rounds: list[Round],
    cpu_ms_per_execution: list[dict[str, dict[str, float | None]]],
    checks: dict[str, Any],
    client_cpu_s: float | None,
) -> dict[str, Any]:
    """The run in one object: every ratio (each round and the median of the rounds), p50,
    p99, throughput and machine CPU-ms per execution of every contestant, and the checks."""
    ratio_rounds = [round_ratios(r) for r in rounds]
    ratios = {
        name: {
            "median": median_of([rr[name] for rr in ratio_rounds]),
            "rounds": [rr[name] for rr in ratio_rounds],
        }
        for name in (ratio_rounds[0] if ratio_rounds else {})
        if any(rr[name] is not None for rr in ratio_rounds)  # both contestants ran
    }
    cpu: dict[str, dict[str, Any]] = {}
    for c in CONTESTANTS:
        for shape in SHAPES:
            values = [_get(r, c, shape) for r in cpu_ms_per_execution]
            if any(v is not None for v in values):
                cpu.setdefault(c, {})[shape] = {"median": median_of(values), "rounds": values}
    return {
        "rounds": len(rounds),
        "contestants": {c: DESCRIPTIONS[c] for c in CONTESTANTS},
        "ratios": ratios,
        "p50_ms": per_contestant(rounds, "latency", "p50_ms"),
        "p99_ms": per_contestant(rounds, "latency", "p99_ms"),
        "throughput_per_s": per_contestant(rounds, "throughput", "executions_per_s"),
        "machine_cpu_ms_per_execution": cpu,
        "checks": checks,
        "bench_client_cpu_s": client_cpu_s,
    }


def headline_text(h: dict[str, Any]) -> list[str]:
    """The headline's ratios as lines for the terminal: median, then each round."""

    def show(v: Any) -> str:
        return f"{v:.2f}" if _num(v) else str(v)

    lines = []
    for name, r in h["ratios"].items():
        if r["median"] is None:
            continue
        rounds = " / ".join(show(v) for v in r["rounds"])
        lines.append(f"{name:<38} median {show(r['median']):>12}   rounds {rounds}")
    return lines
