"""Run a graph, or the part of it that some outputs need, with the numpy kernels.

    values = evaluate(graph, {"input": x}, ["logits", "probs:0"])

Only the nodes the outputs need run, each once, in topological order. Every intermediate tensor
is freed as soon as its last consumer has run, so memory follows the widest point of the graph,
not its size. The tensors live at once must fit the memory budget (`limits.max_memory()`, raised
with --max-memory): each node's outputs are checked before its kernel runs where their shapes are
known statically, and every value is counted once it exists (a view of another counts again: the
budget errs on the safe side). Control edges carry no data and are ignored, except in TF1 control
flow (Switch/Merge/Enter/Exit/NextIteration), which runs on a small dataflow interpreter that tags
values with their loop frame and iteration, as TensorFlow's executor does. TF2 functional control
flow (While, If, Case) and function calls run their functions from the graph's library
(engine/functions.py), each in an evaluation of its own that gets the budget left.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable, Iterable, Mapping

import numpy as np

from gtt_rules.errors import EvaluationError, MemoryBudgetError, did_you_mean

from .dtypes import DT_BFLOAT16, dtype_info, dtype_name, numpy_dtype
from .functions import FunctionLibrary
from .graph import Graph, Node, TensorRef
from .graph_io import release_pages
from .kernels import KERNELS, load_all
from .kernels.float_ops import round_to_bfloat16
from .limits import format_size, max_memory, memory_budget
from .shapes import infer_shape
from .tensors import DEFAULT_MAX_BYTES

CONTROL_FLOW_OPS = frozenset({"Switch", "Merge", "Enter", "Exit", "NextIteration", "LoopCond",
                              "RefSwitch", "RefMerge", "RefEnter", "RefExit", "RefNextIteration"})

MAX_RANK = 64   # numpy's limit (TensorFlow's shapes allow 254)

OnNode = Callable[[Node, Mapping[TensorRef, np.ndarray]], None]


def evaluate(graph: Graph, feeds: Mapping[str, np.ndarray], outputs: list[str], *,
             on_node: OnNode | None = None) -> list[np.ndarray]:
    """The values of `outputs` ("name" or "name:port") given `feeds` (keyed "name" or "name:0").

    `on_node(node, live_values)` is called after each node runs and its dead inputs are freed.
    Raises EvaluationError for bad feeds, a placeholder without a feed, an op without a kernel,
    or a kernel that fails.
    """
    return Evaluator(graph, outputs, fed=feeds.keys()).run(feeds, on_node=on_node)


def run_kernel(node: Node, inputs: list[np.ndarray], output_dtypes: list[int] | None = None
               ) -> list[np.ndarray]:
    """Run one node's kernel on its input values; the list of its output values."""
    kernels = load_all()   # cached imports: cheap, and never a partial set
    fn = kernels.get(node.op)
    if fn is None:
        raise _no_kernel(node)
    with np.errstate(all="ignore"):     # TensorFlow gives inf/nan silently, so do we
        return _call(fn, node, inputs, _bfloat16_ports(output_dtypes))


def _call(fn, node: Node, inputs: list[np.ndarray], bfloat16_ports: tuple[int, ...]) -> list[np.ndarray]:
    try:
        result = fn(node, inputs)
    except EvaluationError:
        raise
    except Exception as error:  # noqa: BLE001 - any kernel failure becomes one clear message
        raise _failed(node, error) from error
    values = [np.asarray(v) for v in result] if isinstance(result, (tuple, list)) else [np.asarray(result)]
    for port in bfloat16_ports:
        if port < len(values) and values[port].dtype == np.float32:
            values[port] = round_to_bfloat16(values[port])    # bfloat16 is held as float32
    return values


def _failed(node: Node, error: Exception) -> EvaluationError:
    # A KeyError's str() is its argument's repr: the quotes would be noise in the message.
    reason = error.args[0] if isinstance(error, KeyError) and error.args else error
    return EvaluationError(f"{node.op} failed: {reason}", node=node.name)


def _bfloat16_ports(output_dtypes: list[int] | None) -> tuple[int, ...]:
    return tuple(port for port, dt in enumerate(output_dtypes or ()) if dt == DT_BFLOAT16)


# Ops whose output is their first input: the evaluator passes the array on without a call.
_ALIASES = frozenset({"Identity", "StopGradient", "PreventGradient", "Snapshot",
                      "PlaceholderWithDefault"})


