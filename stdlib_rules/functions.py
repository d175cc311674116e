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
