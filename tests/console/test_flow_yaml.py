"""A stored flow shown (and prefilled for editing) as YAML an author would write."""

from __future__ import annotations

import yaml
from spine_console.routes.flows import as_yaml
from spine_flows import load_flow_text, to_dict


def test_normalised_definition_reads_short_and_means_the_same() -> None:
    text = (
        "flow_id: f\nname: F\nnodes:\n  - id: a\n    agent_id: echo\n    config:\n"
        "      retries: 2\n  - id: b\n    agent_id: echo\n    depends_on: [a]\n"
        "    when: nodes.a.ok == true\n"
    )
    defn = load_flow_text(text, "t")
    stored = defn.model_dump(mode="json")  # what the gateway keeps and answers: every field
    shown = as_yaml(stored)
    assert shown.startswith("flow_id: f\nname: F\n")
    assert "null" not in shown and "{}" not in shown
    data = yaml.safe_load(shown)
    assert list(data)[-1] == "nodes"
    assert list(data["nodes"][1])[:2] == ["id", "agent_id"]
    # the shown text is the same flow: it validates to the same definition
    assert to_dict(load_flow_text(shown, "t")) == to_dict(defn)


def test_hostile_text_stays_data() -> None:
    shown = as_yaml({"flow_id": "x", "name": "<script>alert(1)</script>", "nodes": ["odd"]})
    assert yaml.safe_load(shown)["name"] == "<script>alert(1)</script>"
