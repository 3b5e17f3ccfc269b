"""What makes an agent registration servable, decided in one place: the gateway refuses a
bad one with a 422 before it travels, the registry refuses it again when it arrives (the
bus has other writers). Pure: the endpoint's address is judged by the relay's guard."""

from __future__ import annotations

from typing import get_args
from urllib.parse import urlsplit

from .flow import NodeType
from .messages.registry import AgentInfo
from .signing import RELAY_SIGNER

#: An agent runs nodes, so its type is one of the flow's node types.
AGENT_TYPES: tuple[str, ...] = get_args(NodeType)
#: The schemes the relay speaks; anything else (``file:``, ``gopher:``) is refused.
ENDPOINT_SCHEMES = ("http", "https")


def registration_problem(info: AgentInfo) -> str | None:
    """Why ``info`` cannot be served as given, or ``None``."""
    if "." in info.agent_id:  # AgentInfo refuses it too; said here for older readers' sake
        return f"agent id {info.agent_id!r}: agent ids contain no '.'"
    if info.agent_id == RELAY_SIGNER:
        return f"agent id {RELAY_SIGNER!r} is reserved: it names the relay's signing key"
    if info.agent_type not in AGENT_TYPES:
        return f"agent_type {info.agent_type!r} is not one of {', '.join(AGENT_TYPES)}"
    if info.transport == "http" and not info.endpoint:
        return "an HTTP agent needs an endpoint"
    if info.endpoint:
        parts = urlsplit(info.endpoint)
        if parts.scheme.lower() not in ENDPOINT_SCHEMES:
            return f"endpoint {info.endpoint!r}: only http and https endpoints are accepted"
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            return f"endpoint {info.endpoint!r}: {exc}"
        if not parts.hostname:
            return f"endpoint {info.endpoint!r} names no host"
    return None
