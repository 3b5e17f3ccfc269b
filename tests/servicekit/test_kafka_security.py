"""The Kafka security settings: env names, files, clear refusals, and aiokafka's arguments.

Every refusal here happens while the settings are read, so a misconfigured process exits at
start-up with a message naming the variables instead of retrying a broker it can never log
in to; and no message, repr or traceback carries the password.
"""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from spine_agent.settings import AgentSettings
from spine_kafka.clients import KafkaConfig
from spine_kafka.security import SECURITY_ENV, KafkaSecurity, KafkaSecuritySettings
from spine_kafka.settings import KafkaSettings, SettingsError, load_settings

SECRET = "hunter2-not-in-any-message"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's own variables only (a CI run on a secured broker exports some)."""
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def _refusal(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SettingsError):
        load_settings(KafkaSettings, _env_file=None)
    err = capsys.readouterr().err
    assert SECRET not in err
    return err


def _sasl(monkeypatch: pytest.MonkeyPatch, protocol: str = "SASL_PLAINTEXT") -> None:
    _env(monkeypatch, KAFKA_SECURITY_PROTOCOL=protocol)


# -- what the environment says --------------------------------------------------------------


def test_plaintext_by_default_so_nothing_changes() -> None:
    security = KafkaSettings(_env_file=None).kafka_security  # type: ignore[call-arg]
    assert security == KafkaSecurity()
    assert security.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert security.describe() == "PLAINTEXT"


def test_sasl_from_the_environment_becomes_aiokafka_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_SASL_USERNAME="orchestrator", KAFKA_SASL_PASSWORD=SECRET)
    security = load_settings(KafkaSettings, _env_file=None).kafka_security
    assert security.client_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "orchestrator",
        "sasl_plain_password": SECRET,
    }
    assert security.describe() == "SASL_PLAINTEXT/SCRAM-SHA-512 as orchestrator"


def test_plain_is_allowed_and_an_unknown_mechanism_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD=SECRET)
    _env(monkeypatch, KAFKA_SASL_MECHANISM="PLAIN")
    kwargs = load_settings(KafkaSettings, _env_file=None).kafka_security.client_kwargs()
    assert kwargs["sasl_mechanism"] == "PLAIN"
    _env(monkeypatch, KAFKA_SASL_MECHANISM="GSSAPI")
    assert "KAFKA_SASL_MECHANISM" in _refusal(capsys)


def test_an_unknown_protocol_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, KAFKA_SECURITY_PROTOCOL="SASL")
    err = _refusal(capsys)
    assert "KAFKA_SECURITY_PROTOCOL" in err and "'SASL'" in err


def test_sasl_without_a_username_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_SASL_PASSWORD=SECRET)
    err = _refusal(capsys)
    assert "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs a username" in err
    assert "KAFKA_SASL_USERNAME" in err and "KAFKA_CREDENTIALS_FILE" in err


def test_sasl_without_a_password_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _sasl(monkeypatch, "SASL_SSL")
    _env(monkeypatch, KAFKA_SASL_USERNAME="gateway")
    err = _refusal(capsys)
    assert "needs a password for 'gateway'" in err and "KAFKA_SASL_PASSWORD_FILE" in err


def test_credentials_without_a_sasl_protocol_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, KAFKA_SASL_USERNAME="auth", KAFKA_SASL_PASSWORD=SECRET)
    err = _refusal(capsys)
    assert "KAFKA_SECURITY_PROTOCOL=PLAINTEXT sends none" in err


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose writes `${KAFKA_SASL_USERNAME:-}`; an empty CA path is not the current directory
    _env(monkeypatch, KAFKA_SASL_USERNAME="", KAFKA_SSL_CAFILE="", KAFKA_CREDENTIALS_FILE="")
    assert load_settings(KafkaSettings, _env_file=None).kafka_security == KafkaSecurity()


# -- secrets from files ---------------------------------------------------------------------


def test_the_password_file_is_read_once_without_its_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text(f"{SECRET}\n")
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_SASL_USERNAME="relay", KAFKA_SASL_PASSWORD_FILE=str(secret))
    settings = load_settings(KafkaSettings, _env_file=None)
    secret.unlink()  # read at start-up, never again
    kwargs = settings.kafka_security.client_kwargs()
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("relay", SECRET)


@pytest.mark.parametrize(
    ("content", "problem"), [(None, "cannot read it"), ("\n", "the file is empty")]
)
def test_a_missing_or_empty_password_file_says_which(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: str | None,
    problem: str,
) -> None:
    secret = tmp_path / "password"
    if content is not None:
        secret.write_text(content)
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_SASL_USERNAME="relay", KAFKA_SASL_PASSWORD_FILE=str(secret))
    err = _refusal(capsys)
    assert f"KAFKA_SASL_PASSWORD_FILE={secret}: {problem}" in err


def test_a_password_in_two_places_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(SECRET)
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD=SECRET)
    _env(monkeypatch, KAFKA_SASL_PASSWORD_FILE=str(tmp_path / "password"))
    assert "set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both" in _refusal(capsys)