def _no_kernel(node: Node) -> EvaluationError:
    if node.op == "ImmutableConst":
        # Its value is a region of the package file the graph came in, which this graph is not
        # read from (a region name is never opened as a path: reading must not reach other files).
        region = node.get_attr("memory_region_name", b"")
        region = region.decode("utf-8", "replace") if isinstance(region, bytes) else str(region)
        return EvaluationError(f"ImmutableConst reads region {region} of a memory-mapped package; "
                               f"run the package file itself", node=node.name)
    return EvaluationError(f"no kernel for op '{node.op}'", node=node.name)


class Evaluator:
    """A prepared evaluation of `outputs`: which nodes run, in what order, and who reads what.

    Build once, `run` many times with different feeds (of the tensors named in `fed`). With
    `cache_constants`, values that depend only on Consts are computed by the first run and kept
    for the later ones, as a TensorFlow session folds constants once; the graph must not change
    between runs then.
    """

    def __init__(self, graph: Graph, outputs: Iterable[str], *, fed: Iterable[str] = (),
                 cache_constants: bool = False, functions: FunctionLibrary | None = None):
        """`functions`: the library that runs the graph's function calls, when `graph` is a
        function's body (shared, so each function is prepared once); by default the graph's own."""
        load_all()
        self.graph = graph
        self.functions = functions if functions is not None else FunctionLibrary(graph.library)
        self._run_call = self.functions.call     # one object: the run loop knows calls by identity
        self.outputs = [self._tensor_ref(text, "output") for text in outputs]
        self.fed = {self._tensor_ref(text, "feed") for text in fed}
        self._feed_refs: dict[str, TensorRef] = {}
        self.dataflow = False
        needed = self._needed_nodes(follow_control=False)
        if any(graph[name].op in CONTROL_FLOW_OPS for name in needed):
            self.dataflow = True        # TF1 control flow: deadness and frames need control edges
            needed = self._needed_nodes(follow_control=True)
        if self.dataflow:
            self.steps = [node for node in graph.topological_order() if node.name in needed]
        else:
            self.steps = self._schedule(needed)
        for node in self.steps:
            if node.op == "Placeholder":
                raise EvaluationError(f"placeholder '{node.name}' ({_describe_placeholder(node)}) "
                                      f"needs a feed", node=node.name)
            if node.op not in KERNELS and node.op not in CONTROL_FLOW_OPS and not self.dataflow \
                    and not self.functions.calls(node):
                raise _no_kernel(node)      # under TF1 control flow, only if it runs: it may be dead
        # How many times each tensor is still to be read: once per consuming input, once per output.
        self.reads: dict[TensorRef, int] = {}
        for node in self.steps:
            for ref in node.inputs:
                self.reads[ref] = self.reads.get(ref, 0) + 1
        for ref in self.outputs:
            self.reads[ref] = self.reads.get(ref, 0) + 1
        self._dtypes = {node.name: graph.output_dtypes(node) for node in self.steps}
        self._plan = self._lifetimes([self._prepare(node) for node in self.steps], self.reads)
        self._constants: dict[TensorRef, np.ndarray] | None = None
        self._kept: set[TensorRef] = set()
        self.peak_bytes = 0     # the most bytes of tensors live at once in any run so far
        if cache_constants and not self.dataflow:
            self._plan_without_constants()

    def _prepare(self, node: Node):
        if self.functions.calls(node):
            fn = self._run_call
        else:
            fn = None if node.op in _ALIASES else KERNELS.get(node.op)   # control flow: no kernel
        return node, fn, node.inputs, _bfloat16_ports(self._dtypes[node.name]), \
            0 if fn is None else self._static_bytes(node)

    def _lifetimes(self, plan: list, reads: Mapping[TensorRef, int]) -> list:
        """Each step of `plan` with what the run loop does after it: which of its outputs to keep
        ((port, ref) of those read later, not fed) and which values die (their last read was
        there). Worked out once here, not counted down in every run."""
        keep: dict[str, list] = {}
        for ref in reads:
            if ref not in self.fed:
                keep.setdefault(ref.node, []).append((ref.port, ref))
        last: dict[TensorRef, int] = {}
        for index, step in enumerate(plan):
            for ref in step[2]:
                last[ref] = index
        dying: list[list[TensorRef]] = [[] for _ in plan]
        outputs = set(self.outputs)     # read once more, by the caller: they never die
        for ref, index in last.items():
            if ref not in outputs:
                dying[index].append(ref)
        return [(*step, tuple(sorted(keep.get(step[0].name, ()))), tuple(dead))
                for step, dead in zip(plan, dying)]

    def _static_bytes(self, node: Node) -> int:
        """The bytes `node`'s outputs take, counting those whose shape is known statically."""
        total = 0
        for port, dt in enumerate(self._dtypes[node.name] or ()):
            shape = infer_shape(self.graph, TensorRef(node.name, port))
            if shape is not None and None not in shape:
                try:
                    total += math.prod(shape) * numpy_dtype(dt).itemsize
                except (KeyError, ValueError):
                    pass
        return total

    def _plan_without_constants(self) -> None:
        """Split off the steps that depend only on Consts; keep the values the rest reads."""
        constant: set[str] = set()
        for node in self.steps:
            if node.op not in ("Placeholder", "PlaceholderWithDefault", "NoOp") and \
                    all(ref.node in constant and ref not in self.fed for ref in node.inputs):
                constant.add(node.name)
        later = [step[:5] for step in self._plan if step[0].name not in constant]
        self._kept = {ref for step in later for ref in step[2] if ref.node in constant} | \
            {ref for ref in self.outputs if ref.node in constant}
        reads: dict[TensorRef, int] = {}
        for _, _, inputs, _, _ in later:
            for ref in inputs:
                reads[ref] = reads.get(ref, 0) + 1
        for ref in self.outputs:
            reads[ref] = reads.get(ref, 0) + 1
        self._later_plan = self._lifetimes(later, reads)

    # ---- preparation ----

    def _tensor_ref(self, text: str, role: str) -> TensorRef:
        """`name` or `name:port` as a TensorRef of this graph; `role` ("output", "feed") for errors."""
        ref = TensorRef.parse(str(text).strip())
        node = self.graph.get(ref.node)
        if node is None:
            names = (n.name for n in self.graph)
            raise EvaluationError(f"{role} '{text}' names no node in the graph{did_you_mean(ref.node, names)}")
        count = self.graph.num_outputs(node)
        if count is not None and ref.port >= count:
            raise EvaluationError(f"{role} '{text}': node '{node.name}' ({node.op}) has {count} "
                                  f"output{'' if count == 1 else 's'}")
        return ref

    def _needed_nodes(self, *, follow_control: bool) -> set[str]:
        fed_nodes = {ref.node for ref in self.fed}

        def producers(node: Node) -> list[str]:
            found = [ref.node for ref in node.inputs if ref not in self.fed]
            return found + [c for c in node.control_inputs if c not in fed_nodes] if follow_control else found
        return self.graph.walk([ref.node for ref in self.outputs if ref not in self.fed], producers)

    def _schedule(self, needed: set[str]) -> list[Node]:
        """Depth-first post-order from the outputs: each producer runs just before it is first
        needed, so Consts are not all decoded up front and kept alive for the whole run."""
        order: list[Node] = []
        state: dict[str, bool] = {}         # False: on the stack; True: scheduled
        for root in dict.fromkeys(ref.node for ref in self.outputs if ref.node in needed):
            if root in state:
                continue
            stack = [(root, iter(self._producers(root)))]
            state[root] = False
            while stack:
                name, pending = stack[-1]
                for producer in pending:
                    if producer not in state:
                        state[producer] = False
                        stack.append((producer, iter(self._producers(producer))))
                        break
                    if state[producer] is False:
                        raise EvaluationError(f"the graph has a cycle through '{producer}'",
                                              node=producer)
                else:
                    stack.pop()
                    state[name] = True
                    order.append(self.graph[name])
        return order

    def _producers(self, name: str) -> list[str]:
        return list(dict.fromkeys(ref.node for ref in self.graph[name].inputs if ref not in self.fed))

    # ---- running ----

    def run(self, feeds: Mapping[str, np.ndarray], *, on_node: OnNode | None = None) -> list[np.ndarray]:
        """The output values for these feeds."""
        values = self._check_feeds(feeds)
        if self.dataflow:
            flow = _Dataflow(self, values)
            with np.errstate(all="ignore"):
                results = flow.run()
            self.peak_bytes = max(self.peak_bytes, flow.live)     # it keeps every value to the end
            return results
        if self._constants is not None:
            plan = self._later_plan
            values.update(self._constants)
        else:
            plan = self._plan
        # The cached constants stay with the evaluation: their pages are not given back after
        # each run only to be faulted in again by the next.
        cached = self._kept if self._constants is not None else ()
        kept = {} if self._kept else None
        budget = max_memory()
        held = {ref: _bytes(value) for ref, value in values.items()}   # what each live value counts
        live = sum(held.values())
        if live > budget:
            raise MemoryBudgetError(f"the inputs take {format_size(live)}, over the memory budget of "
                                  f"{format_size(budget)}; raise it with --max-memory")
        peak = live
        with np.errstate(all="ignore"):     # TensorFlow gives inf/nan silently, so do we
            for node, fn, inputs, bfloat16_ports, static_bytes, keep, dying in plan:
                if live + static_bytes > budget:    # before the kernel allocates anything
                    raise _over_budget(node, static_bytes, live, budget)
                try:
                    args = [values[ref] for ref in inputs]
                except KeyError as error:   # its producer gave fewer outputs than the graph says
                    raise _not_produced(self.graph, error.args[0]) from None
                if fn is None:
                    results = args[:1]      # the same array: it takes no more memory
                elif fn is self._run_call:      # the function's evaluation counts its inputs again
                    with memory_budget(max(budget - live + sum(_bytes(arg) for arg in args), 0)):
                        results = _call(fn, node, args, bfloat16_ports)
                else:
                    results = _call(fn, node, args, bfloat16_ports)
                if fn is not None:
                    sizes = [_bytes(value) for value in results]
                    made = sum(sizes)
                    if live + made > budget:
                        raise _over_budget(node, made, live, budget)
                for port, ref in keep:
                    if port < len(results):     # else its reader says the output is missing
                        value = values[ref] = results[port]
                        size = held[ref] = 0 if fn is None else sizes[port]
                        live += size
                        if kept is not None and ref in self._kept:
                            value.flags.writeable = False   # shared by every later run
                            kept[ref] = value
                peak = max(peak, live)
                for ref in dying:
                    value = values.pop(ref)
                    if ref not in cached:
                        release_pages(value)
                    live -= held.pop(ref, 0)
                if on_node is not None:
                    on_node(node, values)
        self.peak_bytes = max(self.peak_bytes, peak)
        if kept is not None and self._constants is None:
            self._constants = kept
        missing = [ref for ref in self.outputs if ref not in values]
        if missing:
            raise _not_produced(self.graph, missing[0])
        return [values[ref] for ref in self.outputs]

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[TensorRef, np.ndarray]:
        values: dict[TensorRef, np.ndarray] = {}
        for text, value in feeds.items():
            ref = self._feed_refs.get(text)
            if ref is None:     # parsed once: a loop feeds its body the same names every step
                ref = self._feed_refs[text] = self._tensor_ref(text, "feed")
            if ref not in self.fed:
                raise EvaluationError(f"feed '{text}' was not declared when the evaluation was prepared")
            if ref in values:
                raise EvaluationError(f"'{ref}' is fed twice")
            if self.reads.get(ref, 0) or ref in self.outputs:
                values[ref] = check_feed(self.graph, ref, text, value)
        return values


