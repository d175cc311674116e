"""Functions that the standard library's rules call and the language's builtins lack.

They go into this module's `REGISTRY`, part of the standard library's (gtt_rules.stdlib_rules).
"""
from __future__ import annotations

import numpy as np

from gtt_rules.engine.pattern import NotApplicable
from gtt_rules.rules.registry import Registry

REGISTRY = Registry()


@REGISTRY.function(args=("tensor", "tensor"), returns="bool", needs_context=True)
def channel_vector(ctx, c, layer):
    """True if constant c holds one value per output channel of `layer` (a Conv2D,
    DepthwiseConv2dNative or MatMul with constant weights), broadcasting like a bias: every
    dimension is 1 but the last, which is the layer's channel count, and its rank is at most that
    of the layer's output (so `[1, 1, 1, C]` after a Conv2D qualifies, as Keras freezes batch-norm
    scales). A scalar qualifies too."""
    from gtt_rules.rules.functions import tensor_shape

    node = ctx.graph[layer.node]
    shape, weights = tensor_shape(ctx, c), tensor_shape(ctx, node.inputs[1])
    if shape is None or weights is None:     # unknown, not false: `not channel_vector(...)` must not fire
        raise NotApplicable("channel_vector needs the static shapes of the constant and the weights")
    # Channels first, the last dimension is the width: a [W] constant broadcasts along it.
    if node.get_attr("data_format", "NHWC") != "NHWC":
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


# ---- eight-bit conversion: what TensorFlow's eight-bit kernels accept -----------------------------

@REGISTRY.function(args=("tensor", "tensor"), returns="bool", needs_context=True)
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


def _ints(values) -> list[int]:
    return [int(v) for v in values] if values is not None else []


