"""Whose signature an agent's message to the registry must carry (docs/security.md).

An agent's own registration (``RegisterAgent`` without an owner) must be signed with the
key ``spine-admin`` recorded in the agent's entry; a heartbeat with the key of whoever
speaks for the agent: the agent itself, or the relay (:data:`RELAY_SIGNER`) for an agent
whose entry says transport ``http`` — the entry decides, never the message. A gateway's
registration (it names an owner) carries no agent signature: the gateway is a service,
and which principals may write those commands is the broker's ACLs' business.

Pure apart from the signature check itself (:func:`spine_contracts.signing.check`).
"""

from __future__ import annotations

from dataclasses import dataclass

from spine_contracts import (
    AgentDeregistered,
    AgentHeartbeat,
    AgentRegistered,
    AgentStatusChanged,
    Message,
    RegisterAgent,
)
from spine_contracts.signing import RELAY_SIGNER, SignatureRefused, check, decode_public_key

from .domain import Catalog


def misrouted(message: Message, *, from_gateway: bool) -> str | None:
    """Why a registration came by the wrong road, or ``None``. Every agent may write
    ``spine.registry.commands``, so a registration naming an owner is taken only from
    ``spine.registry.requests``, which only the gateway writes; an agent's own names none."""
    if not isinstance(message, RegisterAgent):
        return None
    named = message.data.owner is not None
    if named and not from_gateway:
        return "a registration naming an owner comes from the gateway, not an agent"
    if from_gateway and not named:
        return "a registration on the gateway's topic names its owner"
    return None


def expected_signer(message: Message, catalog: Catalog) -> str | None:
    """The agent whose key must have signed ``message``; ``None``: no agent signs it."""
    if isinstance(message, RegisterAgent):
        return message.data.agent.agent_id if message.data.owner is None else None
    if isinstance(message, AgentHeartbeat):
        rec = catalog.agents.get(message.data.agent_id)
        if rec is not None and rec.registered and rec.info.transport == "http":
            return RELAY_SIGNER
        return message.data.agent_id
    return None


@dataclass
class RelayKey:
    """The relay's public key, folded from ``spine.registry.events`` by a follower: every
    registry replica needs it, whichever partition the relay's entry lives on."""

    raw: bytes | None = None

    def apply(self, message: Message, _record: object = None) -> None:
        if isinstance(message, AgentRegistered | AgentStatusChanged | AgentDeregistered):
            d = message.data
            if d.agent.agent_id == RELAY_SIGNER:
                self.raw = decode_public_key(d.public_key) if d.public_key else None


def verify(
    message: Message,
    catalog: Catalog,
    relay: RelayKey,
    headers: list[tuple[str, bytes]],
    topic_base: str,
    key: bytes | None,
    value: bytes,
) -> None:
    """Raise :class:`SignatureRefused` unless ``message`` (the record of ``value``) carries
    the signature its :func:`expected_signer` owes."""
    signer = expected_signer(message, catalog)
    if signer is None:
        return
    if signer == RELAY_SIGNER:
        public_key = relay.raw
    else:
        rec = catalog.agents.get(signer)
        public_key = rec.raw_public_key if rec is not None else None
    failure = check(headers, topic_base, key, value, public_key)
    if failure is not None:
        raise SignatureRefused.of(failure, message.type, signer)
