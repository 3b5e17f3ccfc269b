"""OpenTelemetry tracing across the bus (docs/deploy.md, observability): one trace per execution.

The trace context is the W3C ``traceparent`` in the envelope's ``trace`` field (and the
``traceparent`` Kafka header written from it). Each hop starts a span as a child of the
message it handles and stamps that span's ``traceparent`` on what it sends, so the spans of
the gateway request, auth, every orchestrator step, the relay's HTTP calls, the agents and
the projections that bring the results back all share the trace id the gateway created
(or the one the orchestrator created for a ``StartExecution`` published without one).

Off by default. :func:`setup` turns it on from the standard ``OTEL_*`` environment:

* ``OTEL_SDK_DISABLED=true`` keeps it off whatever else is set;
* ``OTEL_TRACES_EXPORTER``: a comma list of ``otlp`` (OTLP over HTTP/protobuf, configured
  by ``OTEL_EXPORTER_OTLP_*``), ``console`` and ``none``. Unlike the SDK's own default
  (``otlp``), unset means no exporter, unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, which means ``otlp``;
* ``SPINE_OTEL_FILE``: also write every span as one JSON line to this path (``{service}``
  and ``{pid}`` in it are replaced), synchronously: for tests and debugging;
* ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)`` and
  ``OTEL_BSP_*`` work as the SDK documents them (the service name defaults to the
  process's own).

Tracing is on when at least one exporter is configured. When it is off, :data:`ENABLED` is
False and callers on a hot path check it before calling anything here: no span, context or
header object is made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from spine_contracts import Message

from .logging import get_logger

__all__ = [
    "ENABLED",
    "FILE_ENV",
    "JsonLinesExporter",
    "SpanKind",
    "TracingMiddleware",
    "begin_batch",
    "current_traceparent",
    "end_batch",
    "exporters_from_env",
    "inject",
    "record_batch",
    "setup",
    "shutdown",
    "span",
    "span_record",
    "stamp",
    "stamp_caused",
    "traceparent_of",
]

log = get_logger(__name__)

#: True once :func:`setup` installed a provider with an exporter; read it before tracing.
ENABLED = False
FILE_ENV = "SPINE_OTEL_FILE"
_TRUE = {"true", "1", "yes", "on"}

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_propagator = TraceContextTextMapPropagator()
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()


# --- set-up ----------------------------------------------------------------------------------
class JsonLinesExporter(SpanExporter):
    """Appends each finished span as one JSON object per line (``trace_id``, ``span_id``,
    ``parent_id``, ``name``, ``kind``, ``service``, times in ns, ``attributes``, ``status``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(orjson.dumps(span_record(s)) + b"\n" for s in spans)
        with self._lock, open(self.path, "ab") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_record(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    return {
        "trace_id": trace.format_trace_id(ctx.trace_id),
        "span_id": trace.format_span_id(ctx.span_id),
        "parent_id": trace.format_span_id(parent.span_id) if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
    }


def exporters_from_env(
    service: str, env: Mapping[str, str] | None = None
) -> list[tuple[SpanExporter, bool]]:
    """The exporters the environment asks for, each with "export synchronously"."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return []
    names_env = env.get("OTEL_TRACES_EXPORTER")
    if names_env is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        names_env = "otlp" if endpoint else ""
    out: list[tuple[SpanExporter, bool]] = []
    for name in (n.strip().lower() for n in names_env.split(",")):
        if name in ("", "none"):
            continue
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                log.warning("otel_protocol_unsupported", protocol=protocol, using="http/protobuf")
            out.append((OTLPSpanExporter(), False))
        elif name == "console":
            out.append((ConsoleSpanExporter(service_name=service), False))
        else:
            log.warning("otel_exporter_unknown", exporter=name)
    path = env.get(FILE_ENV)
    if path:
        out.append((JsonLinesExporter(path.format(service=service, pid=os.getpid())), True))
    return out


def setup(
    service: str,
    *,
    exporter: SpanExporter | None = None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Turn tracing on for this process if the environment (or ``exporter``) asks for it.

    ``exporter`` (tests: an ``InMemorySpanExporter``) is used synchronously, besides
    whatever the environment configures. Returns :data:`ENABLED`.
    """
    global ENABLED, _provider, _tracer
    env = os.environ if env is None else env
    exporters = exporters_from_env(service, env)
    if exporter is not None:
        exporters.append((exporter, True))
    if not exporters:
        return ENABLED
    shutdown()
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exp, synchronous in exporters:
        provider.add_span_processor(
            SimpleSpanProcessor(exp) if synchronous else BatchSpanProcessor(exp)
        )
    _provider = provider
    _tracer = provider.get_tracer("spine")
    ENABLED = True
    log.info("tracing_enabled", exporters=[type(e).__name__ for e, _ in exporters])
    return True


def shutdown() -> None:
    """Flush and stop the exporters; tracing is off afterwards."""
    global ENABLED, _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    ENABLED = False
    if provider is not None:
        provider.shutdown()


# --- propagation -----------------------------------------------------------------------------
def _parent(traceparent: str | None) -> otel_context.Context | None:
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def traceparent_of(s: Span | None) -> str | None:
    """The W3C ``traceparent`` of a span (None for none or an invalid one)."""
    if s is None:
        return None
    ctx = s.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    return traceparent_of(trace.get_current_span()) if ENABLED else None


M = TypeVar("M", bound=Message)


def stamp(message: M, s: Span | None = None) -> M:
    """``message`` with ``trace`` set to ``s``'s (default: the current span's) context."""
    if not ENABLED:
        return message
    tp = traceparent_of(s if s is not None else trace.get_current_span())
    if tp is None or tp == message.trace:
        return message
    return message.model_copy(update={"trace": tp})


def inject(headers: dict[str, str]) -> dict[str, str]:
    """HTTP headers plus the current span's ``traceparent`` (the same dict when off)."""
    if not ENABLED:
        return headers
    tp = current_traceparent()
    return {**headers, "traceparent": tp} if tp else headers


def _start(
    name: str,
    parent: str | None,
    kind: SpanKind,
    attributes: Mapping[str, Any] | None,
    start_time: int | None = None,
) -> Span:
    assert _tracer is not None
    ctx = _parent(parent)
    return _tracer.start_span(
        name,
        context=ctx if ctx is not None else otel_context.Context(),  # no parent: a new trace
        kind=kind,
        attributes=dict(attributes or {}),
        start_time=start_time,
    )


def _message_attributes(message: Message, topic: str | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.message.id": str(message.message_id),
        "aispine.message_type": message.type,
    }
    if topic:
        attrs["messaging.destination.name"] = topic
    if message.correlation_id:
        attrs["aispine.correlation_id"] = message.correlation_id
    execution_id = getattr(message.data, "execution_id", None)
    if execution_id is not None:
        attrs["aispine.execution_id"] = str(execution_id)
    return attrs


def span(
    name: str,
    *,
    message: Message | None = None,
    parent: str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span made current for the ``with`` block; yields None (and makes nothing) when off.

    Its parent is ``message``'s trace, else ``parent`` (a traceparent), else the current
    span; an exception leaving the block is recorded on it.
    """
    if not ENABLED:
        return _NULL
    return _span(name, message, parent, kind, attributes)


@contextlib.contextmanager
def _span(
    name: str,
    message: Message | None,
    parent: str | None,
    kind: SpanKind,
    attributes: Mapping[str, Any] | None,
) -> Iterator[Span]:
    assert _tracer is not None
    attrs = {**(_message_attributes(message) if message is not None else {}), **(attributes or {})}
    if message is not None or parent is not None:
        s = _start(name, message.trace if message is not None else parent, kind, attrs)
    else:
        s = _tracer.start_span(name, kind=kind, attributes=attrs)
    with trace.use_span(s, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        yield s


# --- batches (the transactional loop, projectors) -------------------------------------------
class _HasMessage(Protocol):
    @property
    def message(self) -> Message: ...

    @property
    def topic(self) -> str: ...


In = TypeVar("In", bound=_HasMessage)


class _HasCausedMessage(Protocol):
    @property
    def message(self) -> Message: ...


Out = TypeVar("Out", bound=_HasCausedMessage)


def begin_batch(consumer: str, incoming: Sequence[In]) -> tuple[dict[str, Span], list[In]]:
    """One consumer span per input (child of its trace), by message id, and the inputs.

    An input without a trace starts a new one: it is handed on with the new span's trace, so
    state built from it (an execution started without a trace) carries that trace onward.
    """
    spans: dict[str, Span] = {}
    out: list[In] = []
    for item in incoming:
        message = item.message
        s = _start(
            f"{consumer} {message.type}",
            message.trace,
            SpanKind.CONSUMER,
            {**_message_attributes(message, item.topic), "aispine.consumer": consumer},
        )
        spans[str(message.message_id)] = s
        if message.trace is None:
            item = dataclasses.replace(item, message=stamp(message, s))  # type: ignore[type-var]
        out.append(item)
    return spans, out


def stamp_caused(outgoing: Sequence[Out], spans: Mapping[str, Span]) -> list[Out]:
    """Each output caused by a traced input gets that input's span as its parent."""
    out: list[Out] = []
    for item in outgoing:
        message = item.message
        s = spans.get(message.causation_id) if message.causation_id else None
        if s is not None:
            stamped = stamp(message, s)
            if stamped is not message:
                item = dataclasses.replace(item, message=stamped)  # type: ignore[type-var]
        out.append(item)
    return out


def end_batch(spans: Mapping[str, Span], error: BaseException | None = None) -> None:
    """End the spans of a batch; an error (the handler's, the transaction's) marks them."""
    for s in spans.values():
        if error is not None:
            s.record_exception(error)
            s.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
        s.end()


def record_batch(name: str, messages: Sequence[Message], start_ns: int) -> None:
    """A finished span per message (from ``start_ns`` to now), child of its trace: work
    done for a whole batch at once, such as a projection's transaction."""
    end = time.time_ns()
    for message in messages:
        if message.trace:
            s = _start(
                f"{name} {message.type}",
                message.trace,
                SpanKind.CONSUMER,
                _message_attributes(message),
                start_time=start_ns,
            )
            s.end(end)


# --- HTTP servers (the gateway) --------------------------------------------------------------
class TracingMiddleware:
    """ASGI middleware: one server span per HTTP request, child of a ``traceparent`` header.

    Add it only when :data:`ENABLED` (``if tracing.ENABLED: app.add_middleware(...)``).
    The span is named after the matched route once the app has routed the request.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not ENABLED:
            await self.app(scope, receive, send)
            return
        parent = None
        for key, value in scope.get("headers") or ():
            if key == b"traceparent":
                parent = value.decode("latin-1")
                break
        method = scope.get("method", "GET")
        attrs = {"http.request.method": method, "url.path": scope.get("path", "")}
        with _span(f"{method} {scope.get('path', '')}", None, parent, SpanKind.SERVER, attrs) as s:

            async def send_traced(event: dict[str, Any]) -> None:
                if event["type"] == "http.response.start":
                    status = int(event["status"])
                    s.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        s.set_status(Status(StatusCode.ERROR))
                await send(event)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if template:
                    s.update_name(f"{method} {template}")
                    s.set_attribute("http.route", template)