def _conv_refusal(ctx, node) -> str | None:
    from gtt_rules.rules.functions import tensor_shape

    strides = _ints(node.get_attr("strides", None))
    if len(strides) != 4 or strides[0] != 1 or strides[3] != 1:
        return f"QuantizedConv2D takes no strides across batch or channels (has strides {strides})"
    if strides[1] != strides[2]:
        return f"QuantizedConv2D takes equal row and column strides only (has strides {strides})"
    if any(d != 1 for d in _ints(node.get_attr("dilations", [1, 1, 1, 1]))):
        return "QuantizedConv2D has no dilations"
    if node.get_attr("padding") == "VALID" and strides[1] >= 4:
        # TensorFlow's kernel centres VALID windows as ((out-1)*stride + filter - in + 1) / 2, C
        # division; where that is not 0 its windows sit one place off Conv2D's (stride 4 or more).
        image, kernel = tensor_shape(ctx, node.inputs[0]), tensor_shape(ctx, node.inputs[1])
        if image is None or kernel is None or len(image) != 4 or len(kernel) != 4 or \
                any(d is None or d < 0 for d in (*image[1:3], *kernel[:2])):
            return "VALID with stride >= 4 and unknown sizes: QuantizedConv2D may place its windows off Conv2D's"
        for size, window in zip(image[1:3], kernel[:2]):
            out = -(-(size - window + 1) // strides[1])
            slack = (out - 1) * strides[1] + window - size + 1
            if out > 0 and abs(slack) >= 2:
                return "VALID with this size and stride: QuantizedConv2D places its windows off Conv2D's"
    return None


def _pool_refusal(node) -> str | None:
    ksize, strides = _ints(node.get_attr("ksize", None)), _ints(node.get_attr("strides", None))
    if len(ksize) != 4 or len(strides) != 4 or ksize[0] != 1 or strides[0] != 1:
        return f"eight-bit pooling does not pool across the batch (ksize {ksize}, strides {strides})"
    if ksize[3] != 1 or strides[3] != 1:
        # QuantizedAvgPool refuses it; TensorFlow's QuantizedMaxPool takes it, our evaluator not yet.
        return f"eight-bit pooling does not pool across channels (ksize {ksize}, strides {strides})"
    return None


def eight_bit_refusal(ctx, node) -> str | None:
    """Why TensorFlow's eight-bit kernel for float `node` would refuse it or compute something
    else, or None if it takes it. The facts come from TensorFlow 2.21's quantized_*_op.cc."""
    data_format = node.get_attr("data_format", "NHWC")
    if isinstance(data_format, bytes):
        data_format = data_format.decode()
    if node.op in ("Conv2D", "BiasAdd", "MaxPool", "AvgPool") and data_format != "NHWC":
        return f"the eight-bit kernel takes NHWC only (has {data_format})"
    if node.get_attr("padding", "SAME") == "EXPLICIT":
        return "the eight-bit kernel takes SAME or VALID padding only (has EXPLICIT)"
    if node.op == "Conv2D":
        return _conv_refusal(ctx, node)
    if node.op in ("MaxPool", "AvgPool"):
        return _pool_refusal(node)
    if node.op in ("Add", "AddV2", "Mul") and not eight_bit_broadcast(ctx, *node.inputs[:2]):
        from gtt_rules.rules.functions import tensor_shape

        kernel = f"Quantized{'Mul' if node.op == 'Mul' else 'Add'}"
        if any(tensor_shape(ctx, ref) is None for ref in node.inputs[:2]):
            return f"operand shapes not fully known, and {kernel} broadcasts only some shapes as {node.op} does"
        return f"{kernel} does not broadcast these shapes as {node.op} does"
    return None


@REGISTRY.function(args=("tensor", "list", "list", "list"), optional=1, returns="bool", needs_context=True)
def converts(ctx, n, exclude_node, exclude_op, more_exclude_op=None):
    """True if float node n is to become eight-bit: not excluded (see `excluded`), and TensorFlow's
    eight-bit kernel takes it as it is and computes what it computes. A node the kernel would not
    take stays float, with the reason in the report."""
    if excluded(ctx, n, exclude_node, exclude_op, more_exclude_op):
        return False
    node = ctx.graph[n.node]
    reason = eight_bit_refusal(ctx, node)
    if reason is not None:
        ctx.notes[node.name] = f"stays float: {reason}"
    return reason is None


def _names(patterns) -> list[str]:
    if isinstance(patterns, (str, bytes)):
        patterns = [patterns]
    return [p.decode() if isinstance(p, bytes) else str(p) for p in patterns or []]


@REGISTRY.function(args=("tensor", "list", "list", "list"), optional=1, returns="bool", needs_context=True)
def excluded(ctx, n, node_patterns, op_patterns, more_op_patterns=None):
    """True if n's name matches one of node_patterns, or its op one of op_patterns (or of
    more_op_patterns), with `*` and `?` as wildcards (fnmatch, case-sensitive)."""
    from fnmatch import fnmatchcase

    node = ctx.graph[n.node]
    ops = _names(op_patterns) + _names(more_op_patterns)
    return (any(fnmatchcase(node.name, p) for p in _names(node_patterns))
            or any(fnmatchcase(node.op, p) for p in ops))


# ---- quantize_weights: what eight bits cannot hold, and what the user keeps float ---------------

_BATCH_NORMS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "BatchNormWithGlobalNormalization")
_PASS_THROUGH = ("Identity", "Add", "AddV2")   # a variance reaches its Rsqrt through `+ epsilon`


def _readers(graph, name: str, through=("Identity",), passed: list | None = None):
    """(reader node, input port) for each data input that reads `name`, looking past `through` ops
    (which go to `passed`, if given)."""
    found, stack, seen = [], [name], set()
    while stack:
        current = stack.pop()
        for consumer in graph.consumers(current):
            for port, ref in enumerate(consumer.inputs):
                if ref.node != current or (consumer.name, port) in seen:
                    continue
                seen.add((consumer.name, port))
                if consumer.op in through:
                    stack.append(consumer.name)
                    if passed is not None:
                        passed.append(consumer)
                else:
                    found.append((consumer, port))
    return found


def _from_rsqrt(graph, ref, depth: int = 4) -> bool:
    """True if tensor `ref` is a reciprocal square root, or a product of one (through Identity and
    Mul, a few steps up): a batch norm's scale gamma / sqrt(variance + epsilon)."""
    node = graph[ref.node]
    if node.op == "Rsqrt":
        return True
    if depth == 0 or node.op not in ("Identity", "Mul"):
        return False
    return any(_from_rsqrt(graph, r, depth - 1) for r in node.inputs)


# Ops that sum the products of the weights with their inputs.
_DOT_PRODUCTS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul",
                 "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
# Least signal-to-quantization-noise ratio of dot-product weights (the codes' error energy at most
# 1% of the weights'): trained kernels measure 28-47 dB, pruned and dead channels included.
_LEAST_SQNR_DB = 20.0


