"""A layered layout of a flow's DAG, computed server-side so every client draws the same
picture (``GET /flows/{id}/graph``, an execution's ``graph``). Pure: no I/O, no clock.

Longest-path layering: a node's layer is one more than its deepest dependency's, so every
edge points to a later layer and a chain is a row of layers. Within a layer, nodes are
ordered by the mean position of their dependencies (fewer crossings), ties by the order
the flow lists them in: the same flow always gets the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """``layer``: the depth (0 for a node without dependencies); ``index``: its position
    within the layer, from 0."""

    layer: int
    index: int


def layered_layout(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, Placement]:
    """Every node's placement. ``edges`` are ``(from, to)``; an edge naming an unknown node
    is ignored. A cycle (a validated flow has none) does not fail: its first node in
    definition order is placed after what precedes it, ignoring the edges still open."""
    order = {n: i for i, n in enumerate(dict.fromkeys(nodes))}
    preds: dict[str, list[str]] = {n: [] for n in order}
    succs: dict[str, list[str]] = {n: [] for n in order}
    for src, dst in dict.fromkeys(edges):
        if src in order and dst in order and src != dst:
            preds[dst].append(src)
            succs[src].append(dst)
    layer: dict[str, int] = {}
    open_preds = {n: len(p) for n, p in preds.items()}
    ready = [n for n in order if open_preds[n] == 0]
    while len(layer) < len(order):
        if not ready:  # a cycle: break it at its first node in definition order
            ready = [min((n for n in order if n not in layer), key=order.__getitem__)]
        node = ready.pop(0)
        if node in layer:
            continue
        layer[node] = 1 + max((layer[p] for p in preds[node] if p in layer), default=-1)
        for nxt in succs[node]:
            open_preds[nxt] -= 1
            if open_preds[nxt] == 0 and nxt not in layer:
                ready.append(nxt)
        ready.sort(key=order.__getitem__)
    by_layer: dict[int, list[str]] = {}
    for n in order:
        by_layer.setdefault(layer[n], []).append(n)
    placed: dict[str, Placement] = {}
    for depth in sorted(by_layer):

        def key(n: str) -> tuple[float, int]:
            above = [placed[p].index for p in preds[n] if p in placed]
            return (sum(above) / len(above) if above else -1.0, order[n])

        for i, n in enumerate(sorted(by_layer[depth], key=key)):
            placed[n] = Placement(depth, i)
    return placed
