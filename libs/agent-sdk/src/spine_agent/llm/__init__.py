"""Model-backed agents: the ``llm`` extra of the agent SDK (``spine-agent-sdk[llm]``).

::

    from spine_agent.llm import LLM, model_agent

    agent = model_agent(
        agent_id="summariser",
        llm=lambda: LLM.openai("gpt-4o-mini"),
        system="Answer in one sentence.",
        prompt="Summarise: {{ input.text }}",
    )

* :class:`LLM` — a provider (OpenAI or any compatible server, Anthropic; their official
  SDKs) and a model: streamed completions, tool calls, structured output, usage;
* :func:`model_agent` — an :class:`~spine_agent.Agent` whose handler renders the node's
  ``config.system``/``config.prompt`` in a sandbox and calls the model;
* :class:`LLMSettings` — the same from ``SPINE_LLM_*`` (``spine-agent-llm``);
* every failure is an :class:`LLMError`, a :class:`~spine_agent.TaskFailed` whose message
  names provider, model and HTTP status, never the key.

See ``docs/agents.md`` ("Model-backed agents").
"""

from __future__ import annotations

from . import extra as _extra  # noqa: F401 - first: says which extra is missing
from .client import DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOOL_ROUNDS, LLM, ProviderName
from .errors import (
    BudgetExhausted,
    ConfigRefused,
    LLMError,
    OutputInvalid,
    ProviderError,
    TemplateError,
    TemplateRefused,
    ToolRoundsExceeded,
)
from .model_agent import REFUSED_CONFIG, ModelHandler, check_config, model_agent
from .provider import Provider, TokenCallback
from .settings import LLMSettings
from .templates import render
from .tools import Tool
from .turns import Completion, Usage

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TOOL_ROUNDS",
    "LLM",
    "REFUSED_CONFIG",
    "BudgetExhausted",
    "Completion",
    "ConfigRefused",
    "LLMError",
    "LLMSettings",
    "ModelHandler",
    "OutputInvalid",
    "Provider",
    "ProviderError",
    "ProviderName",
    "TemplateError",
    "TemplateRefused",
    "TokenCallback",
    "Tool",
    "ToolRoundsExceeded",
    "Usage",
    "check_config",
    "model_agent",
    "render",
]
