"""AuthSettings: the shared settings plus ``SPINE_AUTH_`` knobs, refused when invalid."""

from __future__ import annotations

import pytest
from spine_auth.settings import AuthSettings
from spine_servicekit.settings import SettingsError, load_settings


def test_defaults_and_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AuthSettings(_env_file=None).db_schema == "auth"  # type: ignore[call-arg]
    monkeypatch.setenv("SPINE_AUTH_SCHEMA", "auth_rebuild")
    monkeypatch.setenv("SPINE_AUTH_MAX_BATCH", "50")
    monkeypatch.setenv("SPINE_AUTH_PROJECTOR", "false")
    settings = AuthSettings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.db_schema, settings.max_batch, settings.projector_enabled) == (
        "auth_rebuild",
        50,
        False,
    )


def test_a_schema_name_that_could_carry_sql_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPINE_AUTH_SCHEMA", 'auth"; drop table users; --')
    with pytest.raises(SettingsError):
        load_settings(AuthSettings)
    assert "SPINE_AUTH_SCHEMA" in capsys.readouterr().err
