"""The language's builtin functions (`BUILTINS`), and `register_function` for the user's own.

A rule file is data: it can only call functions of the Registry it is compiled against (see
rules/registry.py), never arbitrary Python. Each
function declares the kinds of its arguments and result, which the static checker uses:

- `tensor`: a tensor bound by the pattern (a `TensorRef`);
- `value`: a number or numpy array (a tensor bound to a Const is read as its value);
- `string`, `bool`, `dtype`, `list`, `any`.

Guards are three-valued: a fact that cannot be known statically (the size of an unknown dim) is
`UNKNOWN`, not false. A function never sees an unknown argument unless it is registered with
`accepts_unknown`: its result is then unknown without calling it.

Register a function for your own rules:

    from gtt_rules.rules.functions import register_function

    @register_function("halve", args=("value",), returns="value")
    def halve(x):
        return x / 2
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable

import numpy as np

from gtt_rules.engine import limits, op_registry
from gtt_rules.engine.attrs import encode_attr
from gtt_rules.engine.dtypes import dtype_info, dtype_name, numpy_dtype
from gtt_rules.engine.graph import TensorRef
from gtt_rules.engine.kernels import KERNELS, load_all
from gtt_rules.engine.pattern import MatchContext, NotApplicable
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.engine.shapes import infer_shape
from gtt_rules.errors import EvaluationError

from .registry import REGISTERED, Registry

class Unknown:
    """The value of a fact that cannot be known statically: neither true nor false."""

    def __repr__(self) -> str:
        return "unknown"

    def __bool__(self) -> bool:
        raise TypeError("an unknown fact is neither true nor false")


UNKNOWN = Unknown()


def is_unknown(value: Any) -> bool:
    """True if `value` is unknown, or a list with an unknown element (a shape with unknown dims)."""
    return value is UNKNOWN or (type(value) is list and any(v is UNKNOWN for v in value))


# The language's own functions. Rules compile against a Registry that includes this one: see
# gtt_rules.standard_registry() for the one the command line and the API use.
BUILTINS = Registry()
# What rules compile against when given no registry: the language alone, without the standard library.
LANGUAGE = Registry(REGISTERED, BUILTINS)


def register_function(name: str | None = None, *, args: tuple[str, ...] = (), returns: str = "any",
                      optional: int = 0, needs_context: bool = False, accepts_unknown: bool = False):
    """Make a Python function callable as `name(...)` from the rules the command line and the API
    load (it goes into `REGISTERED`; see Registry.function for the arguments)."""
    return REGISTERED.function(name, args=args, returns=returns, optional=optional,
                               needs_context=needs_context, accepts_unknown=accepts_unknown)


# ---- reading tensors ----

def tensor_value(ctx: MatchContext, x: Any) -> Any:
    """The value of `x`: a number or array as is, a tensor bound to a Const as its array."""
    if isinstance(x, TensorRef):
        node = ctx.graph.get(x.node)
        if node is None or node.op != "Const" or x.port != 0:
            raise NotApplicable(f"'{x}' is not a constant")
        return node.get_attr("value")
    return x


def partial_shape(ctx: MatchContext, x: Any) -> tuple[int | None, ...] | None:
    """The static shape of x, None for each unknown dim, or None if even the rank is unknown:
    from Consts, Placeholders and `_output_shapes`, inferred through the ops in between (see
    engine/shapes.py)."""
    if not isinstance(x, TensorRef):
        return tuple(np.shape(x))
    return infer_shape(ctx.graph, x)


def tensor_shape(ctx: MatchContext, x: Any) -> tuple[int, ...] | None:
    """The static shape of x where every dim of it is known, else None."""
    shape = partial_shape(ctx, x)
    return None if shape is None or None in shape else shape


def _known_shape(ctx, x) -> tuple[int, ...]:
    shape = tensor_shape(ctx, x)
    if shape is None:
        raise NotApplicable(f"the shape of '{x}' is not known")
    return shape


# ---- graph queries ----

class OutputRef(TensorRef):
    """A tensor written `n:1` in a rule: one output named explicitly (equal to the TensorRef)."""

    __slots__ = ()


@BUILTINS.function(args=("tensor",), returns="value", needs_context=True)
def uses(ctx, x):
    """How many data inputs read any output of x's node (written `uses(n:1)`, read output 1)."""
    return ctx.graph.uses(TensorRef(*x) if isinstance(x, OutputRef) else x.node)


