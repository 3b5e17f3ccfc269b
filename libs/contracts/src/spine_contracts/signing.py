"""Signed agent messages (DESIGN §12, docs/security.md "Signed agent messages").

Every record an agent writes — its results, its registration, its heartbeats — carries an
Ed25519 signature in two Kafka record headers::

    spine-sig:     base64 of the 64-byte Ed25519 signature of signed_bytes(...)
    spine-key-id:  first 16 hex digits of SHA-256(the 32 raw public-key bytes)

The signature covers the exact record value bytes, so it survives any contract version
(nothing is re-serialised to check it), plus the record key and the topic's base name
(without ``SPINE_TOPIC_PREFIX``), so a signed record cannot be replayed under another key
(another partition, another entity) or on another topic::

    b"spine-msg-v1\\n" + topic_base + b"\\n" + str(len(key)) + b"\\n" + key + value

The key's length is written before it, so no bytes can move between key and value.
Replaying the same record on the same topic stays possible; what it could do is bounded
by the readers: a result counts once per (execution, node, attempt), a heartbeat only
records liveness (docs/guarantees.md, G2 and G9).

Which key must have signed is the reader's decision, never the message's: the
orchestrator expects the key of the agent the task was sent to (the relay's for an HTTP
agent), the registry the key recorded in the agent's catalogue entry. :func:`check` says
why a record fails (:data:`Failure`), and nothing here logs or counts.

``cryptography`` is imported only by the functions that need it, so the contracts stay
installable without it (the extra ``spine-contracts[signing]``); the agent SDK, the
orchestrator, the registry and ``spine-admin`` depend on it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNATURE_HEADER: Final = "spine-sig"
KEY_ID_HEADER: Final = "spine-key-id"
#: The first line of the signed bytes; a new format gets a new tag.
VERSION_TAG: Final = b"spine-msg-v1"
#: The agent id under which ``spine-admin`` records the relay's public key: results and
#: heartbeats of HTTP agents are signed by the relay (its SPINE_RELAY_SIGNING_KEY_FILE).
RELAY_SIGNER: Final = "relay"

#: Why a record was refused, as the dead letter and ``spine_signature_failures_total`` say:
#: ``unsigned`` no signature header; ``unknown_key`` no key is recorded for the expected
#: signer (never issued, or revoked); ``wrong_key`` signed with another key than the
#: expected signer's (e.g. agent A answering a task sent to agent B); ``bad_signature`` the
#: signature is malformed or does not verify (the bytes were changed).
Failure = Literal["unsigned", "unknown_key", "wrong_key", "bad_signature"]
FAILURES: Final[tuple[Failure, ...]] = ("unsigned", "unknown_key", "wrong_key", "bad_signature")

Headers = list[tuple[str, bytes]]

_EXTRA_HINT = (
    "signing and verifying agent messages needs the 'cryptography' package "
    "(pip install 'spine-contracts[signing]')"
)


class SigningKeyError(RuntimeError):
    """A key file is missing, unreadable, not an Ed25519 private key, or cannot be written."""


class SignatureRefused(ValueError):
    """A record's signature did not check out; ``reason`` is one of :data:`FAILURES`.

    Raised by consumers so the dead letter's ``error_type`` says what kind of refusal it
    was, and its message names the expected signer (never a key)."""

    def __init__(self, reason: Failure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Failure = reason

    @classmethod
    def of(cls, reason: Failure, what: str, signer: str) -> SignatureRefused:
        """The refusal of ``what`` (a message type), which ``signer``'s key had to sign."""
        detail = {
            "unsigned": f"{what} carries no signature; {signer!r} must sign it",
            "unknown_key": f"no key is issued for {signer!r}, who must sign {what} "
            f"(spine-admin issue-agent {signer})",
            "wrong_key": f"{what} is signed with another key than {signer!r}'s",
            "bad_signature": f"the signature of {what} does not verify with {signer!r}'s key",
        }[reason]
        return cls(reason, detail)


