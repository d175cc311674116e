"""Static shape inference: what shape a tensor has before the graph runs.

Shapes start at Consts, Placeholders and `_output_shapes` attrs and flow through one shape
function per op (`SHAPE_FUNCTIONS`). A shape is a tuple of dims, each an int or None (unknown);
None instead of a tuple is an unknown rank. Where an op has no shape function, or an input it
needs is unknown, the answer is unknown: never a guess.

Small integer tensors (shape vectors, axes, paddings) also get values where they are known
statically: Consts, `Shape`, `Size` and `Rank` of known shapes, and integer arithmetic over those
run by the engine's kernels. So `Reshape(x, Shape(y))` has a known shape before anything is folded,
as in TensorFlow's own shape inference.

Results are cached per graph and never go stale while rules and passes edit it. A node's cache
entry holds its stamp (the serialized NodeDef: op, attrs and inputs) and the entries of its inputs
it was computed from. An entry checked since its node and everything upstream last changed is
"clean" and used as is; the graph's edit log (`graph.EDITS`) says which nodes changed, and each
change makes the clean entries downstream of it dirty. A query walks up from the tensor asked
about through dirty entries only, and reuses one if its node's stamp is unchanged and each
input's entry, checked the same way, is the very entry it was computed from; anything else is
recomputed. Since a shape is a function of nothing but the node and its inputs' shapes and values,
a reused entry is exactly what recomputing would give, and a query costs what changed since the
last one, not the size of what lies upstream (a chain of n Shape folds is linear, not quadratic).
"""
from __future__ import annotations

import math
import weakref
from typing import Callable

import numpy as np

from gtt_rules.errors import EvaluationError

from .dtypes import DT_INT32, DT_INT64, numpy_dtype
from .graph import EDITS, Graph, Node, TensorRef

Shape = tuple[int | None, ...] | None

# Values are kept only for integer tensors this small: shape vectors, axes, paddings, sizes.
_MAX_VALUE_ELEMENTS = 256
_VALUE_DTYPES = frozenset({DT_INT32, DT_INT64})


class _Unknown(Exception):
    """A shape function cannot tell: an input it needs is unknown, or the node is malformed."""


# A malformed node (a missing attr, an axis out of range) makes its shape unknown, not an error:
# validating graphs is not this module's job.
_FAILURES = (_Unknown, KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, OverflowError)


class _Entry:
    """What is known about one node's outputs, and what it was computed from."""

    __slots__ = ("stamp", "deps", "shapes", "values")

    def __init__(self, stamp, deps: tuple, shapes: tuple[Shape, ...], values: tuple):
        self.stamp = stamp
        self.deps = deps
        self.shapes = shapes
        self.values = values

    def shape(self, port: int) -> Shape:
        return self.shapes[port] if port < len(self.shapes) else None

    def value(self, port: int) -> np.ndarray | None:
        return self.values[port] if port < len(self.values) else None


_NOTHING_KNOWN = _Entry(None, (), (), ())


class _Cache:
    """One graph's entries, which of them are clean, and how far into the edit log it has read."""

    __slots__ = ("entries", "clean", "read", "epoch")

    def __init__(self):
        self.entries: dict[str, _Entry] = {}
        self.clean: set[str] = set()
        self.read = len(EDITS.names)
        self.epoch = EDITS.epoch

    def catch_up(self, graph: Graph) -> None:
        """Make dirty every clean entry at or downstream of a node edited since the last query."""
        if self.epoch != EDITS.epoch:   # the log was trimmed past us: check everything once
            self.clean.clear()
            self.read, self.epoch = 0, EDITS.epoch
        names = EDITS.names
        if self.read == len(names):
            return
        edited, self.read = names[self.read:], len(names)
        clean = self.clean
        if not clean:
            return
        stack = [name for name in edited if name in clean]
        while stack:
            name = stack.pop()
            if name in clean:
                clean.discard(name)
                if name in graph:
                    stack.extend(c.name for c in graph.consumers(name) if c.name in clean)


_CACHES: "weakref.WeakKeyDictionary[Graph, _Cache]" = weakref.WeakKeyDictionary()


def infer_shape(graph: Graph, ref: TensorRef | str) -> Shape:
    """The static shape of tensor `ref`: a tuple of ints and Nones (unknown dims), or None if
    even its rank is unknown."""
    ref = ref if isinstance(ref, TensorRef) else TensorRef.parse(ref)
    node = graph.get(ref.node)
    if node is not None and node.op == "Const" and ref.port == 0 and "value" in node.header.attr:
        return _const(node, (), ())   # the common question (weights) needs no walk, no cache entry
    return _resolve(graph, ref.node).shape(ref.port)


