"""Flow execution and the execution read model."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from sse_starlette.sse import EventSourceResponse

from ..deps import (
    CancelDep,
    ExecutionsDep,
    GatewayDep,
    IdempotencyKey,
    InputDep,
    ReadExecutionsDep,
    RunDep,
)
from ..errors import InvalidInput, error_responses
from ..feed import MAX_CURSOR_CHARS, CursorError, parse_cursor, sse
from ..listing import EXECUTION_STATUSES, ID_PREFIX_PATTERN, execution_filter
from ..models import (
    FLOW_ID_PATTERN,
    ID_PATTERN,
    CancelRequest,
    EventList,
    ExecuteRequest,
    ExecutionAccepted,
    ExecutionAction,
    ExecutionList,
    ExecutionView,
    InputRequest,
    MessageList,
    Results,
)
from . import answer

ExecutionId = Annotated[str, Path(pattern=ID_PATTERN)]
MAX_SEQ = 2**31 - 1

router = APIRouter(tags=["executions"], responses=error_responses(401, 403, 413, 422, 429, 503))
_404 = error_responses(404)
_ACTION = error_responses(404, 409)
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "description": "the per-execution sequence number"},
        "event": {"type": "string", "description": "the event type"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["seq", "type", "data", "occurred_at"],
                "properties": {
                    "seq": {"type": "integer"},
                    "type": {"type": "string"},
                    "data": {"type": "object"},
                    "occurred_at": {"type": "string"},
                },
            },
        },
    },
}
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `id` = per-execution sequence number, `event` = "
        "the event type, `data` = `{seq, type, data, occurred_at}`; ends after the terminal "
        "event.",
        # before OpenAPI 3.2 (`itemSchema`), the schema of an event stream describes each event
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    },
    **_404,
}


@router.post(
    "/flows/execute",
    response_model=ExecutionAccepted,
    responses=error_responses(402, 404, 409),
)
async def execute_flow(
    request: Request,
    body: ExecuteRequest,
    caller: RunDep,
    executions: ExecutionsDep,
    idem: IdempotencyKey = None,
) -> Response:
    accepted, credits = await executions.execute(
        caller, body.flow_id, body.input_data, body.metadata, idem
    )
    request.state.usage_credits = credits
    return answer(accepted)


@router.get("/executions", response_model=ExecutionList)
async def list_executions(
    caller: ReadExecutionsDep,
    executions: ExecutionsDep,
    status: Annotated[
        list[str] | None,
        Query(
            max_length=len(EXECUTION_STATUSES),
            description="one or several (repeated, or comma-separated) of: "
            + ", ".join(EXECUTION_STATUSES),
        ),
    ] = None,
    flow_id: Annotated[str | None, Query(pattern=FLOW_ID_PATTERN)] = None,
    created_from: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    created_to: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    id_prefix: Annotated[str | None, Query(pattern=ID_PREFIX_PATTERN)] = None,
    user_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="the admin: one user's executions")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=512, description="the `next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[
        int, Query(ge=0, le=2**31 - 1, deprecated=True, description="use `cursor`")
    ] = 0,
) -> Response:
    """Newest first (`created_at`, then `execution_id`, descending); page on with
    `?cursor=<next_cursor>` (keyset: no row repeated or skipped while new ones arrive)."""
    f = execution_filter(
        user_id=user_id,
        statuses=status or (),
        flow_id=flow_id,
        created_from=created_from,
        created_to=created_to,
        id_prefix=id_prefix,
    )
    return answer(await executions.list(caller, f, cursor=cursor, limit=limit, offset=offset))


_FEED_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: first `feed.ready` (`data` `{cursor}`), then one "
        "event per status change of the caller's executions (the admin's: every tenant's): "
        "`id` = the feed cursor, `event` = the event type, `data` = `{cursor, execution_id, "
        "user_id, flow_id, status, type, seq, occurred_at}`. Open until the client goes.",
        "content": {"text/event-stream": {"schema": {"type": "object"}}},
    },
}


# before /executions/{execution_id}: its id pattern would take "stream"
@router.get("/executions/stream", response_class=EventSourceResponse, responses=_FEED_DOC)
async def executions_feed(
    caller: ReadExecutionsDep,
    gateway: GatewayDep,
    after: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=MAX_CURSOR_CHARS)
    ] = None,
) -> EventSourceResponse:
    """The live feed of status changes; `Last-Event-ID` (or `after`, the header first)
    resumes after a feed cursor with nothing lost or repeated; without either, from now."""
    given = last_event_id or after
    cursor = None
    if given:
        try:
            cursor = parse_cursor(given)
        except CursorError as exc:
            raise InvalidInput(str(exc)) from exc
    keepalive = gateway.settings.sse_keepalive_s
    events = gateway.feed.follow(caller.owner, cursor)
    return EventSourceResponse(
        sse(events, lambda: gateway.identity.still_valid(caller)), ping=int(keepalive)
    )


@router.get("/executions/{execution_id}", response_model=ExecutionView, responses=_404)
async def get_execution(
    execution_id: ExecutionId, caller: ReadExecutionsDep, executions: ExecutionsDep
) -> Response:
    return answer(await executions.get(caller, execution_id))


@router.post("/executions/{execution_id}/cancel", response_model=ExecutionAction, responses=_ACTION)
async def cancel_execution(
    execution_id: ExecutionId,
    caller: CancelDep,
    executions: ExecutionsDep,
    idem: IdempotencyKey = None,
    body: Annotated[CancelRequest | None, Body()] = None,
) -> Response:
    """Answers once the gateway's read model shows the execution cancelled; 409 when it
    had already ended (even if it ended while the cancel was on its way)."""
    reason = body.reason if body is not None else None
    return answer(await executions.cancel(caller, execution_id, reason, idem))


@router.post("/executions/{execution_id}/input", response_model=ExecutionAction, responses=_ACTION)
async def provide_input(
    execution_id: ExecutionId,
    caller: InputDep,
    executions: ExecutionsDep,
    idem: IdempotencyKey = None,
    body: Annotated[InputRequest | None, Body()] = None,
) -> Response:
    """Answer a waiting input node with `{"input": {...}, "node_id"?}` (or the fields
    directly); answers once the read model applied the input."""
    payload = body.model_dump(exclude_none=True) if body is not None else {}
    node_id = payload.pop("node_id", None)
    data = payload.get("input", payload.get("input_data", payload))
    if not isinstance(data, dict):
        raise InvalidInput("input must be a JSON object")
    return answer(await executions.provide_input(caller, execution_id, data, node_id, idem))


@router.get("/executions/{execution_id}/events", response_model=EventList, responses=_404)
async def execution_events(
    execution_id: ExecutionId, caller: ReadExecutionsDep, executions: ExecutionsDep
) -> Response:
    return answer(await executions.events(caller, execution_id))


@router.get("/executions/{execution_id}/results", response_model=Results, responses=_404)
async def execution_results(
    execution_id: ExecutionId, caller: ReadExecutionsDep, executions: ExecutionsDep
) -> Response:
    return answer(await executions.results(caller, execution_id))


@router.get("/executions/{execution_id}/messages", response_model=MessageList, responses=_404)
async def execution_messages(
    execution_id: ExecutionId, caller: ReadExecutionsDep, executions: ExecutionsDep
) -> Response:
    return answer(await executions.messages(caller, execution_id))


@router.get("/messages/{execution_id}", response_model=MessageList, responses=_404)
async def messages_alias(
    execution_id: ExecutionId, caller: ReadExecutionsDep, executions: ExecutionsDep
) -> Response:
    return answer(await executions.messages(caller, execution_id))


@router.get(
    "/executions/{execution_id}/stream", response_class=EventSourceResponse, responses=_SSE_DOC
)
async def execution_stream(
    execution_id: ExecutionId,
    caller: ReadExecutionsDep,
    gateway: GatewayDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> EventSourceResponse:
    after: int | None = None
    if last_event_id:
        try:
            after = int(last_event_id)
        except ValueError as exc:
            raise InvalidInput("Last-Event-ID must be an integer sequence number") from exc
        if after > MAX_SEQ:  # sequence numbers are int4 in the read model
            raise InvalidInput(f"Last-Event-ID {after} is beyond any sequence number")
        after = max(after, -1)  # before the first event: the whole trail
    keepalive = gateway.settings.sse_keepalive_s
    events = await gateway.executions.stream(
        caller, execution_id, after, keepalive, lambda: gateway.identity.still_valid(caller)
    )
    return EventSourceResponse(events, ping=int(keepalive))
