"""``SPINE_LLM_*``: the model an agent process talks to, from its environment only.

The key is a :class:`~pydantic.SecretStr`: its ``repr`` and every log line show
``**********``; it is read once, when the client is built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from ..settings import AgentSettings, SettingsError
from .client import DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOOL_ROUNDS, LLM
from .provider import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S


class LLMSettings(AgentSettings):
    llm_provider: Literal["openai", "anthropic"] | None = Field(None, alias="SPINE_LLM_PROVIDER")
    #: an OpenAI-compatible server (vLLM, llama.cpp, Ollama …) or a proxy; unset: the provider's
    llm_base_url: str | None = Field(None, alias="SPINE_LLM_BASE_URL")
    #: unset: the SDK's own variable (OPENAI_API_KEY / ANTHROPIC_API_KEY), else none (local)
    llm_api_key: SecretStr | None = Field(None, alias="SPINE_LLM_API_KEY")
    llm_model: str | None = Field(None, alias="SPINE_LLM_MODEL")
    llm_agent_id: str = Field("llm", alias="SPINE_LLM_AGENT_ID", min_length=1, max_length=128)
    llm_max_tokens: int = Field(DEFAULT_MAX_TOKENS, alias="SPINE_LLM_MAX_TOKENS", ge=1)
    llm_max_tool_rounds: int = Field(
        DEFAULT_MAX_TOOL_ROUNDS, alias="SPINE_LLM_MAX_TOOL_ROUNDS", ge=0, le=50
    )
    #: the official SDKs' own retries on 408/409/429/5xx and connection errors
    llm_max_retries: int = Field(DEFAULT_MAX_RETRIES, alias="SPINE_LLM_MAX_RETRIES", ge=0, le=10)
    llm_timeout_s: float = Field(DEFAULT_TIMEOUT_S, alias="SPINE_LLM_TIMEOUT", gt=0)
    #: stream the answer's text as progress (live on the execution's streams, never stored)
    llm_stream: bool = Field(True, alias="SPINE_LLM_STREAM")

    def require_model(self) -> None:
        """Stop with a message naming what is missing (a clean exit, like bad settings)."""
        missing = [
            env
            for env, value in (
                ("SPINE_LLM_PROVIDER (openai or anthropic)", self.llm_provider),
                ("SPINE_LLM_MODEL", self.llm_model),
            )
            if not value
        ]
        if missing:
            raise SettingsError("a model agent needs " + " and ".join(missing))

    def build_llm(self) -> LLM:
        self.require_model()
        assert self.llm_provider is not None and self.llm_model is not None
        key = self.llm_api_key.get_secret_value() if self.llm_api_key else None
        return LLM.connect(
            self.llm_provider,
            self.llm_model,
            api_key=key or None,
            base_url=self.llm_base_url or None,
            max_retries=self.llm_max_retries,
            timeout=self.llm_timeout_s,
            max_tokens=self.llm_max_tokens,
            max_tool_rounds=self.llm_max_tool_rounds,
        )
