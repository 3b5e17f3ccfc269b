"""A rejected flow's problems, put back where they belong: at their node and field.

The gateway answers an invalid flow with 422 ``INVALID_FLOW`` and ``problems``: strings of
the flow library's form ``source: node 'id': field: message`` (``node #3`` when the node
has no usable id; node and field both optional; a YAML syntax error says ``at line L,
column C``). This module reads them back into parts, and draws the *submitted* text's nodes
(the gateway has no graph for a flow it refused) so the page can mark the offending ones.

Pure: no I/O. Everything here is the author's text — the templates escape all of it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml

#: the gateway refuses larger flows anyway; never parse more than this for the drawing
MAX_TEXT = 1 << 20
MAX_DRAWN_NODES = 500

_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_NODE = re.compile(rf"node (?:(?P<quoted>{_QUOTED})|#(?P<index>\d+)): ")
#: a field is a dotted path without spaces (``config.timeout``, ``nodes[2].id``)
_FIELD = re.compile(r"(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+|\[\d+\])*): (?=\S)")
_WHERE = re.compile(r"at line (?P<line>\d+), column (?P<column>\d+)")


@dataclass(frozen=True)
class Problem:
    """One problem as the page shows it; ``key`` names its node (id, or ``#n``)."""

    text: str
    message: str
    source: str | None = None
    node_id: str | None = None
    node_number: int | None = None  # 1-based, when the node had no usable id
    field: str | None = None
    line: int | None = None
    column: int | None = None

    @property
    def key(self) -> str | None:
        if self.node_id is not None:
            return self.node_id
        if self.node_number is not None:
            return f"#{self.node_number}"
        return None


def _unquote(quoted: str) -> str:
    try:
        value = ast.literal_eval(quoted)  # a Python repr, as the flow library writes it
    except (ValueError, SyntaxError):
        return quoted[1:-1]
    return value if isinstance(value, str) else quoted[1:-1]


def parse(text: str, *, sourced: bool = True) -> Problem:
    """One problem string in parts; ``sourced``: it starts with ``source: `` (the
    ``problems`` of INVALID_FLOW do; other 422 messages such as AGENT_NOT_USABLE do not)."""
    text = str(text)
    rest = text
    source: str | None = None
    if sourced and not _NODE.match(rest):
        head, sep, tail = rest.partition(": ")
        if sep and tail:
            source, rest = head, tail
    node_id: str | None = None
    number: int | None = None
    found = _NODE.match(rest)
    if found:
        if found.group("quoted") is not None:
            node_id = _unquote(found.group("quoted"))
        else:
            number = int(found.group("index"))
        rest = rest[found.end() :]
    name: str | None = None
    named = _FIELD.match(rest)
    if named:
        name, rest = named.group("field"), rest[named.end() :]
    line = column = None
    where = _WHERE.search(rest)
    if where:
        line, column = int(where.group("line")), int(where.group("column"))
    return Problem(
        text=text,
        message=rest or text,
        source=source,
        node_id=node_id,
        node_number=number,
        field=name,
        line=line,
        column=column,
    )


def from_error(body: Mapping[str, Any], message: str) -> list[Problem]:
    """The problems of a gateway error body (INVALID_FLOW's ``problems``), or its one
    message read the same way (``node 'x': ...`` of AGENT_NOT_USABLE)."""
    raw = body.get("problems")
    if isinstance(raw, list) and raw:
        return [parse(str(p)) for p in raw[:200]]
    return [parse(message.removeprefix("invalid flow: "), sourced=False)]


@dataclass(frozen=True)
class NodeProblems:
    """A node's problems grouped by field (``""``: the node as a whole)."""

    key: str
    fields: dict[str, list[str]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.fields.values())


def by_node(problems: Sequence[Problem]) -> tuple[list[NodeProblems], list[Problem]]:
    """The problems at a node, grouped per node in first-seen order; and the flow's own
    (no node: a flow field, a YAML syntax error)."""
    nodes: dict[str, NodeProblems] = {}
    flow: list[Problem] = []
    for p in problems:
        key = p.key
        if key is None:
            flow.append(p)
            continue
        group = nodes.setdefault(key, NodeProblems(key))
        group.fields.setdefault(p.field or "", []).append(p.message)
    return list(nodes.values()), flow


@dataclass(frozen=True)
class Excerpt:
    """The lines around a YAML syntax error, with the column of its caret."""

    first: int  # line number of lines[0] (1-based)
    lines: list[str]
    line: int
    column: int


def excerpt(text: str, line: int | None, column: int | None, around: int = 2) -> Excerpt | None:
    if line is None or column is None:
        return None
    lines = text.splitlines()
    if not 1 <= line <= len(lines) + 1:
        return None
    first = max(1, line - around)
    shown = [ln[:200] for ln in lines[first - 1 : line + around]]
    return Excerpt(first=first, lines=shown, line=line, column=min(max(column, 1), 201))


def _load(text: str) -> Any:
    """The submitted text as data, or None when it does not read (never raises)."""
    if len(text) > MAX_TEXT:
        return None
    try:
        if text.lstrip()[:1] in ("{", "["):
            return orjson.loads(text)
        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 — any unreadable text simply has no drawing
        return None


def submitted_id(text: str) -> str | None:
    """The ``flow_id`` the submitted text names, if it reads."""
    data = _load(text)
    if isinstance(data, Mapping) and isinstance(data.get("definition"), Mapping):
        data = data["definition"]
    ident = data.get("flow_id") if isinstance(data, Mapping) else None
    return ident if isinstance(ident, str) and ident else None


def submitted_graph(text: str) -> dict[str, Any] | None:
    """The submitted flow's nodes laid out like the gateway's ``/flows/{id}/graph`` (``x``:
    depth, ``y``: index in its layer), read leniently: nodes are keyed by id or ``#n``
    (as problems name them), unknown dependencies and cycles are simply not followed."""
    data = _load(text)
    if isinstance(data, Mapping) and isinstance(data.get("definition"), Mapping):
        data = data["definition"]
    if not isinstance(data, Mapping):
        return None
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        return None
    keys: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    deps: dict[str, list[str]] = {}
    for i, raw in enumerate(raw_nodes[:MAX_DRAWN_NODES]):
        ident = raw.get("id") if isinstance(raw, Mapping) else None
        key = ident if isinstance(ident, str) and ident else f"#{i + 1}"
        if key in info:  # a duplicate id: draw it too, under its position
            key = f"#{i + 1}"
        keys.append(key)
        node = raw if isinstance(raw, Mapping) else {}
        agent = node.get("agent_id")
        kind = node.get("type")
        info[key] = {
            "id": key,
            "label": key,
            "agent_id": agent if isinstance(agent, str) else None,
            "type": kind if isinstance(kind, str) else "processor",
        }
        listed = node.get("depends_on")
        if isinstance(listed, str):
            listed = [listed]
        deps[key] = [d for d in listed if isinstance(d, str)] if isinstance(listed, list) else []
    depth = layers_of(keys, deps)
    edges = [{"from": d, "to": k} for k in keys for d in dict.fromkeys(deps[k]) if d in info]
    count = 1 + max(depth.values())
    rows: dict[int, int] = {}
    nodes = []
    for key in keys:
        layer = depth[key]
        nodes.append({**info[key], "x": layer, "y": rows.get(layer, 0)})
        rows[layer] = rows.get(layer, 0) + 1
    return {"nodes": nodes, "edges": edges, "layers": count, "width": max(rows.values())}


def layers_of(keys: Sequence[str], deps: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each node's layer: one more than its deepest known dependency; a node on a cycle
    stops growing once the layers could only be a cycle's (at most ``len(keys) - 1``)."""
    depth = dict.fromkeys(keys, 0)
    limit = max(len(keys) - 1, 0)
    for _ in range(len(keys)):
        changed = False
        for key in keys:
            best = max(
                (depth[d] + 1 for d in deps.get(key, ()) if d in depth and d != key), default=0
            )
            best = min(best, limit)
            if best > depth[key]:
                depth[key], changed = best, True
        if not changed:
            break
    return depth
