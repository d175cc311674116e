"""A picture of what changed between two graphs: the changed regions, drawn before and after.

Each picture is an inline SVG drawn here, so a page needs no script, network or extra package.
The layout is a small layered (Sugiyama-style) one, enough for the few dozen nodes a picture
holds: ranks by longest path from the region's sources, a dummy node per rank a long edge
crosses, barycentre sweeps against crossings, then each node pulled towards its neighbours.

A region is a connected group of changed nodes (added, removed or changed), with one hop of
unchanged context. The regions nearest the graph's inputs are drawn, up to MAX_CHANGED nodes.
"""
from __future__ import annotations

import collections
import html
from collections import defaultdict
from typing import Any

from gtt_rules.engine.graph import Graph

MAX_CHANGED = 24        # changed nodes drawn: whole regions, nearest the inputs first
MAX_CONTEXT = 24        # unchanged neighbours drawn around them, per picture

# kind: (fill, stroke); the fills are what the browser test looks for.
COLOURS = {
    "removed": ("#fbd5d1", "#c62828"),
    "added": ("#d3f0d4", "#2e7d32"),
    "changed": ("#fdecb8", "#b7791f"),
    "context": ("#eef0f4", "#9aa3b2"),
}

_HEIGHT, _RANK_GAP, _GAP, _MARGIN = 34, 46, 16, 12
_ROW_WIDTH = 900
_CHAR = 6.8             # px per character at the pictures' 11px monospace
_NAME_CHARS = 26


def changed_regions(before: Graph, after: Graph, diff: dict[str, Any]) -> tuple[list[str], int]:
    """The changed nodes to draw and how many nodes changed in all. Regions grow breadth-first
    from the changed nodes nearest the inputs (nodes of both graphs first, so that the two
    pictures show the same place); the first region is cut at MAX_CHANGED nodes, later ones are
    drawn whole if they fit."""
    kinds = _kinds(diff)
    position = {node.name: i for i, node in enumerate(after)}
    for node in before:
        position.setdefault(node.name, position.get(_nearest_input(before, node.name, position), 0))
    in_both = {row["name"] for row in diff["changed"]}
    seeds = set(kinds["before"]) | set(kinds["after"])
    starts = sorted(seeds, key=lambda name: (name not in in_both, position[name]))
    chosen: list[str] = []
    seen: set[str] = set()
    for start in starts:
        if start in seen:
            continue
        region, queue = [], collections.deque([start])
        seen.add(start)
        while queue:
            name = queue.popleft()
            region.append(name)
            for graph in (before, after):
                for other in _neighbours(graph, name):
                    if other in seeds and other not in seen:
                        seen.add(other)
                        queue.append(other)
        if chosen and len(chosen) + len(region) > MAX_CHANGED:
            continue        # a smaller region further on may still fit
        chosen += region[:MAX_CHANGED - len(chosen)]
        if len(chosen) >= MAX_CHANGED:
            break
    return chosen, len(seeds)


def _nearest_input(graph: Graph, name: str, known: dict[str, int]) -> str:
    """A node of `known` that `name` reads, directly or not, or `name` itself: where a removed
    node sat, in the graph after."""
    stack, seen = [name], {name}
    while stack:
        current = stack.pop()
        if current in known:
            return current
        for other in _neighbours(graph, current):
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return name


def _kinds(diff: dict[str, Any]) -> dict[str, dict[str, str]]:
    """For each picture, the kind of each changed node in it."""
    changed = {row["name"]: "changed" for row in diff["changed"]}
    return {"before": {**changed, **{row["name"]: "removed" for row in diff["removed"]}},
            "after": {**changed, **{row["name"]: "added" for row in diff["added"]}}}


def _neighbours(graph: Graph, name: str) -> list[str]:
    """The nodes `name` reads and that read it, through data edges: a NoOp that orders hundreds of
    weights (as frozen Keras graphs have) would join them all into one region."""
    node = graph.get(name)
    if node is None:
        return []
    return [ref.node for ref in node.inputs] + [
        c.name for c in graph.consumers(name) if any(ref.node == name for ref in c.inputs)]


def before_and_after(before: Graph, after: Graph, diff: dict[str, Any]) -> str:
    """An HTML fragment: the two pictures side by side, a legend, and what was left out."""
    chosen, total = changed_regions(before, after, diff)
    if not total:
        return '<p class="note">The graphs have the same nodes: nothing to draw.</p>'
    kinds = _kinds(diff)
    figures = []
    for label, graph in (("before", before), ("after", after)):
        svg, width = draw(graph, [name for name in chosen if name in graph], kinds[label])
        # Each picture gets room in proportion to its width: a wide "before" is not shrunk to
        # half the page beside a small "after".
        figures.append(f'<figure id="{label}" style="flex-grow: {width:.0f}"><figcaption>{label}</figcaption>'
                       f'{svg}</figure>')
    legend = "".join(f'<span class="key"><svg width="14" height="14"><rect x="1" y="1" width="12" height="12" '
                     f'rx="3" fill="{fill}" stroke="{stroke}"/></svg> {kind}</span>'
                     for kind, (fill, stroke) in COLOURS.items())
    shown = (f"all {total:,} changed nodes" if len(chosen) == total else
             f"{len(chosen):,} of {total:,} changed nodes, the regions nearest the inputs")
    return (f'<div class="pictures">{"".join(figures)}</div>'
            f'<p class="note">{legend} &mdash; showing {shown}, with one hop of unchanged context '
            f'(at most {MAX_CONTEXT}). Hover a node for its full name.</p>')


