"""Calibration: the ranges an eight-bit graph computes when it runs, measured on sample inputs and
frozen into constants.

An eight-bit graph from `quantize_nodes` measures ranges each time it runs: a QuantizeV2 quantizes
over the Min and Max of its input, and a Requantize narrows over what a RequantizationRange finds
in a 32-bit result. Such answers depend on the other inputs in the batch, and the scans cost time.
Running the graph on representative inputs, recording what each of those nodes computes and
replacing it with Consts gives static ranges. Records can also come from, and go to, logs in the
Graph Transform Tool's format, where a line holds `NAME__print__;__requant_min_max:[MIN][MAX]`
(a Min or Max node logs its one value as both).
"""
from __future__ import annotations

import collections
import math
import pathlib
import re
import sys
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from gtt_rules.errors import EvaluationError, GraphError, MemoryBudgetError, UsageError

from gtt_rules.engine.dtypes import DT_FLOAT
from gtt_rules.engine.evaluator import Evaluator
from gtt_rules.engine.graph import Graph, TensorRef
from gtt_rules.engine.kernels import chunked
from gtt_rules.engine.limits import max_memory, memory_budget

Records = dict[str, list[tuple[float, float]]]  # range node name -> (min, max) per sample

_LOG_RECORD = re.compile(r"(?:^|;)([^;]*)__print__;__requant_min_max:\[([^\]\[]*)\]\[([^\]\[]*)\]")

# Where eight-bit ops take a range that may be computed at run time (input ports), ...
_RANGE_INPUTS = {"QuantizeV2": (1, 2), "Requantize": (3, 4)}
# ... the nodes that measure one, ...
_MEASURING_OPS = ("Min", "Max", "RequantizationRange")
# ... and the scalar arithmetic between them (the widening around zero of a measured range).
_RANGE_ARITHMETIC = ("Minimum", "Maximum", "Identity", "Add", "AddV2", "Sub", "Mul", "Neg")

ESTIMATORS = ("minmax", "percentile", "moving-average")
MOVING_AVERAGE_DECAY = 0.9


def runtime_ranges(graph: Graph) -> list[str]:
    """The Min, Max and RequantizationRange nodes whose result an eight-bit op takes as a range,
    in file order: what makes a range depend on the batch, and what calibration freezes."""
    ranges = [ref.node for node in graph if node.op in _RANGE_INPUTS
              for port, ref in enumerate(node.inputs) if port in _RANGE_INPUTS[node.op]]
    found = graph.walk(ranges, lambda node: [r.node for r in node.inputs] if node.op in _RANGE_ARITHMETIC else ())
    return [node.name for node in graph if node.name in found and node.op in _MEASURING_OPS]


def record_ranges(graph: Graph, samples: Iterable[Mapping[str, np.ndarray]], *,
                  percentile: float | None = None, on_sample: Callable[[int], None] | None = None,
                  workers: int | None = None) -> Records:
    """Run the graph on each sample (feeds keyed by input name) and record, per sample, what each
    node of `runtime_ranges` computes; nothing else is computed. With `percentile` P, each records
    the P-th percentile of the values it measures (and the (100 - P)-th for a minimum) instead of
    their extremes.

    The samples after the first run in up to `workers` forked processes (default: as many as the
    kernels use threads), each with its share of the memory budget, where the platform forks and
    that share holds twice what the first sample took; the records are the same either way.
    """
    names = runtime_ranges(graph)
    fetches = {name: _fetches(graph[name], percentile is not None) for name in names}
    samples = iter(samples)
    first = next(samples, None)
    if first is None:
        raise UsageError("no calibration samples were given")
    evaluator = Evaluator(graph, [f for name in names for f in fetches[name]], fed=list(first),
                          cache_constants=True)

    def measure(feeds: Mapping[str, np.ndarray]) -> list[tuple[float, float]]:
        values = iter(evaluator.run(feeds))
        return [_measured(graph[name], [next(values) for _ in fetches[name]], percentile)
                for name in names]

    records: Records = {name: [] for name in names}
    for count, measured in enumerate(_measure_all(measure, first, samples, evaluator, workers), 1):
        for name, observed in zip(names, measured):
            records[name].append(observed)
        if on_sample is not None:
            on_sample(count)
    return records


