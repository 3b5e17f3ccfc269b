"""Agents: the catalogue the caller may use, with liveness and load from their heartbeats,
and registering an HTTP agent (its owner: the caller; the admin's: a system agent)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from ..gateway import GatewayError
from ..pages import CheckedDep, GatewayDep, SessionDep, render
from ..sessions import Session
from .flows import owner_text

router = APIRouter()


def _rows(agents: list[dict[str, Any]], session: Session) -> list[dict[str, Any]]:
    return [
        {
            **a,
            "owner_text": owner_text(str(a.get("owner") or "system"), session),
            "capabilities": [str(c) for c in a.get("capabilities") or []],
        }
        for a in sorted(agents, key=lambda a: str(a.get("agent_id", "")))
    ]


async def _page(
    request: Request,
    session: Session,
    gateway: GatewayDep,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    registered: str | None = None,
    status: int = 200,
) -> Response:
    body = await gateway.get("/agents", session.key)
    context = {
        "agents": _rows(body.get("agents", []), session),
        "form": form or {"agent_id": "", "name": "", "endpoint": "", "capabilities": ""},
        "error": error,
        "registered": registered,
        "may_register": session.can("agents:write"),
    }
    return render(request, "agents/list.html", context, status)


@router.get("/agents")
async def agents(
    request: Request,
    session: SessionDep,
    gateway: GatewayDep,
    registered: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    return await _page(request, session, gateway, registered=registered)


@router.post("/agents")
async def register(
    request: Request,
    session: CheckedDep,
    gateway: GatewayDep,
    agent_id: Annotated[str, Form(max_length=128)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    endpoint: Annotated[str, Form(max_length=2000)] = "",
    capabilities: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """An HTTP agent: the relay calls ``endpoint``; it turns active once its health answers."""
    form = {"agent_id": agent_id, "name": name, "endpoint": endpoint, "capabilities": capabilities}
    body = {
        "agent_id": agent_id.strip() or None,
        "name": name.strip() or agent_id.strip(),
        "endpoint": endpoint.strip(),
        "transport": "http",
        "capabilities": [c.strip() for c in capabilities.split(",") if c.strip()],
    }
    try:
        view = await gateway.post("/agents", session.key, body)
    except GatewayError as exc:
        if exc.status == 401:
            raise
        status = exc.status if exc.status in (403, 409, 422, 429, 503) else 502
        return await _page(request, session, gateway, form=form, error=exc.message, status=status)
    registered = quote(str(view.get("agent_id", "")), safe="")
    return RedirectResponse(f"/agents?registered={registered}", status_code=303)