@BUILTINS.function(args=("tensor",), returns="string", needs_context=True)
def device(ctx, x):
    """The device x's node is placed on ("" if none)."""
    return ctx.graph[x.node].device


@BUILTINS.function(args=("tensor",), returns="list", needs_context=True)
def control_inputs(ctx, x):
    """The names of the nodes x's node waits on through control edges."""
    return list(ctx.graph[x.node].control_inputs)


@BUILTINS.function(args=("string",), returns="bool", needs_context=True)
def orders_nothing(ctx, name):
    """True if a control edge from node `name` orders nothing: neither it nor what it waits on has
    a side effect (see Engine semantics, "Control edges")."""
    if name not in ctx.graph:
        raise NotApplicable(f"no node named '{name}'")
    return ctx.graph.orders_nothing(name)


@BUILTINS.function(args=("tensor",), returns="list", needs_context=True)
def inputs(ctx, x):
    """The data inputs of x's node, a list of tensors."""
    return list(ctx.graph[x.node].inputs)


@BUILTINS.function(args=("tensor",), returns="list", needs_context=True)
def outputs(ctx, x):
    """The outputs of x's node, a list of tensors (`uses` of one counts its readers)."""
    count = ctx.graph.num_outputs(ctx.graph[x.node])
    if count is None:
        raise NotApplicable(f"the outputs of '{x.node}' are not known")
    return [OutputRef(x.node, port) for port in range(count)]


@BUILTINS.function(args=("string", "string"), returns="bool")
def starts_with(text, prefix):
    """Whether string `text` begins with `prefix`."""
    return text.startswith(prefix)


@BUILTINS.function(args=("list", "any"), returns="value")
def index(xs, x):
    """The position of the first element of xs equal to x."""
    for position, item in enumerate(xs):
        if item is x or (type(item) is type(x) and item == x):
            return position
    raise NotApplicable(f"{x!r} is not in the list")


@BUILTINS.function(args=("tensor", "list"), returns="bool", needs_context=True)
def only_read_by(ctx, x, ops):
    """True if x's node has consumers and every one of them is one of `ops`."""
    consumers = ctx.graph.consumers(x.node)
    wanted = {op.decode() if isinstance(op, bytes) else op for op in ops}
    return bool(consumers) and all(c.op in wanted for c in consumers)


@BUILTINS.function(args=("tensor", "list"), optional=1, returns="list", needs_context=True)
def readers(ctx, x, through=None):
    """The data inputs that read x, as [reader, input port] pairs (the reader a tensor: its output
    0): written `n:1`, those of output 1 only, else those of any output of x's node. Past each
    reader whose op is in `through`, that one's readers in turn (it is listed too); in the order
    of the names of the nodes read."""
    graph, port = ctx.graph, x.port if isinstance(x, OutputRef) else None

    def pairs(name):
        return [[TensorRef(c.name, 0), i] for c in graph.consumers(name) for i, ref in enumerate(c.inputs)
                if ref.node == name and (name != x.node or port is None or ref.port == port)]
    through = through or ()
    read = graph.walk([x.node], lambda node: [r.node for r, _ in pairs(node.name) if graph[r.node].op in through])
    return [pair for name in sorted(read) for pair in pairs(name)]


@BUILTINS.function(args=("tensor", "list", "value"), returns="list", needs_context=True)
def producers(ctx, x, through, depth):
    """The tensors x comes from: x itself, or if its node's op is in `through`, what that node's
    data inputs come from, at most `depth` nodes up."""
    node = ctx.graph[x.node]
    if depth <= 0 or node.op not in through:
        return [x]
    return [p for ref in node.inputs for p in producers(ctx, ref, through, depth - 1)]


@BUILTINS.function(args=("string",), returns="bool", needs_context=True)
def in_loop_frame(ctx, name):
    """True if node `name` is inside a TF1 while loop: an Enter reaches it without passing an Exit."""
    if name not in ctx.graph:
        raise NotApplicable(f"no node named '{name}'")
    frame_edges = ("Enter", "RefEnter", "Exit", "RefExit")  # the walk stops at both
    reached = ctx.graph.walk([name], lambda node: () if node.op in frame_edges
                             else [r.node for r in node.inputs] + node.control_inputs)
    return any(ctx.graph[n].op in ("Enter", "RefEnter") for n in reached)


