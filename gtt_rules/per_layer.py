"""`gtt-rules compare FLOAT EIGHTBIT --per-layer`: the error eight bits add, layer by layer.

The layers are found without hand-listed names. An eight-bit graph made by `quantize_nodes` keeps
a float node's name on whatever now computes its value: the Dequantize that replaced it, the op
itself where it stayed float, or the BiasAdd that took over an AddV2. Where that Dequantize was
cancelled against the next op's QuantizeV2, the value lives on only as eight-bit codes, in the op
that the rewrite named below the float node (`X/relu6/QuantizedRelu6` for the Relu6 `X`), or that
`compact_names` gave the float node's name. So a float tensor of the float graph is a layer when
the eight-bit graph has

- a float tensor of the same name and port (and, once run, the same shape), or
- an op `Quantized<Op>` of that name or named under it, where the float node's op is `<Op>` (V2
  suffixes aside): its codes, after the Requantize that narrows a 32-bit result, are dequantized
  for the comparison.

Constants, inputs and pass-throughs (Identity) are not layers. The range used is the eight-bit
range a layer's value is held in: the Dequantize's, the range of the QuantizeV2 that reads a float
value, or the codes' own.
"""
from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gtt_rules import page
from gtt_rules.engine.dtypes import DT_FLOAT
from gtt_rules.engine.graph import Graph, Node, TensorRef

# Every range quantize_nodes writes is MIN_FIRST (as in the Graph Transform Tool).
_MODE = "MIN_FIRST"
_NOT_LAYERS = frozenset({"Const", "Placeholder", "PlaceholderWithDefault", "Identity", "NoOp",
                         "StopGradient", "Snapshot"})
_VERSION = re.compile(r"V\d+$")

# Said wherever our eight-bit numbers are shown: which TensorFlow they equal.
REFERENCE = ("eight-bit numbers are TensorFlow's reference kernels (TensorFlow with oneDNN off, "
             "TF_ENABLE_ONEDNN_OPTS=0, and TensorFlow on ARM); x86 TensorFlow with oneDNN on rounds "
             "some eight-bit ops differently")


@dataclass(frozen=True)
class Layer:
    """A float-graph tensor and where the eight-bit graph holds its value."""

    name: str                           # the float graph's tensor ("node" or "node:port")
    op: str                             # the float graph's op
    tensor: TensorRef                   # in the eight-bit graph: float values, or codes
    codes: int | None                   # the codes' quantized DataType, None for float values
    range: tuple[TensorRef, TensorRef] | None
    range_type: int | None = None       # the quantized DataType the range is for


def match_layers(float_graph: Graph, eightbit: Graph) -> list[Layer]:
    """The layers the two graphs share, in the eight-bit graph's execution order."""
    below = _quantized_ops_by_float_name(float_graph, eightbit)
    found: dict[str, tuple[int, Layer]] = {}
    position = {node.name: i for i, node in enumerate(eightbit.topological_order())}
    for node in float_graph:
        if node.op in _NOT_LAYERS:
            continue
        for port, dt in enumerate(float_graph.output_dtypes(node) or ()):
            if dt != DT_FLOAT:
                continue
            ref = TensorRef(node.name, port)
            name = node.name if port == 0 else str(ref)
            layer = _float_layer(eightbit, ref, name, node.op)
            if layer is None and port == 0:
                layer = _codes_layer(eightbit, below.get(node.name), name, node.op)
            if layer is not None:
                found[name] = (position[layer.tensor.node], layer)
    return [layer for _, layer in sorted(found.values(), key=lambda item: item[0])]


def _float_layer(eightbit: Graph, ref: TensorRef, name: str, op: str) -> Layer | None:
    node = eightbit.get(ref.node)
    if node is None or node.op in _NOT_LAYERS:
        return None
    dtypes = eightbit.output_dtypes(node) or ()
    if ref.port >= len(dtypes) or dtypes[ref.port] != DT_FLOAT:
        return None
    if node.op == "Dequantize":
        return Layer(name, op, ref, None, (node.inputs[1], node.inputs[2]), node.get_attr("T", None))
    for consumer in eightbit.consumers(ref.node):
        if consumer.op == "QuantizeV2" and consumer.inputs and consumer.inputs[0] == ref:
            return Layer(name, op, ref, None, (TensorRef(consumer.name, 1), TensorRef(consumer.name, 2)),
                         consumer.get_attr("T", None))
    return Layer(name, op, ref, None, None)


def _codes_layer(eightbit: Graph, node: Node | None, name: str, op: str) -> Layer | None:
    if node is None or _VERSION.sub("", node.op[len("Quantized"):]) != _VERSION.sub("", op):
        return None
    ref = TensorRef(node.name, 0)
    # A 32-bit result is narrowed to eight bits before anything reads it.
    for consumer in eightbit.consumers(node.name):
        if consumer.op == "Requantize" and consumer.inputs[0] == ref:
            node, ref = consumer, TensorRef(consumer.name, 0)
            break
    codes = (eightbit.output_dtypes(node) or [None])[0]
    return Layer(name, op, ref, codes, (TensorRef(node.name, 1), TensorRef(node.name, 2)), codes)


