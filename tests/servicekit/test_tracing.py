"""Tracing helpers (spine_servicekit.tracing) with the SDK's in-memory exporter.

One simulated execution goes gateway request → ReserveCredits → auth (StartExecution) →
orchestrator (AgentMessage) → agent (AgentResult) → orchestrator → projection, through the
same helpers the services call; every span must carry the request's trace id and hang
under the span of the message that caused it. Off, nothing is made.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from spine_contracts import (
    AgentMessage,
    AgentResult,
    ExecutionCompleted,
    ReserveCredits,
    StartExecution,
)
from spine_contracts.flow import FlowDefinition
from spine_servicekit import tracing
from spine_servicekit.kafka import Outgoing

FLOW = FlowDefinition.model_validate(
    {
        "flow_id": "f",
        "name": "f",
        "nodes": [
            {"id": "in", "type": "input"},
            {"id": "a", "type": "processor", "agent_id": "zoe", "depends_on": ["in"]},
            {"id": "out", "type": "output", "depends_on": ["a"]},
        ],
        "entry_point": "in",
        "exit_points": ["out"],
    }
)


@dataclasses.dataclass(frozen=True)
class In:
    topic: str
    message: Any


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    assert tracing.setup("test", exporter=memory, env={})
    try:
        yield memory
    finally:
        tracing.shutdown()
    assert not tracing.ENABLED


def _hex(span: ReadableSpan) -> tuple[str, str, str | None]:
    ctx = span.get_span_context()
    assert ctx is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", parent


def _start(execution_id: str, trace: str | None = None) -> StartExecution:
    return StartExecution.build(
        trace=trace,
        execution_id=execution_id,
        user_id="u",
        flow=FLOW,
        flow_version="1",
        input_data={},
        credits_reserved=1,
    )


def test_one_trace_across_the_hops(exporter: InMemorySpanExporter) -> None:
    # the gateway: a server span for the request; the command it publishes carries it
    with tracing.span("POST /flows/execute", kind=tracing.SpanKind.SERVER) as request:
        assert request is not None
        reserve = tracing.stamp(
            ReserveCredits.build(
                user_id="u",
                execution_id="e1",
                amount=1,
                flow=FLOW,
                flow_version="1",
                input_data={},
                metadata={},
                request_id="r1",
            )
        )
    assert reserve.trace == tracing.traceparent_of(request)

    # auth: a consumer span per input; what the input caused continues under it
    spans, batch = tracing.begin_batch("auth", [In("auth.commands", reserve)])
    start = _start("e1").model_copy(
        update={"causation_id": str(reserve.message_id), "trace": reserve.trace}
    )
    unrelated = _start("e2")  # caused by nothing in this batch: left alone
    out = tracing.stamp_caused([Outgoing("x", "e1", start), Outgoing("x", "e2", unrelated)], spans)
    tracing.end_batch(spans)
    assert out[0].message.trace == tracing.traceparent_of(spans[str(reserve.message_id)])
    assert out[1].message is unrelated
    start = out[0].message

    # orchestrator: StartExecution → the agent's task
    spans, _ = tracing.begin_batch("orchestrator", [In("executions.commands", start)])
    task = AgentMessage.build(
        cause=start,
        execution_id="e1",
        node_id="a",
        to_agent="zoe",
        attempt=1,
    )
    (task_out,) = tracing.stamp_caused([Outgoing("t", "e1", task)], spans)
    tracing.end_batch(spans)

    # the agent: its span is current while it runs; the relay's HTTP call is its child
    with tracing.span("agent zoe a", message=task_out.message, kind=tracing.SpanKind.CONSUMER):
        with tracing.span("relay POST /execute", kind=tracing.SpanKind.CLIENT):
            headers = tracing.inject({"content-type": "application/json"})
            assert headers["traceparent"] == tracing.current_traceparent()
        result = tracing.stamp(
            AgentResult.build(
                cause=task_out.message,
                execution_id="e1",
                node_id="a",
                agent_id="zoe",
                attempt=1,
                status="success",
                output={},
            )
        )

    # orchestrator again, then the projection that brings the result back
    spans, _ = tracing.begin_batch("orchestrator", [In("agents.results", result)])
    done = ExecutionCompleted.build(cause=result, execution_id="e1", seq=3, output_data={})
    (done_out,) = tracing.stamp_caused([Outgoing("ev", "e1", done)], spans)
    tracing.end_batch(spans, RuntimeError("commit failed"))
    tracing.record_batch("project executions", [done_out.message], 0)

    finished = exporter.get_finished_spans()
    names = [s.name for s in finished]
    assert names == [
        "POST /flows/execute",
        "auth auth.reserve_credits",
        "orchestrator execution.start",
        "relay POST /execute",
        "agent zoe a",
        "orchestrator agent.result",
        "project executions execution.completed",
    ]
    by_name = {s.name: _hex(s) for s in finished}
    trace_ids = {t for t, _, _ in by_name.values()}
    assert trace_ids == {by_name["POST /flows/execute"][0]}, "one trace id on every span"
    chain = list(by_name)
    expected_parent = {
        "auth auth.reserve_credits": "POST /flows/execute",
        "orchestrator execution.start": "auth auth.reserve_credits",
        "agent zoe a": "orchestrator execution.start",
        "relay POST /execute": "agent zoe a",
        "orchestrator agent.result": "agent zoe a",
        "project executions execution.completed": "orchestrator agent.result",
    }
    for child, parent in expected_parent.items():
        assert by_name[child][2] == by_name[parent][1], f"{child} under {parent}"
    assert by_name["POST /flows/execute"][2] is None and len(chain) == 7
    failed = next(s for s in finished if s.name == "orchestrator agent.result")
    assert failed.status.status_code.name == "ERROR"
    ok = next(s for s in finished if s.name == "orchestrator execution.start")
    assert ok.attributes is not None and ok.attributes["aispine.execution_id"] == "e1"


def test_a_message_without_trace_starts_one_that_state_keeps(
    exporter: InMemorySpanExporter,
) -> None:
    bare = _start("e3")
    assert bare.trace is None
    spans, (adopted,) = tracing.begin_batch("orchestrator", [In("c", bare)])
    tracing.end_batch(spans)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # a new trace, created here
    assert adopted.message.trace == tracing.traceparent_of(spans[str(bare.message_id)])
    assert adopted.message.message_id == bare.message_id


def test_off_makes_nothing() -> None:
    assert not tracing.ENABLED
    message = _start("e4")
    assert tracing.stamp(message) is message
    headers = {"a": "b"}
    assert tracing.inject(headers) is headers
    assert tracing.current_traceparent() is None
    with tracing.span("x", message=message) as span:
        assert span is None
    assert tracing.exporters_from_env("svc", {}) == []
    assert tracing.setup("svc", env={}) is False and not tracing.ENABLED


def test_exporters_from_the_standard_env(tmp_path: Path) -> None:
    def names(env: dict[str, str]) -> list[str]:
        return [type(e).__name__ for e, _ in tracing.exporters_from_env("svc", env)]

    assert names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["OTLPSpanExporter"]
    assert names({"OTEL_TRACES_EXPORTER": "console,otlp"}) == [
        "ConsoleSpanExporter",
        "OTLPSpanExporter",
    ]
    assert names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) == []
    path = tmp_path / "{service}-{pid}.jsonl"
    ((file_exporter, synchronous),) = tracing.exporters_from_env(
        "svc", {tracing.FILE_ENV: str(path)}
    )
    assert synchronous and isinstance(file_exporter, tracing.JsonLinesExporter)
    assert "{" not in file_exporter.path and "svc-" in file_exporter.path


def test_file_exporter_writes_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans-{service}.jsonl"
    assert tracing.setup("svc", env={tracing.FILE_ENV: str(path)})
    try:
        with tracing.span("outer"), tracing.span("inner", attributes={"k": 1}):
            pass
    finally:
        tracing.shutdown()
    lines = [json.loads(line) for line in (tmp_path / "spans-svc.jsonl").read_text().splitlines()]
    assert [r["name"] for r in lines] == ["inner", "outer"]
    inner, outer = lines
    assert inner["trace_id"] == outer["trace_id"] and inner["parent_id"] == outer["span_id"]
    assert inner["service"] == "svc" and inner["attributes"] == {"k": 1}


async def test_asgi_middleware_continues_a_callers_trace(exporter: InMemorySpanExporter) -> None:
    seen: list[str | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(tracing.current_traceparent())
        scope["route"] = type("Route", (), {"path": "/items/{id}"})()
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    transport = httpx.ASGITransport(app=tracing.TracingMiddleware(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/items/7", headers={"traceparent": caller})
    assert r.status_code == 503
    (span,) = exporter.get_finished_spans()
    trace_id, span_id, parent = _hex(span)
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and parent == "b7ad6b7169203331"
    assert span.name == "GET /items/{id}" and span.status.status_code.name == "ERROR"
    assert seen == [f"00-{trace_id}-{span_id}-01"]
