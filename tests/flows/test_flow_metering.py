"""Flow validation for model-backed flows (DESIGN §14): ``pricing`` needs ``max_credits`` of
at least the flow's cost, and no node config may name a model's endpoint or key — each
refusal located by node and field, as the gateway's 422 and the loader's log show it."""

from __future__ import annotations

import pytest
from spine_flows import FlowValidationError, Problem, load_flow_text, validate_flow_dict

SRC = "flows/x.yaml"
NODES = "nodes:\n  - {id: ask, agent_id: llm}\n"


def problems(text: str) -> list[Problem]:
    with pytest.raises(FlowValidationError) as info:
        load_flow_text(text, SRC)
    return info.value.problems


def located(text: str) -> list[tuple[str | None, str | None]]:
    return [(p.node_id, p.field) for p in problems(text)]


def test_a_priced_flow_with_max_credits_is_accepted() -> None:
    defn = load_flow_text(
        "flow_id: x\ncost: 2\nmax_credits: 50\n"
        "pricing:\n  gpt-4o-mini: {input: 0.15, output: 0.6}\n  '*': {input: 1, output: 2}\n"
        + NODES,
        SRC,
    )
    assert defn.max_credits == 50 and set(defn.pricing) == {"gpt-4o-mini", "*"}


def test_pricing_without_max_credits_is_refused() -> None:
    (p,) = problems("flow_id: x\npricing: {'*': {input: 1, output: 1}}\n" + NODES)
    assert (p.node_id, p.field) == (None, "max_credits")
    assert "pricing must set max_credits" in p.message


def test_max_credits_below_the_cost_is_refused() -> None:
    (p,) = problems(
        "flow_id: x\ncost: 5\nmax_credits: 4\npricing: {'*': {input: 1, output: 1}}\n" + NODES
    )
    assert p.field == "max_credits" and "below the flow's cost (5)" in p.message


def test_an_empty_model_name_is_refused() -> None:
    text = "flow_id: x\nmax_credits: 5\npricing: {'': {input: 1, output: 1}}\n" + NODES
    assert located(text) == [(None, "pricing")]
    assert located(text.replace("''", "'  '")) == [(None, "pricing")]


def test_a_negative_price_is_refused_by_type() -> None:
    text = "flow_id: x\nmax_credits: 5\npricing: {m: {input: -1, output: 1}}\n" + NODES
    assert located(text) == [(None, "pricing.m.input")]


@pytest.mark.parametrize(
    "key", ["base_url", "api_key", "api_base", "API_KEY", "apiKey", "Base-URL", "endpoint"]
)
def test_a_node_config_naming_an_endpoint_or_key_is_refused_at_node_and_field(key: str) -> None:
    text = (
        "flow_id: x\nnodes:\n"
        "  - {id: plain, agent_id: llm, config: {prompt: hi}}\n"
        f"  - id: ask\n    agent_id: llm\n    config: {{timeout: 5, '{key}': http://10.0.0.1}}\n"
    )
    (p,) = problems(text)
    assert (p.source, p.node_id, p.field) == (SRC, "ask", f"config.{key}")
    assert "endpoint or key" in p.message and "environment" in p.message
    assert "10.0.0.1" not in str(p)  # the value (maybe a key) is not echoed


def test_every_offending_key_of_every_node_is_listed() -> None:
    obj = {
        "flow_id": "x",
        "nodes": [
            {"id": "a", "agent_id": "llm", "config": {"api_key": "sk-1", "base_url": "u"}},
            {"id": "b", "agent_id": "llm", "config": {"api_base": "u"}},
        ],
    }
    with pytest.raises(FlowValidationError) as info:
        validate_flow_dict(obj, "api")
    assert [(p.node_id, p.field) for p in info.value.problems] == [
        ("a", "config.api_key"),
        ("a", "config.base_url"),
        ("b", "config.api_base"),
    ]
    assert "sk-1" not in str(info.value)


def test_similar_keys_that_name_no_endpoint_pass() -> None:
    defn = load_flow_text(
        "flow_id: x\nnodes:\n"
        "  - {id: a, agent_id: llm, config: {base: 1, key_field: name, url_template: t}}\n",
        SRC,
    )
    assert defn.nodes[0].config.model_extra == {"base": 1, "key_field": "name", "url_template": "t"}