def _quantized_ops_by_float_name(float_graph: Graph, eightbit: Graph) -> dict[str, Node]:
    """For each float node, the `Quantized*` op of its name or named below it (the nearest such
    name wins)."""
    found: dict[str, Node] = {}
    for node in eightbit:
        if not node.op.startswith("Quantized"):
            continue
        parts = node.name.split("/")
        for cut in range(len(parts), 0, -1):
            prefix = "/".join(parts[:cut])
            if prefix in float_graph:
                found.setdefault(prefix, node)
                break
    return found


# ---- measuring ----------------------------------------------------------------------------------

def measure(layers: list[Layer], run_float: Callable[[list[str]], list[np.ndarray]],
            run_eightbit: Callable[[list[str]], list[np.ndarray]]) -> list[dict[str, Any]]:
    """Compare each layer once both graphs have run (`run_*(outputs)` evaluates one graph on the
    inputs): SQNR (dB), cosine, max abs error, and the range used."""
    from gtt_rules.engine.kernels.quantization import dequantize

    if not layers:
        return []
    wanted = run_float([layer.name for layer in layers])
    fetches = [str(layer.tensor) for layer in layers]
    fetches += [str(ref) for layer in layers if layer.range for ref in layer.range]
    fetches = list(dict.fromkeys(fetches))
    got = dict(zip(fetches, run_eightbit(fetches)))
    rows = []
    for layer, want in zip(layers, wanted):
        value = got[str(layer.tensor)]
        lo = hi = None
        if layer.range:
            lo, hi = (float(np.asarray(got[str(ref)]).reshape(-1)[0]) for ref in layer.range)
        if layer.codes is not None:
            value = dequantize(value, lo, hi, layer.codes, mode=_MODE)
        if np.shape(value) != np.shape(want):
            continue        # the same name for another value: not a layer the graphs share
        rows.append({"layer": layer.name, "op": layer.op, "eightbit_tensor": str(layer.tensor),
                     "held_as": "codes" if layer.codes is not None else "float",
                     "range_type": _type_name(layer.range_type) if layer.range else None,
                     "shape": list(np.shape(want)), **errors(want, value),
                     "range_min": _finite(lo), "range_max": _finite(hi)})
    return rows


def _type_name(dt) -> str | None:
    from gtt_rules.engine.dtypes import dtype_name
    try:
        return dtype_name(dt)
    except (KeyError, ValueError, TypeError):
        return None