@BUILTINS.function(args=("tensor",), returns="value", needs_context=True)
def control_uses(ctx, x):
    """How many nodes wait on x's node through control edges."""
    return sum(1 for c in ctx.graph.consumers(x.node) if x.node in c.control_inputs)


@BUILTINS.function(args=("tensor",), returns="bool", needs_context=True)
def is_output(ctx, x):
    """True if x's node is a graph input or output (protected from removal)."""
    return x.node in ctx.protected


@BUILTINS.function(args=("tensor",), returns="bool", needs_context=True)
def stateful(ctx, x):
    """True if x's op may have a side effect: the registry marks it stateful, or does not know it."""
    op_def = ctx.graph.op_def_of(ctx.graph[x.node])
    return op_def is None or op_def.is_stateful


@BUILTINS.function(args=("tensor",), returns="value", needs_context=True)
def position(ctx, x):
    """Where x's node stands in the graph's node order: file order, nodes made by rewrites last."""
    return ctx.graph.position(x.node)


@BUILTINS.function(args=("tensor", "tensor"), returns="bool", needs_context=True)
def same_attrs(ctx, a, b):
    """True if the nodes of a and b set the same attrs to the same values, as stored."""
    ours, theirs = ctx.graph[a.node].proto.attr, ctx.graph[b.node].proto.attr
    return set(ours) == set(theirs) and all(ours[key] == theirs[key] for key in ours)


@BUILTINS.function(args=("tensor",), returns="string", needs_context=True)
def op(ctx, x):
    """The op of x's node."""
    return ctx.graph[x.node].op


@BUILTINS.function(args=("tensor",), returns="value")
def port(x):
    """Which output of its node tensor x is (0 for the first)."""
    return x.port


@BUILTINS.function(args=("tensor",), returns="dtype", needs_context=True)
def dtype(ctx, x):
    """The dtype of tensor x."""
    if not isinstance(x, TensorRef):
        from gtt_rules.engine.dtypes import dtype_for_array
        return dtype_for_array(np.asarray(x))
    dtypes = ctx.graph.output_dtypes(ctx.graph[x.node])
    if not dtypes or x.port >= len(dtypes):
        raise NotApplicable(f"the dtype of '{x}' is not known")
    return dtypes[x.port]


@BUILTINS.function(args=("dtype",), returns="value")
def dtype_size(d):
    """The bytes one element of dtype d takes (1 for uint8 and quint8, 4 for float)."""
    info = dtype_info(d)
    if info is None or info.wire_size is None:
        raise NotApplicable(f"{dtype_name(d)} has no fixed element size")
    return info.wire_size


# The real number types: integers by signedness and bits, floats by exponent and mantissa bits.
_NUMBER_FORMATS = {"bool": ("u", 1), "uint8": ("u", 8), "uint16": ("u", 16), "uint32": ("u", 32),
                   "uint64": ("u", 64), "int8": ("i", 8), "int16": ("i", 16), "int32": ("i", 32),
                   "int64": ("i", 64), "half": ("f", 5, 10), "bfloat16": ("f", 8, 7), "float": ("f", 8, 23),
                   "double": ("f", 11, 52)}


@BUILTINS.function(args=("dtype", "dtype"), returns="bool")
def can_hold(wide, narrow):
    """True if every value of dtype `narrow` is exactly a value of dtype `wide` (int8 in float,
    not int32 in float; bool in any number type)."""
    a, b = _NUMBER_FORMATS.get(dtype_name(wide)), _NUMBER_FORMATS.get(dtype_name(narrow))
    if a is None or b is None:
        raise NotApplicable(f"can_hold compares real number types, not {dtype_name(wide)} and {dtype_name(narrow)}")
    if a[0] == "f" and b[0] == "f":
        return a[1] >= b[1] and a[2] >= b[2]
    if a[0] == "f":   # an integer's magnitude bits fit the mantissa and its implicit bit
        return b[1] - (b[0] == "i") <= a[2] + 1
    if b[0] == "f" or a[0] == "u" and b[0] == "i":
        return False
    return b[1] + (a[0] == "i" and b[0] == "u") <= a[1]


