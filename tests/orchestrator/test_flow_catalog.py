"""The flow catalogue's single writer, without I/O: the decision table of create / replace /
delete × who asks × what exists, and repeats."""

from __future__ import annotations

from typing import Any

import pytest
from spine_contracts import (
    AuditRecorded,
    DefineFlow,
    DeleteFlow,
    FlowDefined,
    FlowDefinition,
    FlowDeleted,
    FlowNode,
)
from spine_orchestrator.flow_catalog import Decision, FlowCatalog, decide, evolve, replay

FILE = "/flows/f.yaml"


def definition(name: str = "v") -> FlowDefinition:
    return FlowDefinition(flow_id="f", name=name, nodes=(FlowNode(id="a", agent_id="echo"),))


V1, V2 = definition("one"), definition("two")


def define(owner: str, *, source: str = "api", mode: str = "replace", **kw: Any) -> DefineFlow:
    flow = kw.pop("definition", V2)
    return DefineFlow.build(
        actor=kw.pop("actor", "key_1"),
        flow_id=kw.pop("flow_id", "f"),
        flow_version=flow.content_hash(),
        definition=flow,
        owner=owner,
        source=source,
        source_path=FILE if source == "file" else None,
        mode=mode,
        request_id=kw.pop("request_id", "r1" if source == "api" else None),
        **kw,
    )


def delete(owner: str, *, source: str = "api", path: str | None = None) -> DeleteFlow:
    return DeleteFlow.build(
        actor="key_1",
        flow_id="f",
        owner=owner,
        source=source,
        source_path=path,
        request_id="r1" if source == "api" else None,
    )


def existing(owner: str, source: str = "api", path: str | None = None) -> FlowCatalog:
    catalog = FlowCatalog()
    evolve(
        catalog,
        FlowDefined.build(
            flow_id="f",
            flow_version=V1.content_hash(),
            definition=V1,
            source=source,
            source_path=path,
            owner=owner,
        ),
    )
    return catalog


STATES = {
    "free": FlowCatalog,
    "system file": lambda: existing("system", "file", FILE),
    "system api": lambda: existing("system"),
    "u1's": lambda: existing("u1"),
}
COMMANDS = {
    "create by u1": lambda: define("u1", mode="create"),
    "create by admin": lambda: define("system", mode="create"),
    "replace by u1": lambda: define("u1"),
    "replace by u2": lambda: define("u2"),
    "replace by admin": lambda: define("system"),
    "replace by file": lambda: define("system", source="file"),
    "delete by u1": lambda: delete("u1"),
    "delete by u2": lambda: delete("u2"),
    "delete by admin": lambda: delete("system"),
    "delete by its file": lambda: delete("system", source="file", path=FILE),
    "delete by another file": lambda: delete("system", source="file", path="/flows/g.yaml"),
}
# fmt: off
#: command -> outcome per state (free, system file, system api, u1's): an audit action for
#: an accepted write, an error code for a refusal
TABLE: dict[str, tuple[str, str, str, str]] = {
    "create by u1":           ("flow.created", "FLOW_EXISTS", "FLOW_EXISTS", "FLOW_EXISTS"),
    "create by admin":        ("flow.created", "FLOW_EXISTS", "FLOW_EXISTS", "FLOW_EXISTS"),
    "replace by u1":          ("flow.created", "NOT_OWNER", "NOT_OWNER", "flow.replaced"),
    "replace by u2":          ("flow.created", "NOT_OWNER", "NOT_OWNER", "FLOW_ID_TAKEN"),
    "replace by admin":       ("flow.created", "flow.replaced", "flow.replaced", "FLOW_ID_TAKEN"),
    "replace by file":        ("flow.created", "flow.replaced", "flow.replaced", "FLOW_ID_TAKEN"),
    "delete by u1":           ("FLOW_NOT_FOUND", "NOT_OWNER", "NOT_OWNER", "flow.deleted"),
    "delete by u2":           ("FLOW_NOT_FOUND", "NOT_OWNER", "NOT_OWNER", "FLOW_NOT_FOUND"),
    "delete by admin":        ("FLOW_NOT_FOUND", "flow.deleted", "flow.deleted", "FLOW_NOT_FOUND"),
    "delete by its file":     ("FLOW_NOT_FOUND", "flow.deleted", "FLOW_NOT_FROM_FILE",
                               "FLOW_NOT_FROM_FILE"),
    "delete by another file": ("FLOW_NOT_FOUND", "FLOW_NOT_FROM_FILE", "FLOW_NOT_FROM_FILE",
                               "FLOW_NOT_FROM_FILE"),
}
# fmt: on
CASES = [
    pytest.param(command, state, expected, id=f"{command} | {state}")
    for command, outcomes in TABLE.items()
    for state, expected in zip(STATES, outcomes, strict=True)
]


def outcome(decision: Decision) -> str:
    (audit,) = decision.audit
    return decision.refused or audit.data.action


