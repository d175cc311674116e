"""`gtt-rules diff A B`: what differs between two graphs, node by node.

Nodes are matched by name. A node of both graphs has changed when its op, device, inputs
(data and control, in order) or attrs differ; an unset attr is its op's registered default, as
TensorFlow's importer has it. Tensor attrs (a Const's value) are compared by the values they
hold, through a checksum of dtype, shape and elements, so two encodings of the same values
(`tensor_content` or `float_val`) are equal. Also the op histogram's delta, and the
parameters (elements and bytes in Consts) before and after.
"""
from __future__ import annotations

import hashlib
import html
from collections import Counter
from typing import Any

import numpy as np

from gtt_rules import page
from gtt_rules.console import human_bytes
from gtt_rules.engine import op_registry
from gtt_rules.engine.attrs import decode_attr, encode_attr
from gtt_rules.engine.dtypes import dtype_name
from gtt_rules.engine.graph import Graph, Node
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.summary import summarize
from gtt_rules.engine.tensors import decode_tensor, shape_from_proto, tensor_shape

_ATTR_CHARS = 60        # an attr value shown longer than this is cut, with an ellipsis


def diff_graphs(before: Graph, after: Graph) -> dict[str, Any]:
    """A JSON-ready diff: added, removed and changed nodes (file order), the op histogram's delta,
    and the node and parameter counts of both graphs."""
    added = [_node_row(node) for node in after if node.name not in before]
    removed = [_node_row(node) for node in before if node.name not in after]
    changed = []
    for node in after:
        old = before.get(node.name)
        if old is not None:
            changes = node_changes(old, node)
            if changes:
                changed.append({"name": node.name, "op": node.op, "changes": changes})
    ops_before, ops_after = Counter(n.op for n in before), Counter(n.op for n in after)
    ops = {op: {"before": ops_before[op], "after": ops_after[op], "delta": ops_after[op] - ops_before[op]}
           for op in sorted(set(ops_before) | set(ops_after)) if ops_before[op] != ops_after[op]}
    return {
        "before": _totals(before), "after": _totals(after),
        "added": added, "removed": removed, "changed": changed,
        "ops": dict(sorted(ops.items(), key=lambda item: (-abs(item[1]["delta"]), item[0]))),
    }


def _totals(graph: Graph) -> dict[str, int]:
    parameters = summarize(graph)["parameters"]
    return {"nodes": len(graph), "parameters": parameters["count"], "parameter_bytes": parameters["bytes"]}


def _node_row(node: Node) -> dict[str, Any]:
    return {"name": node.name, "op": node.op, "inputs": _inputs(node)}


def _inputs(node: Node) -> list[str]:
    return [str(ref) for ref in node.inputs] + [f"^{name}" for name in node.control_inputs]


def node_changes(old: Node, new: Node) -> dict[str, Any]:
    """What differs between two nodes of one name: {"op": [a, b], "inputs": [...], "device":
    [...], "attrs": {key: [a, b]}}, each pair before and after; {} when they are alike."""
    changes: dict[str, Any] = {}
    if old.op != new.op:
        changes["op"] = [old.op, new.op]
    if old.device != new.device:
        changes["device"] = [old.device, new.device]
    if old.inputs != new.inputs or old.control_inputs != new.control_inputs:
        changes["inputs"] = [_inputs(old), _inputs(new)]
    theirs, ours = old.proto.attr, new.proto.attr
    if theirs != ours:
        attrs = {}
        for key in sorted(set(theirs) | set(ours)):
            a, b = _attr_or_default(theirs, old.op, key), _attr_or_default(ours, new.op, key)
            if a == b or (a is not None and b is not None and _same_tensors(a, b)):
                continue
            attrs[key] = [attr_text(a), attr_text(b)]
        if attrs:
            changes["attrs"] = attrs
    return changes