def infer_value(graph: Graph, ref: TensorRef | str) -> np.ndarray | None:
    """The value of a small integer tensor (a shape vector, an axis) where it is known statically."""
    ref = ref if isinstance(ref, TensorRef) else TensorRef.parse(ref)
    return _resolve(graph, ref.node).value(ref.port)


def _resolve(graph: Graph, target: str) -> _Entry:
    """The checked or recomputed entry of node `target`, after its inputs' (an explicit stack:
    chains of thousands of nodes would overflow Python's recursion)."""
    if target not in graph:
        raise KeyError(f"no node named '{target}'")
    state = _CACHES.get(graph)
    if state is None:
        state = _CACHES[graph] = _Cache()
    state.catch_up(graph)
    cache, clean = state.entries, state.clean
    fresh: dict[str, _Entry] = {}   # entries checked or computed in this query
    opened: set[str] = set()
    stack = [target]
    while stack:
        name = stack[-1]
        if name in fresh:
            stack.pop()
            continue
        if name in clean:
            fresh[name] = cache[name]
            stack.pop()
            continue
        node = graph.get(name)
        if node is None:  # a dangling input: nothing is known about it
            fresh[name] = _NOTHING_KNOWN
            stack.pop()
            continue
        reads_inputs = node.op in _READS_INPUTS
        if reads_inputs and name not in opened:
            opened.add(name)
            waiting = [ref.node for ref in node.inputs if ref.node not in fresh]
            if waiting:
                stack += waiting
                continue
        stack.pop()
        # An input still missing here is on the stack below: a loop (only through NextIteration,
        # which has no shape function), so it counts as unknown.
        deps = tuple([fresh.get(ref.node, _NOTHING_KNOWN) for ref in node.inputs]) if reads_inputs else ()
        stamp = _stamp(node)
        entry = cache.get(name)
        # Entries compare by identity, so `deps ==` asks: computed from these very entries?
        if entry is None or entry.stamp != stamp or entry.deps != deps:
            computed = _compute(node, deps, stamp)
            if entry is not None and _same_facts(entry, computed):
                # Nothing downstream changes: keeping this entry object keeps its consumers'
                # entries valid, so an edit costs a recomputation only where shapes changed.
                entry.stamp, entry.deps = stamp, deps
            else:
                entry = cache[name] = computed
        fresh[name] = entry
        # Clean only when everything it was computed from is: a later edit upstream reaches it.
        if not reads_inputs or all(ref.node in clean for ref in node.inputs):
            clean.add(name)
    if len(cache) > 2 * len(graph) + 1024:  # drop entries of nodes the graph no longer has
        for name in [n for n in cache if n not in graph]:
            del cache[name]
            clean.discard(name)
    return fresh[target]


def _same_facts(a: _Entry, b: _Entry) -> bool:
    """True if two entries tell the same shapes and values."""
    return a.shapes == b.shapes and len(a.values) == len(b.values) and all(
        (x is None and y is None) or (x is not None and y is not None and x.dtype == y.dtype
                                      and x.shape == y.shape and bool(np.array_equal(x, y)))
        for x, y in zip(a.values, b.values))


def _stamp(node: Node):
    """Everything about `node` itself that its entry depends on."""
    if node.op == "Const" and "value" in node.header.attr:
        # A big or non-integer Const contributes its dtype and dims only: its values are never read.
        tensor = node.header.attr["value"].tensor
        if tensor.dtype not in _VALUE_DTYPES or _elements(tensor) > _MAX_VALUE_ELEMENTS:
            return tensor.dtype, tensor.tensor_shape.SerializeToString()
    return node.proto.SerializeToString()


def _elements(tensor) -> int:
    return math.prod(d.size for d in tensor.tensor_shape.dim)


def _compute(node: Node, deps: tuple, stamp) -> _Entry:
    ports = [ref.port for ref in node.inputs][:len(deps)]
    shapes_in = [dep.shape(port) for dep, port in zip(deps, ports)]
    values_in = [dep.value(port) for dep, port in zip(deps, ports)]
    function = SHAPE_FUNCTIONS.get(node.op)
    shapes: tuple[Shape, ...] = ()
    if function is not None:
        try:
            result = function(node, shapes_in, values_in)
            shapes = tuple(result) if isinstance(result, list) else (result,)
        except _FAILURES:
            pass
    shapes = _with_recorded_shapes(node, shapes)
    values = _values(node, shapes, shapes_in, values_in)
    if values:
        # A known value has a known shape, whatever the shape function could tell.
        shapes += (None,) * (len(values) - len(shapes))
        shapes = tuple(s if v is None else v.shape for s, v in zip(shapes, values)) + shapes[len(values):]
    return _Entry(stamp, deps, shapes, values)