def draw(graph: Graph, names: list[str], kinds: dict[str, str]) -> tuple[str, float]:
    """An SVG of `names` in `graph` and their unchanged neighbours, coloured by kind, and its width."""
    drawn = list(dict.fromkeys(names))
    order = {node.name: i for i, node in enumerate(graph)} if drawn else {}
    context = sorted({n for name in drawn for n in _neighbours(graph, name) if n not in set(drawn)},
                     key=lambda n: order.get(n, 0))[:MAX_CONTEXT]
    drawn = sorted(drawn + context, key=lambda n: order.get(n, 0))
    if not drawn:
        return '<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="200" height="40">' \
               '<text x="100" y="24">(no node)</text></svg>', 200.0
    inside = set(drawn)
    edges = []
    for name in drawn:
        node = graph[name]
        for ref in node.inputs:
            if ref.node in inside:
                edges.append((ref.node, name, False))
        for control in node.control_inputs:
            if control in inside:
                edges.append((control, name, True))
    labels = {name: (graph[name].op, _short(name)) for name in drawn}
    widths = {name: max(len(op), len(short)) * _CHAR + 16 for name, (op, short) in labels.items()}
    points, paths = _packed(drawn, edges, widths)
    width = max(x + widths.get(name, 0) / 2 for name, (x, _) in points.items()) + _MARGIN
    height = max(y for _, y in points.values()) + _HEIGHT + _MARGIN
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'width="{width:.0f}" height="{height:.0f}" role="img">',
             '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#7a8294"/></marker></defs>']
    for (u, v, control), route in zip(edges, paths):
        d = _curve([(points[u][0], points[u][1] + _HEIGHT)] + route + [(points[v][0], points[v][1])])
        dashes = ' stroke-dasharray="4 3"' if control else ""
        parts.append(f'<path d="{d}" class="edge"{dashes} marker-end="url(#arrow)"/>')
    for name in drawn:
        x, y = points[name]
        kind = kinds.get(name, "context")
        fill, stroke = COLOURS[kind]
        op, short = labels[name]
        w = widths[name]
        parts.append(f'<g class="node {kind}"><title>{html.escape(name)} ({html.escape(op)}, {kind})</title>'
                     f'<rect x="{x - w / 2:.1f}" y="{y:.1f}" width="{w:.1f}" height="{_HEIGHT}" rx="5" '
                     f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
                     f'<text x="{x:.1f}" y="{y + 14:.1f}" class="op">{html.escape(op)}</text>'
                     f'<text x="{x:.1f}" y="{y + 27:.1f}" class="name">{html.escape(short)}</text></g>')
    parts.append("</svg>")
    return "".join(parts), width


def _packed(names: list[str], edges, widths: dict[str, float]):
    """Each connected part laid out on its own, the parts packed in rows of at most _ROW_WIDTH
    (side by side, a picture of many small parts would be too wide to read)."""
    part_of = {name: name for name in names}

    def find(name):
        while part_of[name] != name:
            part_of[name] = part_of[part_of[name]]
            name = part_of[name]
        return name

    for u, v, _ in edges:
        part_of[find(u)] = find(v)
    parts: dict[str, list[str]] = defaultdict(list)
    for name in names:
        parts[find(name)].append(name)
    points: dict[str, tuple[float, float]] = {}
    paths: dict[int, list] = {}
    left = top = row_height = 0.0
    for part in parts.values():
        inside = set(part)
        mine = [i for i, (u, v, _) in enumerate(edges) if u in inside]
        placed, routes = layout(part, [(edges[i][0], edges[i][1]) for i in mine], widths)
        part_width = max(x + widths[n] / 2 for n, (x, _) in placed.items())
        part_height = max(y for _, y in placed.values()) + _HEIGHT
        if left and left + part_width > _ROW_WIDTH:
            left, top, row_height = 0.0, top + row_height + _RANK_GAP, 0.0
        points.update({n: (x + left, y + top) for n, (x, y) in placed.items()})
        paths.update({i: [(x + left, y + top) for x, y in route] for i, route in zip(mine, routes)})
        left += part_width + 2 * _GAP
        row_height = max(row_height, part_height)
    return points, [paths[i] for i in range(len(edges))]


def _short(name: str) -> str:
    """The last parts of a node's name that fit a box."""
    parts = name.split("/")
    text = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(text) > _NAME_CHARS:
            break
        text = f"{part}/{text}"
    return text if len(text) <= _NAME_CHARS else "…" + text[-(_NAME_CHARS - 1):]


