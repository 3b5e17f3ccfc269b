"""Read and check a flow: YAML text, a file, or a dict from the API.

Every entry point returns a normalised :class:`FlowDefinition` (``entry_point`` and
``exit_points`` filled in, see :mod:`spine_flows.normalise`) or raises
:class:`FlowValidationError` listing every problem found, each naming the source, the node
and the field. Nothing else escapes, whatever the input: a bad file must never take the
catalogue down.

The checks run in three passes, each only when the previous one found nothing (so a
message never stems from an earlier mistake):

1. shape — YAML syntax and duplicate keys, size (bytes, expanded values, depth, nodes),
   only values JSON carries unchanged (no dates, bytes, NaN, >64-bit ints, non-string
   keys: the definition must hash the same after a trip over the bus), a mapping at the
   top, unknown keys, ``nodes`` a list of mappings;
2. types — the pydantic models of :mod:`spine_contracts.flow`;
3. meaning — ids, duplicates, ``depends_on``, cycles, agents per node type, ``when``
   conditions, ``entry_point``/``exit_points``, ``pricing``/``max_credits``, and no model
   endpoint or key in a node's ``config`` (:data:`ENDPOINT_CONFIG_KEYS`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError
from spine_contracts import FlowDefinition, FlowNode

from .conditions import compile_condition
from .errors import FlowValidationError, InvalidCondition, Problem
from .normalise import derive_entry_points, normalise

__all__ = [
    "AGENT_NODE_TYPES",
    "ENDPOINT_CONFIG_KEYS",
    "ID_PATTERN",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "load_flow_file",
    "load_flow_text",
    "validate_flow",
    "validate_flow_dict",
]

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 500
# What a flow may expand to once YAML aliases are resolved, and how deep it may nest: a
# few anchors can otherwise make a small file enormous ("billion laughs").
MAX_VALUES = 100_000
MAX_DEPTH = 64

ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
ID_RULE = "1-128 letters, digits, '_', '.' or '-'"
AGENT_NODE_TYPES = ("input", "processor", "conditional")

#: Node config keys that would choose where a model request goes or with which key, in
#: any case and with ``_``/``-`` or none (``apiKey``, ``API-KEY``). The endpoint and key
#: are the agent's own (its environment, DESIGN §14): config travels inside tasks and is
#: written by tenants. ``spine_agent.llm`` refuses them again at run time.
ENDPOINT_CONFIG_KEYS = frozenset(
    {
        "api_base",
        "api_key",
        "api_secret",
        "auth_token",
        "azure_endpoint",
        "base_url",
        "endpoint",
        "websocket_base_url",
    }
)
_SQUASHED_ENDPOINT_KEYS = frozenset(k.replace("_", "") for k in ENDPOINT_CONFIG_KEYS)

FLOW_KEYS: tuple[str, ...] = tuple(FlowDefinition.model_fields)
NODE_KEYS: tuple[str, ...] = tuple(FlowNode.model_fields)


# ---------------------------------------------------------------------------------- YAML

_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Safe loading that also refuses a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _yaml_problem(source: str, exc: BaseException) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        return Problem(source, None, None, f"YAML syntax error{where}: {what}{context}")
    if isinstance(exc, RecursionError):
        return Problem(source, None, None, "YAML nested too deeply")
    detail = str(exc).split("\n", 1)[0][:200] or type(exc).__name__
    return Problem(source, None, None, f"YAML could not be read: {detail}")


def load_flow_text(text: str, source: str) -> FlowDefinition:
    """Parse and validate a flow's YAML (or JSON) text; ``source`` names it in messages."""
    source = str(source)
    if not isinstance(text, str):
        raise FlowValidationError([Problem(source, None, None, "flow text must be a string")])
    size = len(text.encode("utf-8", "replace")) if len(text) <= MAX_FILE_BYTES else len(text)
    if size > MAX_FILE_BYTES:
        raise FlowValidationError(
            [Problem(source, None, None, f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")]
        )
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # libyaml and the constructors raise many kinds
        raise FlowValidationError([_yaml_problem(source, exc)]) from None
    if data is None:
        raise FlowValidationError(
            [Problem(source, None, None, "empty file: a flow is a mapping with flow_id and nodes")]
        )
    return validate_flow_dict(data, source)


def load_flow_file(path: str | os.PathLike[str]) -> FlowDefinition:
    """Read and validate ``path``; the path as given names the source in messages."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FlowValidationError([Problem(source, None, None, f"cannot read: {reason}")]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise FlowValidationError(
            [Problem(source, None, None, f"file is larger than {MAX_FILE_BYTES} bytes")]
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FlowValidationError(
            [Problem(source, None, None, f"not UTF-8 text (byte {exc.start})")]
        ) from None
    return load_flow_text(text, source)


# ------------------------------------------------------------------------------- helpers


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:60] + "…"


_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


def _plain_value_problem(value: object) -> str | None:
    """Why ``value`` cannot travel as JSON unchanged (a definition must hash the same
    after a trip over the bus), or None."""
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return None
        return f"number {_show(value)} does not fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, Mapping | list | tuple):
        return None
    kind = type(value).__name__
    return f"a {kind} value is not allowed here; write it as a quoted string"


def _add_at(obj: object, path: tuple[int | str, ...], message: str, out: _Collector) -> None:
    index: int | None = None
    if len(path) >= 2 and path[0] == "nodes" and isinstance(path[1], int):
        index, field = path[1], _loc_text(path[2:])
    else:
        field = _loc_text(path)
    label = _node_label(obj.get("nodes") if isinstance(obj, Mapping) else None, index)
    out.add(message, node_id=label, field=field or None, index=index)


def _check_values(obj: object, out: _Collector) -> bool:
    """Bound the work every later pass does (aliases can share and even cycle) and refuse
    values JSON cannot carry. False when the flow must not be looked at further."""
    count = 0
    stack: list[tuple[object, tuple[int | str, ...]]] = [(obj, ())]
    while stack:
        item, path = stack.pop()
        count += 1
        if count > MAX_VALUES:
            out.add(f"flow holds more than {MAX_VALUES} values (YAML aliases expanding?)")
            return False
        if len(path) >= MAX_DEPTH:
            out.add(f"flow is nested deeper than {MAX_DEPTH} levels")
            return False
        problem = _plain_value_problem(item)
        if problem is not None:
            _add_at(obj, path, problem, out)
            if len(out.problems) >= 50:
                return False
            continue
        children: list[tuple[object, tuple[int | str, ...]]] = []
        if isinstance(item, Mapping):
            for key, value in item.items():
                if isinstance(key, str):
                    children.append((value, (*path, key)))
                else:
                    _add_at(obj, path, f"key {_show(key)} is not a string", out)
        elif isinstance(item, list | tuple):
            children.extend((v, (*path, i)) for i, v in enumerate(item))
        stack.extend(reversed(children))  # popped in document order
    return not out.problems


class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(
        self,
        message: str,
        *,
        node_id: str | None = None,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        self.problems.append(Problem(self.source, node_id, field, message, index))

    def raise_if_any(self) -> None:
        if self.problems:
            raise FlowValidationError(self.problems)


def _node_label(raw_nodes: object, index: int | None) -> str | None:
    if index is not None and isinstance(raw_nodes, list | tuple) and 0 <= index < len(raw_nodes):
        raw = raw_nodes[index]
        if isinstance(raw, Mapping):
            ident = raw.get("id")
            if isinstance(ident, str) and ident:
                return ident
    return None


# ---------------------------------------------------------------------------- pass 1


def _check_shape(obj: object, out: _Collector) -> None:
    if not _check_values(obj, out):
        return
    if not isinstance(obj, Mapping):
        out.add(f"the top level must be a mapping (flow_id, nodes, ...), not {_show(obj)}")
        return
    for key in obj:
        if key not in FLOW_KEYS:
            out.add("unknown key" + _suggest(key, FLOW_KEYS), field=key)
    if "nodes" not in obj:
        out.add("missing: a flow needs a list of nodes", field="nodes")
        return
    nodes = obj["nodes"]
    if not isinstance(nodes, list | tuple):
        out.add(f"must be a list of nodes, not {_show(nodes)}", field="nodes")
        return
    if not nodes:
        out.add("a flow needs at least one node", field="nodes")
        return
    if len(nodes) > MAX_NODES:
        out.add(f"{len(nodes)} nodes; the limit is {MAX_NODES}", field="nodes")
        return
    for index, raw in enumerate(nodes):
        label = _node_label(nodes, index)
        if not isinstance(raw, Mapping):
            out.add(f"a node must be a mapping (id, agent_id, ...), not {_show(raw)}", index=index)
            continue
        for key in raw:
            if key not in NODE_KEYS:
                out.add(
                    "unknown key" + _suggest(key, NODE_KEYS), node_id=label, field=key, index=index
                )
    entry = obj.get("entry_point")
    if not (
        entry is None
        or isinstance(entry, str)
        or (isinstance(entry, list | tuple) and all(isinstance(e, str) for e in entry))
    ):
        out.add(f"must be a node id or a list of node ids, not {_show(entry)}", field="entry_point")


# ---------------------------------------------------------------------------- pass 2


def _loc_text(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _type_message(err: Mapping[str, Any], field: str) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "missing (required)"
    if field == "flow_id" and kind == "string_too_short":
        return "must not be empty"
    if field == "id" and kind == "string_too_short":
        return "must not be empty"
    message = str(err.get("msg", "invalid"))
    message = message.replace("Input should be", "must be").replace("String should", "must")
    message = message.replace("a valid tuple", "a list").replace("a valid dictionary", "a mapping")
    message = message.replace("Value error, ", "")
    shown = f" (got {_show(err.get('input'))})"
    if field == "version" and kind == "string_type":
        return f'must be a string; quote it, e.g. version: "1.0.0"{shown}'
    if kind == "string_type" and isinstance(err.get("input"), bool):
        return f"{message}{shown}; YAML reads yes/no/on/off/true/false as booleans: quote it"
    return message + shown


def _check_types(obj: Mapping[str, Any], out: _Collector) -> FlowDefinition | None:
    try:
        return FlowDefinition.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    nodes = obj.get("nodes")
    seen: set[tuple[int | None, str]] = set()
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            continue  # reported by pass 1, with a suggestion
        if loc and loc[0] == "entry_point":
            continue  # reported by pass 1 without pydantic's per-union-member noise
        index: int | None = None
        if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
            index = loc[1]
            field = _loc_text(loc[2:])
        else:
            field = _loc_text(loc)
        if (index, field) in seen:
            continue
        seen.add((index, field))
        label = _node_label(nodes, index) if index is not None else None
        out.add(_type_message(err, field), node_id=label, field=field or None, index=index)
    if not out.problems:  # never let a ValidationError pass silently
        out.add("invalid flow")
    return None


# ---------------------------------------------------------------------------- pass 3


def _find_cycles(nodes: Sequence[FlowNode], known: set[str]) -> list[list[str]]:
    order = {n.id: i for i, n in enumerate(nodes)}
    edges = {n.id: [d for d in n.depends_on if d in known and d != n.id] for n in nodes}
    colour: dict[str, int] = {}  # 1 on the path, 2 done
    cycles: dict[tuple[str, ...], list[str]] = {}
    for start in edges:
        if start in colour:
            continue
        path: list[str] = [start]
        iters = [iter(edges[start])]
        colour[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                iters.pop()
                continue
            state = colour.get(nxt)
            if state == 1:
                loop = path[path.index(nxt) :]
                first = min(range(len(loop)), key=lambda i: order[loop[i]])
                loop = loop[first:] + loop[:first]
                cycles.setdefault(tuple(loop), loop + [loop[0]])
            elif state is None:
                colour[nxt] = 1
                path.append(nxt)
                iters.append(iter(edges[nxt]))
    return list(cycles.values())


def _ancestors(nodes: Sequence[FlowNode]) -> dict[str, set[str]]:
    deps = {n.id: [d for d in n.depends_on if d != n.id] for n in nodes}
    result: dict[str, set[str]] = {}
    for node in nodes:
        seen: set[str] = set()
        stack = list(deps.get(node.id, ()))
        while stack:
            d = stack.pop()
            if d in seen or d not in deps:
                continue
            seen.add(d)
            stack.extend(deps[d])
        result[node.id] = seen
    return result


def _check_meaning(defn: FlowDefinition, out: _Collector) -> FlowDefinition:
    if not ID_PATTERN.fullmatch(defn.flow_id):
        out.add(f"{defn.flow_id!r} is not a valid flow id ({ID_RULE})", field="flow_id")
    nodes = defn.nodes
    first_index: dict[str, int] = {}
    for index, node in enumerate(nodes):
        if node.id in first_index:
            out.add(
                f"duplicate node id (first used by node #{first_index[node.id] + 1})",
                node_id=node.id,
                field="id",
                index=index,
            )
        else:
            first_index[node.id] = index
        if not ID_PATTERN.fullmatch(node.id):
            out.add(
                f"{node.id!r} is not a valid node id ({ID_RULE})",
                node_id=node.id,
                field="id",
                index=index,
            )
    known = set(first_index)
    for index, node in enumerate(nodes):

        def bad(message: str, field: str, node: FlowNode = node, index: int = index) -> None:
            out.add(message, node_id=node.id, field=field, index=index)

        if node.type in AGENT_NODE_TYPES:
            if node.agent_id is None:
                article = "an" if node.type == "input" else "a"
                bad(
                    f"missing: {article} {node.type} node runs an agent, so it needs an agent_id",
                    "agent_id",
                )
            elif not ID_PATTERN.fullmatch(node.agent_id):
                bad(f"{node.agent_id!r} is not a valid agent id ({ID_RULE})", "agent_id")
        elif node.agent_id is not None:
            bad(
                "an output node runs no agent (it returns its dependencies' outputs); "
                "remove agent_id or make the node a processor",
                "agent_id",
            )
        if node.type == "output" and not node.depends_on:
            bad(
                "an output node returns its dependencies' outputs, so it needs depends_on",
                "depends_on",
            )
        listed: set[str] = set()
        for dep in node.depends_on:
            if dep in listed:
                bad(f"{dep!r} is listed twice", "depends_on")
                continue
            listed.add(dep)
            if dep == node.id:
                bad("a node cannot depend on itself", "depends_on")
            elif dep not in known:
                bad(f"unknown node {dep!r}" + _suggest(dep, known), "depends_on")
        for key in node.config.model_extra or {}:
            if _names_endpoint(key):
                bad(
                    "a node config may not set a model's endpoint or key: the agent takes "
                    "them from its own environment (config travels inside tasks)",
                    f"config.{key}",
                )
    _check_pricing(defn, out)
    cycles = _find_cycles(nodes, known)
    for loop in cycles:
        out.add(
            "dependency cycle " + " -> ".join(loop) + " (each depends on the next)",
            node_id=loop[0],
            field="depends_on",
            index=first_index[loop[0]],
        )
    ancestors = _ancestors(nodes) if not cycles else {}
    for index, node in enumerate(nodes):
        if node.when is None:
            continue
        try:
            condition = compile_condition(node.when)
        except InvalidCondition as exc:
            out.add(exc.message, node_id=node.id, field="when", index=index)
            continue
        for ref in sorted(condition.node_refs):
            if ref not in known:
                out.add(
                    f"refers to unknown node {ref!r}" + _suggest(ref, known),
                    node_id=node.id,
                    field="when",
                    index=index,
                )
            elif ref == node.id:
                out.add(
                    "a node's condition cannot read its own output",
                    node_id=node.id,
                    field="when",
                    index=index,
                )
            elif ancestors and ref not in ancestors.get(node.id, set()):
                out.add(
                    f"refers to node {ref!r}, which is not upstream of this node, so its "
                    f"output may not exist yet; add it to depends_on",
                    node_id=node.id,
                    field="when",
                    index=index,
                )
    _check_ends(defn, known, out)
    out.raise_if_any()
    return normalise(defn)


def _names_endpoint(key: str) -> bool:
    return re.sub(r"[\s_\-]", "", key.lower()) in _SQUASHED_ENDPOINT_KEYS


def _check_pricing(defn: FlowDefinition, out: _Collector) -> None:
    """A priced flow reserves ``max_credits`` up front (DESIGN §14): without it there is
    no bound on what its tokens may cost, and below ``cost`` not even the base price fits."""
    for model in defn.pricing:
        if not model.strip():
            out.add(
                'a model name must not be empty (use "*" for every model not named)',
                field="pricing",
            )
    if defn.pricing and defn.max_credits is None:
        out.add(
            "missing: a flow with pricing must set max_credits, what is reserved up front "
            "for its base price and its tokens",
            field="max_credits",
        )
    if defn.max_credits is not None and defn.max_credits < defn.cost:
        out.add(
            f"{defn.max_credits} is below the flow's cost ({defn.cost}); max_credits "
            "covers the base price and the tokens",
            field="max_credits",
        )


def _check_ends(defn: FlowDefinition, known: set[str], out: _Collector) -> None:
    by_id = {n.id: n for n in defn.nodes}
    entry = defn.entry_point
    if entry is not None:
        listed = (entry,) if isinstance(entry, str) else tuple(entry)
        if not listed:
            out.add(
                "must name at least one node (or be left out to derive it)", field="entry_point"
            )
        _check_listed(listed, known, "entry_point", out)
        roots = derive_entry_points(defn.nodes)
        for ident in dict.fromkeys(listed):
            node = by_id.get(ident)
            if node is not None and node.depends_on:
                out.add(
                    f"node {ident!r} depends on {node.depends_on[0]!r}, so it cannot be "
                    "an entry point",
                    field="entry_point",
                )
        for root in roots:
            if root not in listed:
                out.add(
                    f"node {root!r} has no dependencies, so it starts too; list it here "
                    "or give it depends_on",
                    field="entry_point",
                )
    exits = defn.exit_points
    if exits is not None:
        if not exits:
            out.add(
                "must name at least one node (or be left out to derive it)", field="exit_points"
            )
        _check_listed(exits, known, "exit_points", out)


def _check_listed(listed: Sequence[str], known: set[str], field: str, out: _Collector) -> None:
    seen: set[str] = set()
    for ident in listed:
        if ident in seen:
            out.add(f"{ident!r} is listed twice", field=field)
        elif ident not in known:
            out.add(f"unknown node {ident!r}" + _suggest(ident, known), field=field)
        seen.add(ident)


# -------------------------------------------------------------------------------- entry


def validate_flow_dict(obj: object, source: str) -> FlowDefinition:
    """Validate plain data (parsed YAML, an API body) into a normalised definition."""
    out = _Collector(str(source))
    try:
        _check_shape(obj, out)
        out.raise_if_any()
        assert isinstance(obj, Mapping)
        defn = _check_types(obj, out)
        out.raise_if_any()
        assert defn is not None
        return _check_meaning(defn, out)
    except FlowValidationError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a bug here must still read as a rejected flow
        detail = str(exc).split("\n", 1)[0][:200] or type(exc).__name__
        raise FlowValidationError(
            out.problems + [Problem(out.source, None, None, f"flow could not be checked: {detail}")]
        ) from exc


def validate_flow(defn: FlowDefinition, source: str) -> FlowDefinition:
    """Re-check an already typed definition (e.g. one built in code) and normalise it."""
    return validate_flow_dict(defn.model_dump(mode="python", exclude_defaults=True), source)