def _bytes(value: np.ndarray) -> int:
    """What a value counts against the memory budget: a variant (a TensorList) counts its items."""
    if value.dtype == object and value.ndim == 0:
        return value.nbytes + getattr(value[()], "nbytes", 0)
    return value.nbytes


def _over_budget(node: Node, size: int, live: int, budget: int) -> MemoryBudgetError:
    return MemoryBudgetError(f"{node.op} needs {format_size(size)} for its outputs with "
                           f"{format_size(live)} of tensors live, over the memory budget of "
                           f"{format_size(budget)}; raise it with --max-memory", node=node.name)


def _not_produced(graph: Graph, ref: TensorRef) -> EvaluationError:
    return EvaluationError(f"{graph[ref.node].op} produced no output {ref.port}, which the graph "
                           f"reads", node=ref.node)


def _describe_placeholder(node: Node) -> str:
    shape = node.get_attr("shape", None)
    dims = "unknown shape" if shape is None else \
        "shape [" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"
    return f"{dtype_name(node.get_attr('dtype', 0))}, {dims}"


def check_feed(graph: Graph, ref: TensorRef, text: str, value) -> np.ndarray:
    """The value fed to `ref` (written `text`) in the tensor's dtype; EvaluationError if its dtype
    or shape cannot fit."""
    node = graph[ref.node]
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001
        raise EvaluationError(f"feed '{text}' is not an array: {error}") from None
    dtypes = graph.output_dtypes(node)
    if dtypes and ref.port < len(dtypes) and dtype_info(dtypes[ref.port]) is not None:
        dt = dtypes[ref.port]
        try:
            expected = numpy_dtype(dt)
        except ValueError:
            expected = None
        if expected is not None and array.dtype != expected:
            if array.dtype.kind == "O" or not np.can_cast(array.dtype, expected, "same_kind"):
                raise EvaluationError(f"feed '{text}' has dtype {array.dtype}, but '{ref}' is "
                                      f"{dtype_name(dt)}")
            array = array.astype(expected)
        if dt == DT_BFLOAT16:
            array = round_to_bfloat16(array)
    if node.op in ("Placeholder", "PlaceholderWithDefault"):
        shape = node.get_attr("shape", None)
        if shape is not None and (len(shape) != array.ndim or
                                  any(d >= 0 and d != a for d, a in zip(shape, array.shape))):
            want = "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"
            raise EvaluationError(f"feed '{text}' has shape {list(array.shape)}, but placeholder "
                                  f"'{node.name}' takes {want}")
    return array