def _attr_or_default(attrs, op: str, key: str) -> pb.AttrValue | None:
    """Attr `key` as set in `attrs`, else `op`'s registered default for it (None if neither)."""
    if key in attrs:
        return attrs[key]
    op_def = op_registry.get_op(op)
    attr = op_def.attrs.get(key) if op_def is not None else None
    if attr is None or not attr.known_default:
        return None
    return encode_attr(attr.default, attr.type)


def _same_tensors(a: pb.AttrValue, b: pb.AttrValue) -> bool:
    """Both hold tensors with the same values (encoded alike or not)."""
    return a.WhichOneof("value") == b.WhichOneof("value") == "tensor" and \
        tensor_checksum(a.tensor) == tensor_checksum(b.tensor)


def tensor_checksum(tensor: pb.TensorProto) -> str:
    """A short checksum of a tensor's dtype, shape and values, however they are encoded."""
    digest = hashlib.blake2b(digest_size=6)
    digest.update(f"{tensor.dtype}:{tensor_shape(tensor)}".encode())
    try:
        values = decode_tensor(tensor)
    except Exception:       # undecodable: its encoding is all there is to compare
        digest.update(tensor.SerializeToString(deterministic=True))
        return digest.hexdigest()
    if values.dtype == object:
        for element in values.ravel():
            digest.update(len(element).to_bytes(8, "little") + element)
    else:
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def attr_text(value: pb.AttrValue | None) -> str:
    """An attr value as people read it: dtype names, shapes with ?, tensors as dtype, shape and
    checksum; '-' when the attr is not set."""
    if value is None:
        return "-"
    kind = value.WhichOneof("value")
    if kind == "type":
        text = _dtype(value.type)
    elif kind == "tensor":
        text = _tensor_text(value.tensor)
    elif kind == "shape":
        text = _shape_text(shape_from_proto(value.shape))
    elif kind == "list" and len(value.list.type):
        text = "[" + ", ".join(_dtype(t) for t in value.list.type) + "]"
    elif kind == "list" and len(value.list.tensor):
        text = "[" + ", ".join(_tensor_text(t) for t in value.list.tensor) + "]"
    elif kind == "list" and len(value.list.shape):
        text = "[" + ", ".join(_shape_text(shape_from_proto(s)) for s in value.list.shape) + "]"
    else:
        decoded = decode_attr(value)
        text = repr(decoded) if isinstance(decoded, (str, bytes)) else str(decoded).lower() \
            if isinstance(decoded, bool) else str(decoded)
    return text if len(text) <= _ATTR_CHARS else text[:_ATTR_CHARS - 1] + "…"


def _dtype(dt: int) -> str:
    try:
        return dtype_name(dt)
    except (KeyError, ValueError):
        return f"dtype {dt}"


def _shape_text(shape) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None or d < 0 else str(d) for d in shape) + "]"


def _tensor_text(tensor: pb.TensorProto) -> str:
    return f"{_dtype(tensor.dtype)} {_shape_text(tensor_shape(tensor))} #{tensor_checksum(tensor)}"


def change_summary(change: dict[str, Any]) -> str:
    """One line for a changed node: "op Mul -> Conv2D; inputs; attrs T (float -> qint8), value"."""
    parts = []
    if "op" in change["changes"]:
        parts.append(f"op {change['changes']['op'][0]} -> {change['changes']['op'][1]}")
    if "device" in change["changes"]:
        parts.append("device")
    if "inputs" in change["changes"]:
        old, new = change["changes"]["inputs"]
        parts.append(f"inputs {', '.join(old) or '-'} -> {', '.join(new) or '-'}")
    for key, (old, new) in change["changes"].get("attrs", {}).items():
        parts.append(f"{key} {old} -> {new}")
    return "; ".join(parts)


def headline(diff: dict[str, Any]) -> str:
    """`2,217 -> 471 nodes: 12 added, 1,758 removed, 97 changed`."""
    return (f"{diff['before']['nodes']:,} -> {diff['after']['nodes']:,} nodes: {len(diff['added']):,} added, "
            f"{len(diff['removed']):,} removed, {len(diff['changed']):,} changed")


