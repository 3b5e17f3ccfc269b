"""SCRAM-SHA-512 credentials of a principal, through ``AlterUserScramCredentials``.

The broker stores only a salted hash (RFC 5802); librdkafka computes it from the password
we hand it. 8192 iterations: twice Kafka's minimum, a few milliseconds per client login.
"""

from __future__ import annotations

import secrets

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from .connection import Broker
from .credentials import Credentials

ITERATIONS = 8192


def upsert(broker: Broker, credentials: Credentials) -> None:
    """Create or replace the user's SCRAM-SHA-512 credential (a new salt each time)."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS)
    alteration = UserScramCredentialUpsertion(
        credentials.username, info, credentials.password.encode()
    )
    futures = broker.client.alter_user_scram_credentials(
        [alteration], request_timeout=broker.timeout_s
    )
    futures[credentials.username].result(timeout=broker.timeout_s)


def revoke(broker: Broker, username: str) -> bool:
    """Make the user's SCRAM-SHA-512 credential useless; False when it had none.

    The credential is replaced by one whose password nobody holds, never deleted: Kafka
    4.1.2 loses EVERY SCRAM credential (the admin's and the broker's included) at the next
    broker start when the metadata log holds a credential deletion — replaying the log, a
    deletion can empty the mechanism's user map, which is then dropped while later users
    are still being added to it (reproduced: 30 users added and deleted, restart, nobody
    logs in). A replaced credential writes no deletion, so a restart keeps every login.
    """
    if not exists(broker, username):
        return False
    upsert(broker, Credentials(username, secrets.token_urlsafe(48)))
    return True


def exists(broker: Broker, username: str) -> bool:
    future = broker.client.describe_user_scram_credentials(
        [username], request_timeout=broker.timeout_s
    )
    assert isinstance(future, dict)
    try:
        future[username].result(timeout=broker.timeout_s)
    except KafkaException as exc:
        if _code(exc) == KafkaError.RESOURCE_NOT_FOUND:
            return False
        raise
    return True


def _code(exc: KafkaException) -> int | None:
    err = exc.args[0] if exc.args else None
    return err.code() if isinstance(err, KafkaError) else None
