"""Flows: the catalogue read from the gateway's projection of ``spine.flows``; a write is
a ``FlowDefined``/``FlowDeleted`` record, answered once this replica's projection shows it.
Flows reach the topic from files too (the orchestrator's loader); the latest write wins."""

from __future__ import annotations

from typing import Any

import orjson
from spine_contracts import FlowDefined, FlowDefinition, FlowDeleted, topics
from spine_flows import FlowValidationError, flow_version, load_flow_text, validate_flow_dict
from spine_servicekit.projector import Projector

from .adapters.postgres import ReadModel
from .commands import Commands
from .errors import InvalidInput, NotFound
from .models import FlowDeletedView, FlowList, FlowView, FlowWritten, has_nul
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

    async def list(self) -> FlowList:
        return FlowList(flows=[FlowView.of(f) for f in await self.read.flows()])

    async def get(self, flow_id: str) -> FlowView:
        row = await self.read.flow(flow_id)
        if row is None:
            raise NotFound(f"flow {flow_id!r} not found", code="FLOW_NOT_FOUND")
        return FlowView.of(row)

    async def define(self, defn: FlowDefinition) -> FlowWritten:
        current = await self.read.flow(defn.flow_id)
        replaced = current["source"] if current is not None else None
        event = FlowDefined.build(
            flow_id=defn.flow_id,
            flow_version=flow_version(defn),
            definition=defn,
            source="api",
            replaced_source=replaced,
        )
        mark = await self.commands.publish(
            topics.FLOWS, defn.flow_id, event, what="flow definition"
        )
        await self.rw.applied(self.projector, mark)
        view: dict[str, Any] = (await self.get(defn.flow_id)).model_dump()
        return FlowWritten(**view, created=current is None, replaced_source=replaced)

    async def delete(self, flow_id: str) -> FlowDeletedView:
        await self.get(flow_id)
        mark = await self.commands.publish(
            topics.FLOWS, flow_id, FlowDeleted.build(flow_id=flow_id, source="api")
        )
        await self.rw.applied(self.projector, mark)
        return FlowDeletedView(flow_id=flow_id, deleted=True)
