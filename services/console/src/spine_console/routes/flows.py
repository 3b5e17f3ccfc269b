"""Flows: the catalogue, one flow's graph and YAML, upload, edit and delete.

A write goes to the gateway as the author's text (YAML or JSON) and the gateway validates
it; when it refuses (422 ``INVALID_FLOW``), the form comes back with the text as typed and
each problem at its node and field — on the submitted flow's own drawing, since a refused
flow has no graph at the gateway."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import quote

import yaml
from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response

from .. import graph, problems
from ..gateway import GatewayError
from ..pages import CheckedDep, GatewayDep, SessionDep, render
from ..sessions import Session

router = APIRouter()

#: the gateway's flow id rule (``FLOW_ID_PATTERN``): 1-128 characters, no NUL
FlowId = Annotated[str, Path(pattern=r"^[^\x00/]{1,128}$")]
MAX_FLOW_BYTES = problems.MAX_TEXT
TEMPLATE = """\
flow_id: my_flow
name: My flow
version: "1.0.0"
nodes:
  - id: first
    agent_id: echo
  - id: second
    agent_id: echo
    depends_on: [first]
"""
_TITLES = {403: "Not allowed", 404: "Not found", 409: "Already exists", 413: "Too large"}


def owner_text(owner: str, session: Session) -> str:
    if owner == "system":
        return "system"
    if session.user_id and owner == session.user_id:
        return "you"
    return owner


def may_edit(flow: dict[str, Any], session: Session) -> bool:
    """Whether to offer edit and delete; the gateway decides anyway."""
    owner = flow.get("owner", "system")
    return session.admin or bool(session.user_id and owner == session.user_id)


FLOW_ORDER = ("flow_id", "name", "description", "version", "cost", "timeout", "entry_point")
NODE_ORDER = ("id", "agent_id", "type", "depends_on", "when", "config")


def _ordered(data: dict[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    """``first`` keys in that order, the rest after; unset values (null, empty) left out:
    they are the defaults, so the flow means the same and reads shorter."""
    keys = [k for k in first if k in data] + [k for k in data if k not in first]
    return {k: data[k] for k in keys if data[k] not in (None, {}, [])}


def as_yaml(definition: dict[str, Any]) -> str:
    """The stored (normalised) definition as YAML an author would write: flow fields first,
    nodes last, each node's id first, defaults left out."""
    flow = _ordered({k: v for k, v in definition.items() if k != "nodes"}, FLOW_ORDER)
    nodes = []
    for node in definition.get("nodes") or []:
        if not isinstance(node, dict):
            nodes.append(node)
            continue
        tidy = _ordered(node, NODE_ORDER)
        if isinstance(tidy.get("config"), dict):
            tidy["config"] = _ordered(tidy["config"], ())
            if not tidy["config"]:
                del tidy["config"]
        nodes.append(tidy)
    flow["nodes"] = nodes
    return yaml.safe_dump(flow, sort_keys=False, allow_unicode=True, width=100)


def _url(flow_id: str) -> str:
    return "/flows/" + quote(flow_id, safe="")


