"""Gateway settings: the shared ones, the gateway's own knobs (``SPINE_GATEWAY_``), the
operators' metrics scrape token, what ``/status`` expects to be running
(``SPINE_EXPECTED_SERVICES``), and a refusal of the default master key (and of a weak
scrape token) in production."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator
from spine_contracts.metering import TokenPrice
from spine_servicekit.settings import DEFAULT_MASTER_KEY, CommonSettings

from .liveness import Expected


class GatewaySettings(CommonSettings):
    db_schema: str = Field(
        "gateway", alias="SPINE_GATEWAY_SCHEMA", pattern=r"^[a-z_][a-z0-9_]{0,62}$"
    )
    reply_timeout_s: float = Field(10.0, alias="SPINE_GATEWAY_REPLY_TIMEOUT", gt=0)
    #: how long an accepted execution may take to appear in the gateway's own read model
    projection_timeout_s: float = Field(10.0, alias="SPINE_GATEWAY_PROJECTION_TIMEOUT", gt=0)
    idempotency_ttl_s: int = Field(86_400, alias="SPINE_GATEWAY_IDEMPOTENCY_TTL", ge=60)
    rate_window_s: int = Field(60, alias="SPINE_GATEWAY_RATE_WINDOW", ge=1)
    dev_user_id: str = Field("dev", alias="SPINE_GATEWAY_DEV_USER")
    dev_user_credits: int = Field(1_000_000, alias="SPINE_GATEWAY_DEV_CREDITS", ge=0)
    sse_keepalive_s: float = Field(15.0, alias="SPINE_GATEWAY_SSE_KEEPALIVE", gt=0)
    #: open WebSockets per key on one replica; one more is closed with 4429 (sockets.py)
    ws_max_per_key: int = Field(20, alias="SPINE_GATEWAY_WS_MAX_PER_KEY", ge=1)
    #: an agent instance silent longer than this counts no more in ``GET /agents``' tasks in
    #: flight (the registry's heartbeat TTL, SPINE_REGISTRY_HEARTBEAT_TTL, by default)
    agent_beat_stale_s: float = Field(15.0, alias="SPINE_GATEWAY_AGENT_BEAT_STALE", gt=0)
    #: how long start-up may take to apply the topics' backlog before serving
    catchup_timeout_s: float = Field(600.0, alias="SPINE_GATEWAY_CATCHUP_TIMEOUT", gt=0)
    #: how long /status reuses a consumer-group lag measurement
    lag_cache_s: float = Field(5.0, alias="SPINE_GATEWAY_LAG_CACHE", ge=0)
    #: usage records buffered for Kafka at most (the oldest go first when Kafka is away)
    usage_buffer: int = Field(50_000, alias="SPINE_GATEWAY_USAGE_BUFFER", ge=1)
    #: the largest request body accepted (413 above it, whether declared or streamed)
    max_body_bytes: int = Field(1_048_576, alias="SPINE_GATEWAY_MAX_BODY_BYTES", ge=1024)
    #: the least a user's own flow costs per execution, and per agent node on top
    #: (docs/credits.md); a flow's ``cost`` may raise the price, never lower it. System
    #: flows cost what the admin set.
    min_credits_per_execution: int = Field(1, alias="SPINE_MIN_CREDITS_PER_EXECUTION", ge=0)
    min_credits_per_agent_node: int = Field(0, alias="SPINE_MIN_CREDITS_PER_AGENT_NODE", ge=0)
    #: the least a user's own flow pays for model tokens, per model (``"*"``: any other),
    #: as JSON, e.g. ``{"*": {"input": 1, "output": 4}}`` — whatever ``pricing`` the flow
    #: wrote, or none (docs/credits.md); empty: tenants' flows price their own tokens
    tenant_token_pricing: dict[str, TokenPrice] = Field(
        default_factory=dict, alias="SPINE_TENANT_TOKEN_PRICING"
    )
    #: credits reserved for tokens above the price when such a flow sets no ``max_credits``
    tenant_token_allowance: int = Field(10, alias="SPINE_TENANT_TOKEN_ALLOWANCE", ge=0)
    #: the bearer token Prometheus sends for ``/metrics`` (text only), so a scraper never
    #: holds the master key; unset: only the master key reads the Prometheus text
    metrics_scrape_token: str | None = Field(None, alias="SPINE_METRICS_SCRAPE_TOKEN", repr=False)
    #: what the deployment runs (``liveness.Expected``): service names and
    #: ``agent:<agent_id>`` of system agents, comma-separated; ``/status`` is 503 while one
    #: of them has nothing running. Unset or blank: the five core services.
    expected_services: str = Field(
        "",
        alias="SPINE_EXPECTED_SERVICES",
        description="comma-separated services and agent:<id> system agents /status expects",
    )

    @field_validator("metrics_scrape_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: Any) -> Any:
        # compose passes "" for an unset variable; a mounted secret may end in a newline
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("expected_services")
    @classmethod
    def _check_expected(cls, value: str) -> str:
        Expected.parse(value)
        return value

    @property
    def expected(self) -> Expected:
        return Expected.parse(self.expected_services)

    @model_validator(mode="after")
    def _no_default_master_key(self) -> GatewaySettings:
        if not self.dev_mode and self.api_key == DEFAULT_MASTER_KEY:
            raise ValueError("API_KEY must be set to a secret outside DEV_MODE")
        if len(self.api_key) < 16 and not self.dev_mode:
            raise ValueError("API_KEY must be at least 16 characters outside DEV_MODE")
        token = self.metrics_scrape_token
        if token is not None and token == self.api_key:
            # the token would then be the master key, and a scraper the admin
            raise ValueError("SPINE_METRICS_SCRAPE_TOKEN must differ from API_KEY")
        if token is not None and len(token) < 16 and not self.dev_mode:
            raise ValueError(
                "SPINE_METRICS_SCRAPE_TOKEN must be at least 16 characters outside DEV_MODE"
            )
        return self