@BUILTINS.function(args=("tensor", "string", "any"), optional=1, returns="any", needs_context=True)
def attr(ctx, x, name, default=None):
    """The value of attr `name` on x's node (or `default`, if given, where the node has no such attr)."""
    value = ctx.graph[x.node].get_attr(name, default)
    if value is None:
        raise NotApplicable(f"'{x.node}' has no attr '{name}'")
    return value


def stored_attr(ctx, x, name):
    """Attr `name` of x's node as the graph stores it (an AttrValue), for a replacement to copy
    exactly (an unset attr is the op's default, decoded, as `attr` gives it)."""
    node = ctx.graph[x.node]
    if node.attr_value(name) is None:
        return attr(ctx, x, name)
    return node.proto.attr[name] if name in node.mapped else node.attr_value(name)


@BUILTINS.function(args=("tensor",), returns="list", needs_context=True)
def attrs(ctx, x):
    """The names of the attrs set on x's node (not those left to their defaults), sorted."""
    return sorted(ctx.graph[x.node].header.attr)


def _defaults(ctx, x) -> dict[str, pb.AttrValue]:
    """The attrs x's op declares a default for, name -> the default as stored (none for a library
    call)."""
    op = ctx.graph[x.node].op
    if any(f.signature.name == op for f in ctx.graph.library.function):
        return {}
    return _registered_defaults(op)


@functools.lru_cache(maxsize=None)
def _registered_defaults(op: str) -> dict[str, pb.AttrValue]:
    op_def = op_registry.get_op(op)
    return {} if op_def is None else {name: encode_attr(a.default, a.type)
                                      for name, a in op_def.attrs.items() if a.known_default}


@BUILTINS.function(args=("tensor",), returns="list", needs_context=True)
def default_attrs(ctx, x):
    """The names of the attrs x's op declares a default for, set on the node or not (none for an op
    the registry does not know, or a call of the graph's function library)."""
    return list(_defaults(ctx, x))


@BUILTINS.function(args=("tensor", "string"), returns="any", needs_context=True)
def default_attr(ctx, x, name):
    """The default x's op declares for attr `name`, as a node stores it (for an attr block to write)."""
    found = _defaults(ctx, x).get(name)
    if found is None:
        raise NotApplicable(f"'{ctx.graph[x.node].op}' declares no default for attr '{name}'")
    return found


@BUILTINS.function(args=("tensor", "string"), returns="bool", needs_context=True)
def is_default(ctx, x, name):
    """True if attr `name` is set on x's node to the default its op declares (stored as is)."""
    stored = ctx.graph[x.node].attr_value(name)
    return stored is not None and stored == _defaults(ctx, x).get(name)


@BUILTINS.function(args=("any",), returns="list", needs_context=True)
def shape(ctx, x):
    """The static shape of x, as a list; an unknown dim is unknown (all of it, if the rank is)."""
    dims = partial_shape(ctx, x)
    return UNKNOWN if dims is None else [UNKNOWN if d is None else d for d in dims]


@BUILTINS.function(args=("any",), returns="value", needs_context=True)
def rank(ctx, x):
    """The number of dimensions of x (known even where some dims are not)."""
    dims = partial_shape(ctx, x)
    return UNKNOWN if dims is None else len(dims)


@BUILTINS.function(args=("any", "value"), returns="value", needs_context=True)
def dim(ctx, x, axis):
    """The size of dimension `axis` of x (negative: from the last); unknown if not known."""
    dims = partial_shape(ctx, x)
    if dims is None:
        return UNKNOWN
    axis = int(axis)
    if not -len(dims) <= axis < len(dims):
        raise NotApplicable(f"'{x}' has no dimension {axis}")
    return UNKNOWN if dims[axis] is None else dims[axis]


@BUILTINS.function(args=("any",), returns="value", needs_context=True)
def size(ctx, x):
    """The number of elements of x (0 if some dim is known to be 0)."""
    dims = partial_shape(ctx, x)
    if dims is None:
        return UNKNOWN
    if 0 in dims:
        return 0
    return UNKNOWN if None in dims else math.prod(dims)