def _credentials(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "agent-echo.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(0o600)
    return path


def test_the_credentials_file_holds_username_and_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _credentials(tmp_path, {"username": "agent-echo", "password": SECRET})
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_CREDENTIALS_FILE=str(path))
    security = load_settings(KafkaSettings, _env_file=None).kafka_security
    assert security.sasl_username == "agent-echo"
    assert security.client_kwargs()["sasl_plain_password"] == SECRET


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"username=agent-echo\npassword={SECRET}\n", "not JSON"),
        ({"username": "agent-echo"}, "password: Field required"),
        ({"username": "agent-echo", "password": SECRET, "user": "x"}, "user: Extra inputs"),
        ({"username": "agent-echo", "password": 12345}, "password: Input should be"),
        ({"username": "", "password": SECRET}, "username: String should have at least 1"),
        ([SECRET], "expected a JSON object"),
    ],
)
def test_a_bad_credentials_file_is_described_never_echoed(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: object,
    problem: str,
) -> None:
    path = _credentials(tmp_path, content)
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_CREDENTIALS_FILE=str(path))
    err = _refusal(capsys)
    assert f"KAFKA_CREDENTIALS_FILE={path}" in err and problem in err, err


def test_a_missing_credentials_file_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_CREDENTIALS_FILE=str(tmp_path / "absent.json"))
    assert "absent.json: cannot read it (No such file or directory)" in _refusal(capsys)


def test_the_credentials_file_and_the_variables_are_one_or_the_other(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _credentials(tmp_path, {"username": "agent-echo", "password": SECRET})
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_CREDENTIALS_FILE=str(path), KAFKA_SASL_USERNAME="other")
    assert "set KAFKA_CREDENTIALS_FILE or KAFKA_SASL_USERNAME" in _refusal(capsys)


# -- TLS ------------------------------------------------------------------------------------


def _ca_file(tmp_path: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spine test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_sasl_ssl_verifies_the_broker_against_the_ca_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _sasl(monkeypatch, "SASL_SSL")
    _env(monkeypatch, KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD=SECRET)
    _env(monkeypatch, KAFKA_SSL_CAFILE=str(_ca_file(tmp_path)))
    kwargs = load_settings(KafkaSettings, _env_file=None).kafka_security.client_kwargs()
    context = kwargs["ssl_context"]
    assert kwargs["security_protocol"] == "SASL_SSL" and isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert subjects == [{"commonName": "spine test CA"}]


def test_a_ca_file_without_tls_or_that_is_no_ca_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD=SECRET)
    _env(monkeypatch, KAFKA_SSL_CAFILE=str(_ca_file(tmp_path)))
    assert "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT uses no TLS" in _refusal(capsys)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    _sasl(monkeypatch, "SSL")
    monkeypatch.delenv("KAFKA_SASL_USERNAME")
    monkeypatch.delenv("KAFKA_SASL_PASSWORD")
    _env(monkeypatch, KAFKA_SSL_CAFILE=str(junk))
    assert f"KAFKA_SSL_CAFILE={junk}: not a readable CA file" in _refusal(capsys)


def test_ssl_without_a_ca_file_trusts_the_system_store() -> None:
    kwargs = KafkaSecurity(security_protocol="SSL").client_kwargs()
    assert kwargs["security_protocol"] == "SSL" and "sasl_mechanism" not in kwargs
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED


# -- the models themselves ------------------------------------------------------------------


def test_no_repr_or_traceback_carries_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    security = KafkaSecurity(
        security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password=SecretStr(SECRET)
    )
    config = KafkaConfig("k:9092", security=security)
    assert SECRET not in repr(security) and SECRET not in repr(config)
    # a rule across fields reports the model's input: hidden, so the env's values stay out
    _env(monkeypatch, KAFKA_SASL_PASSWORD=SECRET)
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(_env_file=None)  # type: ignore[call-arg]
    assert SECRET not in str(caught.value)


def test_the_resolved_model_refuses_an_incoherent_mix_too() -> None:
    with pytest.raises(ValidationError, match="needs a username"):
        KafkaSecurity(security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="sends none"):
        KafkaSecurity(sasl_username="u", sasl_password=SecretStr(SECRET))
    with pytest.raises(ValidationError, match="uses no TLS"):
        KafkaSecurity(ssl_cafile=Path("/ca.pem"))
    assert hash(KafkaConfig("k:9092", security=KafkaSecurity()))  # still a frozen value


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT")  # ignored: not in the mapping
    assert KafkaSecurity.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1"}) == KafkaSecurity()
    given = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"}
    with pytest.raises(ValidationError, match="needs a password"):
        KafkaSecurity.from_env(given)
    given["KAFKA_SASL_PASSWORD"] = SECRET
    assert KafkaSecurity.from_env(given).sasl_username == "u"


def test_a_standalone_settings_model_reads_the_same_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD=SECRET)
    standalone = KafkaSecuritySettings(_env_file=None).kafka_security  # type: ignore[call-arg]
    assert standalone == KafkaSettings(_env_file=None).kafka_security  # type: ignore[call-arg]


def test_an_agent_from_the_environment_connects_as_its_principal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _credentials(tmp_path, {"username": "agent-echo", "password": SECRET})
    _sasl(monkeypatch)
    _env(monkeypatch, KAFKA_CREDENTIALS_FILE=str(path))
    settings = load_settings(AgentSettings, _env_file=None)
    cfg = KafkaConfig.from_settings(settings, client_id="agent-echo")
    assert cfg.security.client_kwargs()["sasl_plain_username"] == "agent-echo"