def _with_recorded_shapes(node: Node, shapes: tuple[Shape, ...]) -> tuple[Shape, ...]:
    """Fill what inference left unknown from the node's `_output_shapes` attr, if it has one."""
    if "_output_shapes" not in node.header.attr:
        return shapes
    recorded = node.get_attr("_output_shapes", None) or []
    merged = []
    for port in range(max(len(shapes), len(recorded))):
        ours = shapes[port] if port < len(shapes) else None
        theirs = _from_attr(recorded[port]) if port < len(recorded) else None
        if ours is None or theirs is None or len(ours) != len(theirs):
            merged.append(ours if ours is not None else theirs)
        else:
            # Where both know a dim and disagree, the attr is the stale one: it is not recomputed
            # when the graph changes, and ours is.
            merged.append(tuple(theirs[i] if d is None else d for i, d in enumerate(ours)))
    return tuple(merged)


def _from_attr(shape) -> Shape:
    """A shape attr (-1 for an unknown dim) as a Shape."""
    return None if shape is None else tuple(None if d < 0 else d for d in shape)


# ---- values of small integer tensors ----

# Ops whose value, when every input's value is known, the engine's kernels compute: the integer
# arithmetic that builds shape vectors (`tf.reshape(x, [tf.shape(x)[0], -1])`).
_VALUE_OPS = frozenset({
    "Identity", "Cast", "Pack", "Unpack", "ConcatV2", "Concat", "StridedSlice", "Slice", "Gather",
    "GatherV2", "Squeeze", "ExpandDims", "Reshape", "Add", "AddV2", "Sub", "Mul", "Neg",
    "FloorDiv", "Maximum", "Minimum", "Prod", "Sum", "Range", "Fill",
})


def _values(node: Node, shapes: tuple[Shape, ...], shapes_in: list[Shape], values_in: list) -> tuple:
    """The values of `node`'s outputs that are known: a tuple with None where one is not."""
    op = node.op
    if op == "Const":
        tensor = node.header.attr["value"].tensor if "value" in node.header.attr else None
        if tensor is None or tensor.dtype not in _VALUE_DTYPES:
            return ()
        if _elements(tensor) > _MAX_VALUE_ELEMENTS:
            return ()
        return (node.get_attr("value"),)
    if op in ("Shape", "ShapeN", "Size", "Rank"):
        try:
            out_type = numpy_dtype(node.get_attr("out_type", DT_INT32))
        except (KeyError, ValueError):
            return ()
        if op == "Rank":
            shape = shapes_in[0] if shapes_in else None
            return () if shape is None else (np.array(len(shape), out_type),)
        known = [s if s is not None and None not in s else None for s in shapes_in]
        if op == "Size":
            return () if not known or known[0] is None else (np.array(math.prod(known[0]), out_type),)
        return tuple(None if s is None else np.array(s, out_type) for s in known)
    if op in _VALUE_OPS and values_in and all(v is not None for v in values_in):
        # Only where every output is known to be small: Fill or Tile could make a huge array.
        if not shapes or any(s is None or None in s or math.prod(s) > _MAX_VALUE_ELEMENTS for s in shapes):
            return ()
        from .evaluator import run_kernel
        try:
            results = run_kernel(node, values_in)
        except EvaluationError:
            return ()
        return tuple(v if v.dtype.kind in "iu" and v.size <= _MAX_VALUE_ELEMENTS else None for v in results)
    return ()


# ---- shape functions: (node, input shapes, input values) -> a Shape, or a list for several outputs

def _rank_known(shape: Shape) -> tuple[int | None, ...]:
    """`shape`, which must have a known rank."""
    if shape is None:
        raise _Unknown
    return shape


def _of_rank(shape: Shape, rank: int) -> tuple[int | None, ...]:
    """`shape`, or `rank` unknown dims if its rank is unknown (an op that takes only that rank)."""
    if shape is None:
        return (None,) * rank
    if len(shape) != rank:
        raise _Unknown
    return shape


def _ints(value) -> list[int]:
    """A known value as a flat list of ints."""
    if value is None:
        raise _Unknown
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    """An axis in [-rank, rank) as one in [0, rank)."""
    if not -rank <= axis < rank:
        raise _Unknown
    return axis % rank