# ---- the HTML page ------------------------------------------------------------------------------

def html_page(diff: dict[str, Any], path_a: str, path_b: str, sizes: tuple[int, int],
              before: Graph, after: Graph, *, title: str = "Graph diff", stages: str = "") -> str:
    """A self-contained page (inline CSS and SVG, nothing fetched): the totals, `stages` (HTML,
    from `apply --report`), a picture of the changed regions before and after, the op delta, and
    the added, removed and changed nodes."""
    from gtt_rules import picture

    return page.fill("diff.html", {
        "title": html.escape(title), "path_a": html.escape(path_a), "path_b": html.escape(path_b),
        "headline": html.escape(headline(diff)), "totals": totals_table(diff, sizes), "stages": stages,
        "picture": picture.before_and_after(before, after, diff), "details": details_html(diff),
    })


def totals_table(diff: dict[str, Any], sizes: tuple[int, int]) -> str:
    """Nodes, parameters, parameter bytes and file bytes, before and after."""
    rows = [("nodes", diff["before"]["nodes"], diff["after"]["nodes"], lambda n: f"{n:,}"),
            ("parameters", diff["before"]["parameters"], diff["after"]["parameters"], lambda n: f"{n:,}"),
            ("parameter bytes", diff["before"]["parameter_bytes"], diff["after"]["parameter_bytes"], human_bytes),
            ("file bytes", sizes[0], sizes[1], human_bytes)]
    lines = ['<table id="totals"><thead><tr><th></th><th>before</th><th>after</th><th>change</th></tr>'
             '</thead><tbody>']
    for label, old, new, show in rows:
        change = f"{(new - old) / old * 100:+.1f}%" if old else "-"
        lines.append(f'<tr><td>{label}</td><td class="num">{show(old)}</td><td class="num">{show(new)}</td>'
                     f'<td class="num">{change}</td></tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


_ROWS_SHOWN = 500       # per list on the page; --json has them all


def details_html(diff: dict[str, Any]) -> str:
    """The op delta and the node lists, as tables."""
    if not diff["ops"]:
        parts = ["<h2>Ops: no count changed</h2>"]     # as the node lists say "0 nodes", not an empty table
    else:
        parts = ['<h2>Ops</h2><table id="ops"><thead><tr><th>op</th><th>before</th><th>after</th><th>delta</th>'
                 '</tr></thead><tbody>']
        for op, row in diff["ops"].items():
            parts.append(f'<tr><td>{html.escape(op)}</td><td class="num">{row["before"]:,}</td>'
                         f'<td class="num">{row["after"]:,}</td><td class="num">{row["delta"]:+,}</td></tr>')
        parts.append("</tbody></table>")
    for title, key, cells in (
            ("Added", "added", lambda r: (r["name"], r["op"], ", ".join(r["inputs"]))),
            ("Removed", "removed", lambda r: (r["name"], r["op"], ", ".join(r["inputs"]))),
            ("Changed", "changed", lambda r: (r["name"], r["op"], change_summary(r)))):
        rows = diff[key]
        more = f" (first {_ROWS_SHOWN:,} of {len(rows):,})" if len(rows) > _ROWS_SHOWN else ""
        third = "what changed" if key == "changed" else "inputs"
        parts.append(f'<h2>{title}: {len(rows):,} nodes{more}</h2>')
        if not rows:
            continue
        parts.append(f'<table id="{key}" class="nodes"><thead><tr><th>name</th><th>op</th><th>{third}</th>'
                     '</tr></thead><tbody>')
        for row in rows[:_ROWS_SHOWN]:
            name, op, rest = cells(row)
            parts.append(f'<tr class="{key}"><td class="name">{html.escape(name)}</td><td>{html.escape(op)}</td>'
                         f'<td class="name">{html.escape(rest)}</td></tr>')
        parts.append("</tbody></table>")
    return "\n".join(parts)


# ---- the terminal -------------------------------------------------------------------------------

def print_diff(diff: dict[str, Any], path_a: str, path_b: str, sizes: tuple[int, int]) -> None:
    """The totals, then a table per section (the one console: on a pipe, every row in full)."""
    from rich.table import Table

    from gtt_rules.console import console, markup

    out = console()
    before, after = diff["before"], diff["after"]
    out.print(markup(f"{path_a} -> {path_b}: {headline(diff)}"))
    out.print(markup(f"parameters: {before['parameters']:,} -> {after['parameters']:,} "
                     f"({human_bytes(before['parameter_bytes'])} -> {human_bytes(after['parameter_bytes'])}); "
                     f"file: {human_bytes(sizes[0])} -> {human_bytes(sizes[1])}"))
    sections = [
        ("Ops", ("op", "before", "after", "delta"),
         [(op, f"{r['before']:,}", f"{r['after']:,}", f"{r['delta']:+,}") for op, r in diff["ops"].items()]),
        ("Added", ("name", "op", "inputs"), [(r["name"], r["op"], ", ".join(r["inputs"])) for r in diff["added"]]),
        ("Removed", ("name", "op", "inputs"), [(r["name"], r["op"], ", ".join(r["inputs"])) for r in diff["removed"]]),
        ("Changed", ("name", "op", "what changed"), [(r["name"], r["op"], change_summary(r)) for r in diff["changed"]]),
    ]
    for title, columns, rows in sections:
        if not rows:
            out.print(f"{title}: none")
            continue
        table = Table(title=f"{title} ({len(rows):,})", title_justify="left")
        for i, column in enumerate(columns):
            table.add_column(column, justify="right" if title == "Ops" and i else "left", overflow="fold")
        for row in rows:
            table.add_row(*map(markup, row))
        out.print(table)


# ---- the command --------------------------------------------------------------------------------

def register(commands) -> None:
    """Add `diff` to the command line's subcommands."""
    from gtt_rules.cli import GRAPH_HELP

    parser = commands.add_parser(
        "diff", help="show what differs between two graphs",
        description="Compare two graphs node by node (matched by name): nodes added, removed and "
                    "changed (op, inputs, attrs, constant values by checksum), the op histogram's "
                    "delta, and parameters and bytes before and after.")
    parser.add_argument("graph_a", metavar="A", help=f"the graph before: {GRAPH_HELP}")
    parser.add_argument("graph_b", metavar="B", help="the graph after")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--html", metavar="PAGE.html",
                        help="also write a page with a picture of the changed regions, before and after")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow PAGE.html to be one of the files this command reads")
    parser.set_defaults(run=command)


def command(args) -> int:
    import json
    import sys

    from gtt_rules import progress
    from gtt_rules.console import console, markup
    from gtt_rules.engine.graph_io import stored_bytes
    from gtt_rules.engine.output import check_output, write_output

    page_path = check_output(args.html, args.graph_a, args.graph_b) if args.html else None
    graphs = [progress.load_graph(path) for path in (args.graph_a, args.graph_b)]
    sizes = [stored_bytes(path) for path in (args.graph_a, args.graph_b)]
    with progress.step("comparing"):
        result = diff_graphs(*graphs)
    if page_path is not None:
        text = html_page(result, args.graph_a, args.graph_b, tuple(sizes), *graphs).encode("utf-8")
        write_output(page_path, lambda file: file.write(text))
    to = sys.stderr if page_path == "-" else sys.stdout      # stdout holds the page
    if args.json:
        print(json.dumps({"a": args.graph_a, "b": args.graph_b,
                          "file_bytes": {"before": sizes[0], "after": sizes[1]}, **result}, indent=2), file=to)
    elif page_path != "-":
        print_diff(result, args.graph_a, args.graph_b, tuple(sizes))
        if page_path is not None:
            console(stderr=True).print(f"wrote the page to {markup(page_path)}")
    return 0
