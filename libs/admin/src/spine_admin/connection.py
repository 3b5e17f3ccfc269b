"""The operator's connection: confluent-kafka's ``AdminClient`` logged in as a super user.

aiokafka's admin client has neither SCRAM credentials nor ACLs, so spine-admin talks to the
broker through confluent-kafka (librdkafka, bundled in its wheels). Its login comes from
the same variables as every client's (docs/security.md): ``KAFKA_SECURITY_PROTOCOL``
(default here ``SASL_PLAINTEXT``: spine-admin has nothing to do on an unsecured broker),
``KAFKA_SASL_MECHANISM``, and ``KAFKA_CREDENTIALS_FILE`` or ``KAFKA_SASL_USERNAME`` with
``KAFKA_SASL_PASSWORD``/``KAFKA_SASL_PASSWORD_FILE``; with none of them, the admin's file in
``SPINE_KAFKA_CREDENTIALS_DIR`` (``.spine/credentials/admin.json``). :func:`login_from_env`
reads a subset of ``spine_kafka.security``'s rules; when that model is on this branch, it
replaces this function (one settings model for every client).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from . import credentials as creds

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class Login:
    """How a client proves who it is; field names as ``spine_kafka.security.KafkaSecurity``."""

    security_protocol: str = "SASL_PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, credentials: creds.Credentials, protocol: str = "SASL_PLAINTEXT") -> Login:
        return cls(protocol, "SCRAM-SHA-512", credentials.username, credentials.password)

    def librdkafka(self) -> dict[str, str]:
        """The login as librdkafka settings."""
        config = {"security.protocol": self.security_protocol.lower()}
        if self.security_protocol in SASL_PROTOCOLS:
            if not self.sasl_username or not self.sasl_password:
                raise creds.CredentialsError(
                    f"{self.security_protocol} needs a username and password"
                )
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password
        return config


def credentials_dir(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("SPINE_KAFKA_CREDENTIALS_DIR") or creds.DEFAULT_DIR)


def login_from_env(env: Mapping[str, str] = os.environ) -> Login:
    protocol = env.get("KAFKA_SECURITY_PROTOCOL") or "SASL_PLAINTEXT"
    mechanism = env.get("KAFKA_SASL_MECHANISM") or "SCRAM-SHA-512"
    if protocol not in SASL_PROTOCOLS:
        return Login(protocol, mechanism)
    if env.get("KAFKA_CREDENTIALS_FILE"):
        found = creds.read(Path(env["KAFKA_CREDENTIALS_FILE"]))
        return Login(protocol, mechanism, found.username, found.password)
    if env.get("KAFKA_SASL_USERNAME"):
        password = env.get("KAFKA_SASL_PASSWORD")
        if env.get("KAFKA_SASL_PASSWORD_FILE"):
            text = Path(env["KAFKA_SASL_PASSWORD_FILE"]).read_text(encoding="utf-8")
            password = text.removesuffix("\n")
        return Login(protocol, mechanism, env["KAFKA_SASL_USERNAME"], password)
    found = creds.read(creds.path_for(credentials_dir(env), "admin"))
    return Login(protocol, mechanism, found.username, found.password)


class LoginFailed(RuntimeError):
    """The broker refused the login, or did not answer: said once, not retried forever."""


#: librdkafka retries a refused login every few milliseconds and logs each attempt; its
#: log goes here (debug), and the reason reaches the caller as :class:`LoginFailed`.
_librdkafka_log = logging.getLogger("spine_admin.librdkafka")
_librdkafka_log.addHandler(logging.NullHandler())  # silent unless the app configures logging


@dataclass
class Broker:
    """An admin connection, checked at once, and the timeout of its calls (seconds)."""

    bootstrap_servers: str
    login: Login
    timeout_s: float = 30.0
    connect_timeout_s: float = 15.0
    client: AdminClient = field(init=False, repr=False)
    _errors: list[KafkaError] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": "spine-admin",
            "error_cb": self._errors.append,
            "logger": _librdkafka_log,
            **self.login.librdkafka(),
        }
        self.client = AdminClient(config)
        self._check()

    def _check(self) -> None:
        """Fail within seconds, with the broker's reason, when the login does not work."""
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self.client.list_topics(timeout=1.0)
                return
            except KafkaException as exc:
                self.client.poll(0)  # serves error_cb
                if self._refused() or time.monotonic() > deadline:
                    reason = self._refused() or str(exc)
                    who = self.login.sasl_username or "no login"
                    raise LoginFailed(
                        f"cannot use the broker at {self.bootstrap_servers} as {who} "
                        f"({self.login.security_protocol}): {reason}"
                    ) from None

    def _refused(self) -> str | None:
        for err in self._errors:
            if err.code() == KafkaError._AUTHENTICATION:
                return str(err.str())
        return None