def _measure_all(measure, first, rest: Iterator, evaluator: Evaluator, workers: int | None):
    """measure(first), then measure(sample) for each of `rest`, in order: in this process, or over
    forked workers (see record_ranges). An error reading a sample is raised once the samples before
    it are measured, and a worker's error as it comes in order, as a run in one process raises them.
    A sample a worker's share of the memory budget cannot hold is measured here, with all of it."""
    yield measure(first)        # constants and prepared weights are then computed once, for all
    workers = _worker_count(workers, evaluator.peak_bytes)
    if workers < 2:
        yield from map(measure, rest)
        return
    import multiprocessing      # with concurrent.futures' processes, 15 ms to import: only when used
    import os
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pending: collections.deque = collections.deque()   # (future, feeds), in sample order
    unread: Exception | None = None
    # Forked, the workers inherit `measure` (a closure over this graph's evaluator) unpickled.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_worker, initargs=(measure, max_memory() // workers, os.getpid()))
    try:
        while True:
            while unread is None and len(pending) < 4 * workers:    # a few samples read ahead
                try:
                    feeds = next(rest)
                except StopIteration:
                    break
                except Exception as error:  # noqa: BLE001 - raised in its turn, below
                    unread = error
                    break
                pending.append((pool.submit(_measure_in_worker, feeds), feeds))
            if not pending:
                break
            future, feeds = pending.popleft()
            try:
                measured = future.result()
            except BrokenProcessPool:
                raise EvaluationError("a calibration worker process died (killed for memory?); "
                                      "lower --max-memory, or give fewer samples at once") from None
            yield measure(feeds) if measured is None else measured
    finally:
        # Stop at once on an error or Ctrl-C: queued samples are dropped, not measured first.
        pool.shutdown(wait=True, cancel_futures=True)
    if unread is not None:
        raise unread


def _worker_count(requested: int | None, peak: int) -> int:
    """How many processes measure the samples after the first: `requested` (default
    chunked.THREADS: the usable cores, up to four), fewer where a share of the memory budget would not hold twice `peak`, and
    one but on Linux (a forked child of a process that loaded macOS's system libraries may crash)."""
    if not sys.platform.startswith("linux"):
        return 1
    workers = chunked.THREADS if requested is None else requested
    budget = max_memory()
    while workers > 1 and budget // workers < 2 * peak:
        workers -= 1
    return max(workers, 1)


_WORKER: tuple[Callable, int] | None = None     # in a worker: what it runs, and its memory budget


def _start_worker(measure: Callable, budget: int, parent: int) -> None:
    import ctypes
    import os
    import signal

    global _WORKER
    _WORKER = measure, budget
    # The parent answers Ctrl-C; a worker dies with its parent (killed, or out of memory) rather
    # than wait on its queue forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:      # the parent was gone before that took effect
        os._exit(1)
    chunked.use_one_thread()        # the workers together fill the cores, so each keeps to one


def _measure_in_worker(feeds: Mapping[str, np.ndarray]) -> list[tuple[float, float]] | None:
    """The sample's records, or None where this worker's share of the budget cannot hold it."""
    measure, budget = _WORKER
    try:
        with memory_budget(budget):
            return measure(feeds)
    except MemoryBudgetError:
        return None


def _fetches(node, percentile: bool) -> list[str]:
    if not percentile:
        return [f"{node.name}:{port}" for port in range(2 if node.op == "RequantizationRange" else 1)]
    return [str(ref) for ref in node.inputs[:3 if node.op == "RequantizationRange" else 1]]


def _measured(node, values: list, percentile: float | None) -> tuple[float, float]:
    if percentile is None:
        if node.op == "RequantizationRange":
            return float(values[0]), float(values[1])
        return float(values[0]), float(values[0])
    if node.op == "RequantizationRange":
        from gtt_rules.engine.kernels.quantized import requantization_range

        codes = np.asarray(values[0]).reshape(-1)
        if codes.size:   # the range of the codes between the percentiles, as the kernel measures it
            codes = codes.view(np.int32) if codes.dtype != np.int32 else codes
            kept = np.array([np.percentile(codes, 100.0 - percentile, method="lower"),
                             np.percentile(codes, percentile, method="higher")], np.int32)
            low, high = requantization_range(node, [kept, values[1], values[2]])
            return float(low), float(high)
        low, high = requantization_range(node, values)
        return float(low), float(high)
    measured = np.asarray(values[0], np.float32).reshape(-1)
    if not measured.size:
        return (math.inf, math.inf) if node.op == "Min" else (-math.inf, -math.inf)
    value = float(np.percentile(measured, percentile if node.op == "Max" else 100.0 - percentile))
    return value, value