def random_feeds(graph: Graph, seed: int = 0, overrides: Mapping[str, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
    """Seeded random values for every Placeholder, from its dtype and static shape (unknown dims 1).

    Floats are standard normal, integers in [0, 100), bools fair coins, quantized codes uniform.
    Placeholders named in `overrides` ("name" or "name:0") take the given values instead;
    PlaceholderWithDefault nodes keep their default unless overridden. Placeholders of types
    with no sensible random value (string, resource) are left out: the evaluator names them if
    an output needs them.
    """
    overrides = dict(overrides or {})
    overridden = {TensorRef.parse(k).node for k in overrides}
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    budget, total = max_memory(), sum(np.asarray(v).nbytes for v in overrides.values())
    for node in graph.placeholders():
        if node.name in overridden or node.op != "Placeholder":
            continue
        dt = node.get_attr("dtype", 0)
        shape = node.get_attr("shape", None)
        shape = [1] if shape is None else [1 if d < 0 else d for d in shape]
        if len(shape) > MAX_RANK:
            raise EvaluationError(f"placeholder '{node.name}' has rank {len(shape)}; the evaluator's "
                                  f"numpy arrays have at most {MAX_RANK} dimensions", node=node.name)
        info = dtype_info(dt)
        if info is None or info.holder is None or info.kind in ("string", "handle"):
            continue
        holder = info.holder
        size = math.prod(shape) * holder.itemsize
        if size > DEFAULT_MAX_BYTES:    # checked before allocating: the shape may be absurd
            raise EvaluationError(f"placeholder '{node.name}' ({_describe_placeholder(node)}) is "
                                  f"too big for a random value ({size} bytes, over the limit of "
                                  f"{DEFAULT_MAX_BYTES}); feed it instead", node=node.name)
        # Random numbers are drawn in 64 bits, then narrowed: both exist for a moment.
        drawn = math.prod(shape) * {"float": 8, "complex": 32}.get(info.kind, 0)
        if total + size + drawn > budget:
            raise MemoryBudgetError(f"a random value for placeholder '{node.name}' "
                                  f"({_describe_placeholder(node)}) needs {format_size(size + drawn)} "
                                  f"with {format_size(total)} of inputs made, over the memory budget "
                                  f"of {format_size(budget)}; raise it with --max-memory or feed it",
                                  node=node.name)
        total += size
        if info.kind == "float":
            value = rng.standard_normal(shape).astype(holder)
        elif info.kind == "complex":
            value = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(holder)
        elif info.kind == "bool":
            value = rng.integers(0, 2, size=shape).astype(bool)
        elif info.kind == "quantized":
            limits = np.iinfo(holder)
            value = rng.integers(limits.min, limits.max, size=shape, endpoint=True).astype(holder)
        else:
            value = rng.integers(0, 100, size=shape).astype(holder)
        if dt == DT_BFLOAT16:
            value = round_to_bfloat16(value)
        feeds[node.name] = value
    feeds.update(overrides)
    return feeds


# ---- TF1 control flow ----------------------------------------------------------------------------

_DEAD = None  # a dead tensor: the untaken side of a Switch and everything computed from it

Tag = tuple  # ((frame_name, iteration), ...): where in which loop a value lives; () is the top


class _Dataflow:
    """TensorFlow's executor semantics for Switch/Merge/Enter/Exit/NextIteration graphs.

    Each node runs once per tag. Switch sends its value to one output and a dead tensor to the
    other; deadness flows through every op but Merge, which forwards the first live input.
    Enter moves a value into a frame at iteration 0, NextIteration to the next iteration, Exit
    back to the parent frame. Loop-invariant Enters (is_constant) are visible at every iteration.
    Values are kept until the run ends, and all of them count against the memory budget.
    """

    def __init__(self, plan: Evaluator, fed: dict[TensorRef, np.ndarray]):
        self.plan = plan
        self.static_bytes = {step[0].name: step[4] for step in plan._plan}
        self.budget = max_memory()
        self.live = sum(_bytes(value) for value in fed.values())
        self.graph = plan.graph
        self.needed = {node.name for node in plan.steps}
        self.fed = fed
        # (node, tag) -> (outputs, dead); outputs holds _DEAD for dead ports.
        self.done: dict[tuple[str, Tag], tuple[list, bool]] = {}
        self.fired: set[tuple[str, Tag]] = set()              # (node, tag it ran at)
        self.queue: deque[tuple[str, Tag]] = deque()
        self.consumers = {name: [c.name for c in self.graph.consumers(name) if c.name in self.needed]
                          for name in self.needed | {ref.node for ref in fed}}
        self.invariants: dict[tuple[Tag, str], list[str]] = {}   # frame instance -> constant Enters
        self.iterations: dict[tuple[Tag, str], set[int]] = {}
        self.dead_exits: set[tuple[str, Tag]] = set()

    def run(self) -> list[np.ndarray]:
        for ref, value in self.fed.items():
            outputs, _ = self.done.setdefault((ref.node, ()), ([], False))
            outputs.extend([_DEAD] * (ref.port + 1 - len(outputs)))
            outputs[ref.port] = value
        for ref in {ref.node for ref in self.fed}:
            self._notify(ref, ())
        for node in self.plan.steps:
            if not node.inputs and not node.control_inputs:
                self.queue.append((node.name, ()))
        while True:
            while self.queue:
                self._try(*self.queue.popleft())
            # A loop whose every exit was dead (it sat in an untaken branch) ends dead.
            pending = [(name, tag) for name, tag in self.dead_exits if (name, tag[:-1]) not in self.done]
            self.dead_exits.clear()
            if not pending:
                break
            for name, tag in pending:
                if (name, tag[:-1]) not in self.done:
                    self.done[(name, tag[:-1])] = ([_DEAD], True)
                    self._notify(name, tag[:-1])
        results = []
        for ref in self.plan.outputs:
            entry = self.done.get((ref.node, ()))
            if entry is None or ref.port >= len(entry[0]):
                raise EvaluationError(f"output '{ref}' was never computed (its loop or branch "
                                      f"did not finish)", node=ref.node)
            if entry[0][ref.port] is _DEAD:
                raise EvaluationError(f"output '{ref}' is dead: it lies on an untaken branch "
                                      f"of a Switch", node=ref.node)
            results.append(entry[0][ref.port])
        return results

    def _lookup(self, name: str, tag: Tag):
        entry = self.done.get((name, tag))
        if entry is None and tag and self.graph[name].op in ("Enter", "RefEnter") \
                and self.graph[name].get_attr("is_constant", False):
            entry = self.done.get((name, tag[:-1] + ((tag[-1][0], 0),)))
        return entry

    def _try(self, name: str, tag: Tag) -> None:
        try:
            self._step(name, tag)
        except EvaluationError:
            raise
        except Exception as error:  # noqa: BLE001 - as in `_call`: a malformed control-flow node
            raise _failed(self.graph[name], error) from error

    def _step(self, name: str, tag: Tag) -> None:
        if (name, tag) in self.fired:
            return
        node = self.graph[name]
        inputs = [self._lookup(ref.node, tag) for ref in node.inputs]
        controls = [self._lookup(c, tag) for c in node.control_inputs]
        if node.op in ("Merge", "RefMerge"):
            for index, (ref, entry) in enumerate(zip(node.inputs, inputs)):
                if entry is not None and entry[0][ref.port] is not _DEAD:
                    self.fired.add((name, tag))
                    self._finish(node, tag, [entry[0][ref.port], np.asarray(index, np.int32)], False)
                    return
            if all(entry is not None or not self._can_arrive(ref.node, tag)
                   for ref, entry in zip(node.inputs, inputs)):
                self.fired.add((name, tag))
                self._finish(node, tag, [_DEAD, _DEAD], True)
            return
        if any(entry is None for entry in inputs + controls):
            return
        self.fired.add((name, tag))
        values = [entry[0][ref.port] for ref, entry in zip(node.inputs, inputs)]
        if any(entry[1] for entry in controls) or any(v is _DEAD for v in values):
            count = self.graph.num_outputs(node) or 1
            self._finish(node, tag, [_DEAD] * count, True)
        elif node.op in ("Switch", "RefSwitch"):
            data, predicate = values
            taken = bool(np.asarray(predicate).reshape(()))
            self._finish(node, tag, [_DEAD, data] if taken else [data, _DEAD], False)
        elif node.op in CONTROL_FLOW_OPS:
            self._finish(node, tag, [values[0]], False)
        else:
            if self.live + self.static_bytes[name] > self.budget:
                raise _over_budget(node, self.static_bytes[name], self.live, self.budget)
            if self.plan.functions.calls(node):
                with memory_budget(max(self.budget - self.live + sum(_bytes(v) for v in values), 0)):
                    outputs = _call(self.plan._run_call, node, values,
                                    _bfloat16_ports(self.plan._dtypes.get(name)))
            else:
                outputs = run_kernel(node, values, self.plan._dtypes.get(name))
            made = sum(_bytes(value) for value in outputs)
            if self.live + made > self.budget:
                raise _over_budget(node, made, self.live, self.budget)
            self.live += made
            self._finish(node, tag, outputs, False)

    def _can_arrive(self, producer: str, tag: Tag) -> bool:
        """Whether a loop Merge can still get a value from `producer` at `tag`."""
        op = self.graph[producer].op.removeprefix("Ref")
        iteration = tag[-1][1] if tag else 0
        return not ((op == "NextIteration" and iteration == 0) or (op == "Enter" and iteration > 0))

    def _finish(self, node: Node, tag: Tag, outputs: list, dead: bool) -> None:
        """Record a node's outputs and offer them to its consumers at the tag they arrive at."""
        op = node.op.removeprefix("Ref")
        if op == "Enter":
            frame = node.get_attr("frame_name")
            out_tag = tag + ((frame, 0),)
            if node.get_attr("is_constant", False):
                self.invariants.setdefault((tag, frame), []).append(node.name)
        elif op == "Exit":
            if dead:        # dead every iteration but the last; only a wholly dead loop ends dead
                self.dead_exits.add((node.name, tag))
                return
            out_tag = tag[:-1]
        elif op == "NextIteration":
            if dead:        # the last iteration's body is dead; it starts no further iteration
                return
            frame, iteration = tag[-1]
            out_tag = tag[:-1] + ((frame, iteration + 1),)
        else:
            out_tag = tag
        self.done[(node.name, out_tag)] = (outputs, dead)
        self._notify(node.name, out_tag)
        if op == "Enter" and node.get_attr("is_constant", False):
            # Invariants reach iterations that started before they did.
            for iteration in self.iterations.get((tag, out_tag[-1][0]), ()):
                self._notify(node.name, tag + ((out_tag[-1][0], iteration),))

    def _notify(self, name: str, tag: Tag) -> None:
        if tag:
            instance, (_, iteration) = (tag[:-1], tag[-1][0]), tag[-1]
            seen = self.iterations.setdefault(instance, set())
            if iteration not in seen:
                seen.add(iteration)
                if iteration > 0:   # a new iteration: the frame's invariants reach it too
                    for enter in self.invariants.get(instance, ()):
                        for consumer in self.consumers.get(enter, ()):
                            self.queue.append((consumer, tag))
        for consumer in self.consumers.get(name, ()):
            self.queue.append((consumer, tag))
