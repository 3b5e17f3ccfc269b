"""``when`` conditions: a safe expression language (CEL) over an execution's data.

A condition sees two variables and nothing else:

* ``input`` — the execution's ``input_data`` map (``input.amount >= 10000``);
* ``nodes`` — node id → that node's output map (``nodes.eddie.score > 0.7``, or
  ``nodes["my-node"].ok`` for ids that are not CEL identifiers).

Expressions are Google's Common Expression Language, run by the Rust ``cel`` crate through
the ``common-expression-language`` package: no ``eval``, no attribute access on Python
objects, no I/O, no clock, linear-time regexes; evaluation is deterministic, which the
orchestrator's replayable state machine needs.

The native evaluator recurses, so we bound what reaches it: an expression is at most
:data:`MAX_CONDITION_LENGTH` characters and the data at most ~:data:`MAX_VALUE_DEPTH` levels
deep (both far below where the Rust stack overflows: ~60 kB expressions, ~10 000 levels).
Only the node outputs an expression names are handed to the evaluator, as converting data
into CEL values is most of an evaluation's cost.

A missing key is an error, not ``false`` — write ``has(nodes.review)`` or
``has(input.amount) && input.amount > 10`` to test for presence.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cel
import orjson

from .errors import ConditionError, InvalidCondition

ALLOWED_VARIABLES: frozenset[str] = frozenset({"input", "nodes"})
MAX_CONDITION_LENGTH = 2048
MAX_VALUE_DEPTH = 256

# Identifiers the CEL runtime reports as "variables" although they are its own: type
# denotations (``type(x) == int``) and the ``optional`` namespace.
_BUILTIN_NAMES = frozenset(
    {
        "int",
        "uint",
        "double",
        "bool",
        "string",
        "bytes",
        "list",
        "map",
        "null_type",
        "type",
        "dyn",
        "optional",
    }
)
# Comprehension macros bind their first argument: ``list.exists(x, x > 1)``.
_MACROS = frozenset(
    {
        "all",
        "exists",
        "exists_one",
        "existsOne",
        "map",
        "filter",
        "transformList",
        "transformMap",
        "sortBy",
    }
)

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<raw>(?:[rR][bB]?|[bB][rR])(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"[^"\n]*"|'[^'\n]*'))
  | (?P<str>[bB]?(?:\"\"\"(?:\\[\s\S]|[^\\])*?\"\"\"|'''(?:\\[\s\S]|[^\\])*?'''
                  |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
  | (?P<num>\d[\w.]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<other>[\s\S])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # ident | string | punct | num
    text: str
    value: str | None = None  # a string literal's value when it has no escapes


def _tokens(expr: str) -> list[_Token]:
    out: list[_Token] = []
    for m in _TOKEN.finditer(expr):
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind in ("raw", "str"):
            body = text.lstrip("rRbB")
            quote = 3 if body[:3] in ('"""', "'''") else 1
            inner = body[quote:-quote]
            plain = kind == "raw" or "\\" not in inner
            out.append(_Token("string", text, inner if plain else None))
        elif kind == "other":
            out.append(_Token("punct", text))
        else:
            out.append(_Token(kind or "punct", text))
    return out


def _is(tokens: list[_Token], i: int, kind: str, text: str | None = None) -> bool:
    if i < 0 or i >= len(tokens):
        return False
    tok = tokens[i]
    return tok.kind == kind and (text is None or tok.text == text)


def _analyse(expr: str) -> tuple[frozenset[str], frozenset[str], bool]:
    """Macro-bound names, node ids named statically, and whether ``nodes`` is used otherwise."""
    toks = _tokens(expr)
    bound: set[str] = set()
    for i, tok in enumerate(toks):
        if (
            tok.kind == "ident"
            and tok.text in _MACROS
            and _is(toks, i - 1, "punct", ".")
            and _is(toks, i + 1, "punct", "(")
            and _is(toks, i + 2, "ident")
            and _is(toks, i + 3, "punct", ",")
        ):
            bound.add(toks[i + 2].text)
    refs: set[str] = set()
    dynamic = False
    for i, tok in enumerate(toks):
        if tok.kind != "ident" or tok.text != "nodes" or _is(toks, i - 1, "punct", "."):
            continue
        if (
            _is(toks, i + 1, "punct", ".")
            and _is(toks, i + 2, "ident")
            and not _is(toks, i + 3, "punct", "(")
        ):
            refs.add(toks[i + 2].text)
        elif (
            _is(toks, i + 1, "punct", "[")
            and _is(toks, i + 2, "string")
            and toks[i + 2].value is not None
            and _is(toks, i + 3, "punct", "]")
        ):
            refs.add(toks[i + 2].value or "")
        else:
            dynamic = True
    return frozenset(bound), frozenset(refs), dynamic


