"""llm — a ready model-backed agent (agent type ``processor``), configured from the environment.

``spine-agent-llm`` answers each task with one model call: the node's ``config.system`` and
``config.prompt`` are Jinja2 templates (rendered in the sandbox) over the task's ``input``,
``dependencies``, ``conversation`` and ``config``; the output is
``{"text", "usage": {"model", "input_tokens", "output_tokens"}}``.

Environment (the usual agent settings too: Kafka, ``SPINE_AGENT_*``, ``LOG_LEVEL``):

* ``SPINE_LLM_PROVIDER`` — ``openai`` (OpenAI and every OpenAI-compatible server) or
  ``anthropic``; required;
* ``SPINE_LLM_MODEL`` — required;
* ``SPINE_LLM_BASE_URL`` — the server (vLLM, llama.cpp, Ollama …); unset: the provider's;
* ``SPINE_LLM_API_KEY`` — never logged; unset: ``OPENAI_API_KEY``/``ANTHROPIC_API_KEY``,
  else none (a local server);
* ``SPINE_LLM_AGENT_ID`` (``llm``), ``SPINE_LLM_MAX_TOKENS`` (1024), ``SPINE_LLM_MAX_RETRIES``
  (2), ``SPINE_LLM_TIMEOUT`` (120 s), ``SPINE_LLM_STREAM`` (true: the answer's text is
  streamed as progress, live on the execution's streams).

It lives beside the demo agents, not in the SDK, because it is deployed the way they are
(an image's console script, issued with ``spine-admin issue-agent llm``); the SDK's ``llm``
extra is the library anyone builds their own model agent with.
"""

from __future__ import annotations

from spine_agent import Agent, load_settings
from spine_agent.llm import LLMSettings, model_agent


def build(settings: LLMSettings) -> Agent:
    """The agent, or a :class:`~spine_agent.SettingsError` naming what is missing."""
    settings.require_model()
    return model_agent(
        agent_id=settings.llm_agent_id,
        llm=settings.build_llm,  # called at start-up: no client at import time
        name="LLM",
        description=f"Answers with the {settings.llm_provider} model {settings.llm_model}.",
        capabilities=("llm", "text_generation"),
        stream=settings.llm_stream,
    )


def main() -> None:
    settings = load_settings(LLMSettings)
    build(settings).run(settings)


if __name__ == "__main__":
    main()
