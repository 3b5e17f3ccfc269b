"""``model_agent`` / ``spine-agent-llm``: a node's templates in, ``{text, usage}`` out;
endpoints and keys only from the agent's environment."""

from __future__ import annotations

from typing import Any

import pytest
from agent_sdk.llm_servers import FakeModelServer, Json, Text
from pydantic import BaseModel
from spine_agent import Agent, SettingsError, Task, load_settings
from spine_agent.llm import LLM, ConfigRefused, LLMSettings, ModelHandler, model_agent
from spine_agent.testing import task_message

KEY = "sk-agent-Secret-9876543210"
MODEL = "fake-model-2"


def _task(config: dict[str, Any], **kw: Any) -> Task:
    return Task.from_message(task_message("llm", config=config, **kw))


def _llm(server: FakeModelServer) -> LLM:
    return LLM.openai(MODEL, api_key=KEY, base_url=server.base_url)


async def test_a_node_prompt_over_input_dependencies_and_conversation(
    model_servers: dict[str, FakeModelServer],
) -> None:
    server = model_servers["openai"]
    prompt = "Summarise 'Kafka is a log.' after plan=logs for Ana"
    server.script(prompt, Text("A log."))
    handler = ModelHandler(lambda: _llm(server), system="Default system.")
    task = _task(
        {
            "system": "You write {{ config.sentences }} sentence(s).",
            "prompt": "Summarise '{{ input.text }}' after plan={{ dependencies.plan.topic }}"
            " for {{ conversation[0].content.name }}",
            "sentences": 1,
            "max_tokens": 50,
        },
        input={"text": "Kafka is a log."},
        dependencies={"plan": {"topic": "logs"}},
        conversation=[{"role": "user", "content": {"name": "Ana"}}],
    )
    try:
        output = await handler(task)
    finally:
        await handler.aclose()
    assert output["text"] == "A log."
    assert output["usage"]["model"] == MODEL and output["usage"]["output_tokens"] > 0
    assert "data" not in output
    [request] = server.requests_for(prompt)
    assert request.body["messages"][0] == {
        "role": "system",
        "content": "You write 1 sentence(s).",
    }
    assert request.body["max_tokens"] == 50  # a compatible server: max_tokens, capped by the node


async def test_defaults_apply_and_structured_data_is_returned(
    model_servers: dict[str, FakeModelServer],
) -> None:
    class Topic(BaseModel):
        topic: str

    server = model_servers["anthropic"]
    server.script("Classify: logs", Json({"topic": "storage"}))
    handler = ModelHandler(
        LLM.anthropic(MODEL, api_key=KEY, base_url=server.base_url),
        prompt="Classify: {{ input.q }}",
        output=Topic,
    )
    try:
        output = await handler(_task({}, input={"q": "logs"}))
    finally:
        await handler.llm.aclose()
    assert output["data"] == {"topic": "storage"}
    assert output["usage"]["model"] == MODEL


@pytest.mark.parametrize(
    "config",
    [
        {"base_url": "http://attacker.example/v1", "prompt": "hi"},
        {"api_key": "sk-tenant", "prompt": "hi"},
        {"API-BASE": "http://x", "prompt": "hi"},
        {"organization": "org-1", "prompt": "hi"},
        {"model": "gpt-5-pro", "prompt": "hi"},
        {"default_headers": {"Authorization": "x"}, "prompt": "hi"},
    ],
)
async def test_a_node_config_naming_endpoint_or_key_is_refused(
    config: dict[str, Any], model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers["openai"]
    before = len(server.requests)
    handler = ModelHandler(lambda: _llm(server))
    with pytest.raises(ConfigRefused) as caught:
        await handler(_task(config))
    assert "node config may not set" in caught.value.message
    assert "environment" in caught.value.message
    assert len(server.requests) == before  # nothing was sent anywhere
    await handler.aclose()


async def test_a_missing_prompt_or_a_bad_knob_is_a_clear_error(
    model_servers: dict[str, FakeModelServer],
) -> None:
    handler = ModelHandler(lambda: _llm(model_servers["openai"]))
    with pytest.raises(Exception, match="set the node's config.prompt"):
        await handler(_task({}))
    with pytest.raises(ConfigRefused, match="max_tokens must be a positive integer"):
        await handler(_task({"prompt": "x", "max_tokens": "lots"}))
    await handler.aclose()


def test_model_agent_is_an_agent_with_a_handler() -> None:
    agent = model_agent(agent_id="summariser", llm=lambda: LLM.openai("m", base_url="http://x"))
    assert isinstance(agent, Agent) and agent.agent_id == "summariser"
    assert agent.info.capabilities == ("llm",)
    assert agent._handler is not None


def test_settings_refuse_to_start_without_provider_and_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SPINE_LLM_PROVIDER", "SPINE_LLM_MODEL", "SPINE_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(LLMSettings)
    with pytest.raises(SettingsError) as caught:
        settings.build_llm()
    assert "SPINE_LLM_PROVIDER (openai or anthropic) and SPINE_LLM_MODEL" in str(caught.value)
    monkeypatch.setenv("SPINE_LLM_PROVIDER", "anthropic")
    monkeypatch.setenv("SPINE_LLM_MODEL", "claude-x")
    monkeypatch.setenv("SPINE_LLM_API_KEY", KEY)
    settings = load_settings(LLMSettings)
    assert settings.llm_agent_id == "llm"
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    assert settings.build_llm().model == "claude-x"


def test_without_the_extra_the_sdk_runs_and_the_kit_says_what_to_install() -> None:
    import subprocess
    import sys

    script = """
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openai", "anthropic", "jinja2"):
            raise ModuleNotFoundError(f"blocked: {name}")
sys.meta_path.insert(0, Absent())
import spine_agent  # the SDK itself needs none of them
try:
    import spine_agent.llm
except ImportError as exc:
    print(exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "spine_agent.llm needs the llm extra (jinja2, openai, anthropic missing)" in done.stdout
    assert "pip install 'spine-agent-sdk[llm]'" in done.stdout
