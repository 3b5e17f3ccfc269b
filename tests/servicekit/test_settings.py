"""Settings: env names of README.md, Configuration and a clear message for a bad value."""

from __future__ import annotations

import pytest
from spine_gateway.settings import GatewaySettings
from spine_servicekit.settings import CommonSettings, SettingsError, load_settings


def test_reads_the_original_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x/y")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("DEV_MODE", "true")
    s = load_settings(CommonSettings)
    assert (s.kafka_bootstrap_servers, s.database_url, s.port) == ("k:1", "postgresql://x/y", 9000)
    assert s.dev_mode and not s.auth_required  # DEV_MODE relaxes the key unless set


def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(SettingsError):
        load_settings(CommonSettings)
    err = capsys.readouterr().err
    assert "PORT" in err and "not-a-port" in err


def test_secrets_are_not_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("API_KEY", "short")
    monkeypatch.setenv("DEV_MODE", "false")
    with pytest.raises(SettingsError):
        load_settings(GatewaySettings)
    assert "short" not in capsys.readouterr().err


def test_gateway_refuses_the_default_master_key_outside_dev(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.setenv("DEV_MODE", "false")
    with pytest.raises(SettingsError):
        load_settings(GatewaySettings, _env_file=None)
