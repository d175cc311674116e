"""Functions that the standard library's rules call and the base set lacks.

Registration happens on import: `load_standard_functions()` imports this module before any rule
file is compiled, so rules call these like the base functions.
"""
from __future__ import annotations

import numpy as np

from gtt_rules.engine.graph import TensorRef
from gtt_rules.engine.pattern import NotApplicable
from gtt_rules.rules.functions import register_function, tensor_value


def _tensors(xs) -> list[TensorRef]:
    if not isinstance(xs, list) or not xs or not all(isinstance(x, TensorRef) for x in xs):
        raise NotApplicable("wants a non-empty list of tensors")
    return xs


# Until a variadic input may come before fixed ones (`ConcatV2(values..., axis)`), a rule binds
# all inputs as one list and splits off the last with these two.
@register_function(args=("list",), returns="tensor")
def last(xs):
    """The last tensor of a list of tensors (a variadic binding)."""
    return _tensors(xs)[-1]


@register_function(args=("list",), returns="list")
def but_last(xs):
    """A list of tensors without its last one."""
    return _tensors(xs)[:-1]


@register_function(args=("value", "value", "value"), returns="value", needs_context=True)
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


@register_function(args=("tensor", "tensor"), returns="bool", needs_context=True)
def channel_vector(ctx, c, layer):
    """True if constant c holds one value per output channel of `layer` (a Conv2D,
    DepthwiseConv2dNative or MatMul with constant weights), broadcasting like a bias: every
    dimension is 1 but the last, which is the layer's channel count, and its rank is at most that
    of the layer's output (so `[1, 1, 1, C]` after a Conv2D qualifies, as Keras freezes batch-norm
    scales). A scalar qualifies too."""
    from gtt_rules.rules.functions import tensor_shape

    node = ctx.graph[layer.node]
    shape, weights = tensor_shape(ctx, c), tensor_shape(ctx, node.inputs[1])
    # Channels first, the last dimension is the width: a [W] constant broadcasts along it.
    if shape is None or weights is None or node.get_attr("data_format", "NHWC") != "NHWC":
        return False
    if node.op == "DepthwiseConv2dNative":
        channels = weights[2] * weights[3]
    elif node.op == "MatMul" and node.get_attr("transpose_b", False):
        channels = weights[0]
    else:
        channels = weights[-1]
    # A [1] constant broadcasts, but a bias made of it would not: BiasAdd wants C values.
    return not shape or (len(shape) <= len(weights) and all(d == 1 for d in shape[:-1])
                         and shape[-1] == channels)


@register_function(args=("tensor",), returns="bool", needs_context=True)
def all_ones_but_last(ctx, c):
    """True if every dimension of c's static shape but the last is 1."""
    from gtt_rules.rules.functions import tensor_shape

    shape = tensor_shape(ctx, c)
    return shape is not None and all(d == 1 for d in shape[:-1])


@register_function(args=("list",), returns="bool", needs_context=True)
def each_used_once(ctx, xs):
    """True if no tensor of the list is read anywhere else (so its node can move or go)."""
    return all(ctx.graph.uses(x.node) == sum(1 for y in xs if y.node == x.node) for x in _tensors(xs))


@register_function(args=("list",), returns="list", needs_context=True)
def first_inputs(ctx, xs):
    """The first input of each node in a list of tensors."""
    return [ctx.graph[x.node].inputs[0] for x in _tensors(xs)]


def _inner_concat(ctx, x, axis):
    node = ctx.graph[x.node]
    if node.op != "ConcatV2" or x.port != 0 or ctx.graph.uses(x.node) != 1:
        return None
    inner_axis = ctx.graph[node.inputs[-1].node]
    if inner_axis.op != "Const" or not np.array_equal(inner_axis.get_attr("value"), tensor_value(ctx, axis)):
        return None
    return node.inputs[:-1]


@register_function(args=("list", "tensor"), returns="bool", needs_context=True)
def has_nested_concat(ctx, xs, axis):
    """True if some tensor of the list is a ConcatV2 along the same axis, read only here."""
    return any(_inner_concat(ctx, x, axis) is not None for x in _tensors(xs))


@register_function(args=("list", "tensor"), returns="list", needs_context=True)
def flatten_concats(ctx, xs, axis):
    """The list with each single-use ConcatV2 along the same axis replaced by its inputs."""
    flat = []
    for x in _tensors(xs):
        inner = _inner_concat(ctx, x, axis)
        flat.extend(inner if inner is not None else [x])
    return flat


# ---- weights: round_weights and quantize_weights ------------------------------------------------

@register_function(args=("value",), returns="value", needs_context=True)
def floor(ctx, x):
    """Element-wise floor (the largest integer not above x), keeping float32 as float32."""
    return np.floor(tensor_value(ctx, x))


@register_function(args=("value",), returns="bool", needs_context=True)
def all_finite(ctx, x):
    """True if no element of x is NaN or infinite."""
    return bool(np.isfinite(tensor_value(ctx, x)).all())


@register_function(args=("value",), returns="value", needs_context=True)
def count_distinct(ctx, x):
    """How many different values x holds."""
    return int(np.unique(np.asarray(tensor_value(ctx, x)).reshape(-1)).size)


@register_function(args=("value", "value", "value", "dtype"), returns="value", needs_context=True)
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


@register_function(args=("tensor", "list"), returns="bool", needs_context=True)
def only_read_by(ctx, x, ops):
    """True if x's node has consumers and every one of them is one of `ops`."""
    consumers = ctx.graph.consumers(x.node)
    wanted = {op.decode() if isinstance(op, bytes) else op for op in ops}
    return bool(consumers) and all(c.op in wanted for c in consumers)


@register_function(args=("tensor", "tensor"), returns="bool", needs_context=True)
def eight_bit_broadcast(ctx, x, y):
    """True if QuantizedAdd/QuantizedMul compute x op y as the float op does: equal static shapes,
    a single-element operand, or a vector along the last dimension. (Other broadcasts TensorFlow's
    eight-bit kernels reject, or repeat the smaller operand by index modulo its size.)"""
    from gtt_rules.rules.functions import tensor_shape

    a, b = tensor_shape(ctx, x), tensor_shape(ctx, y)
    if a is None or b is None:
        return False
    if a == b or int(np.prod(a)) == 1 or int(np.prod(b)) == 1:
        return True
    small, large = (a, b) if np.prod(a) < np.prod(b) else (b, a)
    return (len(large) >= 1 and int(np.prod(small)) == large[-1] and len(small) <= len(large)
            and all(d == 1 for d in small[:-1]) and tuple(np.broadcast_shapes(a, b)) == tuple(large))
