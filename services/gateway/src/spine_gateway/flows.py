"""Flows: the catalogue read from the gateway's projection of ``spine.flows``, each flow
``system`` or one user's (DESIGN §12). A write is a ``DefineFlow``/``DeleteFlow`` command to
the catalogue's single writer (the orchestrator), which decides ownership and uniqueness in
order — files and API alike — and answers; the gateway checks its read model first only to
answer the common refusals at once. An answer comes once this replica's projection shows
the change."""

from __future__ import annotations

from typing import Any

import orjson
from spine_contracts import DefineFlow, DeleteFlow, FlowDefinition, topics
from spine_contracts.access import SYSTEM, owner_may_use
from spine_contracts.messages.flows import FlowWriteMode
from spine_flows import FlowValidationError, flow_version, load_flow_text, validate_flow_dict
from spine_servicekit.projector import Projector

from .adapters.postgres import FlowRow, ReadModel
from .commands import Commands, new_request_id
from .errors import Conflict, InvalidInput, NotFound, Unavailable, from_reply
from .identity import Principal
from .models import FlowDeletedView, FlowGraph, FlowList, FlowView, FlowWritten, has_nul
from .policy import HIDDEN, Action, check, visible
from .visibility import ReadYourWrites


def parse_flow(raw: bytes, content_type: str, flow_id: str | None) -> FlowDefinition:
    """A flow body: JSON (the flow, or ``{"definition": {...}}``) when the content type says
    so or the body starts like JSON, YAML text otherwise; validated like the flow files.
    ``flow_id`` (from the path) fills a missing one and must match a given one."""
    try:
        if "json" in content_type or (raw.lstrip()[:1] in (b"{", b"[")):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"body is not JSON: {exc}") from exc
            if isinstance(obj, dict) and isinstance(obj.get("definition"), dict):
                obj = obj["definition"]
            if isinstance(obj, dict) and flow_id is not None:
                obj.setdefault("flow_id", flow_id)
            if has_nul(obj):
                raise InvalidInput("text must not contain NUL characters")
            defn = validate_flow_dict(obj, "api")
        else:
            text = raw.decode(errors="replace")
            if "\x00" in text:
                raise InvalidInput("text must not contain NUL characters")
            defn = load_flow_text(text, "api")
    except FlowValidationError as exc:
        problems = [str(p) for p in exc.problems]
        raise InvalidInput(
            "invalid flow: " + "; ".join(problems),
            code="INVALID_FLOW",
            extra={"problems": problems},
        ) from exc
    if flow_id is not None and defn.flow_id != flow_id:
        raise InvalidInput(f"flow_id {defn.flow_id!r} does not match the path's {flow_id!r}")
    return defn


class FlowsService:
    def __init__(
        self, *, commands: Commands, read: ReadModel, rw: ReadYourWrites, flows: Projector
    ) -> None:
        self.commands = commands
        self.read = read
        self.rw = rw
        self.projector = flows

    async def list(self, caller: Principal) -> FlowList:
        rows = await self.read.flows()
        return FlowList(
            flows=[
                FlowView.of(f) for f in rows if visible(caller.caller, Action.FLOW_READ, f["owner"])
            ]
        )

    async def get(self, caller: Principal, flow_id: str) -> FlowView:
        return FlowView.of(await self._find(caller, Action.FLOW_READ, flow_id))

    async def graph(self, caller: Principal, flow_id: str) -> FlowGraph:
        """The flow's nodes, edges and layered layout; visible as ``get`` is."""
        row = await self._find(caller, Action.FLOW_READ, flow_id)
        return FlowGraph.of(row["flow_version"], FlowDefinition.model_validate(row["definition"]))

    async def _find(self, caller: Principal, action: Action, flow_id: str) -> FlowRow:
        row = await self.read.flow(flow_id)
        if row is None or check(caller.caller, action, row["owner"]) is HIDDEN:
            raise NotFound(f"flow {flow_id!r} not found", code="FLOW_NOT_FOUND")
        return row

    async def define(self, caller: Principal, defn: FlowDefinition, *, post: bool) -> FlowWritten:
        """``post``: POST /flows — a new id, or the caller's own flow replaced (an id
        someone else holds is 409); otherwise PUT /flows/{id} — replace (a system flow
        only by the admin: 403) or create."""
        current = await self.read.flow(defn.flow_id)
        mode: FlowWriteMode = "create" if post and current is None else "replace"
        if current is not None:
            mine = caller.admin or current["owner"] == caller.owner
            if post and not mine:
                raise Conflict(f"flow {defn.flow_id!r} exists", code="FLOW_EXISTS")
            if check(caller.caller, Action.FLOW_WRITE, current["owner"]) is HIDDEN:
                raise Conflict(f"flow id {defn.flow_id!r} is taken", code="FLOW_ID_TAKEN")
        owner = current["owner"] if current is not None else (caller.owner or SYSTEM)
        await self._check_agents(defn, owner)
        request_id = new_request_id()
        cmd = DefineFlow.build(
            actor=caller.actor,
            tenant_id=owner,
            flow_id=defn.flow_id,
            flow_version=flow_version(defn),
            definition=defn,
            owner=owner,
            source="api",
            mode=mode,
            request_id=request_id,
        )
        body = await self._ask(defn.flow_id, cmd, request_id, what="flow definition")
        view: dict[str, Any] = (await self.get(caller, defn.flow_id)).model_dump()
        return FlowWritten(
            **view,
            created=bool(body.get("created", current is None)),
            replaced_source=body.get("replaced_source"),
        )

    async def delete(self, caller: Principal, flow_id: str) -> FlowDeletedView:
        row = await self._find(caller, Action.FLOW_DELETE, flow_id)
        request_id = new_request_id()
        cmd = DeleteFlow.build(
            actor=caller.actor,
            tenant_id=row["owner"],
            flow_id=flow_id,
            owner=row["owner"],
            source="api",
            request_id=request_id,
        )
        await self._ask(flow_id, cmd, request_id)
        return FlowDeletedView(flow_id=flow_id, deleted=True)

    async def _check_agents(self, defn: FlowDefinition, owner: str) -> None:
        """A user's flow may use system agents and the user's own (the orchestrator checks
        again at dispatch); an agent not registered yet is the author's to register."""
        for node in defn.nodes:
            if node.agent_id is None:
                continue
            agent = await self.read.agent_entry(node.agent_id)
            if agent is not None and not owner_may_use(agent["owner"], owner):
                raise InvalidInput(
                    f"node {node.id!r}: agent {node.agent_id!r} belongs to another user",
                    code="AGENT_NOT_USABLE",
                )

    async def _ask(
        self, flow_id: str, cmd: DefineFlow | DeleteFlow, request_id: str, what: str | None = None
    ) -> dict[str, Any]:
        """Send to the writer, raise its refusal, and return once this replica's read model
        holds the outcome (the writer commits the change before its answer)."""
        try:
            reply = await self.commands.request(
                topics.FLOW_COMMANDS, flow_id, cmd, request_id, what=what
            )
        except TimeoutError as exc:
            raise Unavailable(
                "no answer from the flow catalogue in time; the change may still apply"
            ) from exc
        if not reply.data.ok:
            raise from_reply(reply.data.error_code, reply.data.message)
        await self.rw.caught_up(self.projector)
        return dict(reply.data.body)