@BUILTINS.function(args=("tensor",), returns="bool", needs_context=True)
def is_const(ctx, x):
    """True if x is the output of a Const."""
    return ctx.graph[x.node].op == "Const"


@BUILTINS.function(args=("any",), returns="value", needs_context=True)
def value(ctx, x):
    """The constant value of x (x must come from a Const)."""
    return tensor_value(ctx, x)


@BUILTINS.function(args=("any", "any"), returns="bool", needs_context=True)
def same_value(ctx, a, b):
    """True if a and b are the same tensor or constants with equal shape and values."""
    if isinstance(a, TensorRef) and isinstance(b, TensorRef) and a == b:
        return True
    try:
        va, vb = np.asarray(tensor_value(ctx, a)), np.asarray(tensor_value(ctx, b))
    except NotApplicable:
        return False
    return va.shape == vb.shape and bool(np.array_equal(va, vb))


@BUILTINS.function(args=("any",), returns="bool", needs_context=True)
def all_equal(ctx, x):
    """True if every element of constant x, or of a list, is the same (a list of tensors: the same tensor)."""
    if isinstance(x, list) and any(isinstance(v, TensorRef) for v in x):
        return all(v == x[0] for v in x)
    v = np.asarray(tensor_value(ctx, x))
    return v.size == 0 or bool(np.all(v == v.flat[0]))


# ---- lists ----

# A list a rule builds (a range, a comprehension) holds at most this many elements: rules run no
# unbounded loops.
MAX_LIST_LENGTH = 1 << 20


@BUILTINS.function("range", args=("value", "value"), optional=1, returns="list")
def range_(a, b=None):
    """The whole numbers 0 to a - 1, or a to b - 1 (at most a million of them)."""
    start, stop = (0, int(a)) if b is None else (int(a), int(b))
    if stop - start > MAX_LIST_LENGTH:
        raise ValueError(f"range of {stop - start:,} numbers (at most {MAX_LIST_LENGTH:,})")
    return list(range(start, stop))


def _kleene(values, stop_at: bool) -> Any:
    """all() (stop_at False) or any() (stop_at True) in three-valued logic."""
    if isinstance(values, np.ndarray):
        values = values.reshape(-1).tolist()
    result = not stop_at
    for value in values:
        if value is UNKNOWN:
            result = UNKNOWN
        elif bool(np.all(value)) == stop_at:
            return stop_at
    return result


@BUILTINS.function("all", args=("list",), returns="bool", accepts_unknown=True)
def all_(xs):
    """True if every element of the list is true (unknown if one is unknown and none false)."""
    return UNKNOWN if xs is UNKNOWN else _kleene(xs, False)


@BUILTINS.function("any", args=("list",), returns="bool", accepts_unknown=True)
def any_(xs):
    """True if some element of the list is true (unknown if one is unknown and none true)."""
    return UNKNOWN if xs is UNKNOWN else _kleene(xs, True)


# ---- numpy-like math ----

def _numeric(name: str, fn: Callable[[np.ndarray], np.ndarray], doc: str):
    def impl(ctx, x):
        return fn(np.asarray(tensor_value(ctx, x)))
    impl.__doc__ = doc
    BUILTINS.function(name, args=("value",), returns="value", needs_context=True)(impl)


for _name, _fn, _doc in (
    ("sqrt", np.sqrt, "Element-wise square root."),
    ("rsqrt", lambda v: 1 / np.sqrt(v), "Element-wise 1 / sqrt(x)."),
    ("abs", np.abs, "Element-wise absolute value."),
    ("exp", np.exp, "Element-wise e**x."),
    ("log", np.log, "Element-wise natural logarithm."),
    ("square", np.square, "Element-wise x*x."),
    ("log10", np.log10, "Element-wise base-10 logarithm."),
    ("round", np.round, "Element-wise rounding to the nearest integer, halves to even."),
):
    _numeric(_name, _fn, _doc)


@BUILTINS.function("min", args=("value", "value"), optional=1, returns="value", needs_context=True)
def min_(ctx, a, b=None):
    """The smallest element of a (and of b, if given)."""
    values = [np.min(np.asarray(tensor_value(ctx, v))) for v in (a, b) if v is not None]
    return np.min(values)