def _merge_dim(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is not None and a != b:
        raise _Unknown
    return a


def _merge(*shapes: Shape) -> Shape:
    """The shape that all of `shapes` describe."""
    known = [s for s in shapes if s is not None]
    if not known:
        return None
    if len({len(s) for s in known}) > 1:
        raise _Unknown
    dims = list(known[0])
    for shape in known[1:]:
        dims = [_merge_dim(a, b) for a, b in zip(dims, shape)]
    return tuple(dims)


def _broadcast_dim(a: int | None, b: int | None) -> int | None:
    if a == 1:
        return b
    if b == 1:
        return a
    # With one side unknown the result is the other: if the unknown one is 1 at run time the
    # result is the other anyway, and otherwise the two must be equal.
    if a is None:
        return b
    if b is None or a == b:
        return a
    raise _Unknown


def _broadcast(*shapes: Shape) -> Shape:
    """NumPy-style broadcasting, as TensorFlow's element-wise binary ops do it."""
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    dims = padded[0]
    for shape in padded[1:]:
        dims = tuple(_broadcast_dim(a, b) for a, b in zip(dims, shape))
    return dims


def _same_as_input(node, shapes, values) -> Shape:
    return shapes[0]


def _binary(node, shapes, values) -> Shape:
    return _broadcast(shapes[0], shapes[1])


def _bias_add(node, shapes, values) -> Shape:
    x = _rank_known(shapes[0])
    # NCHW adds the bias along the third dim from the end, NHWC along the last.
    channel = len(x) - 3 if node.get_attr("data_format", "NHWC") == "NCHW" and len(x) > 2 else len(x) - 1
    bias = shapes[1][0] if shapes[1] is not None and len(shapes[1]) == 1 else None
    return x[:channel] + (_merge_dim(x[channel], bias),) + x[channel + 1:]


def _spatial_axes(data_format: str) -> tuple[int, int, int]:
    """Indexes of height, width and channels in a 4-d tensor of this layout."""
    if data_format == "NHWC":
        return 1, 2, 3
    if data_format == "NCHW":
        return 2, 3, 1
    raise _Unknown


def _windowed(size: int | None, window: int | None, stride: int, dilation: int, padding: str,
              pads: tuple[int, int] = (0, 0)) -> int | None:
    """Output length of a sliding window (convolution, pooling) along one dim."""
    if stride < 1 or dilation < 1:
        raise _Unknown
    if size is None:
        return None
    if padding == "SAME":
        return -(-size // stride)
    if window is None:
        return None
    reach = (window - 1) * dilation + 1
    if padding == "VALID":
        span = size - reach + stride
    elif padding == "EXPLICIT":
        span = size + pads[0] + pads[1] - reach + stride
    else:
        raise _Unknown
    if span <= -stride:     # TensorFlow refuses it; a smaller overshoot truncates to 0 outputs
        raise _Unknown
    return max(span, 0) // stride


def _explicit_pads(node: Node, axis: int) -> tuple[int, int]:
    pads = node.get_attr("explicit_paddings", [])
    return (pads[2 * axis], pads[2 * axis + 1]) if node.get_attr("padding") == "EXPLICIT" else (0, 0)


def _convolution(node, shapes, values, *, depthwise: bool = False) -> Shape:
    h, w, c = _spatial_axes(node.get_attr("data_format", "NHWC"))
    x, kernel = _of_rank(shapes[0], 4), _of_rank(shapes[1], 4)
    strides, dilations = node.get_attr("strides"), node.get_attr("dilations", [1, 1, 1, 1])
    padding = node.get_attr("padding")
    out = [x[0], None, None, None]
    for axis, k in ((h, kernel[0]), (w, kernel[1])):
        out[axis] = _windowed(x[axis], k, strides[axis], dilations[axis], padding, _explicit_pads(node, axis))
    if depthwise:  # each input channel gives `multiplier` (the filter's last dim) output channels
        channels = _merge_dim(x[c], kernel[2])
        out[c] = None if channels is None or kernel[3] is None else channels * kernel[3]
    else:
        out[c] = kernel[3]
    return tuple(out)


def _depthwise(node, shapes, values) -> Shape:
    return _convolution(node, shapes, values, depthwise=True)


def _pool(node, shapes, values) -> Shape:
    h, w, _ = _spatial_axes(node.get_attr("data_format", "NHWC"))
    x = _of_rank(shapes[0], 4)
    if node.op == "MaxPoolV2":  # window and strides are inputs, not attrs
        ksize, strides = _ints(values[1]), _ints(values[2])
    else:
        ksize, strides = node.get_attr("ksize"), node.get_attr("strides")
    padding = node.get_attr("padding")
    out = list(x)
    for axis in (h, w):
        out[axis] = _windowed(x[axis], ksize[axis], strides[axis], 1, padding, _explicit_pads(node, axis))
    return tuple(out)


def _matmul(node, shapes, values) -> Shape:
    a, b = _of_rank(shapes[0], 2), _of_rank(shapes[1], 2)
    rows = a[1] if node.get_attr("transpose_a", False) else a[0]
    columns = b[0] if node.get_attr("transpose_b", False) else b[1]
    return rows, columns


def _batch_matmul(node, shapes, values) -> Shape:
    a, b = _rank_known(shapes[0]), _rank_known(shapes[1])
    if len(a) < 2 or len(b) < 2:
        raise _Unknown
    rows = a[-1] if node.get_attr("adj_x", False) else a[-2]
    columns = b[-2] if node.get_attr("adj_y", False) else b[-1]
    return _broadcast(a[:-2], b[:-2]) + (rows, columns)


def _from_shape_vector(shapes, values, index: int) -> tuple[int | None, ...]:
    """The shape a shape-vector input describes; unknown dims (but a known rank) if only its
    length is known."""
    if values[index] is not None:
        dims = _ints(values[index])
        if any(d < 0 for d in dims):
            raise _Unknown
        return tuple(dims)
    vector = shapes[index]
    if vector is None or len(vector) != 1 or vector[0] is None:
        raise _Unknown
    return (None,) * vector[0]


def _reshape(node, shapes, values) -> Shape:
    if values[1] is None:
        return _from_shape_vector(shapes, values, 1)
    target = _ints(values[1])
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise _Unknown
    x = shapes[0]
    if -1 not in target:
        if x is not None and None not in x and math.prod(x) != math.prod(target):
            raise _Unknown
        return tuple(target)
    rest = math.prod(d for d in target if d != -1)
    if x is None or None in x or rest == 0:
        inferred = None
    elif math.prod(x) % rest:
        raise _Unknown
    else:
        inferred = math.prod(x) // rest
    return tuple(inferred if d == -1 else d for d in target)


def _transpose(node, shapes, values) -> Shape:
    if values[1] is None:
        return None if shapes[0] is None else (None,) * len(shapes[0])
    perm = _ints(values[1])
    x = _of_rank(shapes[0], len(perm))
    if sorted(perm) != list(range(len(perm))):
        raise _Unknown
    return tuple(x[p] for p in perm)


def _concat(pieces: list[Shape], axis_value) -> Shape:
    merged = _merge(*[None if s is None else (None,) * len(s) for s in pieces])
    if merged is None:
        return None
    rank = len(merged)
    if axis_value is None:
        return merged
    axis = _axis(_ints(axis_value)[0], rank)
    known = [s for s in pieces if s is not None]
    out = list(_merge(*[s[:axis] + (None,) + s[axis + 1:] for s in known]))
    lengths = [None if s is None else s[axis] for s in pieces]
    out[axis] = None if None in lengths else sum(lengths)
    return tuple(out)


def _concat_v2(node, shapes, values) -> Shape:
    return _concat(shapes[:-1], values[-1])


def _concat_v1(node, shapes, values) -> Shape:
    return _concat(shapes[1:], values[0])


def _pack(node, shapes, values) -> Shape:
    item = _rank_known(_merge(*shapes))
    axis = node.get_attr("axis", 0)
    axis = _axis(axis, len(item) + 1)
    return item[:axis] + (len(shapes),) + item[axis:]


def _unpack(node, shapes, values) -> list[Shape]:
    x = _rank_known(shapes[0])
    axis = _axis(node.get_attr("axis", 0), len(x))
    return [x[:axis] + x[axis + 1:]] * node.get_attr("num")


def _squeeze(node, shapes, values) -> Shape:
    x = _rank_known(shapes[0])
    axes = {_axis(a, len(x)) for a in node.get_attr("squeeze_dims", [])}
    if not axes:
        if None in x:  # which dims are 1 is not known, so neither is the rank
            return None
        return tuple(d for d in x if d != 1)
    if any(x[a] not in (1, None) for a in axes):
        raise _Unknown
    return tuple(d for i, d in enumerate(x) if i not in axes)


def _expand_dims(node, shapes, values) -> Shape:
    x = _rank_known(shapes[0])
    axis = _axis(_ints(values[1])[0], len(x) + 1)
    return x[:axis] + (1,) + x[axis:]


def _reduce(node, shapes, values) -> Shape:
    x = _rank_known(shapes[0])
    keep = node.get_attr("keep_dims", False)
    if values[1] is None:
        return (None,) * len(x) if keep else None
    axes = {_axis(a, len(x)) for a in _ints(values[1])}
    if keep:
        return tuple(1 if i in axes else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in axes)


def _arg_reduce(node, shapes, values) -> Shape:
    x = _rank_known(shapes[0])
    axis = _axis(_ints(values[1])[0], len(x))
    return x[:axis] + x[axis + 1:]


def _pad(node, shapes, values) -> Shape:
    if values[1] is None:  # the rank is still known, from the input or the paddings' rows
        if shapes[0] is not None:
            return (None,) * len(shapes[0])
        rows = shapes[1][0] if shapes[1] is not None and len(shapes[1]) == 2 else None
        return None if rows is None else (None,) * rows
    paddings = np.asarray(values[1])
    if paddings.ndim != 2 or paddings.shape[1] != 2:
        raise _Unknown
    x = _of_rank(shapes[0], paddings.shape[0])
    return tuple(None if d is None else d + int(before) + int(after)
                 for d, (before, after) in zip(x, paddings))


def _channels_axis(data_format: str, rank: int) -> int:
    """The channel dim of a batch-norm input: last for N...C layouts, 1 for NC... layouts."""
    if data_format.endswith("C"):
        return rank - 1
    if data_format.startswith("NC"):
        return 1
    raise _Unknown


def _fused_batch_norm(node, shapes, values) -> list[Shape]:
    x = _rank_known(shapes[0])
    axis = _channels_axis(node.get_attr("data_format", "NHWC"), len(x))
    # In training the mean and variance inputs are unused and may be empty.
    given = shapes[1:3] if node.get_attr("is_training", True) else shapes[1:5]
    vectors = [s[0] for s in given if s is not None and len(s) == 1]
    channels = x[axis]
    for length in vectors:
        channels = _merge_dim(channels, length)
    y = x[:axis] + (channels,) + x[axis + 1:]
    return [y] + [(channels,)] * 4


def _shape_of(node, shapes, values) -> Shape:
    return (None if shapes[0] is None else len(shapes[0]),)


def _shape_n(node, shapes, values) -> list[Shape]:
    return [(None if s is None else len(s),) for s in shapes]


def _scalar(node, shapes, values) -> Shape:
    return ()


def _fill(node, shapes, values) -> Shape:
    return _from_shape_vector(shapes, values, 0)


def _strided_slice(node, shapes, values) -> Shape:
    x = _rank_known(shapes[0])
    begin, end, strides = _ints(values[1]), _ints(values[2]), _ints(values[3])
    if not len(begin) == len(end) == len(strides) or 0 in strides:
        raise _Unknown
    masks = {name: node.get_attr(f"{name}_mask", 0)
             for name in ("begin", "end", "ellipsis", "new_axis", "shrink_axis")}
    if not masks["ellipsis"]:  # no ellipsis: the dims after the last index are kept whole
        masks["ellipsis"] = 1 << len(begin)
        begin, end, strides = begin + [0], end + [0], strides + [1]
    if masks["ellipsis"] & (masks["ellipsis"] - 1):
        raise _Unknown  # at most one ellipsis
    out, axis = [], 0  # `axis`: the next dim of x that an index takes
    for i in range(len(begin)):
        bit = 1 << i
        if masks["ellipsis"] & bit:
            # The ellipsis stands for every dim that the indices after it do not take.
            taken_after = sum(1 for j in range(i + 1, len(begin)) if not masks["new_axis"] & (1 << j))
            whole = len(x) - axis - taken_after
            if whole < 0:
                raise _Unknown
            out += x[axis:axis + whole]
            axis += whole
        elif masks["new_axis"] & bit:
            out.append(1)
        else:
            if axis >= len(x):
                raise _Unknown
            size = x[axis]
            axis += 1
            if masks["shrink_axis"] & bit:
                if size is not None and not -size <= begin[i] < size:
                    raise _Unknown
                continue
            if size is None:
                out.append(None)
                continue
            # TensorFlow clamps begin and end exactly as Python's slices do.
            start = None if masks["begin"] & bit else begin[i]
            stop = None if masks["end"] & bit else end[i]
            out.append(len(range(*slice(start, stop, strides[i]).indices(size))))
    return tuple(out)


def _slice(node, shapes, values) -> Shape:
    if values[2] is None:
        return _from_shape_vector(shapes, values, 2)
    sizes = _ints(values[2])
    if min(sizes, default=0) < -1:
        raise _Unknown
    x = _of_rank(shapes[0], len(sizes))
    begin = _ints(values[1]) if values[1] is not None else [None] * len(sizes)
    out = []
    for size, start, dim in zip(sizes, begin, x):
        if size != -1:  # -1: everything from `begin` to the end
            out.append(size)
        else:
            out.append(None if start is None or dim is None else dim - start)
    return tuple(out)


def _resize(node, shapes, values) -> Shape:
    x = _of_rank(shapes[0], 4)
    height, width = _ints(values[1]) if values[1] is not None else (None, None)
    return x[0], height, width, x[3]


def _split(node, shapes, values) -> list[Shape]:
    x = _rank_known(shapes[1])
    count = node.get_attr("num_split")
    axis = _axis(_ints(values[0])[0], len(x))
    if x[axis] is not None and x[axis] % count:
        raise _Unknown
    piece = x[:axis] + (None if x[axis] is None else x[axis] // count,) + x[axis + 1:]
    return [piece] * count


def _split_v(node, shapes, values) -> list[Shape]:
    x = _rank_known(shapes[0])
    axis = _axis(_ints(values[2])[0], len(x))
    sizes = _ints(values[1])
    if len(sizes) != node.get_attr("num_split") or sizes.count(-1) > 1:
        raise _Unknown
    if -1 in sizes:  # the one -1 takes what the others leave
        rest = None if x[axis] is None else x[axis] - sum(s for s in sizes if s != -1)
        if rest is not None and rest < 0:
            raise _Unknown
        sizes = [rest if s == -1 else s for s in sizes]
    return [x[:axis] + (size,) + x[axis + 1:] for size in sizes]


def _tile(node, shapes, values) -> Shape:
    if values[1] is None:
        return None if shapes[0] is None else (None,) * len(shapes[0])
    multiples = _ints(values[1])
    x = _of_rank(shapes[0], len(multiples))
    return tuple(None if d is None else d * m for d, m in zip(x, multiples))


def _gather(node, shapes, values) -> Shape:
    params, indices = _rank_known(shapes[0]), _rank_known(shapes[1])
    if node.get_attr("batch_dims", 0) != 0:
        raise _Unknown
    axis = 0 if node.op == "Gather" else _axis(_ints(values[2])[0], len(params))
    return params[:axis] + indices + params[axis + 1:]


def _depth_to_space(node, shapes, values) -> Shape:
    if node.get_attr("data_format", "NHWC") != "NHWC":
        raise _Unknown
    n, h, w, c = _of_rank(shapes[0], 4)
    block = node.get_attr("block_size")
    # DepthToSpace moves block x block channels into each spatial position; SpaceToDepth undoes it.
    if node.op == "DepthToSpace":
        spatial, depth = _scaled(block, 1), _scaled(1, block * block)
    else:
        spatial, depth = _scaled(1, block), _scaled(block * block, 1)
    return n, spatial(h), spatial(w), depth(c)


def _scaled(multiply: int, divide: int) -> Callable[[int | None], int | None]:
    """A dim times `multiply` over `divide`, which must divide it."""
    def scale(dim: int | None) -> int | None:
        if dim is None:
            return None
        if dim * multiply % divide:
            raise _Unknown
        return dim * multiply // divide
    return scale


def _space_to_batch(node, shapes, values) -> Shape:
    """SpaceToBatchND and BatchToSpaceND (how TensorFlow builds dilated convolutions)."""
    block = _ints(values[1])
    edges = np.asarray(values[2]) if values[2] is not None else None
    x = _rank_known(shapes[0])
    if edges is None or edges.shape != (len(block), 2) or len(x) < 1 + len(block) or min(block, default=1) < 1:
        raise _Unknown
    to_batch = node.op == "SpaceToBatchND"
    count = math.prod(block)
    if x[0] is None:
        batch = None
    elif to_batch:
        batch = x[0] * count
    elif x[0] % count:
        raise _Unknown
    else:
        batch = x[0] // count
    spatial = []
    for size, step, (before, after) in zip(x[1:], block, edges.tolist()):
        if size is None:
            spatial.append(None)
        elif to_batch:  # padded, then cut into `step` interleaved pieces
            if (size + before + after) % step:
                raise _Unknown
            spatial.append((size + before + after) // step)
        else:  # interleaved back, then cropped
            spatial.append(size * step - before - after)
    return (batch, *spatial, *x[1 + len(block):])


def _const(node, shapes, values) -> Shape:
    if "value" not in node.header.attr:  # reading a missing map key would add it
        raise _Unknown
    return tuple(d.size for d in node.header.attr["value"].tensor.tensor_shape.dim)


def _placeholder(node, shapes, values) -> Shape:
    return _from_attr(node.get_attr("shape", None))


def _ensure_shape(node, shapes, values) -> Shape:
    return _merge(shapes[0], _from_attr(node.get_attr("shape", None)))


def _select(node, shapes, values) -> Shape:
    return _merge(shapes[1], shapes[2])


def _select_v2(node, shapes, values) -> Shape:
    return _broadcast(*shapes[:3])


def _add_n(node, shapes, values) -> Shape:
    return _merge(*shapes)


def _identity_n(node, shapes, values) -> list[Shape]:
    return list(shapes)


def _range(node, shapes, values) -> Shape:
    if any(v is None for v in values[:3]):
        return (None,)
    start, limit, delta = (np.asarray(v).item() for v in values[:3])
    if delta == 0:
        raise _Unknown
    return (max(0, math.ceil((limit - start) / delta)),)


def _broadcast_to(node, shapes, values) -> Shape:
    return _from_shape_vector(shapes, values, 1)


def _quantize_v2(node, shapes, values) -> list[Shape]:
    # One range for the whole tensor gives scalar ranges; a per-channel range (axis) gives vectors.
    ranges = () if node.get_attr("axis", -1) == -1 else None
    return [shapes[0], ranges, ranges]


def _eight_bit(float_function: Callable, data_inputs: slice = slice(0, 2)) -> Callable:
    """The shape function of an eight-bit op: its float counterpart's on the data inputs; the
    range outputs (min, max) are scalars."""
    def shape_function(node, shapes, values) -> list[Shape]:
        return [float_function(node, shapes[data_inputs], values[data_inputs]), (), ()]
    return shape_function


def _range_of_values(node, shapes, values) -> list[Shape]:
    return [(), ()]


def _quantized_concat(node, shapes, values) -> list[Shape]:
    # concat_dim, then N values, then their N mins and N maxes
    return [_concat(shapes[1:1 + node.get_attr("N")], values[0]), (), ()]


SHAPE_FUNCTIONS: dict[str, Callable] = {
    **dict.fromkeys((
        "Identity", "Snapshot", "StopGradient", "PreventGradient", "CheckNumerics", "Cast",
        "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Softsign",
        "Softmax", "LogSoftmax", "Rsqrt", "Sqrt", "Square", "Neg", "Abs", "Sign", "Exp", "Expm1",
        "Log", "Log1p", "Reciprocal", "Inv", "Floor", "Ceil", "Round", "Sin", "Cos", "IsFinite",
        "IsInf", "IsNan", "LogicalNot", "ZerosLike", "OnesLike", "ClipByValue", "LRN",
        "BatchNormWithGlobalNormalization",
        "Dequantize", "FakeQuantWithMinMaxArgs", "FakeQuantWithMinMaxVars",
    ), _same_as_input),
    **dict.fromkeys((
        "Add", "AddV2", "Sub", "Mul", "RealDiv", "Div", "DivNoNan", "FloorDiv", "FloorMod",
        "TruncateDiv", "Maximum", "Minimum", "SquaredDifference", "Pow", "Equal", "NotEqual",
        "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr",
    ), _binary),
    "BiasAdd": _bias_add, "BiasAddV1": _bias_add,
    "Conv2D": _convolution, "DepthwiseConv2dNative": _depthwise,
    "MaxPool": _pool, "AvgPool": _pool, "MaxPoolV2": _pool,
    "MatMul": _matmul,
    **dict.fromkeys(("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"), _batch_matmul),
    "Reshape": _reshape, "Transpose": _transpose,
    "ConcatV2": _concat_v2, "Concat": _concat_v1, "Pack": _pack, "Unpack": _unpack,
    "Squeeze": _squeeze, "ExpandDims": _expand_dims,
    **dict.fromkeys(("Mean", "Sum", "Max", "Min", "Prod", "All", "Any"), _reduce),
    "ArgMax": _arg_reduce, "ArgMin": _arg_reduce,
    "Pad": _pad, "PadV2": _pad, "MirrorPad": _pad,
    **dict.fromkeys(("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"), _fused_batch_norm),
    "Shape": _shape_of, "ShapeN": _shape_n, "Size": _scalar, "Rank": _scalar,
    "Fill": _fill, "BroadcastTo": _broadcast_to, "Range": _range,
    "StridedSlice": _strided_slice, "Slice": _slice,
    **dict.fromkeys(("ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea"), _resize),
    "Split": _split, "SplitV": _split_v, "Tile": _tile,
    "SpaceToBatchND": _space_to_batch, "BatchToSpaceND": _space_to_batch,
    "Gather": _gather, "GatherV2": _gather,
    "DepthToSpace": _depth_to_space, "SpaceToDepth": _depth_to_space,
    "Const": _const, "Placeholder": _placeholder, "PlaceholderWithDefault": _placeholder,
    "EnsureShape": _ensure_shape, "Select": _select, "SelectV2": _select_v2,
    "AddN": _add_n, "IdentityN": _identity_n,
    # Eight-bit ops, so shapes flow through graphs that quantize_nodes has rewritten.
    "QuantizeV2": _quantize_v2,
    **dict.fromkeys(("Requantize", "QuantizeDownAndShrinkRange", "QuantizedRelu", "QuantizedRelu6",
                     "QuantizedReluX"), _eight_bit(_same_as_input, slice(0, 1))),
    "RequantizationRange": _range_of_values,
    "QuantizedAdd": _eight_bit(_binary), "QuantizedMul": _eight_bit(_binary),
    "QuantizedBiasAdd": _eight_bit(_bias_add),
    "QuantizedConv2D": _eight_bit(_convolution), "QuantizedMatMul": _eight_bit(_matmul),
    "QuantizedMaxPool": _eight_bit(_pool, slice(0, 1)), "QuantizedAvgPool": _eight_bit(_pool, slice(0, 1)),
    "QuantizedReshape": _eight_bit(_reshape), "QuantizedResizeBilinear": _eight_bit(_resize),
    "QuantizedConcat": _quantized_concat,
}

# Ops whose entries are computed from their inputs' (Const and Placeholder read only themselves).
_READS_INPUTS = (frozenset(SHAPE_FUNCTIONS) | _VALUE_OPS) - {"Const", "Placeholder"}
