"""Operational messages: service liveness, gateway replies, usage, metrics, dead letters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from ..envelope import Body, Message


class ServiceHeartbeatData(Body):
    service: str
    instance_id: str
    started_at: AwareDatetime
    host: str = ""
    pid: int = 0
    version: str = "0.1.0"
    status: Literal["ok", "degraded", "stopping"] = "ok"
    details: dict[str, Any] = Field(default_factory=dict)


class ServiceHeartbeat(Message):
    type: Literal["ops.service_heartbeat"] = "ops.service_heartbeat"
    data: ServiceHeartbeatData


class GatewayReplyData(Body):
    """The answer a gateway replica waits for; routed to it by the reply-to header."""

    request_id: str
    ok: bool
    error_code: str | None = None
    message: str | None = None
    body: dict[str, Any] = Field(default_factory=dict)


class GatewayReply(Message):
    type: Literal["gateway.reply"] = "gateway.reply"
    data: GatewayReplyData


class UsageRecordedData(Body):
    user_id: str
    request_id: str
    method: str
    path: str
    status_code: int
    duration_ms: float
    credits: int = 0


class UsageRecorded(Message):
    type: Literal["usage.recorded"] = "usage.recorded"
    data: UsageRecordedData


class MetricsSummaryData(Body):
    """One metric of the operators' summary; the compacted topic keeps the latest per name."""

    metric: str
    value: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    series: dict[str, float] = Field(default_factory=dict)


class MetricsSummaryUpdated(Message):
    type: Literal["metrics.summary_updated"] = "metrics.summary_updated"
    data: MetricsSummaryData


class DeadLetterData(Body):
    """A record a consumer could not handle, with where it came from and why."""

    origin_topic: str
    origin_partition: int
    origin_offset: int
    origin_key: str | None = None
    payload_b64: str
    error_type: str
    error: str
    consumer: str
    failed_at: AwareDatetime


class DeadLetter(Message):
    type: Literal["ops.dead_letter"] = "ops.dead_letter"
    data: DeadLetterData
