"""One trace per execution, across real processes (docs/deploy.md, observability, issue 8).

Every process of the stack runs with ``SPINE_OTEL_FILE`` (tracing.JsonLinesExporter: each
finished span as one JSON line, one file per process); the test runs ``credit_analysis``
through the gateway and reads the spans back. Every span of the execution, in the gateway,
auth, the orchestrator, both agents and the gateway's projections, must carry one trace
id: the caller's when the request brings a ``traceparent``, else the one the gateway's
request span created, else (a ``StartExecution`` published straight onto the bus) the one
the orchestrator created.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from spine_flows import load_flow_file
from spine_servicekit.kafka import KafkaConfig

from .harness import ROOT
from .test_gateway_e2e import MASTER, SCRAPE, Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

Span = dict[str, Any]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
#: the processes whose spans one credit_analysis execution must show
SERVICES = {"gateway", "auth", "orchestrator", "agent-zoe", "agent-eddie"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def traced(
    kafka: KafkaConfig,
    infra: dict[str, str],
    topic_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Api, Path]]:
    spans_dir = tmp_path_factory.mktemp("spans")
    env = {"SPINE_OTEL_FILE": str(spans_dir / "{service}-{pid}.jsonl")}
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        env[name] = ""  # only the file exporter: never a collector this machine lacks
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("registry", "orchestrator", "auth", "zoe", "eddie", "gateway"),
        agents=("zoe", "eddie"),
        flows=("credit_analysis",),
        env=env,
    ) as api:
        yield api, spans_dir


def read_spans(spans_dir: Path) -> list[Span]:
    spans = []
    for path in spans_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.endswith("}"):  # a line still being written is read next time
                spans.append(json.loads(line))
    return spans


async def spans_until(
    spans_dir: Path, done: Callable[[list[Span]], bool], within: float = 30.0
) -> list[Span]:
    """The spans once ``done`` holds (each process writes its spans as they end)."""
    async with asyncio.timeout(within):  # files have no event to await
        while True:
            spans = read_spans(spans_dir)
            if done(spans):
                return spans
            await asyncio.sleep(0.1)


def of_execution(spans: list[Span], execution_id: str) -> list[Span]:
    return [s for s in spans if s["attributes"].get("aispine.execution_id") == execution_id]


#: (service, span name) that every traced credit_analysis execution shows
EXPECTED = {
    ("gateway", "POST /flows/execute"),  # FastAPI's route template, without the prefix
    ("auth", "auth auth.reserve_credits"),
    ("orchestrator", "orchestrator execution.start"),
    ("agent-zoe", "agent zoe zoe"),
    ("agent-eddie", "agent eddie eddie"),
    ("orchestrator", "orchestrator agent.result"),
    ("auth", "auth auth.settle_credits"),
    ("gateway", "project gw_executions execution.completed"),  # the result came back
}


def complete(execution_id: str) -> Callable[[list[Span]], bool]:
    """The execution's spans include its end: the orchestrator's handling of the results,
    the settlement in auth and the gateway's projection of ``execution.completed``."""

    def done(spans: list[Span]) -> bool:
        mine = of_execution(spans, execution_id)
        if not mine:
            return False
        trace_id = mine[0]["trace_id"]
        return EXPECTED <= {(s["service"], s["name"]) for s in spans if s["trace_id"] == trace_id}

    return done


def check_one_trace(spans: list[Span], execution_id: str) -> tuple[str, list[Span]]:
    mine = of_execution(spans, execution_id)
    trace_ids = {s["trace_id"] for s in mine}
    assert len(trace_ids) == 1, f"{len(trace_ids)} trace ids on the execution's spans"
    (trace_id,) = trace_ids
    in_trace = [s for s in spans if s["trace_id"] == trace_id]
    assert {s["service"] for s in in_trace} >= SERVICES
    # a tree: every parent is a span of this trace, but for the root (or the caller's span)
    ids = {s["span_id"] for s in in_trace}
    roots = [s for s in in_trace if s["parent_id"] not in ids]
    assert len(roots) == 1, [(r["service"], r["name"]) for r in roots]
    names = {(s["service"], s["name"]) for s in in_trace}
    assert EXPECTED <= names, f"missing {sorted(EXPECTED - names)}"
    return trace_id, roots


