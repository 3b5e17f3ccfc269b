"""A flow's DAG as SVG geometry, from the gateway's layered layout (``GET /flows/{id}/graph``
or an execution's ``graph``): boxes left to right by layer, edges as curves between them.

Pure: it returns numbers and the gateway's strings; the template draws them (and escapes
every string, node ids and labels included — a tenant wrote them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BOX_W = 150
BOX_H = 48
GAP_X = 60
GAP_Y = 22
PAD = 12


@dataclass(frozen=True)
class Box:
    id: str
    label: str
    agent_id: str
    type: str
    x: int
    y: int
    status: str

    @property
    def cx(self) -> int:
        return self.x + BOX_W // 2

    @property
    def cy(self) -> int:
        return self.y + BOX_H // 2


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str
    condition: str


@dataclass(frozen=True)
class Drawing:
    width: int
    height: int
    boxes: list[Box]
    edges: list[Edge]
    box_w: int = BOX_W
    box_h: int = BOX_H


def draw(graph: dict[str, Any] | None, statuses: dict[str, str] | None = None) -> Drawing | None:
    """Place every node of ``graph``; ``statuses`` (node id → status) colours them."""
    if not graph or not graph.get("nodes"):
        return None
    statuses = statuses or {}
    layers = max(int(graph.get("layers") or 1), 1)
    width = max(int(graph.get("width") or 1), 1)
    boxes: dict[str, Box] = {}
    for node in graph["nodes"]:
        node_id = str(node["id"])
        boxes[node_id] = Box(
            id=node_id,
            label=str(node.get("label") or node_id),
            agent_id=str(node.get("agent_id") or ""),
            type=str(node.get("type") or ""),
            x=PAD + int(node.get("x", 0)) * (BOX_W + GAP_X),
            y=PAD + int(node.get("y", 0)) * (BOX_H + GAP_Y),
            status=statuses.get(node_id, "pending"),
        )
    edges = []
    for edge in graph.get("edges", []):
        source, target = boxes.get(str(edge.get("from"))), boxes.get(str(edge.get("to")))
        if source is None or target is None:
            continue
        x1, y1 = source.x + BOX_W, source.cy
        x2, y2 = target.x, target.cy
        bend = max((x2 - x1) // 2, 20)
        path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
        edges.append(Edge(source.id, target.id, path, str(edge.get("condition") or "")))
    return Drawing(
        width=2 * PAD + layers * BOX_W + (layers - 1) * GAP_X,
        height=2 * PAD + width * BOX_H + (width - 1) * GAP_Y,
        boxes=list(boxes.values()),
        edges=edges,
    )