@BUILTINS.function("max", args=("value", "value"), optional=1, returns="value", needs_context=True)
def max_(ctx, a, b=None):
    """The largest element of a (and of b, if given)."""
    values = [np.max(np.asarray(tensor_value(ctx, v))) for v in (a, b) if v is not None]
    return np.max(values)


@BUILTINS.function(args=("value",), returns="value", needs_context=True)
def floor(ctx, x):
    """Element-wise floor (the largest integer not above x), keeping float32 as float32."""
    return np.floor(tensor_value(ctx, x))


@BUILTINS.function(args=("value",), returns="bool", needs_context=True)
def all_finite(ctx, x):
    """True if no element of x is NaN or infinite."""
    return bool(np.isfinite(tensor_value(ctx, x)).all())


@BUILTINS.function(args=("value",), returns="value", needs_context=True)
def count_nonzero(ctx, x):
    """How many elements of x are not 0."""
    return int(np.count_nonzero(tensor_value(ctx, x)))


@BUILTINS.function(args=("value",), returns="value", needs_context=True)
def count_distinct(ctx, x):
    """How many different values x holds."""
    return int(np.unique(np.asarray(tensor_value(ctx, x)).reshape(-1)).size)


@BUILTINS.function(args=("value", "value"), returns="value", needs_context=True)
def minimum(ctx, a, b):
    """Element-wise minimum."""
    return np.minimum(tensor_value(ctx, a), tensor_value(ctx, b))


@BUILTINS.function(args=("value", "value"), returns="value", needs_context=True)
def maximum(ctx, a, b):
    """Element-wise maximum."""
    return np.maximum(tensor_value(ctx, a), tensor_value(ctx, b))


@BUILTINS.function("sum", args=("value", "value"), optional=1, returns="value", needs_context=True)
def sum_(ctx, x, axis=None):
    """Sum of x, over `axis` if given."""
    return np.sum(tensor_value(ctx, x), axis=None if axis is None else int(axis))


@BUILTINS.function(args=("value", "value"), optional=1, returns="value", needs_context=True)
def mean(ctx, x, axis=None):
    """Mean of x, over `axis` if given."""
    return np.mean(tensor_value(ctx, x), axis=None if axis is None else int(axis))


@BUILTINS.function(args=("value", "list"), returns="value", needs_context=True)
def reshape(ctx, x, new_shape):
    """x with a new shape (-1 allowed once)."""
    return np.reshape(tensor_value(ctx, x), [int(d) for d in new_shape])


@BUILTINS.function(args=("value", "list"), optional=1, returns="value", needs_context=True)
def transpose(ctx, x, perm=None):
    """x with its axes permuted (reversed if no permutation is given)."""
    return np.transpose(tensor_value(ctx, x), None if perm is None else [int(p) for p in perm])


@BUILTINS.function(args=("value", "dtype"), returns="value", needs_context=True)
def cast(ctx, x, to):
    """x converted to dtype `to`."""
    from gtt_rules.engine.dtypes import numpy_dtype
    return np.asarray(tensor_value(ctx, x)).astype(numpy_dtype(to))


@BUILTINS.function("len", args=("any",), returns="value", accepts_unknown=True)
def len_(x):
    """The length of a list (of a shape: known where the rank is)."""
    return UNKNOWN if x is UNKNOWN else len(x)


@BUILTINS.function(args=("value", "value", "value"), returns="value", needs_context=True)
def dilate_filter(ctx, w, rate_h, rate_w):
    """A [h, w, ...] filter with rate - 1 zeros between its taps along h and w.

    A convolution with the result equals the convolution with `w` at dilation rates
    (rate_h, rate_w), on kernels that have no dilation attr.
    """
    w = np.asarray(tensor_value(ctx, w))
    rate_h, rate_w = int(rate_h), int(rate_w)
    if w.ndim < 2 or rate_h < 1 or rate_w < 1:
        raise NotApplicable("dilate_filter wants a filter of rank 2 or more and rates of at least 1")
    height, width = (w.shape[0] - 1) * rate_h + 1, (w.shape[1] - 1) * rate_w + 1
    out = np.zeros((height, width, *w.shape[2:]), dtype=w.dtype)
    out[::rate_h, ::rate_w] = w
    return out


