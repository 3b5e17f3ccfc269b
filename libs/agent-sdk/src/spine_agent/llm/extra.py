"""Fail early and clearly when the ``llm`` extra is not installed.

The provider SDKs are imported only when a provider is built (each takes seconds), so
without this check a missing one would surface as an ImportError deep in a task.
"""

from __future__ import annotations

from importlib.util import find_spec

REQUIRED = ("jinja2", "openai", "anthropic")


def _installed(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


MISSING = [name for name in REQUIRED if not _installed(name)]
if MISSING:
    raise ImportError(
        f"spine_agent.llm needs the llm extra ({', '.join(MISSING)} missing): "
        "pip install 'spine-agent-sdk[llm]'"
    )
