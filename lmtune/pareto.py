"""The cost/quality front: the points no other point beats on both, for ``lmtune infer``'s answer and its report."""

from __future__ import annotations

from typing import Any


def pareto_front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """(cost, quality, item) that no other point beats on both: lower or equal cost and higher or equal quality."""
    front = []
    for cost, quality, item in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or quality > front[-1][1]:
            front.append((cost, quality, item))
    return front