@pytest.mark.parametrize(("command", "state", "expected"), CASES)
def test_the_decision_table(command: str, state: str, expected: str) -> None:
    catalog = STATES[state]()
    before = dict(catalog.flows)
    cmd = COMMANDS[command]()
    decision = decide(catalog, cmd)
    assert outcome(decision) == expected
    assert catalog.flows == before  # decide never changes the catalogue
    (audit,) = decision.audit
    assert audit.actor == "key_1" and audit.causation_id == str(cmd.message_id)
    assert audit.data.subject == "flow" and audit.data.subject_id == "f"
    reply = decision.reply
    assert (reply is None) == (cmd.data.source == "file")  # files wait for no answer
    if decision.refused is not None:
        assert decision.events == ()
        assert audit.data.detail["code"] == expected
        assert audit.data.owner == cmd.data.owner  # the refused principal sees it
        assert reply is None or (not reply.data.ok and reply.data.error_code == expected)
        return
    (event,) = decision.events
    assert reply is None or reply.data.ok
    if expected == "flow.deleted":
        assert isinstance(event, FlowDeleted)
        assert event.data.owner == before["f"].owner  # the owner is kept
        assert reply is None or reply.data.body["deleted"] is True
    else:
        assert isinstance(event, FlowDefined) and event.data.owner == cmd.data.owner
        assert reply is None or reply.data.body["created"] == (expected == "flow.created")
        replaced = before["f"].source if "f" in before else None
        assert event.data.replaced_source == replaced
    evolve(catalog, event)
    assert ("f" in catalog.flows) == (expected != "flow.deleted")


def test_reply_body_names_the_flow_its_owner_and_version() -> None:
    decision = decide(FlowCatalog(), define("u1", mode="create"))
    assert decision.reply is not None
    assert decision.reply.data.body == {
        "flow_id": "f",
        "owner": "u1",
        "flow_version": V2.content_hash(),
        "created": True,
        "replaced_source": None,
    }
    assert decision.reply.data.request_id == "r1" and decision.reply.actor == "key_1"


def test_a_deleted_id_is_free_again_for_anyone() -> None:
    catalog = existing("u1")
    replay(catalog, decide(catalog, delete("u1")).events)
    assert outcome(decide(catalog, define("u2", mode="create"))) == "flow.created"


def test_the_same_definition_again_writes_nothing_and_is_answered() -> None:
    catalog = FlowCatalog()
    replay(catalog, decide(catalog, define("u1")).events)
    again = decide(catalog, define("u1"))  # a new message: a PUT repeated
    assert again.events == () and again.audit == () and again.refused is None
    assert again.reply is not None and again.reply.data.ok
    assert again.reply.data.body["created"] is False
    file_catalog = existing("system", "file", FILE)
    touched = decide(file_catalog, define("system", source="file", definition=V1))
    assert touched == Decision()  # a file saved unchanged: nothing at all


def test_a_file_taking_the_same_definition_from_another_path_records_the_path() -> None:
    catalog = existing("system", "file", "/flows/old.yaml")
    moved = decide(catalog, define("system", source="file", definition=V1))
    (event,) = moved.events
    assert isinstance(event, FlowDefined) and event.data.source_path == FILE


def test_a_command_seen_on_the_log_is_only_answered_again_also_after_a_rebuild() -> None:
    catalog = FlowCatalog()
    cmd = define("u1", mode="create")
    first = decide(catalog, cmd)
    replay(catalog, first.events)
    rebuilt = FlowCatalog()
    replay(rebuilt, first.events)  # what on_assigned folds from spine.flows
    for state in (catalog, rebuilt):
        again = decide(state, cmd)  # the same message, redelivered
        assert again.events == () and again.audit == () and again.refused is None
        assert again.reply is not None and again.reply.data.ok
        assert again.reply.data.body["repeated"] is True
    removal = delete("u1")
    gone = decide(catalog, removal)
    replay(catalog, gone.events)
    again = decide(catalog, removal)
    assert again.events == () and again.reply is not None and again.reply.data.ok


def test_a_refusal_repeated_carries_the_same_audit_id() -> None:
    catalog = existing("u1")
    cmd = define("u2", mode="create")
    first, second = decide(catalog, cmd), decide(catalog, cmd)
    assert first.audit[0].message_id == second.audit[0].message_id
    other = decide(catalog, define("u2", mode="create"))
    assert other.audit[0].message_id != first.audit[0].message_id


def test_a_definition_of_another_flow_id_is_invalid() -> None:
    cmd = define("u1", flow_id="g")
    decision = decide(FlowCatalog(), cmd)
    assert decision.refused == "INVALID_FLOW" and decision.events == ()


def test_records_written_before_owners_existed_are_system_flows() -> None:
    legacy = FlowDefined.model_validate(
        {
            **FlowDefined.build(
                flow_id="f", flow_version="v", definition=V1, source="api"
            ).model_dump(mode="json", exclude={"data": {"owner"}}),
        }
    )
    catalog = FlowCatalog()
    evolve(catalog, legacy)
    assert catalog.flows["f"].owner == "system"
    assert outcome(decide(catalog, define("u1"))) == "NOT_OWNER"


def test_audit_details_say_what_was_written() -> None:
    catalog = existing("system", "file", FILE)
    decision = decide(catalog, define("system", source="file"))
    (audit,) = decision.audit
    assert isinstance(audit, AuditRecorded)
    assert audit.data.action == "flow.replaced" and audit.data.owner == "system"
    assert audit.data.detail == {
        "source": "file",
        "source_path": FILE,
        "mode": "replace",
        "flow_version": V2.content_hash(),
        "replaced_source": "file",
        "replaced_version": V1.content_hash(),
    }
