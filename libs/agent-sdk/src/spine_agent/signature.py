"""The relay's request signature (docs/agents.md, "Verifying the relay's calls").

An HTTP agent's endpoint is reachable by anyone who can reach it, so the relay signs each
``POST /execute`` and ``GET /health`` with its own Ed25519 key and an agent checks the
signature against the relay's public key: a call that verifies comes from AI Spine, was
made for this agent, carries exactly this body and is recent. Nothing per agent is secret,
so no secret travels on the bus.

The signed bytes (:func:`signed_message`, format ``v1``)::

    b"spine-relay-v1\\n" + timestamp + b"\\n" + agent_id + b"\\n" + body

``timestamp`` is the decimal Unix time in seconds (``X-Spine-Timestamp``), ``agent_id``
the id the agent is registered under, ``body`` the exact request bytes (empty for
``GET /health``). Agent ids and timestamps contain no newline, so the parts cannot be
shifted into one another.

This module is pure apart from :func:`load_public_key` and :func:`verify_relay_signature`,
which need ``cryptography`` — a dependency of the SDK (every Kafka-native agent signs what
it publishes); the extra ``relay-signature`` that once brought it still installs. The
relay builds its headers with the same :func:`signed_message`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

#: The request headers the relay sets (HTTP header names are case-insensitive).
AGENT_ID_HEADER = "X-Spine-Agent-Id"
TIMESTAMP_HEADER = "X-Spine-Timestamp"
KEY_ID_HEADER = "X-Spine-Key-Id"
SIGNATURE_HEADER = "X-Spine-Signature"
SIGNATURE_HEADERS = (AGENT_ID_HEADER, TIMESTAMP_HEADER, KEY_ID_HEADER, SIGNATURE_HEADER)

#: The first line of the signed bytes; a new format gets a new one.
VERSION_TAG = b"spine-relay-v1"
#: How far a call's timestamp may be from the verifier's clock, either way (seconds).
DEFAULT_MAX_SKEW_S = 300.0

_EXTRA_HINT = (
    "verifying the relay's signature needs the 'cryptography' package, a dependency of "
    "spine-agent-sdk: pip install 'cryptography>=44'"
)


class RelaySignatureError(ValueError):
    """The call is not a valid relay call; the message says why (for the agent's log and
    its 401 answer: it names what failed, never a key)."""


def signed_message(timestamp: int | str, agent_id: str, body: bytes) -> bytes:
    """The bytes the relay signs for a call to ``agent_id`` at ``timestamp``."""
    stamp = str(timestamp)
    if not (stamp.isascii() and stamp.isdigit()):
        raise ValueError(f"timestamp {stamp!r} is not a decimal number of seconds")
    if "\n" in agent_id or "\r" in agent_id:
        raise ValueError("an agent id contains no line break")
    return b"\n".join((VERSION_TAG, stamp.encode(), agent_id.encode(), body))


def key_id(raw_public_key: bytes) -> str:
    """A short, stable name of a public key (``X-Spine-Key-Id``): the first 16 hex digits of
    the SHA-256 of its 32 raw bytes, so a rotated key is told apart in logs and headers."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def load_public_key(value: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """The relay's public key from what an agent author has: the PEM of
    ``spine-relay public-key`` (or ``<key file>.pub``), the base64 of its 32 raw bytes (the
    ``public_key`` of the relay's ``relay_signing_key`` log line), the raw bytes, or the
    key object itself."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(_EXTRA_HINT) from exc

    if isinstance(value, Ed25519PublicKey):
        return value
    data = value.encode() if isinstance(value, str) else bytes(value)
    if data.lstrip().startswith(b"-----BEGIN"):
        key = load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"the PEM holds a {type(key).__name__}, not an Ed25519 public key")
        return key
    if len(data) != 32:
        try:
            data = base64.b64decode(data.strip(), validate=True)
        except binascii.Error as exc:
            raise ValueError("not a PEM, nor the base64 of a 32-byte Ed25519 key") from exc
    if len(data) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(data)}")
    return Ed25519PublicKey.from_public_bytes(data)


def _header(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value.strip()
    raise RelaySignatureError(f"missing header {name}")


def verify_relay_signature(
    public_key: Ed25519PublicKey | bytes | str,
    headers: Mapping[str, str],
    body: bytes,
    agent_id: str,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
    *,
    now: float | None = None,
) -> None:
    """Return when ``headers`` carry the relay's valid signature of ``body`` for
    ``agent_id`` made within ``max_skew_s`` of ``now``; raise :class:`RelaySignatureError`
    naming why not otherwise.

    ``headers`` is any mapping of the request's headers (FastAPI/Starlette's
    ``request.headers``, a dict...), ``body`` the raw bytes as received, before any JSON
    parsing, and ``agent_id`` this agent's own registered id (not the header's: a call
    signed for another agent must fail). Within the window a captured call can be sent
    again; an agent that must not run one twice remembers the body's
    ``input.context.idempotency_key`` (also the ``Idempotency-Key`` header) for that long.
    """
    key = load_public_key(public_key)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    signature_text = _header(headers, SIGNATURE_HEADER)
    stamp = _header(headers, TIMESTAMP_HEADER)
    claimed_agent = _header(headers, AGENT_ID_HEADER)
    if claimed_agent != agent_id:
        raise RelaySignatureError(f"signed for agent {claimed_agent!r}, not {agent_id!r}")
    if not (stamp.isascii() and stamp.isdigit()):
        raise RelaySignatureError(f"{TIMESTAMP_HEADER} {stamp!r} is not Unix seconds")
    skew = (time.time() if now is None else now) - int(stamp)
    if abs(skew) > max_skew_s:
        when = "old" if skew > 0 else "in the future"
        raise RelaySignatureError(
            f"{TIMESTAMP_HEADER} is {abs(skew):.0f}s {when} (more than {max_skew_s:g}s)"
        )
    expected_id = key_id(key.public_bytes(Encoding.Raw, PublicFormat.Raw))
    claimed_id = next(
        (v.strip() for k, v in headers.items() if k.lower() == KEY_ID_HEADER.lower()), None
    )
    if claimed_id is not None and claimed_id != expected_id:
        raise RelaySignatureError(
            f"signed with key {claimed_id!r}, not the relay key {expected_id!r} this agent "
            "trusts (was the relay's key rotated?)"
        )
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except binascii.Error:
        raise RelaySignatureError(f"{SIGNATURE_HEADER} is not base64") from None
    try:
        key.verify(signature, signed_message(stamp, agent_id, body))
    except InvalidSignature:
        raise RelaySignatureError(
            "the signature does not verify (body, timestamp or agent id changed, or another key)"
        ) from None
