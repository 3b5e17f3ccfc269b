"""Executions: the list (filters, cursor paging, bulk cancel, live), one execution (its DAG,
nodes, timeline, trail, input forms, cancel, live), and the two SSE feeds the pages follow.

The live parts are the gateway's streams proxied with the session's key: the browser holds
no key and gets only what makes it re-fetch a fragment (an execution id, an event number),
never the gateway's text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, Query, Request
from fastapi.responses import RedirectResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import graph, inputs, timeline
from ..gateway import Gateway, GatewayError
from ..live import coalesce_feed, execution_updates
from ..pages import CheckedDep, GatewayDep, SessionDep, is_htmx, render
from ..queries import (
    ID_RE,
    STATUSES,
    FilterError,
    ListFilters,
    cancel_outcome,
    clean_ids,
    feed_cursor,
)
from ..sessions import Session

router = APIRouter()

LIST_LIMIT = 50
#: at most this many executions in one bulk cancel (a page's worth, and some)
MAX_BULK = 100
#: cancels sent to the gateway at once during a bulk cancel
BULK_CONCURRENCY = 8
TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: the list's live feed sends at most one "changed" a second (and always the last one)
FEED_INTERVAL_S = 1.0


def _execution_id(value: str) -> str:
    """An id the gateway could know; anything else is the 404 page, as unknown ids are."""
    if not ID_RE.match(value):
        raise StarletteHTTPException(404, "No such execution.")
    return value


# --- the list -------------------------------------------------------------------------


async def _list_context(
    request: Request, session: Session, gateway: Gateway
) -> tuple[dict[str, Any], int]:
    """The list page's context and status: the gateway's 422 for a bad filter (or a time
    that is not one) is an error on the page, not an error page."""
    filters = ListFilters.of(request.query_params.multi_items())
    ctx: dict[str, Any] = {
        "filters": filters,
        "statuses": STATUSES,
        "page": None,
        "error": None,
        "live": not filters.cursor,
        "rows_url": "/executions/rows?" + filters.query(cursor=filters.cursor or None),
        "newest_url": "/executions?" + filters.query() if filters.cursor else None,
        "older_url": None,
        "durations": {},
    }
    try:
        params = filters.gateway_params(LIST_LIMIT, admin=session.admin)
        page = await gateway.get("/executions", session.key, **params)
    except FilterError as exc:
        ctx["error"] = str(exc)
        return ctx, 422
    except GatewayError as exc:
        if exc.status != 422:
            raise
        ctx["error"] = f"The filters were refused: {exc.message}"
        return ctx, 422
    ctx["page"] = page
    now = datetime.now(UTC)
    ctx["durations"] = {
        str(e.get("execution_id")): timeline.elapsed_ms(e, now) for e in page.get("executions", [])
    }
    if page.get("next_cursor"):
        ctx["older_url"] = "/executions?" + filters.query(cursor=str(page["next_cursor"]))
    return ctx, 200


@router.get("/executions")
async def executions(request: Request, session: SessionDep, gateway: GatewayDep) -> Response:
    ctx, status = await _list_context(request, session, gateway)
    return render(request, "executions/list.html", ctx, status)


@router.get("/executions/rows")
async def execution_rows(request: Request, session: SessionDep, gateway: GatewayDep) -> Response:
    """The list's table alone, for the live refresh (same filters and page)."""
    ctx, _ = await _list_context(request, session, gateway)
    # htmx swaps only 2xx answers: a refused filter keeps the table it had
    return render(request, "executions/_rows.html", ctx, 200)


@router.get("/executions/live")
async def executions_live(
    session: SessionDep,
    gateway: GatewayDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=600)] = None,
) -> Response:
    """``changed`` (data: an execution id) when the gateway's live feed reports a status
    change of one of the session's executions (the admin's: any)."""
    stack = AsyncExitStack()
    frames = await stack.enter_async_context(
        gateway.stream("/executions/stream", session.key, last_event_id=feed_cursor(last_event_id))
    )

    async def events() -> AsyncIterator[dict[str, str]]:
        async with stack:
            async for change in coalesce_feed(frames, FEED_INTERVAL_S):
                yield {"event": "changed", "data": change.execution_id, "id": change.cursor}

    return EventSourceResponse(events(), ping=15)


@router.post("/executions/cancel")
async def cancel_selected(request: Request, session: CheckedDep, gateway: GatewayDep) -> Response:
    """Cancel every selected execution; the page says per id what happened."""
    form = await request.form()
    raw = [v for v in form.getlist("ids") if isinstance(v, str)]
    good, bad = clean_ids(raw, MAX_BULK)
    gate = asyncio.Semaphore(BULK_CONCURRENCY)

    async def cancel(eid: str) -> tuple[str, str, bool]:
        async with gate:
            try:
                await gateway.post(f"/executions/{eid}/cancel", session.key, {})
            except GatewayError as exc:
                if exc.status == 401:
                    raise
                return eid, cancel_outcome(exc.status, exc.message), False
            return eid, cancel_outcome(200), True

    outcomes = list(await asyncio.gather(*(cancel(eid) for eid in good)))
    outcomes += [(eid, "not found", False) for eid in bad]
    ctx = {"outcomes": outcomes, "asked": len(raw), "limit": MAX_BULK}
    return render(request, "executions/cancelled.html", ctx, 200 if raw else 422)


# --- one execution --------------------------------------------------------------------


