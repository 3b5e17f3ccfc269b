"""Auth settings: the shared ones plus the service's own ``SPINE_AUTH_`` knobs."""

from __future__ import annotations

from pydantic import Field
from spine_servicekit.settings import CommonSettings

from .domain import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUED,
    DEFAULT_PARTITION_QUEUE_CAP,
    Limits,
)


class AuthSettings(CommonSettings):
    #: PostgreSQL schema of the read model (a rebuild projects into another and swaps).
    db_schema: str = Field("auth", alias="SPINE_AUTH_SCHEMA", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    #: Commands of one partition decided per Kafka transaction, at most.
    max_batch: int = Field(500, alias="SPINE_AUTH_MAX_BATCH", ge=1, le=10_000)
    #: Run the read-model projector in this process (off: run it elsewhere, or not at all).
    projector_enabled: bool = Field(True, alias="SPINE_AUTH_PROJECTOR")
    #: Executions of one user running at once, unless the user's own limit says otherwise.
    max_in_flight: int = Field(
        DEFAULT_MAX_IN_FLIGHT, alias="SPINE_AUTH_MAX_IN_FLIGHT", ge=1, le=1_000_000
    )
    #: Executions of one user accepted and waiting for a slot, unless the user's own says.
    max_queued: int = Field(DEFAULT_MAX_QUEUED, alias="SPINE_AUTH_MAX_QUEUED", ge=0, le=1_000_000)
    #: Accepted-but-not-started executions of one auth partition, every user together (the
    #: global bound is this times the partitions of ``spine.auth.commands``).
    partition_queue_cap: int = Field(
        DEFAULT_PARTITION_QUEUE_CAP, alias="SPINE_AUTH_PARTITION_QUEUE_CAP", ge=0, le=10_000_000
    )

    def limits(self) -> Limits:
        return Limits(self.max_in_flight, self.max_queued, self.partition_queue_cap)