def errors(want: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """SQNR in dB (None when infinite: `exact` says whether the values are equal), cosine and max
    abs error of `got` against `want`, arrays of one shape."""
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    noise = float(np.sum((want - got) ** 2))
    signal = float(np.sum(want ** 2))
    norms = float(np.linalg.norm(want) * np.linalg.norm(got))
    with np.errstate(divide="ignore"):
        sqnr = 10.0 * math.log10(signal / noise) if noise > 0 and signal > 0 else \
            (math.inf if noise == 0 else -math.inf)
    cosine = float(np.dot(want.ravel(), got.ravel())) / norms if norms else (1.0 if noise == 0 else 0.0)
    return {"sqnr_db": _finite(sqnr), "exact": noise == 0, "cosine": _finite(cosine),
            "max_abs_error": _finite(float(np.max(np.abs(want - got)))) if want.size else 0.0}


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def worst(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the lowest SQNR (equal values count as the best, no signal as the worst)."""
    return min((row for row in rows if not row["exact"]), default=None,
               key=lambda row: -math.inf if row["sqnr_db"] is None else row["sqnr_db"])


# ---- the HTML page ------------------------------------------------------------------------------

_CHART_WIDTH, _BAR_HEIGHT, _LABEL_WIDTH = 940, 18, 360
_LABEL_CHARS = 48       # what fits in _LABEL_WIDTH at the chart's 11.5px monospace


def html_page(rows: list[dict[str, Any]], float_path: str, eightbit_path: str, inputs: str) -> str:
    """A self-contained page (inline CSS and SVG, nothing fetched): a bar per layer of its SQNR,
    and the table."""
    lowest = worst(rows)
    summary = (f"{len(rows)} layers; lowest SQNR {sqnr_text(lowest)} dB at "
               f"<code>{html.escape(lowest['layer'])}</code>" if lowest else f"{len(rows)} layers")
    common = common_scope(rows)
    values = {
        "float_path": html.escape(float_path), "eightbit_path": html.escape(eightbit_path),
        "inputs": html.escape(inputs), "reference": html.escape(REFERENCE), "summary": summary,
        "scope": f" (names under <code>{html.escape(common)}</code>)" if common else "",
        "chart": _chart(rows, lowest, common), "table": _table(rows, lowest, common),
    }
    return page.fill("per_layer.html", values)


def common_scope(rows: list[dict[str, Any]]) -> str:
    """The folder every layer sits in ("model/"), said once rather than on every bar and row."""
    common = os.path.commonprefix([row["layer"] for row in rows])
    return common[:common.rfind("/") + 1] if len(rows) > 1 else ""


def sqnr_text(row: dict[str, Any]) -> str:
    """A row's SQNR in dB as shown: "exact" for equal values, "-inf" for no signal."""
    if row["exact"]:
        return "exact"
    return "-inf" if row["sqnr_db"] is None else f"{row['sqnr_db']:.1f}"


def _colour(row: dict[str, Any]) -> str:
    """Green at 40 dB and above, red at 10 dB and below: roughly what eight bits give a healthy
    layer (about 6 dB a bit) and a broken one."""
    if row["exact"]:
        return "#2e7d32"
    t = 0.0 if row["sqnr_db"] is None else min(max((row["sqnr_db"] - 10.0) / 30.0, 0.0), 1.0)
    red, green = int(198 - t * 152), int(40 + t * 85)
    return f"#{red:02x}{green:02x}{40:02x}"


def _chart(rows: list[dict[str, Any]], lowest, common: str) -> str:
    if not rows:
        return "<p>No layers in common.</p>"
    finite = [row["sqnr_db"] for row in rows if row["sqnr_db"] is not None]
    top = max([10.0] + [math.ceil(v / 10.0) * 10.0 for v in finite])
    bars_width = _CHART_WIDTH - _LABEL_WIDTH - 70
    height = 30 + len(rows) * _BAR_HEIGHT + 6
    parts = [f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{_CHART_WIDTH}" height="{height}" '
             f'role="img" aria-label="SQNR per layer">']
    for tick in range(0, int(top) + 1, 10):
        x = _LABEL_WIDTH + bars_width * tick / top
        parts.append(f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{height - 4}" class="grid"/>'
                     f'<text x="{x:.1f}" y="14" class="tick">{tick} dB</text>')
    for i, row in enumerate(rows):
        y = 26 + i * _BAR_HEIGHT
        sqnr = row["sqnr_db"]
        # A layer at or below 0 dB (error as loud as the signal) still gets a visible red stub.
        width = bars_width if row["exact"] else max(bars_width * max(sqnr or 0.0, 0.0) / top, 4.0)
        label = row["layer"][len(common):]
        label = label if len(label) <= _LABEL_CHARS else "…" + label[-(_LABEL_CHARS - 1):]
        shown = sqnr_text(row)
        mark = ' class="worst"' if row is lowest else ""
        parts.append(f'<g{mark}><title>{html.escape(row["layer"])} ({html.escape(row["op"])}): {shown} dB'
                     f'</title><text x="{_LABEL_WIDTH - 6}" y="{y + 12}" class="label">'
                     f'{html.escape(label)}</text>'
                     f'<rect x="{_LABEL_WIDTH}" y="{y + 2}" width="{width:.1f}" height="{_BAR_HEIGHT - 5}" '
                     f'fill="{_colour(row)}"/><text x="{_LABEL_WIDTH + width + 4:.1f}" y="{y + 12}" '
                     f'class="value">{shown}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[dict[str, Any]], lowest, common: str) -> str:
    lines = ['<table id="layers"><thead><tr><th>#</th><th>layer</th><th>op</th><th>shape</th>'
             '<th>SQNR (dB)</th><th>cosine</th><th>max abs error</th><th>range used</th></tr></thead><tbody>']
    for i, row in enumerate(rows, 1):
        mark = ' class="worst"' if row is lowest else ""
        lines.append(
            f'<tr{mark}><td>{i}</td><td class="name" title="{html.escape(row["layer"])}">'
            f'{html.escape(row["layer"][len(common):])}</td>'
            f'<td>{html.escape(row["op"])}</td><td>{"×".join(map(str, row["shape"])) or "scalar"}</td>'
            f'<td class="num">{sqnr_text(row)}</td>'
            f'<td class="num">{format_number(row["cosine"], 6)}</td>'
            f'<td class="num">{format_number(row["max_abs_error"], 4)}</td>'
            f'<td class="num">{format_range(row)}</td></tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def format_number(value, digits: int, none: str = "-") -> str:
    if value is None:
        return none
    return f"{value:.{digits}f}" if digits <= 1 else f"{value:.{digits}g}"


def format_range(row: dict[str, Any]) -> str:
    """The range a layer's value is held in, with its type ("quint8 [0, 6]"), or "float"."""
    if row["range_min"] is None:
        return "float"
    return f"{row['range_type'] or ''} [{row['range_min']:.4g}, {row['range_max']:.4g}]".strip()
