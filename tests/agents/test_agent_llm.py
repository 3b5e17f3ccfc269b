"""spine-agent-llm: configured from SPINE_LLM_*, refuses to start without a model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from spine_agent import SettingsError, load_settings
from spine_agent.llm import LLMSettings
from spine_demo_agents import llm

KEY = "sk-env-Secret-000111222333"


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SPINE_LLM_"):
            monkeypatch.delenv(name)


def test_builds_the_agent_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("SPINE_LLM_PROVIDER", "openai")
    monkeypatch.setenv("SPINE_LLM_MODEL", "qwen2.5")
    monkeypatch.setenv("SPINE_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("SPINE_LLM_API_KEY", KEY)
    monkeypatch.setenv("SPINE_LLM_AGENT_ID", "writer")
    agent = llm.build(load_settings(LLMSettings))
    assert agent.agent_id == "writer"
    assert "qwen2.5" in agent.info.description and KEY not in agent.info.model_dump_json()


def test_missing_provider_or_model_stops_before_start(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("SPINE_LLM_PROVIDER", "anthropic")
    with pytest.raises(SettingsError, match="a model agent needs SPINE_LLM_MODEL"):
        llm.build(load_settings(LLMSettings))


def test_the_console_script_says_what_is_missing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_LLM_")}
    done = subprocess.run(
        [sys.executable, "-m", "spine_demo_agents.llm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert (
        "a model agent needs SPINE_LLM_PROVIDER (openai or anthropic) and SPINE_LLM_MODEL"
        in done.stderr
    )


def test_an_unknown_provider_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("SPINE_LLM_PROVIDER", "gemini")
    monkeypatch.setenv("SPINE_LLM_MODEL", "x")
    monkeypatch.setenv("SPINE_LLM_API_KEY", KEY)
    with pytest.raises(SystemExit):
        load_settings(LLMSettings)
    err = capsys.readouterr().err
    assert "SPINE_LLM_PROVIDER: Input should be 'openai' or 'anthropic'" in err
    assert KEY not in err
