"""Calibration: what each RequantizationRange computes on sample inputs, frozen into constants.

An eight-bit graph from `quantize_nodes` measures the range of every 32-bit result each time it
runs (RequantizationRange scans the whole tensor). Running it on representative inputs, recording
those ranges and replacing each RequantizationRange with two Consts makes the runtime skip the
scan. Records can also come from, and go to, logs in the Graph Transform Tool's format, where a
line holds `NAME__print__;__requant_min_max:[MIN][MAX]`.
"""
from __future__ import annotations

import math
import pathlib
import re
from typing import Callable, Iterable, Mapping

import numpy as np

from gtt_rules.errors import GraphError, UsageError

from .dtypes import DT_FLOAT
from .evaluator import Evaluator
from .graph import Graph, TensorRef
from .tensors import encode_tensor

Records = dict[str, list[tuple[float, float]]]  # RequantizationRange name -> (min, max) per run

_LOG_RECORD = re.compile(r"(?:^|;)([^;]*)__print__;__requant_min_max:\[([^\]\[]*)\]\[([^\]\[]*)\]")


def requantization_ranges(graph: Graph) -> list[str]:
    """The names of the graph's RequantizationRange nodes, in file order."""
    return [node.name for node in graph if node.op == "RequantizationRange"]


def record_ranges(graph: Graph, samples: Iterable[Mapping[str, np.ndarray]], outputs: list[str], *,
                  on_sample: Callable[[int], None] | None = None) -> Records:
    """Run the graph on each sample (feeds keyed by input name) and record every range it computes."""
    names = requantization_ranges(graph)
    fetches = [f"{name}:{port}" for name in names for port in (0, 1)]
    evaluator = None
    records: Records = {name: [] for name in names}
    for count, feeds in enumerate(samples, 1):
        if evaluator is None:
            evaluator = Evaluator(graph, list(outputs) + fetches, fed=list(feeds), cache_constants=True)
        values = evaluator.run(feeds)[len(outputs):]
        for i, name in enumerate(names):
            records[name].append((float(values[2 * i]), float(values[2 * i + 1])))
        if on_sample is not None:
            on_sample(count)
    if evaluator is None:
        raise UsageError("no calibration samples were given")
    return records


def chosen_range(observed: list[tuple[float, float]], min_percentile: float, max_percentile: float
                 ) -> tuple[float, float]:
    """The range kept for one node, as GTT chooses it: over the sorted mins and sorted maxes, the
    min at `min_percentile` percent from the bottom and the max at `max_percentile` percent from
    the top (0 and 0: the smallest min and the largest max seen)."""
    mins = sorted(lo for lo, _ in observed)
    maxs = sorted(hi for _, hi in observed)
    # C's round(): halves away from zero (Python's round() would go to even).
    low = max(int(math.floor(len(mins) * min_percentile / 100.0 + 0.5)), 0)
    high = min(int(math.floor(len(maxs) * (1.0 - max_percentile / 100.0) + 0.5)), len(maxs) - 1)
    return mins[min(low, len(mins) - 1)], maxs[max(high, 0)]


def freeze_ranges(graph: Graph, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Replace each named RequantizationRange with Consts `NAME/frozen_min` and `NAME/frozen_max`."""
    for name in ranges:
        node = graph.get(name)
        if node is None:
            raise GraphError(f"'{name}' has a recorded range but is not in the graph")
        if node.op != "RequantizationRange":
            raise GraphError(f"'{name}' has a recorded range but is a {node.op}, not a RequantizationRange")
    with graph.transaction():
        for name, (low, high) in ranges.items():
            node = graph[name]
            consts = []
            for suffix, value in (("frozen_min", low), ("frozen_max", high)):
                const = graph.add_node(f"{name}/{suffix}", "Const", [], [], device=node.device)
                const.set_attr("dtype", DT_FLOAT)
                const.set_attr("value", encode_tensor(np.asarray(value, np.float32), DT_FLOAT))
                consts.append(TensorRef(const.name, 0))
            for consumer in graph.consumers(name):
                graph.set_inputs(consumer, [consts[r.port] if r.node == name else r for r in consumer.inputs],
                                 [c for c in consumer.control_inputs if c != name])
            graph.remove_node(name)


def read_min_max_log(path: str | pathlib.Path) -> Records:
    """The records of a GTT-format log; lines of other shapes are skipped, as GTT does."""
    path = pathlib.Path(path)
    if path.is_char_device():    # /dev/zero would never end
        raise UsageError("is a device, not a min/max log", path=str(path))
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        raise UsageError(f"cannot read the min/max log: {error.strerror or error}", path=str(path)) from None
    records: Records = {}
    for line in text.splitlines():
        for match in _LOG_RECORD.finditer(line):
            try:
                low, high = float(match.group(2)), float(match.group(3))
            except ValueError:
                continue
            records.setdefault(match.group(1), []).append((low, high))
    if not records:
        raise UsageError("no min/max records found (lines like 'NAME__print__;__requant_min_max:[MIN][MAX]')",
                         path=str(path))
    return records


def min_max_log(records: Records) -> str:
    """Records as a GTT-format log, one line per node and run."""
    return "".join(f"{name}__print__;__requant_min_max:[{low!r}][{high!r}]\n"
                   for name, observed in records.items() for low, high in observed)
