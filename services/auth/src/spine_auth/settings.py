"""Auth settings: the shared ones plus the service's own ``SPINE_AUTH_`` knobs."""

from __future__ import annotations

from pydantic import Field
from spine_servicekit.settings import CommonSettings


class AuthSettings(CommonSettings):
    #: PostgreSQL schema of the read model (a rebuild projects into another and swaps).
    db_schema: str = Field("auth", alias="SPINE_AUTH_SCHEMA", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    #: Commands of one partition decided per Kafka transaction, at most.
    max_batch: int = Field(500, alias="SPINE_AUTH_MAX_BATCH", ge=1, le=10_000)
    #: Run the read-model projector in this process (off: run it elsewhere, or not at all).
    projector_enabled: bool = Field(True, alias="SPINE_AUTH_PROJECTOR")
