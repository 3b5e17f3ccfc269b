"""The bench's checks, as pure logic: each kind of failure is caught, re-runs only counted."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.checks import (
    Tally,
    audit,
    balance_failure,
    charge,
    expected_balance,
    floor_output,
    spine_echo_output,
)

ROOT = Path(__file__).resolve().parents[2]
INPUT = {"text": "hello", "n": 1}


def _clean(n: int = 3) -> Tally:
    t = Tally()
    for i in range(n):
        e = f"e{i}"
        t.accepted.add(e)
        t.end(e, "completed", {"ok": e})
        t.dispatches[(e, "a", 1)] += 1
        t.runs[f"{e}:a:1"] += 1
        t.agent_work.add(e)
    return t


def _want(e: str) -> dict[str, str]:
    return {"ok": e}


def test_a_clean_tally_passes() -> None:
    a = audit(_clean(), _want)
    assert a.ok and a.checked == 3 and a.reruns == 0, a.summary()


def test_a_wrong_output_fails_and_is_shown() -> None:
    t = _clean()
    t.outputs["e1"] = {"ok": "tampered"}
    a = audit(t, _want)
    assert a.failures == {"wrong_output": 1}
    assert "e1" in a.examples["wrong_output"][0]


def test_a_second_terminal_event_fails_even_with_the_right_output() -> None:
    t = _clean()
    t.end("e2", "completed", {"ok": "e2"})
    assert audit(t, _want).failures == {"double_terminal": 1}


def test_a_second_dispatch_of_one_attempt_fails_but_a_retry_does_not() -> None:
    t = _clean()
    t.dispatches[("e0", "a", 2)] += 1  # attempt 2: a retry, a new task
    assert audit(t, _want).ok
    t.dispatches[("e0", "a", 1)] += 1
    assert audit(t, _want).failures == {"double_dispatch": 1}


def test_agent_reruns_are_counted_not_failed() -> None:
    t = _clean()
    t.runs["e0:a:1"] += 2
    t.runs["e1:a:1"] += 1
    a = audit(t, _want)
    assert a.ok and a.reruns == 3 and a.rerun_tasks == 2


def test_lost_and_not_completed_fail_unless_pending() -> None:
    t = _clean()
    t.accepted |= {"lost", "bad"}
    t.end("bad", "failed")
    assert audit(t, _want).failures == {"lost": 1, "not_completed": 1}
    assert audit(t, _want, pending={"lost"}).failures == {"not_completed": 1}


def test_the_balance_follows_docs_credits() -> None:
    t = _clean()  # three completed, cost 2 each
    t.accepted |= {"failed", "cancelled-idle", "cancelled-worked", "running"}
    t.end("failed", "failed")
    t.end("cancelled-idle", "cancelled")
    t.end("cancelled-worked", "cancelled")
    t.agent_work.add("cancelled-worked")
    # completed 3×2, failed 0, cancelled before any agent work 0, after it 2, running holds 2
    assert expected_balance(100, t, lambda _e: 2) == 100 - 6 - 2 - 2
    assert balance_failure(100, 90, t, lambda _e: 2) is None
    assert "final balance 90 != 95" in str(balance_failure(100, 90, t, lambda _e: 1))
    assert [charge(k, 5, w) for k, w in (("completed", False), ("failed", True))] == [5, 0]


def test_the_modelled_echo_outputs_match_the_flows_shapes() -> None:
    chain = yaml.safe_load((ROOT / "flows" / "echo_chain.yaml").read_text())
    out = spine_echo_output(chain, INPUT)
    assert list(out) == ["result"]
    c = out["result"]
    assert c["node_id"] == "c" and c["echo"] == INPUT
    assert c["dependencies"]["b"]["dependencies"]["a"]["dependencies"] == {}
    fanout = yaml.safe_load((ROOT / "flows" / "echo_fanout.yaml").read_text())
    deps = spine_echo_output(fanout, INPUT)["result"]["dependencies"]
    assert sorted(deps) == ["b1", "b2", "b3", "b4"]
    assert floor_output((1, 4, 1), INPUT) == {"echo": {"echo": {"echo": INPUT}}}
