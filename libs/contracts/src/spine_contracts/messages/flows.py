"""Flow catalogue events on the compacted ``spine.flows`` topic (key flow_id)."""

from __future__ import annotations

from typing import Literal

from ..envelope import Body, Message
from ..flow import FlowDefinition

FlowSource = Literal["file", "api"]


class FlowDefinedData(Body):
    flow_id: str
    flow_version: str
    definition: FlowDefinition
    source: FlowSource
    source_path: str | None = None
    replaced_source: FlowSource | None = None


class FlowDefined(Message):
    type: Literal["flow.defined"] = "flow.defined"
    data: FlowDefinedData


class FlowDeletedData(Body):
    flow_id: str
    source: FlowSource


class FlowDeleted(Message):
    type: Literal["flow.deleted"] = "flow.deleted"
    data: FlowDeletedData
