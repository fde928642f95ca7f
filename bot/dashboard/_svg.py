"""Server-side drawings: the lineage tree of a round and daily bar charts, as plain shapes for the templates.

Only coordinates and short texts are computed here; the templates write the `<svg>` (Jinja escapes
every text, so a prompt cannot inject markup). No JavaScript, no library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from storage.round_index import RoundRow

NODE_W, NODE_H, GAP_X, GAP_Y = 230, 54, 24, 70
LABEL_ROOM = 230  # right of the last column, for the edge labels of a single line of descent
MAX_DESCENDANTS = 40  # beyond this the tree says how many more there are


@dataclass(frozen=True)
class Node:
    round_id: str
    x: float
    y: float
    title: str  # the prompt, clipped
    detail: str  # mode and voters
    current: bool
    flagged: bool
    removed: bool


@dataclass(frozen=True)
class Edge:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str  # "#2 · inpaint · remove the dog"


@dataclass(frozen=True)
class Tree:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    width: float
    height: float
    more: int  # descendants not drawn


def clip(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def lineage_tree(ancestors: Sequence[RoundRow], current: RoundRow, children: dict[str, list[RoundRow]],
                 more: int = 0) -> Tree:
    """Ancestors (root first) on a line down to `current`, then `current`'s descendants as a tree
    (`children` maps a round id to its child rounds). Leaves get consecutive columns; a parent sits above
    the middle of its children."""
    column: dict[str, float] = {}
    depth: dict[str, int] = {}
    leaves = 0

    def place(row: RoundRow, level: int) -> float:
        nonlocal leaves
        depth[row.round_id] = level
        kids = children.get(row.round_id, [])
        if not kids:
            column[row.round_id] = leaves
            leaves += 1
        else:
            xs = [place(kid, level + 1) for kid in kids]
            column[row.round_id] = (xs[0] + xs[-1]) / 2
        return column[row.round_id]

    place(current, len(ancestors))
    for level, row in enumerate(ancestors):
        column[row.round_id], depth[row.round_id] = column[current.round_id], level
    rows = {r.round_id: r for r in (*ancestors, current, *(k for ks in children.values() for k in ks))}

    def at(round_id: str) -> tuple[float, float]:
        return 10 + column[round_id] * (NODE_W + GAP_X), 10 + depth[round_id] * (NODE_H + GAP_Y)

    nodes = []
    for rid, row in rows.items():
        x, y = at(rid)
        nodes.append(Node(rid, x, y, clip(row.prompt, 32), f"{row.mode} · {row.voters} voter(s)",
                          rid == current.round_id, row.flagged, row.removed))
    edges = []
    for rid, row in rows.items():
        if row.parent_round_id in rows and rid != rows[row.parent_round_id].round_id:
            (px, py), (cx, cy) = at(row.parent_round_id), at(rid)
            label = " · ".join(filter(None, (f"#{row.parent_candidate}" if row.parent_candidate else "all four",
                                              row.mode, clip(row.instruction, 30))))
            edges.append(Edge(px + NODE_W / 2, py + NODE_H, cx + NODE_W / 2, cy, label))
    width = 20 + max(1, leaves) * (NODE_W + GAP_X) - GAP_X + (LABEL_ROOM if edges else 0)
    height = 20 + (max(depth.values()) + 1) * (NODE_H + GAP_Y) - GAP_Y
    return Tree(tuple(nodes), tuple(edges), width, height, more)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    day: str
    value: int


@dataclass(frozen=True)
class Chart:
    title: str
    bars: tuple[Bar, ...]
    width: float
    height: float
    peak: int
    first_day: str
    last_day: str


def last_days(days: int, today: datetime | None = None) -> list[str]:
    end = (today or datetime.now(UTC)).date()
    return [(end - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]


def bar_chart(title: str, per_day: dict[str, int], days: Sequence[str], *, bar_w: float = 14,
              plot_h: float = 120) -> Chart:
    peak = max([per_day.get(d, 0) for d in days] + [1])
    bars = []
    for i, day in enumerate(days):
        value = per_day.get(day, 0)
        h = plot_h * value / peak
        bars.append(Bar(30 + i * (bar_w + 2), 10 + plot_h - h, h, day, value))
    return Chart(title, tuple(bars), 40 + len(days) * (bar_w + 2), plot_h + 40, peak, days[0], days[-1])
