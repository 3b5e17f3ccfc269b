"""The normal form of a flow, its version, and YAML out.

The normal form fills what an author may leave out — ``entry_point`` (the nodes without
dependencies) and ``exit_points`` (the nodes nothing depends on), both as tuples in node
order — so two files that mean the same have the same :func:`flow_version`. Node order and
``depends_on`` order are kept as written: they are the author's, and the orchestrator
dispatches ready nodes in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from spine_contracts import FlowDefinition, FlowNode

__all__ = [
    "derive_entry_points",
    "derive_exit_points",
    "flow_version",
    "normalise",
    "to_dict",
    "to_yaml",
]


def derive_entry_points(nodes: Sequence[FlowNode]) -> tuple[str, ...]:
    """Nodes without dependencies, in node order."""
    return tuple(n.id for n in nodes if not n.depends_on)


def derive_exit_points(nodes: Sequence[FlowNode]) -> tuple[str, ...]:
    """Nodes no other node depends on, in node order."""
    depended_on = {d for n in nodes for d in n.depends_on}
    return tuple(n.id for n in nodes if n.id not in depended_on)


def _in_node_order(ids: Iterable[str], nodes: Sequence[FlowNode]) -> tuple[str, ...]:
    position = {n.id: i for i, n in enumerate(nodes)}
    unique = list(dict.fromkeys(ids))
    return tuple(sorted(unique, key=lambda i: position.get(i, len(position))))


def normalise(defn: FlowDefinition) -> FlowDefinition:
    """``defn`` with ``entry_point``/``exit_points`` filled in and put in node order."""
    if defn.entry_point is None:
        entry = derive_entry_points(defn.nodes)
    elif isinstance(defn.entry_point, str):
        entry = (defn.entry_point,)
    else:
        entry = _in_node_order(defn.entry_point, defn.nodes)
    if defn.exit_points is None:
        exits = derive_exit_points(defn.nodes)
    else:
        exits = _in_node_order(defn.exit_points, defn.nodes)
    if entry == defn.entry_point and exits == defn.exit_points:
        return defn
    return defn.model_copy(update={"entry_point": entry, "exit_points": exits})


def flow_version(defn: FlowDefinition) -> str:
    """The version of a flow: the hash of its normal form (16 hex characters)."""
    return normalise(defn).content_hash()


_FLOW_KEY_ORDER = (
    "flow_id",
    "name",
    "description",
    "version",
    "entry_point",
    "exit_points",
    "timeout",
    "wait_for_agent",
    "cost",
    "metadata",
    "nodes",
)
_NODE_KEY_ORDER = ("id", "agent_id", "type", "depends_on", "when", "config", "metadata")


def to_dict(defn: FlowDefinition) -> dict[str, Any]:
    """The flow as plain data, in the order an author writes it, defaults left out.

    ``entry_point``/``exit_points`` appear only when they differ from the derived ones.
    """
    normal = normalise(defn)
    data = normal.model_dump(mode="json", exclude_defaults=True)
    if tuple(data.get("entry_point", ())) == derive_entry_points(normal.nodes):
        data.pop("entry_point", None)
    if tuple(data.get("exit_points", ())) == derive_exit_points(normal.nodes):
        data.pop("exit_points", None)
    nodes: list[dict[str, Any]] = []
    for node, raw in zip(normal.nodes, data.pop("nodes", []), strict=True):
        raw["type"] = node.type  # always shown, even when it is the default
        nodes.append({k: raw[k] for k in _NODE_KEY_ORDER if k in raw})
    out = {k: data[k] for k in _FLOW_KEY_ORDER if k in data}
    out["nodes"] = nodes
    return out


def to_yaml(defn: FlowDefinition) -> str:
    """YAML text that :func:`spine_flows.validate.load_flow_text` reads back as ``defn``."""
    data = to_dict(defn)
    text = _dump(data, allow_unicode=True)
    # PyYAML writes a few characters (NEL, LS, PS, ...) raw that its reader then takes as
    # line breaks; escaping everything non-ASCII is always faithful, if less readable.
    if yaml.load(text, Loader=_SafeLoader) != data:
        text = _dump(data, allow_unicode=False)
    return text


_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _dump(data: dict[str, Any], *, allow_unicode: bool) -> str:
    return yaml.safe_dump(
        data, sort_keys=False, allow_unicode=allow_unicode, default_flow_style=False, width=100
    )