def weight_refusal(graph, node) -> str | None:
    """Why eight-bit codes (256 levels from min to max, 0 on a code) cannot stand for this float
    Const, or None.

    - Batch-norm statistics, variances and means: a variance feeds a reciprocal square root, where a
      value near zero that becomes zero explodes; a mean is multiplied by that reciprocal (unfolded,
      `x * scale + (beta - mean * scale)`), so its rounding error comes out up to 1 / sqrt(epsilon)
      times larger, at exactly the channels whose input sits at the mean.
    - Weights of a dot product (convolution, matmul) sum their products: what counts is the error
      energy against the weights' energy, so they stay float when the SQNR is under 20 dB. Values
      near 0 that round to 0 carry little of it (pruned weights, dead channels).
    - Any other reader takes each value alone: when more than half of the nonzero values are smaller
      than half a step, (max - min) / 510, they all become 0, and the codes keep only the outliers.
    """
    for reader, port in _readers(graph, node.name):
        if reader.op in _BATCH_NORMS and port >= 1:
            return f"batch-norm statistic ({reader.op} '{reader.name}' input {port})"
    for reader, _ in _readers(graph, node.name, _PASS_THROUGH):
        if reader.op in ("Rsqrt", "Sqrt"):
            return f"read by {reader.op} '{reader.name}' (a variance: small values must stay distinct)"
    for reader, port in _readers(graph, node.name, ("Identity", "Neg")):   # beta - mean * scale,
        if reader.op == "Mul" and _from_rsqrt(graph, reader.inputs[1 - port]):   # or -mean * scale
            return (f"multiplied by a reciprocal square root in '{reader.name}' (a batch norm's mean "
                    "or scale: its rounding error is multiplied by up to 1 / sqrt(epsilon))")
    values = np.asarray(node.get_attr("value"), np.float32).reshape(-1)
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    plain = _readers(graph, node.name)
    if plain and all(reader.op in _DOT_PRODUCTS for reader, _ in plain):
        return _dot_product_refusal(values, low, high)
    half_step = np.float32((high - low) / 510.0)
    # Counted, not a median: one pass each, and the weights of a big model are large.
    magnitudes = np.abs(values)
    nonzero = int(np.count_nonzero(magnitudes))
    to_zero = int(np.count_nonzero(magnitudes < half_step)) - (values.size - nonzero)
    if nonzero and 2 * to_zero > nonzero:
        return (f"most values would round to 0: {to_zero} of {nonzero} nonzero values are under half "
                f"a step ({half_step:.3g}) of a range of {high - low:.3g}")
    return None


def _dot_product_refusal(values: np.ndarray, low: float, high: float) -> str | None:
    if high == low:
        return None
    # The codes quantize_weights writes: 0 on a code, steps of `step` on either side.
    zero = np.floor(-low * 255.0 / (high - low) + 0.5)
    step = max(-low / max(zero, 1.0), high / max(255.0 - zero, 1.0))
    restored = np.round(values / step) * step
    noise = float(np.sum(np.square(restored - values, dtype=np.float64)))
    signal = float(np.sum(np.square(values, dtype=np.float64)))
    if noise and signal < noise * 10.0 ** (_LEAST_SQNR_DB / 10.0):
        sqnr = 10.0 * np.log10(signal / noise) if signal else -np.inf
        return (f"eight bits keep too little of these weights: SQNR {sqnr:.1f} dB, under "
                f"{_LEAST_SQNR_DB:.0f} dB (a range of {high - low:.3g}: outliers far from the rest)")
    return None


@REGISTRY.function(args=("tensor",), returns="bool", needs_context=True)
def eight_bits_hold(ctx, w):
    """True if eight-bit codes can stand for float Const w (see `weight_refusal`); otherwise the
    reason goes to the report, and w stays float."""
    reason = weight_refusal(ctx.graph, ctx.graph[w.node])
    if reason is not None:
        ctx.notes[w.node] = f"stays float: {reason}"
    return reason is None


@REGISTRY.function(args=("tensor", "list", "list"), returns="bool", needs_context=True)
def weight_excluded(ctx, w, node_patterns, op_patterns):
    """True if Const w's name, or the name of a node that reads it (or of an Identity between),
    matches one of node_patterns, or such a reader's op one of op_patterns (`*`, `?` wildcards)."""
    from fnmatch import fnmatchcase

    identities: list = []
    readers = [reader for reader, _ in _readers(ctx.graph, w.node, passed=identities)]
    names = [w.node] + [node.name for node in identities + readers]
    return (any(fnmatchcase(name, p) for name in names for p in _names(node_patterns))
            or any(fnmatchcase(reader.op, p) for reader in readers for p in _names(op_patterns)))