async def _detail(
    session: Session, gateway: Gateway, eid: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The execution and its trail. The trail comes first, so the last event number it
    shows is never newer than the detail: the live stream resumes right after it."""
    trail = await gateway.get(f"/executions/{eid}/events", session.key)
    detail = await gateway.get(f"/executions/{eid}", session.key)
    events = [e for e in trail.get("events") or [] if isinstance(e, dict)]
    return detail, events


def _detail_context(
    session: Session, detail: dict[str, Any], events: list[dict[str, Any]]
) -> dict[str, Any]:
    now = datetime.now(UTC)
    nodes: dict[str, dict[str, Any]] = detail.get("nodes") or {}
    statuses = {nid: str(n.get("status") or "pending") for nid, n in nodes.items()}
    asked = inputs.questions(nodes)
    terminal = detail.get("status") in TERMINAL
    return {
        "e": detail,
        "eid": detail["execution_id"],
        "nodes": nodes,
        "drawing": graph.draw(detail.get("graph"), statuses),
        "timeline": timeline.build(detail, nodes, now),
        "elapsed_ms": timeline.elapsed_ms(detail, now),
        "events": events,
        "last_seq": max((int(e.get("seq") or 0) for e in events), default=-1),
        "asked": asked,
        "asked_key": inputs.questions_key(asked),
        "terminal": terminal,
        "live": not terminal,
        "can_cancel": session.can("executions:run") and not terminal,
        # the admin speaks for no user: only the owner answers a question
        "can_answer": session.can("executions:run") and not session.admin,
        "note": None,
    }


@router.get("/executions/{execution_id}")
async def execution(
    request: Request, execution_id: str, session: SessionDep, gateway: GatewayDep
) -> Response:
    eid = _execution_id(execution_id)
    detail, events = await _detail(session, gateway, eid)
    return render(request, "executions/detail.html", _detail_context(session, detail, events))


@router.get("/executions/{execution_id}/fragment")
async def execution_fragment(
    request: Request, execution_id: str, session: SessionDep, gateway: GatewayDep
) -> Response:
    """The live region of the page (header, DAG, nodes, timeline, trail)."""
    eid = _execution_id(execution_id)
    detail, events = await _detail(session, gateway, eid)
    return render(request, "executions/_live.html", _detail_context(session, detail, events))


@router.get("/executions/{execution_id}/asked")
async def execution_asked(
    request: Request,
    execution_id: str,
    session: SessionDep,
    gateway: GatewayDep,
    key: Annotated[str, Query(max_length=2000)] = "",
) -> Response:
    """The input forms, only when what is asked changed since ``key`` (else 204, which
    htmx leaves alone): a refresh never wipes an answer being typed."""
    eid = _execution_id(execution_id)
    detail = await gateway.get(f"/executions/{eid}", session.key)
    ctx = _detail_context(session, detail, [])
    if ctx["asked_key"] == key:
        return Response(status_code=204)
    return render(request, "executions/_input.html", ctx)


@router.get("/executions/{execution_id}/live")
async def execution_live(
    execution_id: str,
    session: SessionDep,
    gateway: GatewayDep,
    after: Annotated[int | None, Query(ge=-1, le=2**31 - 1)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> Response:
    """``update`` (data: the event's number) per event of the execution, ``done`` after
    the terminal one (the page then stops listening)."""
    eid = _execution_id(execution_id)
    resume = last_event_id if last_event_id and last_event_id.isdigit() else None
    if resume is None and after is not None and after >= 0:
        resume = str(after)
    stack = AsyncExitStack()
    frames = await stack.enter_async_context(
        gateway.stream(f"/executions/{eid}/stream", session.key, last_event_id=resume)
    )

    async def events() -> AsyncIterator[dict[str, str]]:
        async with stack:
            async for update in execution_updates(frames):
                yield update

    return EventSourceResponse(events(), ping=15)


@router.post("/executions/{execution_id}/cancel")
async def cancel_one(
    request: Request, execution_id: str, session: CheckedDep, gateway: GatewayDep
) -> Response:
    eid = _execution_id(execution_id)
    try:
        await gateway.post(f"/executions/{eid}/cancel", session.key, {})
    except GatewayError as exc:
        if exc.status != 409:  # already ended: the page shows how
            raise
    return RedirectResponse(f"/executions/{eid}", status_code=303)


@router.post("/executions/{execution_id}/input")
async def answer(
    request: Request,
    execution_id: str,
    session: CheckedDep,
    gateway: GatewayDep,
    node_id: Annotated[str, Form(max_length=128)] = "",
    message: Annotated[str, Form(max_length=inputs.MAX_VALUE_CHARS)] = "",
) -> Response:
    """Answer a node's question. From the page (htmx) the answer is a note under the form
    (the form itself follows the execution live); without JavaScript, back to the page."""
    eid = _execution_id(execution_id)
    form = await request.form()
    fields = inputs.form_fields(form.multi_items())
    note: str
    ok = False
    try:
        data = inputs.answer_input(fields, message)
        body: dict[str, Any] = {"input": data}
        if node_id and ID_RE.match(node_id):
            body["node_id"] = node_id
        await gateway.post(f"/executions/{eid}/input", session.key, body)
        note, ok = "Answer sent; waiting for the agent.", True
    except inputs.InputError as exc:
        note = str(exc)
    except GatewayError as exc:
        if exc.status in (401, 404):
            raise
        note = f"The answer was refused: {exc.message}"
    if is_htmx(request):
        # 200 either way: htmx shows only 2xx answers, and the note says what happened
        return render(request, "executions/_note.html", {"note": note, "ok": ok})
    if ok:
        return RedirectResponse(f"/executions/{eid}", status_code=303)
    detail, events = await _detail(session, gateway, eid)
    ctx = _detail_context(session, detail, events)
    ctx["note"] = note
    return render(request, "executions/detail.html", ctx, 422)
