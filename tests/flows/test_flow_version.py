"""A flow's version: equal meaning, equal hash; any change, another hash."""

from __future__ import annotations

from spine_flows import flow_version, load_flow_text, normalise, to_yaml

BASE = """\
flow_id: credit_analysis
name: Credit analysis
version: "1.0.0"
nodes:
  - id: zoe
    agent_id: zoe
    type: input
    config: {max_turns: 5, required_fields: [name, income]}
  - id: eddie
    agent_id: eddie
    type: processor
    depends_on: [zoe]
    config: {timeout: 30, retries: 2, risk_threshold: 0.7}
  - id: result
    type: output
    depends_on: [eddie]
"""

REORDERED = """\
version: "1.0.0"
nodes:
  - type: input
    config: {required_fields: [name, income], max_turns: 5}
    agent_id: zoe
    id: zoe
  - config: {risk_threshold: 0.7, retries: 2, timeout: 30.0}
    depends_on: [zoe]
    id: eddie
    agent_id: eddie
  - depends_on: [eddie]
    type: output
    id: result
name: Credit analysis
flow_id: credit_analysis
"""


def version(text: str) -> str:
    return flow_version(load_flow_text(text, "v.yaml"))


def test_version_is_a_short_hex_digest() -> None:
    v = version(BASE)
    assert len(v) == 16 and int(v, 16) >= 0


def test_key_order_and_defaults_do_not_change_the_version() -> None:
    assert version(REORDERED) == version(BASE)


def test_explicit_derived_ends_do_not_change_the_version() -> None:
    explicit = BASE.replace("nodes:\n", "entry_point: zoe\nexit_points: [result]\nnodes:\n", 1)
    assert version(explicit) == version(BASE)


def test_version_of_an_unnormalised_definition_equals_the_normalised_one() -> None:
    defn = load_flow_text(BASE, "v.yaml")
    raw = defn.model_copy(update={"entry_point": None, "exit_points": None})
    assert flow_version(raw) == flow_version(defn) == flow_version(normalise(raw))


def test_any_change_changes_the_version() -> None:
    base = version(BASE)
    changes = [
        BASE.replace("risk_threshold: 0.7", "risk_threshold: 0.8"),
        BASE.replace("max_turns: 5", "max_turns: 6"),
        BASE.replace("name: Credit analysis", "name: Credit"),
        BASE.replace('version: "1.0.0"', 'version: "1.0.1"'),
        BASE.replace("depends_on: [zoe]", "depends_on: [zoe]\n    when: input.amount > 1"),
        BASE.replace("flow_id: credit_analysis", "flow_id: credit_analysis_2"),
    ]
    versions = {version(text) for text in changes}
    assert base not in versions and len(versions) == len(changes)


def test_to_yaml_leaves_out_defaults_and_derived_ends() -> None:
    text = to_yaml(load_flow_text(BASE, "v.yaml"))
    assert "entry_point" not in text and "exit_points" not in text
    assert text.startswith("flow_id: credit_analysis\n")
    assert version(text) == version(BASE)