@router.get("/flows")
async def flow_list(
    request: Request,
    session: SessionDep,
    gateway: GatewayDep,
    owner: Annotated[str | None, Query(max_length=128)] = None,
    deleted: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    body = await gateway.get("/flows", session.key)
    flows = [f for f in body.get("flows", []) if not owner or f.get("owner") == owner]
    rows = [
        {
            **f,
            "url": _url(f["flow_id"]),
            "owner_text": owner_text(f.get("owner", "system"), session),
            "node_count": len(f.get("nodes") or []),
        }
        for f in flows
    ]
    return render(
        request, "flows/list.html", {"flows": rows, "owner": owner or "", "deleted": deleted}
    )


async def _read_text(text: str, upload: UploadFile | None) -> tuple[str, str | None]:
    """The flow's text: the uploaded file when one came, else the textarea."""
    if upload is not None and upload.filename:
        raw = await upload.read(MAX_FLOW_BYTES + 1)
        if len(raw) > MAX_FLOW_BYTES:
            return text, f"the file is larger than {MAX_FLOW_BYTES} bytes"
        try:
            return raw.decode("utf-8-sig"), None
        except UnicodeDecodeError:
            return text, "the file is not UTF-8 text"
    return text, None


def _form(
    request: Request,
    *,
    mode: str,
    text: str,
    flow_id: str | None = None,
    error: GatewayError | None = None,
    message: str | None = None,
    existing: str | None = None,
) -> Response:
    """The upload/edit form, with the gateway's refusal laid out when there is one."""
    found: list[problems.Problem] = []
    status = 200
    title = None
    if error is not None:
        status = error.status if error.status in (403, 404, 409, 413, 422, 429, 503) else 502
        title = _TITLES.get(error.status, "Not saved")
        if error.status == 422:
            found = problems.from_error(error.body, error.message)
            title = "The flow has problems"
        else:
            message = error.message
    elif message:
        status, title = 422, "Not saved"
    at_nodes, flow_level = problems.by_node(found)
    drawing = graph.draw(problems.submitted_graph(text))
    drawn = {b.id for b in drawing.boxes} if drawing else set()
    excerpts = [
        (p, problems.excerpt(text, p.line, p.column)) for p in flow_level if p.line is not None
    ]
    context = {
        "mode": mode,
        "text": text,
        "flow_id": flow_id,
        "action": "/flows/new" if mode == "new" else _url(flow_id or "") + "/edit",
        "cancel": "/flows" if mode == "new" else _url(flow_id or ""),
        "title": title,
        "message": message,
        "problems": found,
        "at_nodes": at_nodes,
        "flow_level": flow_level,
        "excerpts": excerpts,
        "drawing": drawing,
        "drawn": drawn,
        "marked": {n.key for n in at_nodes},
        "existing": _url(existing) if existing else None,
    }
    return render(request, "flows/form.html", context, status)


async def _existing(gateway: GatewayDep, session: Session, flow_id: str | None) -> str | None:
    """The id when the caller already sees a flow by it: an upload creates, it does not
    replace (the gateway's POST would replace the caller's own flow, or, for the admin, a
    system flow); editing is the way to replace one."""
    if not flow_id or "\x00" in flow_id or len(flow_id) > 128:
        return None
    try:
        await gateway.get(_url(flow_id), session.key)
    except GatewayError as exc:
        if exc.status in (403, 404, 422):
            return None
        raise
    return flow_id


@router.get("/flows/new")
async def new_form(request: Request, session: SessionDep) -> Response:
    return _form(request, mode="new", text=TEMPLATE)


@router.post("/flows/new")
async def create(
    request: Request,
    session: CheckedDep,
    gateway: GatewayDep,
    text: Annotated[str, Form(max_length=MAX_FLOW_BYTES)] = "",
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    text, bad = await _read_text(text, file)
    if bad or not text.strip():
        return _form(
            request, mode="new", text=text, message=bad or "Paste a flow or choose a file."
        )
    taken = await _existing(gateway, session, problems.submitted_id(text))
    if taken is not None:
        return _form(
            request,
            mode="new",
            text=text,
            error=GatewayError(
                409, "FLOW_EXISTS", f"a flow {taken!r} exists already: edit it instead"
            ),
            existing=taken,
        )
    try:
        written = await gateway.call(
            "POST", "/flows", session.key, content=text.encode(), content_type="application/yaml"
        )
    except GatewayError as exc:
        if exc.status == 401:
            raise
        return _form(request, mode="new", text=text, error=exc)
    saved = "created" if written.get("created") else "replaced"
    return RedirectResponse(f"{_url(written['flow_id'])}?saved={saved}", status_code=303)


@router.get("/flows/{flow_id}")
async def flow_page(
    request: Request,
    flow_id: FlowId,
    session: SessionDep,
    gateway: GatewayDep,
    saved: Annotated[str | None, Query(max_length=20)] = None,
) -> Response:
    path = _url(flow_id)
    flow, layout = await asyncio.gather(
        gateway.get(path, session.key), gateway.get(path + "/graph", session.key)
    )
    context = {
        "flow": flow,
        "url": path,
        "owner_text": owner_text(flow.get("owner", "system"), session),
        "may_edit": may_edit(flow, session),
        "yaml": as_yaml(flow.get("definition") or {}),
        "drawing": graph.draw(layout),
        "saved": saved if saved in ("created", "replaced", "updated") else None,
    }
    return render(request, "flows/detail.html", context)


@router.get("/flows/{flow_id}/edit")
async def edit_form(
    request: Request, flow_id: FlowId, session: SessionDep, gateway: GatewayDep
) -> Response:
    flow = await gateway.get(_url(flow_id), session.key)
    return _form(request, mode="edit", text=as_yaml(flow.get("definition") or {}), flow_id=flow_id)


@router.post("/flows/{flow_id}/edit")
async def update(
    request: Request,
    flow_id: FlowId,
    session: CheckedDep,
    gateway: GatewayDep,
    text: Annotated[str, Form(max_length=MAX_FLOW_BYTES)] = "",
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    text, bad = await _read_text(text, file)
    if bad or not text.strip():
        return _form(
            request, mode="edit", text=text, flow_id=flow_id, message=bad or "The flow is empty."
        )
    try:
        await gateway.call(
            "PUT",
            _url(flow_id),
            session.key,
            content=text.encode(),
            content_type="application/yaml",
        )
    except GatewayError as exc:
        if exc.status == 401:
            raise
        return _form(request, mode="edit", text=text, flow_id=flow_id, error=exc)
    return RedirectResponse(f"{_url(flow_id)}?saved=updated", status_code=303)


@router.post("/flows/{flow_id}/delete")
async def delete(
    request: Request, flow_id: FlowId, session: CheckedDep, gateway: GatewayDep
) -> Response:
    await gateway.call("DELETE", _url(flow_id), session.key)
    return RedirectResponse(f"/flows?deleted={quote(flow_id, safe='')}", status_code=303)