def estimate(observed: list[tuple[float, float]], estimator: str = "minmax", *,
             min_percentile: float = 0.0, max_percentile: float = 0.0) -> tuple[float, float]:
    """The range kept for one node from its per-sample records: `minmax` (the smallest min and the
    largest max, or GTT's percentiles of them, see `chosen_range`; `percentile` records are
    reduced the same way) or `moving-average` (an exponential moving average of the per-sample
    mins and maxes in sample order, decay MOVING_AVERAGE_DECAY, as TensorFlow's
    quantization-aware training tracks ranges)."""
    if estimator == "moving-average":
        low, high = observed[0]
        for lo, hi in observed[1:]:
            low = MOVING_AVERAGE_DECAY * low + (1.0 - MOVING_AVERAGE_DECAY) * lo
            high = MOVING_AVERAGE_DECAY * high + (1.0 - MOVING_AVERAGE_DECAY) * hi
        return low, high
    return chosen_range(observed, min_percentile, max_percentile)


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


def freeze_ranges(graph: Graph, ranges: Mapping[str, tuple[float, float]], *,
                  protected: Iterable[str] = ()) -> None:
    """Replace each named range node with Consts of its range: a RequantizationRange with
    `NAME/frozen_min` and `NAME/frozen_max`, a Min with `NAME/frozen` holding the range's min, a Max
    with one holding its max. What only fed them (the flattening Reshape) goes too."""
    for name in ranges:
        node = graph.get(name)
        if node is None:
            raise GraphError(f"'{name}' has a recorded range but is not in the graph")
        if node.op not in _MEASURING_OPS:
            raise GraphError(f"'{name}' has a recorded range but is a {node.op}, not a "
                             f"RequantizationRange, Min or Max")
    keep = set(protected) | {node.name for node in graph.placeholders()}
    with graph.transaction():
        for name, (low, high) in ranges.items():
            node = graph[name]
            if node.op == "RequantizationRange":
                frozen = [("frozen_min", low), ("frozen_max", high)]
            else:
                frozen = [("frozen", low if node.op == "Min" else high)]
            consts = [TensorRef(graph.add_const(graph.fresh_name(f"{name}/{suffix}"), np.float32(value), DT_FLOAT,
                                                node.device).name) for suffix, value in frozen]
            for port, const in enumerate(consts):
                graph.reroute(TensorRef(name, port), const)
            graph.hand_over(name, consts[0].node)
            graph.sweep([name], keep, heirs={name: [const.node for const in consts]})


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


def layer_errors(float_graph: Graph, graph: Graph, samples: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """The error each converted layer adds, measured on the samples: for each Dequantize of `graph`
    whose name `float_graph` computes too (not a weight), its relative RMS error to the float
    graph's value, channel by channel along the last axis and averaged (so that a channel far
    larger than the rest does not hide what eight bits do to the others), minus the largest such
    error among the nearest such layers before it. Keyed by name, in `graph`'s order."""
    shared = [node.name for node in graph if node.op == "Dequantize" and node.name in float_graph
              and float_graph[node.name].op != "Const"]
    if not shared or not samples:
        return {}
    errors: dict[str, np.ndarray] = {}
    scale: dict[str, np.ndarray] = {}
    ours = Evaluator(graph, shared, fed=list(samples[0]), cache_constants=True)
    theirs = Evaluator(float_graph, shared, fed=list(samples[0]), cache_constants=True)
    for feeds in samples:
        for name, got, want in zip(shared, ours.run(feeds), theirs.run(feeds)):
            want = np.asarray(want, np.float64)
            want = want.reshape(-1, want.shape[-1]) if want.ndim else want.reshape(1, 1)
            got = np.asarray(got, np.float64).reshape(want.shape)
            errors[name] = errors.get(name, 0.0) + np.sum((got - want) ** 2, axis=0)
            scale[name] = scale.get(name, 0.0) + np.sum(want ** 2, axis=0)
    relative = {}
    for name in shared:
        with np.errstate(divide="ignore", invalid="ignore"):
            per_channel = np.where(scale[name] > 0, np.sqrt(errors[name] / scale[name]), np.sqrt(errors[name]))
        relative[name] = float(np.mean(per_channel)) if per_channel.size else 0.0
    return {name: relative[name] - max((relative[m] for m in _nearest(graph, name, relative)), default=0.0)
            for name in shared}


def _nearest(graph: Graph, name: str, among: Mapping[str, float]) -> set[str]:
    """The nodes of `among` that `name` reads through nodes not in `among`."""
    return {found for found in graph.walk([ref.node for ref in graph[name].inputs],
                                          lambda node: () if node.name in among else [r.node for r in node.inputs])
            if found in among}
