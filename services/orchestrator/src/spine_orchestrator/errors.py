"""The orchestrator's errors, and the error codes the flow catalogue's replies carry.

A refused flow write is not an exception: the catalogue records it on ``spine.audit`` and
answers the gateway with a code. The exceptions are for what must not be decided at all::

    OrchestratorError
    ├── UnsupportedCommand   a message that is not a flow command reached the writer
    └── MisroutedCommand     a flow command whose key is not its flow_id
"""

from __future__ import annotations

from typing import Final


class OrchestratorError(Exception):
    """Base of the orchestrator's errors."""


class UnsupportedCommand(OrchestratorError):
    """``flow_catalog.decide`` was given a message that is not a flow command."""


class MisroutedCommand(OrchestratorError):
    """A flow command keyed by something else than its flow_id: another flow's commands
    would not be ordered with it, so it is dead-lettered rather than decided."""


class FlowErrorCode:
    """``GatewayReply.error_code`` of a refused flow write (the gateway maps them to HTTP)."""

    FLOW_EXISTS: Final = "FLOW_EXISTS"  # 409: create on an id that is live
    FLOW_ID_TAKEN: Final = "FLOW_ID_TAKEN"  # 409: another user's id (or a file on a user's)
    NOT_OWNER: Final = "NOT_OWNER"  # 403: a user changing a system flow
    FLOW_NOT_FOUND: Final = "FLOW_NOT_FOUND"  # 404: no such flow, or another user's
    INVALID_FLOW: Final = "INVALID_FLOW"  # 422: the definition names another flow_id
    #: a deleted file whose flow is defined elsewhere now (nobody waits for files)
    FLOW_NOT_FROM_FILE: Final = "FLOW_NOT_FROM_FILE"