_CEL_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n|]*)")
_EXPECTING = re.compile(r"\s*expecting \{[^}]*\}?")


def _syntax_message(exc: BaseException) -> str:
    text = str(exc)
    m = _CEL_ERROR.search(text)
    if m is None:
        detail = text.split("\n", 1)[0]
        return f"invalid condition: {detail[:200]}"
    line, column, detail = m.groups()
    detail = _EXPECTING.sub("", detail).strip()
    detail = detail.replace("mismatched input '<EOF>'", "unexpected end of the expression")
    if len(detail) > 160:
        detail = detail[:160] + "…"
    return f"invalid condition (line {line}, column {column}): {detail}"


@dataclass(frozen=True, eq=False, slots=True)
class Condition:
    """A compiled ``when`` expression; cheap to evaluate many times.

    ``node_refs`` are the node ids the expression names as ``nodes.<id>`` or
    ``nodes["<id>"]``; ``dynamic_nodes`` is true when it also reaches into ``nodes`` some
    other way (``nodes[input.key]``, ``nodes.exists(...)``), which no static check can follow.
    """

    expression: str
    node_refs: frozenset[str]
    dynamic_nodes: bool
    _program: Any = field(repr=False)

    def evaluate(self, input: Mapping[str, Any], nodes: Mapping[str, Any]) -> bool:
        """True or false, or :class:`ConditionError` naming what went wrong."""
        if not self.dynamic_nodes:
            # converting data into CEL values is most of the cost: pass only what is named
            nodes = {k: nodes[k] for k in self.node_refs if k in nodes}
        _check_data(input, "input", self.expression)
        _check_data(nodes, "nodes", self.expression)
        try:
            result = self._program.execute({"input": input, "nodes": nodes})
        except (KeyboardInterrupt, SystemExit):
            raise
        except KeyError as exc:
            key = exc.args[0] if exc.args else "?"
            raise ConditionError(
                self.expression,
                f"no such key {key!r} (use has(...) to test whether a key exists, "
                "e.g. has(nodes.review) && nodes.review.ok)",
            ) from exc
        except BaseException as exc:  # the native runtime may panic (a BaseException)
            detail = str(exc).split("\n", 1)[0][:300] or type(exc).__name__
            raise ConditionError(self.expression, detail) from exc
        if not isinstance(result, bool):
            shown = repr(result)
            if len(shown) > 80:
                shown = shown[:80] + "…"
            raise ConditionError(
                self.expression,
                f"evaluated to {type(result).__name__} {shown}, not a boolean "
                "(compare it, e.g. '== true' or '> 0')",
            )
        return result


def _check_data(value: object, name: str, expression: str) -> None:
    # orjson (fast, in C) refuses nesting past 255 levels; only what
    # it cannot encode for another reason (a Mapping that is not a dict, a huge int) needs
    # the slower walk.
    try:
        orjson.dumps(value)
    except TypeError:
        _check_depth(value, name, expression)


def _check_depth(value: object, name: str, expression: str) -> None:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            raise ConditionError(
                expression, f"{name} is nested deeper than {MAX_VALUE_DEPTH} levels"
            )
        if isinstance(item, Mapping):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        stack.extend((v, depth + 1) for v in children if isinstance(v, Mapping | list | tuple))


def compile_condition(expression: str) -> Condition:
    """Compile (or fetch from the cache) a condition; :class:`InvalidCondition` if bad."""
    if not isinstance(expression, str):
        raise InvalidCondition(repr(expression), "a condition must be a string")
    return _compile(expression)


@functools.lru_cache(maxsize=4096)
def _compile(expression: str) -> Condition:
    if not expression.strip():
        raise InvalidCondition(expression, "empty condition")
    if len(expression) > MAX_CONDITION_LENGTH:
        raise InvalidCondition(
            expression,
            f"condition is {len(expression)} characters long; the limit is {MAX_CONDITION_LENGTH}",
        )
    try:
        program = cel.compile(expression)
        names = set(program.variables())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # ValueError for syntax; a native panic is a BaseException
        raise InvalidCondition(expression, _syntax_message(exc)) from exc
    bound, refs, dynamic = _analyse(expression)
    unknown = sorted(names - ALLOWED_VARIABLES - _BUILTIN_NAMES - bound)
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        raise InvalidCondition(
            expression,
            f"unknown variable {listed}: a condition may use only 'input' (the execution's "
            "input) and 'nodes' (outputs by node id)",
        )
    return Condition(expression, refs, dynamic, program)


def evaluate_condition(expression: str, input: Mapping[str, Any], nodes: Mapping[str, Any]) -> bool:
    """Compile (cached) and evaluate in one call: the orchestrator's ``evaluate_condition``."""
    return compile_condition(expression).evaluate(input, nodes)
