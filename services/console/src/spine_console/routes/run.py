"""Run a flow from a form: one field per input the flow declares (its input nodes'
``required_fields``; left empty, the input node asks for it), plus a JSON box for anything
else. A refusal of the gateway (no credits, too many requests, a queue full) is a message on
the form, with what was typed kept."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import inputs
from ..gateway import Gateway, GatewayError
from ..pages import CheckedDep, GatewayDep, SessionDep, render
from ..sessions import Session

router = APIRouter()

MAX_JSON_CHARS = 900_000
#: the gateway's refusals the form explains (anything else is the error page)
REFUSALS = {
    402: "Not enough credits to run this flow",
    403: "This key may not run flows",
    422: "The gateway refused the input",
    429: "Too many requests; wait a moment and try again",
    503: "AI Spine is busy or unavailable; nothing was charged, try again",
}


async def _flow(gateway: Gateway, session: Session, flow_id: str) -> dict[str, Any]:
    """The flow, or the 404 page (an id the gateway could not know is not found either)."""
    try:
        flow: dict[str, Any] = await gateway.get(f"/flows/{quote(flow_id, safe='')}", session.key)
    except GatewayError as exc:
        if exc.status == 422:
            raise StarletteHTTPException(404, "No such flow.") from exc
        raise
    return flow


def _context(
    flow: dict[str, Any],
    values: dict[str, str] | None = None,
    json_text: str = "",
    error: str | None = None,
) -> dict[str, Any]:
    fields = inputs.declared_fields(flow)
    return {
        "flow": flow,
        "fields": fields,
        "values": values or {},
        "json_text": json_text if json_text or fields else "{}",
        "error": error,
    }


@router.get("/flows/{flow_id}/run")
async def run_form(
    request: Request, flow_id: str, session: SessionDep, gateway: GatewayDep
) -> Response:
    flow = await _flow(gateway, session, flow_id)
    return render(request, "run/form.html", _context(flow))


@router.post("/flows/{flow_id}/run")
async def run(
    request: Request,
    flow_id: str,
    session: CheckedDep,
    gateway: GatewayDep,
    input_json: Annotated[str, Form(max_length=MAX_JSON_CHARS)] = "",
) -> Response:
    flow = await _flow(gateway, session, flow_id)
    form = await request.form()
    values = inputs.form_fields(form.multi_items())
    try:
        data = inputs.run_input(values, input_json)
    except inputs.InputError as exc:
        return render(request, "run/form.html", _context(flow, values, input_json, str(exc)), 422)
    try:
        accepted = await gateway.post(
            "/flows/execute", session.key, {"flow_id": flow["flow_id"], "input_data": data}
        )
    except GatewayError as exc:
        if exc.status not in REFUSALS:
            raise
        error = f"{REFUSALS[exc.status]}: {exc.message}"
        ctx = _context(flow, values, input_json, error)
        return render(request, "run/form.html", ctx, exc.status)
    return RedirectResponse(f"/executions/{accepted['execution_id']}", status_code=303)
