"""The registry's errors, and the error codes of its answers to the gateway.

RegistryError
└── RegistrationRefused   a register/deregister the catalogue does not accept; ``code``
                          says why, for the gateway's status (422, 409, 403, 404)
"""

from __future__ import annotations

from typing import Final


class RegistryErrorCode:
    """``GatewayReply.error_code`` of a refused registry command (the gateway maps them)."""

    INVALID_AGENT: Final = "INVALID_AGENT"  # 422: not servable as given (type, endpoint)
    AGENT_ID_TAKEN: Final = "AGENT_ID_TAKEN"  # 409: the id belongs to another owner
    NOT_OWNER: Final = "NOT_OWNER"  # 403: a user changing a system agent
    AGENT_NOT_FOUND: Final = "AGENT_NOT_FOUND"  # 404: no such agent, or another user's


class RegistryError(Exception):
    """Base of the registry's errors."""


class RegistrationRefused(RegistryError):
    """A ``RegisterAgent`` or ``DeregisterAgent`` the catalogue does not accept; the message
    says why (it is logged, dead-lettered and sent to the gateway)."""

    def __init__(self, reason: str, code: str = RegistryErrorCode.INVALID_AGENT) -> None:
        super().__init__(reason)
        self.code = code
