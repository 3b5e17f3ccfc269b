"""How a Kafka client proves who it is: one model for every producer, consumer and admin client.

DESIGN §12 puts every service and every agent on the bus as its own SASL/SCRAM principal, so
the security settings cannot be a detail of one service: the agent SDK needs them without
servicekit, the tests and the bench need them as much as the gateway does. Two models:

* :class:`KafkaSecuritySettings` reads the environment (``KAFKA_SECURITY_PROTOCOL``,
  ``KAFKA_SASL_*``, ``KAFKA_CREDENTIALS_FILE``, ``KAFKA_SSL_CAFILE``), reads the secret files
  once at start-up and refuses an incoherent mix with a message that names the variables —
  never a client that retries a broker it can never log in to. ``KafkaSettings`` (and so
  every service's and agent's settings) inherits it;
* :class:`KafkaSecurity` is the resolved result, with no file paths left: what
  ``KafkaConfig`` embeds, and :meth:`KafkaSecurity.client_kwargs` is the one place that turns
  it into aiokafka's arguments.

The credentials file (``KAFKA_CREDENTIALS_FILE``, written 0600 under ``.spine/`` per
principal) is a JSON object with exactly two strings::

    {"username": "agent-echo", "password": "…"}

JSON because a password may hold any character: a Java properties file would need escapes
for ``\\``, ``:``, ``=`` and leading spaces, and ``json.dumps`` writes it right every time.
``PLAINTEXT`` stays the default, so nothing changes until the environment says otherwise.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "SASL_PROTOCOLS",
    "SECURITY_ENV",
    "TLS_PROTOCOLS",
    "KafkaSecurity",
    "KafkaSecuritySettings",
    "SaslMechanism",
    "SecurityProtocol",
    "read_credentials_file",
]

SecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"]
#: SCRAM-SHA-512 is DESIGN §12's; PLAIN only for a listener that is not ours
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
SASL_PROTOCOLS: frozenset[str] = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS: frozenset[str] = frozenset({"SASL_SSL", "SSL"})

#: every variable this module reads; what a test harness passes on to its child processes
SECURITY_ENV = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_CREDENTIALS_FILE",
    "KAFKA_SSL_CAFILE",
)


class KafkaSecurity(BaseModel):
    """Resolved client security: the protocol, and the SASL identity when it needs one.

    Coherent by construction: a SASL protocol has a username and a password, the others have
    neither; a CA file only where there is TLS. Hashable, so ``KafkaConfig`` stays a frozen
    value; the password never shows in a ``repr``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

    @model_validator(mode="after")
    def _coherent(self) -> KafkaSecurity:
        protocol = self.security_protocol
        if protocol in SASL_PROTOCOLS:
            if not self.sasl_username:
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs a username: set "
                    "KAFKA_CREDENTIALS_FILE, or KAFKA_SASL_USERNAME with KAFKA_SASL_PASSWORD "
                    "(or KAFKA_SASL_PASSWORD_FILE)"
                )
            if self.sasl_password is None or not self.sasl_password.get_secret_value():
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs a password for "
                    f"{self.sasl_username!r}: set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE"
                )
        elif self.sasl_username is not None or self.sasl_password is not None:
            raise ValueError(
                f"SASL credentials are set but KAFKA_SECURITY_PROTOCOL={protocol} sends none: "
                "set KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT (or SASL_SSL), or drop the credentials"
            )
        if self.ssl_cafile is not None and protocol not in TLS_PROTOCOLS:
            raise ValueError(
                f"KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS "
                "(SASL_SSL or SSL do)"
            )
        return self

    @property
    def sasl(self) -> bool:
        return self.security_protocol in SASL_PROTOCOLS

    def describe(self) -> str:
        """For logs: the protocol and the principal, never the password."""
        if not self.sasl:
            return self.security_protocol
        return f"{self.security_protocol}/{self.sasl_mechanism} as {self.sasl_username}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context (the CA file, else the system's trust store), or None."""
        if self.security_protocol not in TLS_PROTOCOLS:
            return None
        # the stdlib's default: verifies the certificate and the host name
        return ssl.create_default_context(cafile=self.ssl_cafile)

    def client_kwargs(self) -> dict[str, Any]:
        """The arguments every aiokafka producer, consumer and admin client takes from here."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl:
            assert self.sasl_password is not None  # _coherent
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        return options

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSecurity:
        """From a mapping of variables (a test harness's or the bench's merged env files)
        rather than the process environment; the same rules and messages."""
        values = {name: env[name] for name in SECURITY_ENV if env.get(name)}
        return _MappingSecuritySettings(**values).kafka_security  # type: ignore[arg-type]


class KafkaSecuritySettings(BaseSettings):
    """The environment's side: where each value comes from, checked once at start-up.

    A SASL identity comes from one place: ``KAFKA_CREDENTIALS_FILE``, or
    ``KAFKA_SASL_USERNAME`` with ``KAFKA_SASL_PASSWORD`` or ``KAFKA_SASL_PASSWORD_FILE`` —
    two would leave a reader guessing which one won.
    """

    # hide_input_in_errors: a traceback's message never carries the environment's values (a
    # rule across fields would print them all, passwords and API_KEY of subclasses included)
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    kafka_security_protocol: SecurityProtocol = Field("PLAINTEXT", alias="KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: SaslMechanism = Field("SCRAM-SHA-512", alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(None, alias="KAFKA_SASL_USERNAME", min_length=1)
    kafka_sasl_password: SecretStr | None = Field(None, alias="KAFKA_SASL_PASSWORD")
    kafka_sasl_password_file: Path | None = Field(None, alias="KAFKA_SASL_PASSWORD_FILE")
    kafka_credentials_file: Path | None = Field(None, alias="KAFKA_CREDENTIALS_FILE")
    kafka_ssl_cafile: Path | None = Field(None, alias="KAFKA_SSL_CAFILE")

    _kafka_security: KafkaSecurity | None = PrivateAttr(None)

    @field_validator(
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_sasl_password_file",
        "kafka_credentials_file",
        "kafka_ssl_cafile",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose's `${KAFKA_SASL_USERNAME:-}` sets an empty variable; Path("") would be "."
        return None if value == "" else value

    @model_validator(mode="after")
    def _resolve_security(self) -> KafkaSecuritySettings:
        username, password = self._identity()
        try:
            resolved = KafkaSecurity(
                security_protocol=self.kafka_security_protocol,
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_username=username,
                sasl_password=password,
                ssl_cafile=self.kafka_ssl_cafile,
            )
        except ValidationError as exc:  # its messages without its inputs (the password)
            raise ValueError("; ".join(_messages(exc))) from None
        if resolved.ssl_cafile is not None:
            try:
                resolved.ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"KAFKA_SSL_CAFILE={resolved.ssl_cafile}: not a readable CA file ({exc})"
                ) from None
        self._kafka_security = resolved
        return self

    def _identity(self) -> tuple[str | None, SecretStr | None]:
        direct = self.kafka_sasl_username is not None or self.kafka_sasl_password is not None
        if self.kafka_sasl_password is not None and self.kafka_sasl_password_file is not None:
            raise ValueError("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both")
        if self.kafka_credentials_file is not None:
            if direct or self.kafka_sasl_password_file is not None:
                raise ValueError(
                    "set KAFKA_CREDENTIALS_FILE or KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD"
                    "(_FILE), not both"
                )
            return read_credentials_file(self.kafka_credentials_file)
        password = self.kafka_sasl_password
        if self.kafka_sasl_password_file is not None:
            password = SecretStr(_read_password_file(self.kafka_sasl_password_file))
        return self.kafka_sasl_username, password

    @property
    def kafka_security(self) -> KafkaSecurity:
        """The resolved security (files read at start-up, never again)."""
        assert self._kafka_security is not None  # set by the validator
        return self._kafka_security


class _MappingSecuritySettings(KafkaSecuritySettings):
    """Reads only what it is given: :meth:`KafkaSecurity.from_env`."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _CredentialsFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, hide_input_in_errors=True)

    username: str = Field(min_length=1)
    password: SecretStr = Field(min_length=1)


def read_credentials_file(path: Path) -> tuple[str, SecretStr]:
    """``(username, password)`` from a credentials file; a clear error, never its content."""
    where = f"KAFKA_CREDENTIALS_FILE={path}"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except ValueError:
        raise ValueError(
            f'{where}: not JSON; expected {{"username": "...", "password": "..."}}'
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(
            f'{where}: expected a JSON object {{"username": "...", "password": "..."}}'
        )
    try:
        parsed = _CredentialsFile.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(
            f'{where}: expected {{"username": "...", "password": "..."}}: '
            + "; ".join(_messages(exc))
        ) from None
    return parsed.username, parsed.password


def _read_password_file(path: Path) -> str:
    where = f"KAFKA_SASL_PASSWORD_FILE={path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    password = text.removesuffix("\n").removesuffix("\r")  # `echo secret > file` adds one
    if not password:
        raise ValueError(f"{where}: the file is empty")
    return password


def _messages(exc: ValidationError) -> list[str]:
    """Each error's location and message, never its input (which may be the password)."""
    out = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        out.append(f"{where}: {msg}" if where else msg)
    return out