async def test_one_trace_per_execution_from_the_gateway(traced: tuple[Api, Path]) -> None:
    api, spans_dir = traced
    key = (await api.create_user(credits=10))["api_key"]
    with_caller, fresh = await asyncio.gather(
        api.execute(key, headers={"traceparent": CALLER}), api.execute(key)
    )
    assert with_caller.status_code == 200, with_caller.text
    assert fresh.status_code == 200, fresh.text
    first, second = with_caller.json()["execution_id"], fresh.json()["execution_id"]
    for eid in (first, second):
        events = await api.sse(key, eid)
        assert events[-1]["event"] == "execution.completed", events[-1]

    spans = await spans_until(spans_dir, lambda s: complete(first)(s) and complete(second)(s))

    trace_id, roots = check_one_trace(spans, first)
    assert trace_id == CALLER_TRACE, "the caller's trace continues"
    assert roots[0]["service"] == "gateway" and roots[0]["kind"] == "SERVER"
    assert roots[0]["parent_id"] == CALLER.split("-")[2]

    trace_id, roots = check_one_trace(spans, second)
    assert trace_id != CALLER_TRACE
    root = roots[0]
    assert root["parent_id"] is None, "the gateway's request created the trace"
    assert (root["service"], root["kind"]) == ("gateway", "SERVER")
    assert root["attributes"]["url.path"] == "/api/v1/flows/execute"
    assert root["attributes"]["http.response.status_code"] == 200


async def test_a_start_published_without_trace_gets_one(traced: tuple[Api, Path]) -> None:
    api, spans_dir = traced
    assert api.stack is not None
    flow = load_flow_file(ROOT / "flows" / "credit_analysis.yaml")
    applicant = {"name": "Ana", "income": 6000, "amount": 12000, "term_months": 24, "debts": 300}
    eid = await api.stack.start_execution(flow, applicant)
    done = await api.stack.terminal(eid, timeout=90)
    assert done.type == "execution.completed", done

    def finished(spans: list[Span]) -> bool:
        mine = of_execution(spans, eid)
        return {"orchestrator", "agent-zoe", "agent-eddie"} <= {s["service"] for s in mine}

    spans = await spans_until(spans_dir, finished)
    mine = of_execution(spans, eid)
    assert len({s["trace_id"] for s in mine}) == 1
    in_trace = [s for s in spans if s["trace_id"] == mine[0]["trace_id"]]
    roots = [s for s in in_trace if s["parent_id"] is None]
    assert [(r["service"], r["name"]) for r in roots] == [
        ("orchestrator", "orchestrator execution.start")
    ]
    assert done.trace is not None and done.trace.split("-")[1] == mine[0]["trace_id"]


async def test_consumer_lag_is_a_gateway_metric(traced: tuple[Api, Path]) -> None:
    """The lag /status shows is exported as ``spine_consumer_lag{group, topic}`` too."""
    api, _ = traced
    prefix = api.env["SPINE_TOPIC_PREFIX"]
    wanted = {f"{prefix}orchestrator", f"{prefix}auth", f"{prefix}agent.zoe"}
    async with asyncio.timeout(60):  # lag is measured in the background, a few seconds old
        while True:
            text = (await api.http.get("/metrics", headers=api.auth(SCRAPE))).text  # Prometheus
            series = {
                (s.labels["group"], s.labels["topic"]): s.value
                for family in text_string_to_metric_families(text)
                if family.name == "spine_consumer_lag"
                for s in family.samples
            }
            if wanted <= {group for group, _ in series}:
                break
            await asyncio.sleep(0.5)
    status = (await api.http.get("/status", headers=api.auth(MASTER))).json()["consumer_groups"]
    for (group, topic), value in series.items():
        assert value >= 0 and topic.startswith(f"{prefix}spine.")
        assert topic in status[group]["topics"], (group, topic)
    assert (f"{prefix}orchestrator", f"{prefix}spine.executions.commands") in series
