"""Settings: env names of README.md, Configuration and a clear message for a bad value."""

from __future__ import annotations

import pytest
from spine_gateway.settings import GatewaySettings
from spine_servicekit.kafka import KafkaConfig, make_consumer
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


async def test_consumer_group_timing_is_a_setting_every_consumer_gets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/operations.md, Consumer groups: a killed member's partitions move within the
    session timeout (6 s by default, was 10 s), and every group consumer is built with it."""
    s = load_settings(CommonSettings, _env_file=None)
    timing = (s.kafka_session_timeout_ms, s.kafka_heartbeat_interval_ms)
    assert (*timing, s.kafka_rebalance_timeout_ms) == (6000, 1000, 10000)
    monkeypatch.setenv("SPINE_KAFKA_SESSION_TIMEOUT_MS", "9000")
    monkeypatch.setenv("SPINE_KAFKA_HEARTBEAT_INTERVAL_MS", "3000")
    monkeypatch.setenv("SPINE_KAFKA_REBALANCE_TIMEOUT_MS", "20000")
    cfg = KafkaConfig.from_settings(load_settings(CommonSettings, _env_file=None))
    consumer = make_consumer(cfg, group_id="g")  # not started: nothing connects
    got = (  # aiokafka keeps them as given
        consumer._session_timeout_ms,
        consumer._heartbeat_interval_ms,
        consumer._rebalance_timeout_ms,
    )
    assert got == (9000, 3000, 20000)


def test_a_heartbeat_longer_than_half_the_session_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPINE_KAFKA_SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("SPINE_KAFKA_HEARTBEAT_INTERVAL_MS", "4000")
    with pytest.raises(SettingsError):
        load_settings(CommonSettings, _env_file=None)
    assert "SPINE_KAFKA_HEARTBEAT_INTERVAL_MS" in capsys.readouterr().err
