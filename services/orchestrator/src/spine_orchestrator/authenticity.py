"""Which agent must have signed a result, and whether it did (docs/security.md).

The orchestrator accepts an ``AgentResult`` only with the signature of the agent the
task was sent to — the node's agent in the execution's flow, never the ``agent_id`` the
result claims — or, for an agent whose catalogue entry says transport ``http``, of the
relay that speaks for it (:data:`~spine_contracts.signing.RELAY_SIGNER`). The keys come
from the agent catalogue (:class:`~spine_orchestrator.catalog.AgentCatalog`), which
``spine-admin``'s ``IssueAgent`` fills through ``spine.registry.events``.

A result for an execution this partition does not hold live (unknown, or finished)
changes nothing whatever it carries; it is checked against the agent it names, so an
unsigned or forged one is still reported.
"""

from __future__ import annotations

from spine_contracts import AgentResult
from spine_contracts.signing import SignatureRefused, check
from spine_kafka.clients import Incoming

from .catalog import AgentCatalog
from .domain import AnyState, ExecutionState


def expected_agent(state: AnyState | None, result: AgentResult) -> str:
    """The agent the task of ``result``'s node was sent to."""
    if isinstance(state, ExecutionState):
        try:
            agent_id = state.node(result.data.node_id).agent_id
        except KeyError:
            agent_id = None
        if agent_id is not None:
            return agent_id
    return result.data.agent_id


def verify_result(
    incoming: Incoming, state: AnyState | None, catalog: AgentCatalog, prefix: str
) -> None:
    """Raise :class:`SignatureRefused` unless ``incoming`` (an ``AgentResult``) carries the
    signature of the agent its task went to (or of the relay, for an HTTP agent)."""
    result = incoming.message
    assert isinstance(result, AgentResult)
    signer, public_key = catalog.signing_key(expected_agent(state, result))
    topic = incoming.topic[len(prefix) :] if prefix else incoming.topic
    key = incoming.key.encode() if incoming.key is not None else None
    failure = check(incoming.headers, topic, key, incoming.value, public_key)
    if failure is not None:
        raise SignatureRefused.of(failure, result.type, signer)
