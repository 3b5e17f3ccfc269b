"""The gateway's WebSockets as contracts: the frames each one sends and receives, its close
codes and its auth deadline — what clients rely on, in one place, so the AsyncAPI document
is generated from it (``asyncapi.py``) and the gateway closes with exactly these codes.

A WebSocket is not a topic: these are HTTP clients' channels, under ``/api/v1`` and at the
root (the original's aliases), authenticated with an API key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

#: How long a socket opened without an ``Authorization`` header waits for its auth message.
AUTH_TIMEOUT_S: Final = 5.0


class CloseCode(IntEnum):
    """Why the gateway closed a socket: ``4000 +`` the HTTP status the same request would
    get, and the standard codes otherwise. The close reason is ``"<ERROR_CODE>: <text>"``."""

    NORMAL = 1000
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    INVALID = 4422
    TOO_MANY = 4429


CLOSE_MEANINGS: Final[dict[CloseCode, str]] = {
    CloseCode.NORMAL: "the terminal event was sent, or the client already had it",
    CloseCode.INTERNAL_ERROR: "an unexpected error of the gateway (HTTP's 500)",
    CloseCode.TRY_AGAIN_LATER: "a dependency did not answer (HTTP's 503); reconnect later",
    CloseCode.UNAUTHENTICATED: (
        "no key, an invalid or expired key, no auth message within "
        f"{AUTH_TIMEOUT_S:g} s (AUTH_TIMEOUT), or the key was revoked or expired while "
        "the socket was open (KEY_REVOKED, within a second)"
    ),
    CloseCode.FORBIDDEN: "the key lacks the scope the socket needs (FORBIDDEN_SCOPE)",
    CloseCode.NOT_FOUND: "no such execution, or another tenant's (EXECUTION_NOT_FOUND)",
    CloseCode.INVALID: "a bad query parameter (VALIDATION_ERROR)",
    CloseCode.TOO_MANY: (
        "the user's rate limit (RATE_LIMITED), or more sockets open for the key on one "
        "gateway replica than SPINE_GATEWAY_WS_MAX_PER_KEY (TOO_MANY_SOCKETS)"
    ),
}


class SocketAuth(BaseModel):
    """The first message of a socket opened without an `Authorization` header (browsers
    cannot set one on a WebSocket), within 5 s (`AUTH_TIMEOUT_S`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="SocketAuth")

    type: Literal["auth"] = "auth"
    api_key: str = Field(description="a user's key (sk_...), an admin key or the master key")


class ExecutionEventFrame(BaseModel):
    """One event of an execution's trail: the SSE stream's `data` (the SSE `id` is its
    `seq`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="ExecutionEventFrame")

    seq: int = Field(description="the per-execution sequence number (the SSE event id)")
    type: str = Field(description="the event type, e.g. execution.node_completed")
    data: dict[str, Any] = Field(description="the event's body, as on the bus")
    occurred_at: str | None = Field(description="when it happened (ISO 8601, UTC)")


class NodeProgressFrame(BaseModel):
    """Live progress of a running node, between the trail's events: never stored, never
    replayed on a resume, without the trail's `seq` (the SSE event has no `id`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="NodeProgressFrame")

    type: Literal["execution.node_progress"] = "execution.node_progress"
    data: dict[str, Any] = Field(
        description="`{node_id, agent_id, attempt, seq, text, tokens, status}`: the agent the "
        "node was dispatched to, its attempt, the agent's own count per node and attempt "
        "(not the trail's `seq`), the text since its previous progress (a delta, at most "
        "8 KiB), output tokens so far, a short status line (each may be null); the SSE "
        "`execution.node_progress` event's `data`"
    )


@dataclass(frozen=True)
class SocketSpec:
    """One WebSocket route of the gateway and what travels on it."""

    channel_id: str
    path: str  # under /api/v1, and the same at the root
    title: str
    description: str
    parameters: dict[str, str]  # path parameter -> description
    query: dict[str, Any]  # a JSON schema of the query string
    sends: tuple[type[BaseModel], ...]  # gateway -> client
    receives: tuple[type[BaseModel], ...]  # client -> gateway
    close_codes: tuple[CloseCode, ...]


EXECUTION_SOCKET: Final = SocketSpec(
    channel_id="executionSocket",
    path="/executions/{execution_id}/ws",
    title="One execution's events (WebSocket)",
    description=(
        "The events of `GET /executions/{execution_id}/stream` (SSE): the same events, in the "
        "same order, with the same sequence numbers, one JSON text frame each "
        "(`ExecutionEventFrame`, the SSE event's `data`). `?after=<seq>` resumes after that "
        "event (as `Last-Event-ID` does); the gateway closes with 1000 after the terminal "
        "event, at once when the client already has it. Authenticate with "
        "`Authorization: Bearer <key>` on the upgrade request, or send `SocketAuth` first, "
        f"within {AUTH_TIMEOUT_S:g} s. The key needs the `executions:read` scope; another "
        "tenant's execution is not found. Messages the client sends after that are ignored. "
        "While a node runs, its agent's progress comes between the events as "
        "`NodeProgressFrame`s (live only: not in the trail, not replayed on a resume)."
    ),
    parameters={"execution_id": "the execution's id, as `POST /flows/execute` answered it"},
    query={
        "type": "object",
        "properties": {
            "after": {
                "type": "integer",
                "maximum": 2**31 - 1,
                "description": "resume after this sequence number; below 0: the whole trail",
            }
        },
    },
    sends=(ExecutionEventFrame, NodeProgressFrame),
    receives=(SocketAuth,),
    close_codes=tuple(CloseCode),
)


#: Every WebSocket the gateway serves.
class FeedFrame(BaseModel):
    """One item of the live feed: first `feed.ready` (only `type` and `cursor`), then one
    status change of an execution each — the SSE feed's `data` (the SSE `id` is `cursor`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="FeedFrame")

    type: str = Field(description="feed.ready, or the event that changed the status")
    cursor: str = Field(description="the feed cursor after this item: `?after=` resumes there")
    execution_id: str | None = None
    user_id: str | None = None
    flow_id: str | None = None
    status: str | None = Field(None, description="the execution's status after the change")
    seq: int | None = Field(None, description="the event's number in its execution's trail")
    occurred_at: str | None = None


FEED_SOCKET: Final = SocketSpec(
    channel_id="feedSocket",
    path="/executions/ws",
    title="The live feed of executions (WebSocket)",
    description=(
        "The items of `GET /executions/stream` (SSE): the status changes of the caller's "
        "executions (the admin's: every tenant's) as they happen, one JSON text frame each "
        "(`FeedFrame`), first `feed.ready` with the cursor the feed starts at. `?after=<cursor>` "
        "resumes after a feed cursor with nothing lost or repeated; without it, from now. The "
        "feed stays open until the client closes it; the gateway closes with 1013 when it "
        "stops (reconnect with the last cursor). Authentication as for `executionSocket`; the "
        "key needs `executions:read`."
    ),
    parameters={},
    query={
        "type": "object",
        "properties": {
            "after": {
                "type": "string",
                "description": "a feed cursor (`<partition>:<offset>,...`, opaque)",
            }
        },
    },
    sends=(FeedFrame,),
    receives=(SocketAuth,),
    close_codes=tuple(c for c in CloseCode if c is not CloseCode.NOT_FOUND),
)

ALL: Final[tuple[SocketSpec, ...]] = (EXECUTION_SOCKET, FEED_SOCKET)
