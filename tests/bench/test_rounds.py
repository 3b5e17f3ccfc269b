"""Per-round ratios and the headline: a cut throughput is never a rate."""

from __future__ import annotations

from typing import Any

from bench.rounds import NOT_FINISHED, headline, median_of, round_ratios


def _round(spine_p50: float, floor_p50: float, spine_rate: Any, fast_rate: Any) -> dict[str, Any]:
    def tput(rate: Any) -> dict[str, Any]:
        return {"executions_per_s": None if rate == NOT_FINISHED else rate}

    return {
        "spine": {"chain": {"latency": {"p50_ms": spine_p50}, "throughput": tput(spine_rate)}},
        "floor": {"chain": {"latency": {"p50_ms": floor_p50}}},
        "celery-fast": {"chain": {"throughput": tput(fast_rate)}},
    }


def test_ratios_are_taken_inside_a_round() -> None:
    r = round_ratios(_round(80.0, 40.0, 150.0, 100.0))
    assert r["chain p50 spine/floor"] == 2.0
    assert r["chain throughput spine/celery-fast"] == 1.5
    assert r["chain p50 spine/celery-matched"] is None  # did not run


def test_a_cut_throughput_makes_its_ratios_not_finished() -> None:
    r = round_ratios(_round(80.0, 40.0, 150.0, NOT_FINISHED))
    assert r["chain throughput spine/celery-fast"] == NOT_FINISHED


def test_the_median_skips_unfinished_rounds_and_says_so_when_none_finished() -> None:
    assert median_of([1.0, NOT_FINISHED, 3.0]) == 2.0
    assert median_of([NOT_FINISHED, NOT_FINISHED]) == NOT_FINISHED
    assert median_of([None, None]) is None


def test_the_headline_gives_every_round_and_the_median() -> None:
    rounds = [_round(80, 40, 150, 100), _round(90, 30, 120, NOT_FINISHED), _round(70, 35, 140, 70)]
    h = headline(rounds, [{}, {}, {}], {"ok": True}, 1.5)
    assert h["ratios"]["chain p50 spine/floor"] == {"median": 2.0, "rounds": [2.0, 3.0, 2.0]}
    tput = h["ratios"]["chain throughput spine/celery-fast"]
    assert tput == {"median": 1.75, "rounds": [1.5, NOT_FINISHED, 2.0]}
    assert "chain p50 spine/celery-matched" not in h["ratios"]  # never ran
    assert h["throughput_per_s"]["celery-fast"]["chain"]["rounds"][1] == NOT_FINISHED
    assert h["p50_ms"]["floor"]["chain"]["median"] == 35
