"""The operator's connection: confluent-kafka's ``AdminClient`` logged in as a super user.

aiokafka's admin client has neither SCRAM credentials nor ACLs, so spine-admin talks to the
broker through confluent-kafka (librdkafka, bundled in its wheels). Its login is the one
settings model of every client (``spine_kafka.security.KafkaSecurity``, from
``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_CREDENTIALS_FILE``...: docs/security.md), here the
admin's (``.spine/credentials/admin.json`` locally, which ``.spine/infra.env`` names).
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
from spine_kafka.security import KafkaSecurity

from . import credentials as creds


def librdkafka_login(security: KafkaSecurity) -> dict[str, str]:
    """The client login (``spine_kafka.security``, one model for every client) as
    librdkafka settings."""
    config = {"security.protocol": security.security_protocol.lower()}
    if security.sasl:
        assert security.sasl_username and security.sasl_password  # KafkaSecurity checks
        config["sasl.mechanism"] = security.sasl_mechanism
        config["sasl.username"] = security.sasl_username
        config["sasl.password"] = security.sasl_password.get_secret_value()
    if security.ssl_cafile is not None:
        config["ssl.ca.location"] = str(security.ssl_cafile)
    return config


def credentials_dir(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("SPINE_KAFKA_CREDENTIALS_DIR") or creds.DEFAULT_DIR)


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
    login: KafkaSecurity
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
            **librdkafka_login(self.login),
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
                    who = self.login.describe()
                    raise LoginFailed(
                        f"cannot use the broker at {self.bootstrap_servers} ({who}): {reason}"
                    ) from None

    def _refused(self) -> str | None:
        for err in self._errors:
            if err.code() == KafkaError._AUTHENTICATION:
                return str(err.str())
        return None