@BUILTINS.function(args=("value", "value", "value", "dtype"), returns="value", needs_context=True)
def quantize(ctx, x, range_min, range_max, dtype):
    """The codes of float x in `dtype` over exactly [range_min, range_max], MIN_FIRST rounding.

    This is TensorFlow's FloatTensorToQuantized (what QuantizeV2 MIN_FIRST computes, without its
    range widening), done by the engine's bit-exact kernel. The range must contain 0.
    """
    from gtt_rules.engine.kernels import quantization

    lo, hi = np.float32(tensor_value(ctx, range_min)), np.float32(tensor_value(ctx, range_max))
    if not lo <= 0.0 <= hi or lo == hi:
        raise NotApplicable("quantize wants a non-empty range that contains 0")
    values = np.asarray(tensor_value(ctx, x), dtype=np.float32)
    codes, out_min, out_max = quantization.quantize(values, lo, hi, dtype, mode="MIN_FIRST",
                                                    ensure_minimum_range=0.0, onednn=False)
    if out_min != lo or out_max != hi:  # the kernel must not have widened the range
        raise NotApplicable("quantize could not keep the range as given")
    return codes


@BUILTINS.function(args=("value", "tensor"), returns="value", needs_context=True)
def per_out_channel(ctx, s, layer):
    """Reshape per-output-channel values `s` to broadcast against `layer`'s weights.

    Conv2D weights are [h, w, in, out] and MatMul weights [in, out]: a vector of length out
    broadcasts as is. DepthwiseConv2dNative weights are [h, w, in, multiplier], with output
    channel c = i * multiplier + m, so s becomes [in, multiplier]. MatMul with transpose_b has
    weights [out, in], so s becomes a column.
    """
    s = np.asarray(tensor_value(ctx, s))
    if s.ndim == 0:
        return s
    s = s.reshape(-1)
    node = ctx.graph[layer.node]
    if node.op == "DepthwiseConv2dNative":
        weights_shape = _known_shape(ctx, node.inputs[1])
        return s.reshape(weights_shape[2], weights_shape[3])
    if node.op == "MatMul" and node.get_attr("transpose_b", False):
        return s.reshape(-1, 1)
    return s


# ---- running nodes (constant folding) ----

# Ops that must not be folded even when every input is constant: placeholders, state, randomness,
# loop plumbing, and ops whose point is a side effect.
_NEVER_FOLD = frozenset({
    "Const", "Placeholder", "PlaceholderWithDefault", "NoOp", "Assert", "Print", "PrintV2",
    "Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond", "RefEnter", "RefExit",
    "RefMerge", "RefSwitch", "RefNextIteration",
})


@BUILTINS.function(args=("tensor", "value"), optional=1, returns="bool", needs_context=True)
def foldable(ctx, n, max_bytes=None):
    """True if n's node can be computed now: a kernel exists, the op is pure, all inputs are Consts,
    and its outputs (at most `max_bytes` if given), inputs and cost are within the limits."""
    node = ctx.graph[n.node]
    if node.op in _NEVER_FOLD or not node.inputs:
        return False
    op_def = op_registry.get_op(node.op)
    if op_def is None or op_def.is_stateful:
        return False
    kernels = KERNELS if "Const" in KERNELS else load_all()
    if node.op not in kernels:
        return False
    return all(ctx.graph[r.node].op == "Const" for r in node.inputs) and \
        _within_limits(ctx.graph, node, max_bytes)


