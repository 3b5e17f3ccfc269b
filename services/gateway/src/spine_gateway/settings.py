"""Gateway settings: the shared ones plus a refusal of the default master key in production."""

from __future__ import annotations

from pydantic import model_validator
from spine_servicekit.settings import DEFAULT_MASTER_KEY, CommonSettings


class GatewaySettings(CommonSettings):
    @model_validator(mode="after")
    def _no_default_master_key(self) -> GatewaySettings:
        if not self.dev_mode and self.api_key == DEFAULT_MASTER_KEY:
            raise ValueError("API_KEY must be set to a secret outside DEV_MODE")
        if len(self.api_key) < 16 and not self.dev_mode:
            raise ValueError("API_KEY must be at least 16 characters outside DEV_MODE")
        return self
