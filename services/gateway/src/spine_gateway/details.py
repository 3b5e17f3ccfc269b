"""An execution's detail, node by node, as a UI draws it — derived from what the read model
stores (the node rows, the execution's input, the flow it ran), never from copies of big
payloads. Pure: no I/O.

The rows say what each node's events said; this fills in what no node event says:

* a node the execution never reached has no row: ``pending`` while the execution lives,
  ``cancelled`` once it ended (the orchestrator stops every unfinished node then, without
  an event per node);
* a row still ``running``/``waiting_*``/``retrying`` in an ended execution is ``cancelled``
  (rows projected before the projection learnt that from the terminal event);
* a node's agent is its flow node's when no event named one (it failed before dispatch);
* its input: the execution's input for a node without dependencies, else its completed
  dependencies' outputs (what the orchestrator sends the agent as ``dependencies``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spine_contracts import TERMINAL_STATUSES, FlowDefinition

from .adapters.postgres import NodeRow

#: the statuses a node keeps once it has ended
TERMINAL_NODE = frozenset({"completed", "failed", "skipped", "cancelled"})


@dataclass(frozen=True)
class NodeDetail:
    """What the detail adds to a node row."""

    input: Any
    duration_ms: float | None
    pending_input: dict[str, Any] | None


def truthful_nodes(
    status: str, rows: Sequence[NodeRow], flow: FlowDefinition | None
) -> list[NodeRow]:
    """The node rows as they really stand: every flow node (the rows' order first, then
    the flow's), an ended execution's unfinished nodes ``cancelled``, the agent filled in."""
    ended = status in TERMINAL_STATUSES
    flow_nodes = {n.id: n for n in flow.nodes} if flow is not None else {}
    out: list[NodeRow] = []
    for row in rows:
        fixed = row.copy()
        if ended and fixed["status"] not in TERMINAL_NODE:
            fixed["status"] = "cancelled"
        spec = flow_nodes.get(fixed["node_id"])
        if fixed["agent_id"] is None and spec is not None:
            fixed["agent_id"] = spec.agent_id
        out.append(fixed)
    seen = {r["node_id"] for r in rows}
    for node_id, spec in flow_nodes.items():
        if node_id in seen:
            continue
        out.append(
            NodeRow(
                node_id=node_id,
                status="cancelled" if status in ("failed", "cancelled") else "pending",
                agent_id=spec.agent_id,
                attempt=0,
                output=None,
                error_message=None,
                started_at=None,
                completed_at=None,
            )
        )
    return out


def node_input(
    node_id: str,
    flow: FlowDefinition | None,
    input_data: dict[str, Any],
    rows: Mapping[str, NodeRow],
) -> Any:
    """What the node was given: the execution's input without dependencies, else
    ``{dependency: output}`` of its completed dependencies; ``None`` when unknown (no flow,
    or the execution has not reached the node)."""
    row = rows.get(node_id)
    if flow is None or row is None or row["started_at"] is None:
        return None
    spec = next((n for n in flow.nodes if n.id == node_id), None)
    if spec is None:
        return None
    if not spec.depends_on:
        return input_data
    return {
        d: rows[d]["output"]
        for d in spec.depends_on
        if d in rows and rows[d]["status"] == "completed" and rows[d]["output"] is not None
    }


def duration_ms(row: NodeRow) -> float | None:
    """From the node's first event to its end; ``None`` while it has not ended."""
    start, end = row["started_at"], row["completed_at"]
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds() * 1000)


def pending_input(asked: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The question of a node waiting for input, from its last ``node_waiting_input``."""
    if asked is None:
        return None
    return {
        "question": asked.get("question"),
        "missing_fields": list(asked.get("missing_fields") or ()),
        "turn": asked.get("turn"),
        "expires_at": asked.get("expires_at"),
    }


def node_details(
    status: str,
    input_data: dict[str, Any],
    rows: Sequence[NodeRow],
    flow: FlowDefinition | None,
    asked: Mapping[str, Mapping[str, Any]],
) -> list[tuple[NodeRow, NodeDetail]]:
    """Every node of the execution with its detail; ``asked``: the last
    ``node_waiting_input`` data by node (only a node still waiting shows it)."""
    fixed = truthful_nodes(status, rows, flow)
    by_id = {r["node_id"]: r for r in fixed}
    return [
        (
            r,
            NodeDetail(
                input=node_input(r["node_id"], flow, input_data, by_id),
                duration_ms=duration_ms(r),
                pending_input=pending_input(asked.get(r["node_id"]))
                if r["status"] == "waiting_input"
                else None,
            ),
        )
        for r in fixed
    ]