def _within_limits(graph, node, max_bytes) -> bool:
    """Whether folding `node` fits the limits, judged from static shapes before anything is
    decoded or computed; a fold that does not is reported once and left undone."""
    inputs = [_static(graph, ref) for ref in node.inputs]
    outputs = [_static(graph, TensorRef(node.name, port)) for port in range(graph.num_outputs(node) or 1)]
    in_bytes = sum(size or 0 for _, size in inputs)
    if any(size is None for _, size in inputs + outputs):
        # No shape function for this op (or a string tensor): a result is about as big as
        # what it is computed from.
        out_bytes, cost = None, None
    else:
        out_bytes = sum(size for _, size in outputs)
        cost = limits.operations(node.op, [s for s, _ in inputs], [s for s, _ in outputs])
    result_limit = limits.max_memory() if max_bytes is None else min(int(max_bytes), limits.max_memory())
    if (in_bytes if out_bytes is None else out_bytes) > result_limit:
        what = f"its output would take {limits.format_size(out_bytes)}" if out_bytes is not None \
            else f"its inputs take {limits.format_size(in_bytes)}"
        return _skip(node, f"{what}, over the limit of {limits.format_size(result_limit)}")
    if in_bytes + (out_bytes or 0) > limits.max_memory():
        return _skip(node, f"its inputs and output would take "
                           f"{limits.format_size(in_bytes + (out_bytes or 0))}, over the memory budget "
                           f"of {limits.format_size(limits.max_memory())} (raise it with --max-memory)")
    if cost is not None and cost > limits.MAX_FOLD_OPERATIONS:
        return _skip(node, f"it would take about {cost:.2g} operations, over the limit of "
                           f"{limits.MAX_FOLD_OPERATIONS:.2g}")
    return True


def _static(graph, ref) -> tuple[tuple[int, ...], int] | tuple[None, None]:
    """A tensor's static shape and size in bytes, or (None, None) where either is unknown."""
    shape = infer_shape(graph, ref)
    dtypes = graph.output_dtypes(graph[ref.node])
    if shape is None or None in shape or not dtypes or ref.port >= len(dtypes):
        return None, None
    try:
        itemsize = numpy_dtype(dtypes[ref.port]).itemsize
    except (KeyError, ValueError):
        return None, None
    return shape, math.prod(shape) * itemsize


def _skip(node, reason: str) -> bool:
    warnings.warn(limits.LimitWarning(f"'{node.name}' ({node.op}) is not folded: {reason}"), stacklevel=2)
    return False


@BUILTINS.function("eval", args=("tensor",), returns="list", needs_context=True)
def eval_node(ctx, n):
    """The output values of n's node, computed from its constant inputs by the engine's kernels."""
    from gtt_rules.engine.evaluator import run_kernel  # imports every kernel: only when folding

    node = ctx.graph[n.node]
    inputs = [tensor_value(ctx, ref) for ref in node.inputs]
    try:
        return run_kernel(node, inputs, ctx.graph.output_dtypes(node))
    except EvaluationError as error:
        # A node that cannot be computed is left as it is, not reported: folding is best effort.
        raise NotApplicable(str(error)) from None


@BUILTINS.function(args=("any",), returns="value", needs_context=True)
def nbytes(ctx, x):
    """Bytes that the value (or list of values) x takes."""
    x = tensor_value(ctx, x)
    if isinstance(x, list):
        return sum(np.asarray(v).nbytes for v in x)
    return np.asarray(x).nbytes


@BUILTINS.function(args=("tensor",), returns="string", needs_context=True)
def name(ctx, x):
    """The name of x's node."""
    return x.node


# ---- text and reasons ----

@BUILTINS.function(args=("string", "string"), returns="bool")
def matches(text, pattern):
    """True if `text` matches glob `pattern`: `*` any run of characters, `?` any one (case-sensitive)."""
    from fnmatch import fnmatchcase
    return fnmatchcase(_plain(text), _plain(pattern))


@BUILTINS.function("format", args=("any", "string"), optional=1, returns="string")
def format_(x, spec=""):
    """x as text, in Python's format `spec` if given (".3g": three significant digits)."""
    return format(_plain(x), _plain(spec))


def _plain(x: Any) -> Any:
    """x with numpy scalars, arrays, tuples and bytes made plain Python values (for text)."""
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    if isinstance(x, (np.ndarray, np.generic)):
        return x.tolist()
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


@BUILTINS.function(args=("any",), returns="bool", accepts_unknown=True)
def known(x):
    """True if x is known statically (a shape: every dim of it)."""
    return not is_unknown(x)


@BUILTINS.function(args=("tensor", "string"), returns="bool", needs_context=True)
def note(ctx, x, text):
    """False, having recorded `text` as the reason x's node is left as it is: the stage's report
    lists it (`where ok or note(n, "why not")`)."""
    ctx.notes[x.node] = _plain(text)
    return False
