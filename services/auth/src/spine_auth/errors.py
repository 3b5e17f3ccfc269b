"""The auth service's errors, and the error codes its gateway replies carry.

A refused command is not an exception here: the domain records it as an event
(``CreditsRejected``, ``AuthCommandRejected``) and answers the gateway with a code. The
exceptions are for what must not be decided at all::

    AuthError
    ├── UnsupportedCommand   a message that is not an auth command reached decide()
    ├── MisroutedCommand     a command's key or partition does not match its user_id
    ├── NotCoPartitioned     the commands and events topics differ in partition count
    └── StateRebuildFailed   the auth events of a partition could not be folded
"""

from __future__ import annotations

from typing import Final


class AuthError(Exception):
    """Base of the auth service's errors."""


class UnsupportedCommand(AuthError):
    """``decide`` was given a message that is not one of the auth commands."""


class MisroutedCommand(AuthError):
    """A command is not on the partition its user_id hashes to, or its key is not the user_id.

    Deciding it would put the user's state on one partition and its events on another,
    so a rebuild would miss them: such a command is dead-lettered instead.
    """


class NotCoPartitioned(AuthError):
    """``spine.auth.commands`` and ``spine.auth.events`` must have the same partition count."""


class StateRebuildFailed(AuthError):
    """An auth event in the log could not be decoded; the partition cannot be decided on."""


class ErrorCode:
    """``GatewayReply.error_code`` values (the gateway maps them to HTTP statuses)."""

    USER_EXISTS: Final = "USER_EXISTS"  # 409
    USER_NOT_FOUND: Final = "USER_NOT_FOUND"  # 404
    INSUFFICIENT_CREDITS: Final = "INSUFFICIENT_CREDITS"  # 402
    QUEUE_FULL: Final = "QUEUE_FULL"  # 503 with Retry-After: too many executions wait
    RESERVATION_WITHDRAWN: Final = "RESERVATION_WITHDRAWN"  # 409: the execution was cancelled
    RESERVATION_NOT_FOUND: Final = "RESERVATION_NOT_FOUND"  # 404
    KEY_NOT_FOUND: Final = "KEY_NOT_FOUND"  # 404
    KEY_LIMIT_REACHED: Final = "KEY_LIMIT_REACHED"  # 409: revoke one first
    KEY_EXISTS: Final = "KEY_EXISTS"  # 409: a key id is used once
    INVALID_KEY_REQUEST: Final = "INVALID_KEY_REQUEST"  # 422: e.g. an admin key for a user