def key_id(raw_public_key: bytes) -> str:
    """A short, stable name of a public key: the first 16 hex digits of SHA-256 of its 32
    raw bytes (the relay's HTTP signature uses the same, :mod:`spine_agent.signature`)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def signed_bytes(topic_base: str, key: bytes | None, value: bytes) -> bytes:
    """The bytes a signature covers for a record of ``value`` under ``key`` on the topic
    whose name without the namespace prefix is ``topic_base``."""
    if "\n" in topic_base:
        raise ValueError("a topic name contains no line break")
    k = key or b""
    return b"".join(
        (VERSION_TAG, b"\n", topic_base.encode(), b"\n", str(len(k)).encode(), b"\n", k, value)
    )


def topic_base(topic: str, prefix: str) -> str:
    """The topic's name without the installation's namespace prefix."""
    return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic


def decode_public_key(text: str) -> bytes:
    """The 32 raw bytes of a public key written as base64 (``IssueAgent.public_key``)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise ValueError("a public key is the base64 of 32 raw bytes") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return raw


def _crypto() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(_EXTRA_HINT) from exc


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> bytes | None:
    for k, v in headers:
        if k == name:
            return bytes(v)
    return None


def check(
    headers: Iterable[tuple[str, bytes]],
    topic_base: str,
    key: bytes | None,
    value: bytes,
    public_key: bytes | None,
) -> Failure | None:
    """Why the record is not signed by ``public_key`` (32 raw bytes; ``None``: the
    expected signer has no key), or ``None`` when it is."""
    _crypto()
    from cryptography.exceptions import InvalidSignature

    hdrs = list(headers)
    signature_b64 = _header(hdrs, SIGNATURE_HEADER)
    if signature_b64 is None:
        return "unsigned"
    if public_key is None:
        return "unknown_key"
    claimed = _header(hdrs, KEY_ID_HEADER)
    if claimed is not None and claimed.decode(errors="replace") != key_id(public_key):
        return "wrong_key"
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        _public_key(public_key).verify(signature, signed_bytes(topic_base, key, value))
    except (binascii.Error, InvalidSignature, ValueError):
        return "bad_signature"
    return None


class Signer:
    """Signs records with one Ed25519 private key (an agent's, or the relay's)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(self.public_key)
        self._key_id_header = self.key_id.encode()

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode()

    def headers(self, topic_base: str, key: bytes | None, value: bytes) -> Headers:
        """The two headers that sign ``value`` under ``key`` on ``topic_base``."""
        signature = self._key.sign(signed_bytes(topic_base, key, value))
        return [
            (SIGNATURE_HEADER, base64.b64encode(signature)),
            (KEY_ID_HEADER, self._key_id_header),
        ]

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a fresh key (tests; ``spine-admin`` writes its keys to files)."""
        _crypto()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path, setting: str = "the key file") -> Signer:
        return cls(load_private_key(path, setting))


# --- key files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFile:
    """A private key file as :func:`load_or_create_key` found or made it."""

    path: Path
    signer: Signer
    created: bool
    #: the file's permission bits let users other than its owner read or write it
    open_to_others: bool


def load_private_key(path: Path, setting: str = "the key file") -> Ed25519PrivateKey:
    """The Ed25519 private key in the unencrypted PEM at ``path``; ``setting`` names where
    the path came from in the error (e.g. ``SPINE_AGENT_SIGNING_KEY_FILE=...``)."""
    _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SigningKeyError(f"{setting} {path} does not exist") from exc
    except OSError as exc:
        raise SigningKeyError(f"{setting} {path} cannot be read: {exc}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{setting} {path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{setting} {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def _write_new(path: Path) -> bool:
    """Write a new key at ``path`` unless one appears there first; True if ours is there.

    The directory is made 0700 and the file 0600 before the key is in it (mkstemp), then
    hard-linked into place: never a half-written or world-readable key, and two processes
    issuing at once end up with the same key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    fd, tmp = tempfile.mkstemp(prefix=".signing-key-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    return True


def load_or_create_key(path: Path, setting: str = "the key file") -> KeyFile:
    """The key at ``path``, generated first when the file does not exist (blocking I/O)."""
    _crypto()
    created = False
    if not path.exists():
        try:
            created = _write_new(path)
        except OSError as exc:
            raise SigningKeyError(
                f"{setting} {path} does not exist and cannot be created: {exc}"
            ) from exc
    signer = Signer(load_private_key(path, setting))
    open_to_others = bool(path.stat().st_mode & 0o077)
    return KeyFile(path, signer, created, open_to_others)
