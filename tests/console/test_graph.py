"""The DAG's geometry: every node placed by its layer, edges between the right boxes."""

from __future__ import annotations

from spine_console.graph import BOX_H, BOX_W, draw

GRAPH = {
    "nodes": [
        {"id": "intake", "agent_id": "zoe", "type": "agent", "label": "intake", "x": 0, "y": 0},
        {"id": "a", "agent_id": "echo", "type": "agent", "label": "a", "x": 1, "y": 0},
        {"id": "b", "agent_id": "echo", "type": "agent", "label": "b", "x": 1, "y": 1},
        {"id": "end", "agent_id": "eddie", "type": "agent", "label": "end", "x": 2, "y": 0},
    ],
    "edges": [
        {"from": "intake", "to": "a", "condition": None},
        {"from": "intake", "to": "b", "condition": "x > 1"},
        {"from": "a", "to": "end"},
        {"from": "b", "to": "end"},
        {"from": "ghost", "to": "end"},
    ],
    "layers": 3,
    "width": 2,
}


def test_boxes_follow_layers_and_fit_the_canvas() -> None:
    drawing = draw(GRAPH, {"intake": "completed", "a": "running"})
    assert drawing is not None
    boxes = {b.id: b for b in drawing.boxes}
    assert boxes["intake"].x < boxes["a"].x == boxes["b"].x < boxes["end"].x
    assert boxes["a"].y < boxes["b"].y
    assert boxes["intake"].status == "completed" and boxes["end"].status == "pending"
    for box in drawing.boxes:
        assert 0 <= box.x and box.x + BOX_W <= drawing.width
        assert 0 <= box.y and box.y + BOX_H <= drawing.height


def test_edges_join_known_nodes_only_and_keep_conditions() -> None:
    drawing = draw(GRAPH)
    assert drawing is not None
    pairs = {(e.source, e.target): e for e in drawing.edges}
    assert set(pairs) == {("intake", "a"), ("intake", "b"), ("a", "end"), ("b", "end")}
    assert pairs[("intake", "b")].condition == "x > 1"
    assert pairs[("intake", "a")].path.startswith("M")


def test_nothing_to_draw() -> None:
    assert draw(None) is None
    assert draw({"nodes": [], "edges": []}) is None
