"""Metrics settings: the shared ones plus ``SPINE_METRICS_*`` knobs."""

from __future__ import annotations

from pydantic import Field
from spine_servicekit.settings import CommonSettings


class MetricsSettings(CommonSettings):
    metrics_port: int = Field(9108, alias="SPINE_METRICS_PORT", ge=1, le=65535)
    summary_interval_s: float = Field(2.0, alias="SPINE_METRICS_SUMMARY_INTERVAL", gt=0)
