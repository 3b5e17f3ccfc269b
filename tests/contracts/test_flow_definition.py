"""``FlowDefinition.content_hash``: equal meaning, equal hash; any real change, a new one."""

from __future__ import annotations

import pytest
from spine_contracts import FlowDefinition, FlowNode, NodeConfig


def flow(*nodes: FlowNode, **fields: object) -> FlowDefinition:
    default_nodes = (
        FlowNode(id="in", type="input"),
        FlowNode(id="work", agent_id="echo", depends_on=("in",)),
        FlowNode(id="out", type="output", depends_on=("work",)),
    )
    return FlowDefinition(flow_id="echo", nodes=nodes or default_nodes, **fields)  # type: ignore[arg-type]


def test_explicit_defaults_hash_like_omitted_ones() -> None:
    terse = flow()
    verbose = flow(
        FlowNode(
            id="in",
            type="input",
            agent_id=None,
            depends_on=(),
            when=None,
            config=NodeConfig(),
            metadata={},
        ),
        FlowNode(
            id="work",
            agent_id="echo",
            type="processor",
            depends_on=("in",),
            config=NodeConfig(retries=0, retry_backoff=1.0, timeout=None, required_fields=()),
        ),
        FlowNode(id="out", type="output", depends_on=("work",), metadata={}),
        name="",
        description="",
        version="1.0.0",
        entry_point=None,
        exit_points=None,
        timeout=None,
        cost=1,
        metadata={},
    )

    assert terse == verbose
    assert terse.content_hash() == verbose.content_hash()


def test_hash_ignores_key_order_and_number_spelling() -> None:
    a = flow(metadata={"owner": "ops", "tags": ["x"]}, timeout=30)
    b = flow(metadata={"tags": ["x"], "owner": "ops"}, timeout=30.0)
    assert a.content_hash() == b.content_hash()


def test_hash_is_stable_and_short() -> None:
    digest = flow().content_hash()
    assert digest == flow().content_hash()
    assert len(digest) == 16 and int(digest, 16) >= 0


@pytest.mark.parametrize(
    "changed",
    [
        FlowNode(id="work", agent_id="other", depends_on=("in",)),
        FlowNode(id="work", agent_id="echo"),
        FlowNode(id="work", agent_id="echo", depends_on=("in",), config=NodeConfig(retries=2)),
        FlowNode(id="work", agent_id="echo", depends_on=("in",), config=NodeConfig(model="x")),
        FlowNode(id="work", agent_id="echo", depends_on=("in",), when="input.ok"),
        FlowNode(id="work", agent_id="echo", depends_on=("in",), metadata={"k": 1}),
        FlowNode(id="work", agent_id="echo", depends_on=("in",), type="conditional"),
    ],
    ids=["agent", "depends_on", "config", "extra-config", "when", "metadata", "type"],
)
def test_a_changed_node_changes_the_hash(changed: FlowNode) -> None:
    base = flow()
    edited = flow(base.nodes[0], changed, base.nodes[2])
    assert edited != base
    assert edited.content_hash() != base.content_hash()


@pytest.mark.parametrize(
    "fields",
    [{"cost": 5}, {"timeout": 60}, {"version": "1.1.0"}, {"entry_point": "in"}, {"name": "Echo"}],
)
def test_a_changed_flow_field_changes_the_hash(fields: dict[str, object]) -> None:
    assert flow(**fields).content_hash() != flow().content_hash()
