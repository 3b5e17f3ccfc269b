"""Errors raised while decoding messages.

    ContractError
    ├── UndecodableMessage   bytes that are not a JSON object
    ├── UnknownMessageType   a ``type`` no model claims
    ├── UnsupportedVersion   a ``version`` newer than this reader knows
    └── InvalidMessage       a known type whose fields fail validation

Consumers turn any of them into a dead letter and move on.
"""

from __future__ import annotations


class ContractError(ValueError):
    """Base of every decoding failure."""


class UndecodableMessage(ContractError):
    pass


class UnknownMessageType(ContractError):
    pass


class UnsupportedVersion(ContractError):
    pass


class InvalidMessage(ContractError):
    pass
