"""The standard library's one Python function; every other function of it is a rule (`define`).

It goes into this module's `REGISTRY`, part of the standard library's (gtt_rules.stdlib_rules).
"""
from __future__ import annotations

from gtt_rules.engine.pattern import NotApplicable
from gtt_rules.rules.registry import Registry

REGISTRY = Registry()


@REGISTRY.function(args=("tensor", "tensor"), returns="bool", needs_context=True)
def channel_vector(ctx, c, layer):
    """True if constant c holds one value per output channel of `layer` (a Conv2D,
    DepthwiseConv2dNative or MatMul with constant weights), broadcasting like a bias: every
    dimension is 1 but the last, which is the layer's channel count, and its rank is at most that
    of the layer's weights (so `[1, 1, 1, C]` after a Conv2D qualifies, as Keras freezes batch-norm
    scales). A scalar qualifies too.

    Not a rule: it is the guard of every scale and shift after a layer, and as a `define` it cost
    twice the time (40 against 20 microseconds a call; bench_rules at 100k nodes 7% slower).
    """
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
