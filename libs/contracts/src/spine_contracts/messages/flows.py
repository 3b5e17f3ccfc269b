"""The flow catalogue: commands to its single writer (``spine.flows.commands``) and the
current definitions on the compacted ``spine.flows`` topic (key flow_id).

Only the writer (the orchestrator's flow catalogue) writes ``spine.flows``; the gateway and
the flow-file loader send it commands, so ownership and uniqueness are decided in one place
(DESIGN §12).
"""

from __future__ import annotations

from typing import Literal

from ..access import SYSTEM
from ..envelope import Body, Message
from ..flow import FlowDefinition

FlowSource = Literal["file", "api"]
#: create: only a free id; replace: the id's owner (or the admin, for a system flow) updates
#: it, and a free id is created
FlowWriteMode = Literal["create", "replace"]


class DefineFlowData(Body):
    flow_id: str
    flow_version: str
    definition: FlowDefinition
    #: the owner the writer asks for: ``system`` (the admin, a flow file) or a user id
    owner: str = SYSTEM
    source: FlowSource
    source_path: str | None = None
    mode: FlowWriteMode = "replace"
    request_id: str | None = None


class DefineFlow(Message):
    type: Literal["flow.define"] = "flow.define"
    data: DefineFlowData


class DeleteFlowData(Body):
    flow_id: str
    owner: str = SYSTEM  # the deleting principal's owner; must own the flow
    source: FlowSource
    source_path: str | None = None  # a file's deletion removes only the flow it defined
    request_id: str | None = None


class DeleteFlow(Message):
    type: Literal["flow.delete"] = "flow.delete"
    data: DeleteFlowData


class FlowDefinedData(Body):
    flow_id: str
    flow_version: str
    definition: FlowDefinition
    source: FlowSource
    source_path: str | None = None
    replaced_source: FlowSource | None = None
    owner: str = SYSTEM


class FlowDefined(Message):
    type: Literal["flow.defined"] = "flow.defined"
    data: FlowDefinedData


class FlowDeletedData(Body):
    flow_id: str
    source: FlowSource
    owner: str = SYSTEM


class FlowDeleted(Message):
    type: Literal["flow.deleted"] = "flow.deleted"
    data: FlowDeletedData
