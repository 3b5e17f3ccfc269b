"""The relay signs each call to an HTTP agent (docs/agents.md, "Verifying the relay's calls").

An agent's endpoint answers anyone who reaches it; the signature lets it tell AI Spine's
calls from anyone else's without a per-agent secret on the bus: the relay holds one
Ed25519 key (:mod:`.keyfile`), every agent author gets its public key. Each call — every
``POST /execute`` attempt and every ``GET /health`` probe — carries::

    X-Spine-Agent-Id:  <agent id>
    X-Spine-Timestamp: <Unix seconds>
    X-Spine-Key-Id:    <first 16 hex digits of SHA-256(raw public key)>
    X-Spine-Signature: <base64 Ed25519 signature of spine_agent.signature.signed_message>

The same key signs what the relay writes on the bus for the HTTP agents it serves — their
results and heartbeats (:attr:`RelaySigner.bus`, :mod:`spine_contracts.signing`): the
operator records its public key with ``spine-admin issue-agent relay``, and the
orchestrator and the registry accept an HTTP agent's messages only with that signature.

The signed bytes are defined once, in :func:`spine_agent.signature.signed_message`, which
the SDK's :func:`~spine_agent.http.verify_relay_signature` checks against. A retry is signed
again, so its timestamp is fresh.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spine_agent.signature import (
    AGENT_ID_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    key_id,
    signed_message,
)
from spine_contracts.signing import Signer

#: Headers for one request body: what :meth:`RelaySigner.for_agent` hands the delivery.
Sign = Callable[[bytes], dict[str, str]]
Clock = Callable[[], float]


class RelaySigner:
    """Signs request bodies with the relay's key; knows nothing of HTTP or files."""

    def __init__(self, key: Ed25519PrivateKey, clock: Clock = time.time) -> None:
        self._key = key
        self._clock = clock
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key_b64 = base64.b64encode(raw).decode()
        self.key_id = key_id(raw)
        #: signs the relay's records on the bus (results, heartbeats) with the same key
        self.bus = Signer(key)

    def headers(self, agent_id: str, body: bytes) -> dict[str, str]:
        stamp = int(self._clock())
        signature = self._key.sign(signed_message(stamp, agent_id, body))
        return {
            AGENT_ID_HEADER: agent_id,
            TIMESTAMP_HEADER: str(stamp),
            KEY_ID_HEADER: self.key_id,
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        }

    def for_agent(self, agent_id: str) -> Sign:
        def sign(body: bytes) -> dict[str, str]:
            return self.headers(agent_id, body)

        return sign
