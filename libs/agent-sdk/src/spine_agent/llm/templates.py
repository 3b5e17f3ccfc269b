"""System and prompt templates, rendered in Jinja2's immutable sandbox.

Tenants write these templates and they run inside a process that holds a provider key,
so a template may read the values it is given and nothing else:

* :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`: no attribute that leads to
  Python internals (``__class__``, ``__globals__``, ``mro`` …), no mutation of the values;
  a template that tries is refused (:class:`TemplateRefused`), never rendered partially;
* :class:`~jinja2.StrictUndefined`: a misspelt variable is an error naming it, not an empty
  string sent to a paid model;
* bounded work: the rendered text is cut off at ``max_chars`` (an error), ``range`` and the
  repetition operators (``'x' * n``, ``n ** m``) are capped per render.

What remains unbounded is a loop nested over large input (``{% for a in s %}{% for b in s
%}``): it produces no output and calls nothing the sandbox sees. A task's input is bounded
by the bus's message size, so such a template is slow, not endless; an agent that renders
untrusted templates at scale should run them under a CPU limit.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import TemplateError as JinjaTemplateError
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

from .errors import TemplateError, TemplateRefused

#: Longest rendered template: far above any sane prompt, far below a memory problem.
MAX_RENDERED_CHARS = 200_000
#: Iterations handed out by ``range`` over one render, all calls together.
MAX_RANGE_PER_RENDER = MAX_RANGE
#: Largest exponent of ``**`` (``10 ** 100000`` is a slow, huge integer).
MAX_EXPONENT = 64


class _Budget:
    """Work one render may still do; shared by its ``range`` calls and operators."""

    def __init__(self) -> None:
        self.iterations = MAX_RANGE_PER_RENDER

    def spend_iterations(self, n: int) -> None:
        self.iterations -= n
        if self.iterations < 0:
            raise SecurityError(f"range() over more than {MAX_RANGE_PER_RENDER} items in total")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with ``*`` and ``**`` sized before they run."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        limit: int = context.get("__spine_max_chars__", MAX_RENDERED_CHARS)
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
                    if len(seq) * times > limit:
                        raise SecurityError(f"a repetition longer than {limit} items")
            return operator.mul(left, right)
        if op == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"an exponent above {MAX_EXPONENT}")
            return operator.pow(left, right)
        return super().call_binop(context, op, left, right)


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@lru_cache(maxsize=256)
def _compile(source: str) -> Template:
    # Flows reuse a handful of templates: compile each once per process.
    return _ENV.from_string(source)


def _budgeted_range(budget: _Budget) -> Callable[..., range]:
    def bounded_range(*args: int) -> range:
        r = range(*args)
        if len(r) > MAX_RANGE:
            raise SecurityError(f"range() of more than {MAX_RANGE} items")
        budget.spend_iterations(len(r))
        return r

    return bounded_range


def render(
    source: str,
    variables: Mapping[str, Any],
    *,
    name: str = "prompt",
    max_chars: int = MAX_RENDERED_CHARS,
) -> str:
    """``source`` rendered over ``variables``, or a :class:`TemplateError` naming ``name``."""
    budget = _Budget()
    try:
        template = _compile(source)
        context = {
            **variables,
            "range": _budgeted_range(budget),
            "__spine_max_chars__": max_chars,
        }
        return "".join(_bounded(template.generate(context), max_chars, name))
    except SecurityError as exc:
        raise TemplateRefused(f"template {name!r} refused by the sandbox: {exc}") from None
    except UndefinedError as exc:
        raise TemplateError(f"template {name!r}: {exc}") from None
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template {name!r}: line {exc.lineno}: {exc.message}") from None
    except TemplateError:
        raise
    except JinjaTemplateError as exc:
        raise TemplateError(f"template {name!r}: {exc}") from None
    except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
        raise TemplateError(f"template {name!r}: {type(exc).__name__}: {exc}") from None


def _bounded(chunks: Iterator[str], max_chars: int, name: str) -> Iterator[str]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_chars:
            raise TemplateError(f"template {name!r} renders more than {max_chars} characters")
        yield chunk