def _curve(route: list[tuple[float, float]]) -> str:
    """A smooth path through the points, leaving and entering each vertically."""
    (x, y), rest = route[0], route[1:]
    d = [f"M{x:.1f},{y:.1f}"]
    for nx, ny in rest:
        middle = (y + ny) / 2
        d.append(f"C{x:.1f},{middle:.1f} {nx:.1f},{middle:.1f} {nx:.1f},{ny:.1f}")
        x, y = nx, ny
    return " ".join(d)


def layout(names: list[str], edges: list[tuple[str, str]], widths: dict[str, float]):
    """Top-to-bottom layered layout. Returns each node's (centre x, top y), and for each edge
    the points it bends at (its dummy nodes), in the order of `edges`."""
    # Ranks: the longest path from a source, with edges that close a cycle (a while loop) ignored.
    successors = defaultdict(list)
    for u, v in edges:
        successors[u].append(v)
    forward = _acyclic(names, edges, successors)
    rank = {name: 0 for name in names}
    indegree = defaultdict(int)
    for u, v in forward:
        indegree[v] += 1
    ready = [name for name in names if not indegree[name]]
    forward_from = defaultdict(list)
    for u, v in forward:
        forward_from[u].append(v)
    while ready:
        u = ready.pop(0)
        for v in forward_from[u]:
            rank[v] = max(rank[v], rank[u] + 1)
            indegree[v] -= 1
            if not indegree[v]:
                ready.append(v)
    # A source (a weight, an input) sits just above its first reader, not with all the others at
    # the top, where a row of them would make the picture wide and the edges long.
    has_input = {v for _, v in forward}
    for name in names:
        readers = [rank[v] for v in forward_from[name]]
        if readers and name not in has_input:
            rank[name] = min(readers) - 1
    # A dummy node for each rank a long edge crosses.
    layers: dict[int, list[str]] = defaultdict(list)
    for name in names:
        layers[rank[name]].append(name)
    up, down = defaultdict(list), defaultdict(list)
    routes = []
    for i, (u, v) in enumerate(edges):
        a, b = (u, v) if rank[u] < rank[v] else (v, u)
        chain, previous = [], a
        for r in range(rank[a] + 1, rank[b]):
            dummy = f"\0{i}:{r}"
            rank[dummy] = r
            layers[r].append(dummy)
            widths[dummy] = 8
            chain.append(dummy)
            down[previous].append(dummy)
            up[dummy].append(previous)
            previous = dummy
        if rank[a] != rank[b]:
            down[previous].append(b)
            up[b].append(previous)
        routes.append(chain if (u, v) == (a, b) else chain[::-1])
    ranks = sorted(layers)
    # Fewer crossings: order each layer by the mean position of its neighbours, sweeping down and up.
    for sweep in range(8):
        sequence, links = (ranks[1:], up) if sweep % 2 == 0 else (ranks[-2::-1], down)
        for r in sequence:
            index = {name: i for layer in layers.values() for i, name in enumerate(layer)}
            layers[r].sort(key=lambda n: (sum(index[m] for m in links[n]) / len(links[n]) if links[n]
                                          else index[n]))
    # x: start packed, then pull each node towards its neighbours' mean, keeping the order and gaps.
    x = {}
    for r in ranks:
        left = 0.0
        for name in layers[r]:
            x[name] = left + widths[name] / 2
            left += widths[name] + _GAP
    for sweep in range(12):
        sequence, links = (ranks[1:], up) if sweep % 2 == 0 else (ranks[-2::-1], down)
        for r in sequence:
            layer = layers[r]
            wanted = [sum(x[m] for m in links[n]) / len(links[n]) if links[n] else x[n] for n in layer]
            placed = []
            for i, name in enumerate(layer):
                low = placed[-1] + (widths[layer[i - 1]] + widths[name]) / 2 + _GAP if placed else -1e9
                placed.append(max(wanted[i], low))
            shift = sum(w - p for w, p in zip(wanted, placed)) / len(layer)   # pushed right: recentre
            for name, p in zip(layer, placed):
                x[name] = p + shift
    lowest = min(x[n] - widths[n] / 2 for n in x)
    points = {n: (x[n] - lowest + _MARGIN, _MARGIN + rank[n] * (_HEIGHT + _RANK_GAP)) for n in x}
    paths = [[(points[d][0], points[d][1] + _HEIGHT / 2) for d in chain] for chain in routes]
    return {n: points[n] for n in names}, paths


def _acyclic(names: list[str], edges: list[tuple[str, str]], successors) -> list[tuple[str, str]]:
    """The edges without those that close a cycle (found by a depth-first walk in file order)."""
    state: dict[str, int] = {}
    back = set()
    for start in names:
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(successors[start]))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                back.add((node, child))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(successors[child])))
    return [(u, v) for u, v in edges if (u, v) not in back]
