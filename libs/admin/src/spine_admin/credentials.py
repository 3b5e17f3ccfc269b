"""Credentials files: one per principal, ``<dir>/<principal>.json``, 0600 in a 0700 directory.

The format is the one every Kafka client reads through ``KAFKA_CREDENTIALS_FILE``
(``spine_kafka.security``): a JSON object with exactly two strings,
``{"username": "...", "password": "..."}``. JSON because a password may hold any character;
the protocol (``KAFKA_SECURITY_PROTOCOL``) and mechanism (SCRAM-SHA-512) are the
installation's, not the principal's, so they are not in the file. scripts/kafka_config.py
writes the broker's own three (admin, broker, controller) the same way.

0600 keeps other OS users out; any process of the same user can read the file
(docs/security.md says so). A password is made once and kept: issuing again reuses it,
so a running process never loses its login.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from spine_kafka.security import read_credentials_file

DEFAULT_DIR = Path(".spine/credentials")


class CredentialsError(RuntimeError):
    """A credentials file that cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def to_json(self) -> str:
        return json.dumps({"username": self.username, "password": self.password}) + "\n"


def path_for(directory: Path, principal: str) -> Path:
    return directory / f"{principal}.json"


def read(path: Path) -> Credentials:
    """A credentials file's content, read by the one reader every client uses
    (``spine_kafka.security.read_credentials_file``); the error never shows it."""
    try:
        username, password = read_credentials_file(path)
    except ValueError as exc:
        raise CredentialsError(str(exc)) from None
    return Credentials(username, password.get_secret_value())


def write(path: Path, credentials: Credentials) -> None:
    """Atomically, 0600 from the first byte, in a 0700 directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(credentials.to_json())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_or_create(directory: Path, principal: str) -> tuple[Credentials, bool]:
    """The principal's credentials, made (with a random password) when missing.

    Returns ``(credentials, created)``. An existing file must name the principal."""
    path = path_for(directory, principal)
    if path.exists():
        found = read(path)
        if found.username != principal:
            raise CredentialsError(f"{path} names {found.username!r}, not {principal!r}")
        os.chmod(path, 0o600)
        return found, False
    made = Credentials(principal, secrets.token_urlsafe(32))
    write(path, made)
    return made, True


def delete(directory: Path, principal: str) -> bool:
    path = path_for(directory, principal)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
