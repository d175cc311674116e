"""Numpy kernels for TensorFlow's float (and shape/index) inference ops.

Every kernel computes in its input's dtype, as TensorFlow does: float32 stays float32. Half inputs
of the heavy ops (convolutions, matmuls, batch norms) are computed in float32 and rounded back, as
TensorFlow's CPU kernels accumulate them. Loops run over kernel taps or list items, never over
elements.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..dtypes import DT_BFLOAT16, numpy_dtype
from ..graph_io import release_pages
from . import chunked, kernel


# ---- helpers -------------------------------------------------------------------------------------

def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _axis(axis, rank: int) -> int:
    axis = int(axis)
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def _axes(axes, rank: int) -> tuple[int, ...]:
    return tuple(sorted({_axis(a, rank) for a in _ints(axes)}))


def _dtype_attr(node, name: str) -> np.dtype:
    return numpy_dtype(node.get_attr(name))


def _accumulation_dtype(dtype: np.dtype) -> np.dtype:
    # TensorFlow's CPU kernels accumulate half in float32.
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), held as float32."""
    shape = np.shape(values)
    values = np.ascontiguousarray(values, dtype=np.float32)   # (makes scalars 1-d)
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(values), values, rounded).reshape(shape)


def _is_nchw(node) -> bool:
    data_format = node.get_attr("data_format", "NHWC")
    if data_format not in ("NHWC", "NCHW"):
        raise ValueError(f"data_format {data_format!r} is not supported")
    return data_format == "NCHW"


def _spatial(values: list[int], nchw: bool) -> tuple[int, int]:
    """The (height, width) entries of a 4-element strides/ksize/dilations list."""
    return (values[2], values[3]) if nchw else (values[1], values[2])


def _window(size: int, k: int, stride: int, dilation: int, padding: str,
            explicit: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    """Output size and (before, after) padding of one spatial dimension, as TensorFlow computes them."""
    reach = (k - 1) * dilation + 1
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + reach - size, 0)
        return out, total // 2, total - total // 2
    if padding == "VALID":
        before, after = 0, 0
    elif padding == "EXPLICIT":
        before, after = explicit
    else:
        raise ValueError(f"padding {padding!r} is not supported")
    # TensorFlow divides in C++, truncating toward zero: a window that overshoots the padded
    # input by less than a stride gives an empty output; only a larger overshoot is an error.
    span = size + before + after - reach + stride
    if span <= -stride:
        raise ValueError(f"computed output size would be negative (input size {size}, "
                         f"window {reach}, stride {stride})")
    return max(span, 0) // stride, before, after


def _explicit_pads(node, nchw: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    pads = list(node.get_attr("explicit_paddings", []) or [])
    if len(pads) != 8:
        return (0, 0), (0, 0)
    pairs = [(pads[2 * i], pads[2 * i + 1]) for i in range(4)]
    return (pairs[2], pairs[3]) if nchw else (pairs[1], pairs[2])


def _pad_spatial(x: np.ndarray, pads, value=0) -> np.ndarray:
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return x
    if min(top, bottom, left, right) < 0:     # np.pad says what is wrong
        return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)
    # What np.pad computes, without its ~40 us of setup (a convolution or pool of a small
    # input took longer to pad than to compute).
    n, h, w, c = x.shape
    out = np.empty((n, top + h + bottom, left + w + right, c), x.dtype)
    fill = np.asarray(value).astype(x.dtype)
    out[:, :top] = fill
    out[:, top + h:] = fill
    out[:, top:top + h, :left] = fill
    out[:, top:top + h, left + w:] = fill
    out[:, top:top + h, left:left + w] = x
    return out


def _taps(xp: np.ndarray, kh: int, kw: int, strides, dilations, out_hw):
    """Yield (i, j, slice) for each kernel tap: the input values that tap sees at every output."""
    (sh, sw), (dh, dw), (oh, ow) = strides, dilations, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i * dh: i * dh + (oh - 1) * sh + 1: sh,
                           j * dw: j * dw + (ow - 1) * sw + 1: sw, :]


class _ConvGeometry:
    """Output size and padding of a 2-D window op (NHWC input) from its attrs."""

    def __init__(self, node, x_shape, kh: int, kw: int, *, ksize_attr: bool = False):
        nchw = _is_nchw(node)
        self.strides = _spatial(_ints(node.get_attr("strides")), nchw)
        self.dilations = (1, 1) if ksize_attr else _spatial(_ints(node.get_attr("dilations", [1, 1, 1, 1])), nchw)
        padding = node.get_attr("padding")
        explicit = _explicit_pads(node, nchw)
        _, h, w, _ = x_shape
        oh, top, bottom = _window(h, kh, self.strides[0], self.dilations[0], padding, explicit[0])
        ow, left, right = _window(w, kw, self.strides[1], self.dilations[1], padding, explicit[1])
        self.out_hw = (oh, ow)
        self.pads = ((top, bottom), (left, right))


def _nhwc_in(node, x: np.ndarray) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError(f"input must be 4-D, got shape {list(x.shape)}")
    return x.transpose(0, 2, 3, 1) if _is_nchw(node) else x


def _nhwc_out(node, y: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if _is_nchw(node) else y


# ---- pass-through and sources --------------------------------------------------------------------

@kernel("Const")
def const(node, inputs):
    value = node.get_attr("value")
    if not value.flags.aligned:
        # A view of a mapped GraphDef, whose tensor_content lies wherever protobuf put it: BLAS
        # and numpy's fast loops need aligned data, and a copy for this run costs far less than
        # their slow paths. The copy is the run's; the file's pages go back.
        aligned = value.copy()
        release_pages(value)
        return aligned
    return value


@kernel("Placeholder")
def placeholder(node, inputs):
    raise ValueError("placeholder has no value: feed it")


@kernel("PlaceholderWithDefault", "Identity", "StopGradient", "PreventGradient", "Snapshot",
        "EnsureShape")
def identity(node, inputs):
    return inputs[0]


@kernel("IdentityN")
def identity_n(node, inputs):
    return tuple(inputs)


@kernel("NoOp")
def no_op(node, inputs):
    return ()


@kernel("CheckNumerics")
def check_numerics(node, inputs):
    x = inputs[0]
    if not np.all(np.isfinite(x)):
        kind = "NaN" if np.any(np.isnan(x)) else "Inf"
        raise ValueError(f"{node.get_attr('message', '')} : Tensor had {kind} values")
    return x


# ---- elementwise ---------------------------------------------------------------------------------

def _binary(fn):
    return lambda node, inputs: fn(inputs[0], inputs[1])


def _unary(fn):
    return lambda node, inputs: fn(inputs[0])


def _int_div(x, y):
    # C++ integer division truncates toward zero.
    q = np.abs(x) // np.abs(y)
    return np.where((x < 0) != (y < 0), -q, q).astype(np.result_type(x, y))


def _div(x, y):
    if np.result_type(x, y).kind in "iu":
        if np.any(y == 0):
            raise ValueError("integer division by zero")
        return _int_div(x, y)
    return np.true_divide(x, y)


def _truncate_div(x, y):
    if np.result_type(x, y).kind in "iu":
        return _div(x, y)
    return np.trunc(np.true_divide(x, y))


def _floor_div(x, y):
    if np.result_type(x, y).kind in "iu" and np.any(y == 0):
        raise ValueError("integer division by zero")
    return np.floor_divide(x, y)


def _floor_mod(x, y):
    if np.result_type(x, y).kind in "iu" and np.any(y == 0):
        raise ValueError("integer division by zero")
    return np.mod(x, y)


def _rsqrt(x):
    return np.reciprocal(np.sqrt(x))


def _sigmoid(x):
    # exp(-x) may overflow to inf for very negative x; 1 / (1 + inf) is the right 0.
    return np.reciprocal(1 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(x, np.zeros((), x.dtype)).astype(x.dtype, copy=False)


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _selu(x):
    scale, alpha = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
    return (scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))).astype(x.dtype, copy=False)


def _erf(x):
    """erf in float64, rounded to x's dtype (numpy has no erf): a Taylor series below |x| = 2,
    Laplace's continued fraction for erfc above; both within 2e-15 relative of math.erf."""
    a = np.abs(np.asarray(x, np.float64)).reshape(-1)    # 1-d, so that masks also index scalars
    out = np.empty_like(a)
    near = a < 2
    s = a[near]
    term, total, z = s, s, -s * s
    for n in range(1, 32):      # the terms fall below 1e-16 of the sum by n = 31 at |x| = 2
        term = term * z / n
        total = total + term / (2 * n + 1)
    out[near] = total * (2 / math.sqrt(math.pi))
    far = a[~near]              # also inf (erfc 0) and nan (stays nan)
    fraction = far
    for k in range(40, 0, -1):  # evaluated from its tail; 40 levels converge for |x| >= 2
        fraction = far + (k / 2) / fraction
    out[~near] = 1 - np.exp(-far * far) / (math.sqrt(math.pi) * fraction)
    return np.copysign(out.reshape(np.shape(x)), x).astype(x.dtype, copy=False)


_BINARY = {
    "Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "RealDiv": _div, "Div": _div, "TruncateDiv": _truncate_div, "FloorDiv": _floor_div,
    "FloorMod": _floor_mod,
    "Maximum": np.maximum, "Minimum": np.minimum, "Pow": np.power,
    "SquaredDifference": lambda x, y: np.square(x - y),
    "Less": np.less, "LessEqual": np.less_equal, "Greater": np.greater,
    "GreaterEqual": np.greater_equal, "Equal": np.equal, "NotEqual": np.not_equal,
    "LogicalAnd": np.logical_and, "LogicalOr": np.logical_or,
}


def _relu(x: np.ndarray) -> np.ndarray:
    # np.clip between two scalars of x's own float type takes numpy's fast path (3x np.maximum).
    if x.dtype.kind == "f":
        return np.clip(x, np.zeros((), x.dtype), np.asarray(np.inf, x.dtype))
    return np.maximum(x, np.zeros((), x.dtype))


_UNARY = {
    "Neg": np.negative, "Abs": np.abs, "Square": np.square, "Sqrt": np.sqrt, "Rsqrt": _rsqrt,
    "Reciprocal": np.reciprocal, "Inv": np.reciprocal, "Exp": np.exp, "Log": np.log,
    "Log1p": np.log1p, "Expm1": np.expm1, "Tanh": np.tanh, "Sigmoid": _sigmoid, "Sin": np.sin,
    "Cos": np.cos, "Floor": np.floor, "Ceil": np.ceil, "Round": np.round, "Sign": np.sign,
    "Relu": _relu,
    "Relu6": lambda x: np.clip(x, np.zeros((), x.dtype), np.asarray(6, x.dtype)),
    "Elu": _elu, "Selu": _selu, "Softplus": _softplus, "Softsign": lambda x: x / (1 + np.abs(x)),
    "Erf": _erf,
    "LogicalNot": np.logical_not, "IsNan": np.isnan, "IsInf": np.isinf, "IsFinite": np.isfinite,
}
for _op, _fn in _BINARY.items():
    kernel(_op)(_binary(_fn))
for _op, _fn in _UNARY.items():
    kernel(_op)(_unary(_fn))


@kernel("DivNoNan")
def div_no_nan(node, inputs):
    x, y = inputs
    safe = np.where(y == 0, np.ones((), y.dtype), y)
    return np.where(y == 0, np.zeros((), x.dtype), np.true_divide(x, safe)).astype(x.dtype, copy=False)


@kernel("AddN")
def add_n(node, inputs):
    return functools.reduce(np.add, inputs)


@kernel("LeakyRelu")
def leaky_relu(node, inputs):
    x = inputs[0]
    alpha = np.asarray(node.get_attr("alpha", 0.2), dtype=x.dtype)
    return np.where(x > 0, x, x * alpha)


@kernel("ClipByValue")
def clip_by_value(node, inputs):
    x, lo, hi = inputs
    return np.minimum(np.maximum(x, lo), hi)


@kernel("Select", "SelectV2")
def select(node, inputs):
    condition, x, y = inputs
    if node.op == "Select" and condition.ndim == 1 and x.ndim > 1:
        condition = condition.reshape((-1,) + (1,) * (x.ndim - 1))   # V1 selects whole rows
    return np.where(condition, x, y)


@kernel("Softmax", "LogSoftmax")
def softmax(node, inputs):
    x = inputs[0]
    shifted = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(shifted)
    total = np.sum(e, axis=-1, keepdims=True)
    if node.op == "LogSoftmax":
        return shifted - np.log(total)
    return e / total


@kernel("BiasAdd", "BiasAddV1")
def bias_add(node, inputs):
    x, bias = inputs
    if node.op == "BiasAdd" and node.get_attr("data_format", "NHWC") == "NCHW" and x.ndim >= 3:
        return x + bias.reshape((-1,) + (1,) * (x.ndim - 2))
    return x + bias


@kernel("Cast")
def cast(node, inputs):
    x = inputs[0]
    target = node.get_attr("DstT")
    if target == DT_BFLOAT16:
        return round_to_bfloat16(x.astype(np.float32))
    dtype = numpy_dtype(target)
    if x.dtype.kind == "f" and dtype.kind in "iu":
        return _saturating_cast(x, dtype)
    return x.astype(dtype)


def _saturating_cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float to integer: truncated toward zero, out-of-range values saturated, NaN to 0.

    C++ leaves out-of-range casts undefined, and TensorFlow's x86 build gives different results
    for one value in a vector loop (saturated or INT_MIN) and in its scalar tail (wrapped), so
    no single answer matches it; saturation is what ARM gives. The bounds are compared in float64,
    where int32's are exact and 2^63 and 2^64 are too (int64's max itself would round up to 2^63).
    """
    info = np.iinfo(dtype)
    t = np.trunc(x.astype(np.float64))
    high, low = t >= float(info.max), t <= float(info.min)
    out = np.where(high | low | np.isnan(t), 0, t).astype(dtype)
    out[high] = info.max
    out[low] = info.min
    return out


# ---- matrix products -----------------------------------------------------------------------------

def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    work = _accumulation_dtype(a.dtype)
    out = chunked.matmul(a.astype(work, copy=False), b.astype(work, copy=False))
    return out.astype(a.dtype, copy=False)


@kernel("MatMul")
def matmul(node, inputs):
    a, b = inputs
    if node.get_attr("transpose_a", False):
        a = a.T
    if node.get_attr("transpose_b", False):
        b = b.T
    return _matmul(a, b)


@kernel("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
def batch_matmul(node, inputs):
    a, b = inputs
    if node.get_attr("adj_x", False):
        a = np.conj(np.swapaxes(a, -1, -2))
    if node.get_attr("adj_y", False):
        b = np.conj(np.swapaxes(b, -1, -2))
    if node.op == "BatchMatMulV3":
        out_dtype = _dtype_attr(node, "Tout")
        return np.matmul(a.astype(out_dtype), b.astype(out_dtype))
    if node.op == "BatchMatMul" and a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"BatchMatMul (v1) needs equal batch dimensions, got {list(a.shape)} "
                         f"and {list(b.shape)}")
    return _matmul(a, b)


@kernel("Einsum")
def einsum(node, inputs):
    equation = node.get_attr("equation")
    # numpy reads TensorFlow's equations as they are ("...", repeated labels); only numpy's
    # implicit form, with no output given, TensorFlow refuses.
    if equation.count("->") != 1:
        raise ValueError(f"expecting exactly one '->' in einsum equation: {equation}")
    dtype = inputs[0].dtype
    work = _accumulation_dtype(dtype)
    out = np.einsum(equation, *(x.astype(work, copy=False) for x in inputs), optimize=True)
    return np.asarray(out).astype(dtype, copy=False)


# ---- convolutions and pooling --------------------------------------------------------------------

def conv2d_nhwc(x: np.ndarray, w: np.ndarray, strides=(1, 1), dilations=(1, 1),
                pads=((0, 0), (0, 0)), out_hw=None) -> np.ndarray:
    """2-D convolution of an NHWC input with an HWIO filter, by im2col and one matrix product.

    A filter with fewer input channels than the input is a grouped convolution.
    """
    n, h, width, c = x.shape
    kh, kw, ci, co = w.shape
    if out_hw is None:
        out_hw = ((h + sum(pads[0]) - (kh - 1) * dilations[0] - 1) // strides[0] + 1,
                  (width + sum(pads[1]) - (kw - 1) * dilations[1] - 1) // strides[1] + 1)
    oh, ow = out_hw
    if ci == 0 or c % ci:
        raise ValueError(f"input depth {c} is not a multiple of the filter's input depth {ci}")
    groups = c // ci
    if co % groups:
        raise ValueError(f"output depth {co} is not a multiple of the group count {groups}")
    dtype = x.dtype
    work = _accumulation_dtype(dtype)
    x = x.astype(work, copy=False)
    w = w.astype(work, copy=False)
    if oh <= 0 or ow <= 0 or n == 0:
        return np.zeros((n, max(oh, 0), max(ow, 0), co), dtype)
    xp = _pad_spatial(x, pads)
    (sh, sw), (dh, dw) = strides, dilations
    if kh == kw == 1:
        cols = xp[:, : (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw, :]
    else:
        windows = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
        windows = windows[:, : (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw, :, ::dh, ::dw]
        # (n, oh, ow, c, kh, kw) -> (n, oh, ow, kh, kw, c): the copy then reads channels contiguously.
        cols = windows.transpose(0, 1, 2, 4, 5, 3)
    rows = n * oh * ow
    if groups == 1:
        out = chunked.matmul(_patches(cols, rows, kh * kw * c), w.reshape(kh * kw * ci, co))
    else:
        cols = cols.reshape(rows, kh * kw, groups, ci)
        per_group = co // groups
        out = np.empty((rows, co), work)
        for g in range(groups):
            patch = _patches(cols[:, :, g, :], rows, kh * kw * ci)
            filters = w[..., g * per_group:(g + 1) * per_group].reshape(kh * kw * ci, per_group)
            out[:, g * per_group:(g + 1) * per_group] = chunked.matmul(patch, filters)
    return out.reshape(n, oh, ow, co).astype(dtype, copy=False)


def _convolve(node, inputs, compute):
    """The layout and geometry around a convolution: NCHW in and out, strides, padding."""
    x, w = inputs
    x = _nhwc_in(node, x)
    if w.ndim != 4:
        raise ValueError(f"filter must be 4-D, got shape {list(w.shape)}")
    geometry = _ConvGeometry(node, x.shape, w.shape[0], w.shape[1])
    y = compute(x, w, geometry.strides, geometry.dilations, geometry.pads, geometry.out_hw)
    return _nhwc_out(node, y)


def _patches(cols: np.ndarray, rows: int, depth: int) -> np.ndarray:
    # Windows that overlap (a stride below the filter's width) reshape to a view whose rows
    # overlap in memory. BLAS cannot take that, so numpy would multiply it in its own loop: slower,
    # and summing each row in one chain, 4x farther from TensorFlow's result at 256 taps (Basic
    # Pitch's strided convolutions, whose error its Log amplifies). The im2col copy goes to BLAS.
    return np.ascontiguousarray(cols.reshape(rows, depth))


@kernel("Conv2D")
def conv2d(node, inputs):
    return _convolve(node, inputs, conv2d_nhwc)


def depthwise_conv2d_nhwc(x: np.ndarray, w: np.ndarray, strides=(1, 1), dilations=(1, 1),
                          pads=((0, 0), (0, 0)), out_hw=None) -> np.ndarray:
    """Depthwise 2-D convolution: NHWC input, filter [kh, kw, channels, multiplier]."""
    n, h, width, c = x.shape
    kh, kw, fc, m = w.shape
    if fc != c:
        raise ValueError(f"filter has {fc} input channels, input has {c}")
    if out_hw is None:
        out_hw = ((h + sum(pads[0]) - (kh - 1) * dilations[0] - 1) // strides[0] + 1,
                  (width + sum(pads[1]) - (kw - 1) * dilations[1] - 1) // strides[1] + 1)
    oh, ow = max(out_hw[0], 0), max(out_hw[1], 0)
    dtype = x.dtype
    work = _accumulation_dtype(dtype)
    xp = _pad_spatial(x.astype(work, copy=False), pads)
    if m > 1:
        # Output channel c*m + k reads input channel c: repeat the input, then it is m == 1.
        xp = np.repeat(xp, m, axis=3)
    w = w.astype(work, copy=False).reshape(kh, kw, c * m)
    out = np.zeros((n, oh, ow, c * m), work)
    if out.size:
        # Four-dimensional operands with channels innermost: numpy's loops run over whole rows.
        # Each tap's weights repeat along a row, so that they too are laid out like the row
        # (a broadcast over it would cut numpy's inner loop to the channels: 4x slower at 16).
        rows = np.ascontiguousarray(np.broadcast_to(w[:, :, None, :], (kh, kw, ow, c * m)))
        scratch = np.empty_like(out)
        for i, j, seen in _taps(xp, kh, kw, strides, dilations, (oh, ow)):
            np.multiply(seen, rows[i, j], out=scratch)
            out += scratch
    return out.astype(dtype, copy=False)


@kernel("DepthwiseConv2dNative")
def depthwise_conv2d(node, inputs):
    return _convolve(node, inputs, depthwise_conv2d_nhwc)


def _pool_window(node, inputs):
    x = _nhwc_in(node, inputs[0])
    nchw = _is_nchw(node)
    if node.op == "MaxPoolV2":
        ksize, strides = _ints(inputs[1]), _ints(inputs[2])
    else:
        ksize, strides = _ints(node.get_attr("ksize")), _ints(node.get_attr("strides"))
    batch_and_depth = (ksize[0], ksize[1]) if nchw else (ksize[0], ksize[3])
    if batch_and_depth != (1, 1):
        raise ValueError("pooling over the batch or depth dimension is not supported")
    kh, kw = _spatial(ksize, nchw)
    sh, sw = _spatial(strides, nchw)
    padding = node.get_attr("padding")
    oh, top, bottom = _window(x.shape[1], kh, sh, 1, padding, _explicit_pads(node, nchw)[0])
    ow, left, right = _window(x.shape[2], kw, sw, 1, padding, _explicit_pads(node, nchw)[1])
    return x, (kh, kw), (sh, sw), ((top, bottom), (left, right)), (oh, ow)


@kernel("MaxPool", "MaxPoolV2")
def max_pool(node, inputs):
    x, (kh, kw), strides, pads, out_hw = _pool_window(node, inputs)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _pad_spatial(x, pads, lowest)
    out = None
    if 0 in out_hw:     # the slices in _taps assume at least one output per dimension
        return _nhwc_out(node, np.zeros((x.shape[0], *out_hw, x.shape[3]), x.dtype))
    for _, _, seen in _taps(xp, kh, kw, strides, (1, 1), out_hw):
        out = seen.copy() if out is None else np.maximum(out, seen, out=out)
    return _nhwc_out(node, out)


@kernel("AvgPool")
def avg_pool(node, inputs):
    x, (kh, kw), strides, pads, out_hw = _pool_window(node, inputs)
    total = np.zeros((x.shape[0], *out_hw, x.shape[3]), x.dtype)
    if 0 in out_hw:     # the slices in _taps assume at least one output per dimension
        return _nhwc_out(node, total)
    xp = _pad_spatial(x, pads)
    for _, _, seen in _taps(xp, kh, kw, strides, (1, 1), out_hw):
        total += seen
    # TensorFlow averages over the window's elements inside the input, not over padding.
    inside = _pad_spatial(np.ones((1, x.shape[1], x.shape[2], 1), x.dtype), pads)
    count = np.zeros((1, *out_hw, 1), x.dtype)
    for _, _, seen in _taps(inside, kh, kw, strides, (1, 1), out_hw):
        count += seen
    return _nhwc_out(node, total / count)


# ---- reductions ----------------------------------------------------------------------------------

def _reduce(fn):
    def run(node, inputs):
        x, axes = inputs
        keep = node.get_attr("keep_dims", False)
        named = _ints(axes)
        axes = _axes(named, x.ndim) if x.ndim else ()
        if x.ndim and len(axes) != len(named):
            # Squeeze lets a dim be named twice; TensorFlow's reductions refuse it.
            raise ValueError(f"axes {named} name a dimension twice")
        return fn(x, axes, keep)
    return run


def _mean(x, axes, keep):
    if x.dtype.kind in "iub":
        count = math.prod(x.shape[a] for a in axes)
        # TensorFlow sums integers narrower than 64 bits in a 64-bit integer of the same
        # signedness (so int8 or int32 means do not wrap), then divides and narrows.
        wide = np.dtype(np.uint64 if x.dtype.kind == "u" else np.int64) if x.dtype.kind != "b" else x.dtype
        total = np.sum(x, axis=axes, keepdims=keep, dtype=wide)
        mean = _int_div(total, np.asarray(count, wide)) if count else total
        return mean.astype(x.dtype)
    return np.mean(x, axis=axes, keepdims=keep, dtype=_accumulation_dtype(x.dtype)).astype(x.dtype)


kernel("Mean")(_reduce(_mean))
kernel("Sum")(_reduce(lambda x, a, k: np.sum(x, axis=a, keepdims=k, dtype=x.dtype)))
kernel("Prod")(_reduce(lambda x, a, k: np.prod(x, axis=a, keepdims=k, dtype=x.dtype)))
kernel("Max")(_reduce(lambda x, a, k: np.max(x, axis=a, keepdims=k) if x.size else
                      np.full(_reduced_shape(x, a, k), _lowest(x.dtype), x.dtype)))
kernel("Min")(_reduce(lambda x, a, k: np.min(x, axis=a, keepdims=k) if x.size else
                      np.full(_reduced_shape(x, a, k), _highest(x.dtype), x.dtype)))
kernel("All")(_reduce(lambda x, a, k: np.all(x, axis=a, keepdims=k)))
kernel("Any")(_reduce(lambda x, a, k: np.any(x, axis=a, keepdims=k)))


@kernel("Cumsum")
def cumsum(node, inputs):
    x, axis = inputs
    axis = _axis(axis, x.ndim)
    reverse, exclusive = node.get_attr("reverse", False), node.get_attr("exclusive", False)
    if reverse:
        x = np.flip(x, axis)
    # TensorFlow adds one element after another in the input's type, as np.cumsum does.
    total = np.cumsum(x, axis=axis, dtype=x.dtype)
    if exclusive:
        before = (slice(None),) * axis
        shifted = np.zeros_like(total)
        shifted[before + (slice(1, None),)] = total[before + (slice(None, -1),)]
        total = shifted
    return np.flip(total, axis) if reverse else total


def _reduced_shape(x, axes, keep):
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _highest(dtype):
    return np.inf if dtype.kind == "f" else np.iinfo(dtype).max


@kernel("ArgMax", "ArgMin")
def arg_max(node, inputs):
    x, axis = inputs
    fn = np.argmax if node.op == "ArgMax" else np.argmin
    return fn(x, axis=_axis(axis, x.ndim)).astype(_dtype_attr(node, "output_type"))


# ---- shapes and layout ---------------------------------------------------------------------------

@kernel("Reshape")
def reshape(node, inputs):
    x, shape = inputs
    sizes = _ints(shape)
    if -1 in sizes and 0 in sizes and x.size == 0:
        # TensorFlow leaves zero-sized dims out of both products when inferring -1, so that
        # e.g. [0, -1] of a (0, 3) input is (0, 3) rather than ambiguous.
        known = math.prod(d for d in sizes if d > 0)
        missing = math.prod(d for d in x.shape if d > 0) // known
        sizes[sizes.index(-1)] = missing
    return x.reshape(sizes)


@kernel("Squeeze")
def squeeze(node, inputs):
    x = inputs[0]
    dims = node.get_attr("squeeze_dims", []) or []
    if not dims:
        return x.reshape([d for d in x.shape if d != 1])
    axes = _axes(dims, x.ndim)
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"cannot squeeze dimension {a} of size {x.shape[a]}")
    return np.squeeze(x, axis=axes)


@kernel("ExpandDims")
def expand_dims(node, inputs):
    x, dim = inputs
    axis = int(np.asarray(dim).reshape(-1)[0])
    if not -x.ndim - 1 <= axis <= x.ndim:
        raise ValueError(f"dim {axis} is out of range for rank {x.ndim}")
    return np.expand_dims(x, axis % (x.ndim + 1))


@kernel("Transpose")
def transpose(node, inputs):
    x, perm = inputs
    return np.transpose(x, _ints(perm)) if x.ndim else x


@kernel("ConcatV2")
def concat_v2(node, inputs):
    *values, axis = inputs
    return np.concatenate(values, axis=_axis(axis, values[0].ndim))


@kernel("Concat")
def concat(node, inputs):
    axis, *values = inputs
    return np.concatenate(values, axis=_axis(axis, values[0].ndim))


@kernel("Pack")
def pack(node, inputs):
    axis = int(node.get_attr("axis", 0))
    rank = inputs[0].ndim + 1
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return np.stack(inputs, axis=axis % rank)


@kernel("Unpack")
def unpack(node, inputs):
    x = inputs[0]
    axis = _axis(node.get_attr("axis", 0), x.ndim)
    return tuple(np.moveaxis(x, axis, 0))


@kernel("Split")
def split(node, inputs):
    axis, x = inputs
    axis = _axis(axis, x.ndim)
    parts = int(node.get_attr("num_split"))
    if x.shape[axis] % parts:
        raise ValueError(f"dimension {axis} of size {x.shape[axis]} does not split into {parts}")
    return tuple(np.split(x, parts, axis=axis))


@kernel("SplitV")
def split_v(node, inputs):
    x, sizes, axis = inputs
    axis = _axis(axis, x.ndim)
    sizes = _ints(sizes)
    if sizes.count(-1) == 1:
        sizes[sizes.index(-1)] = x.shape[axis] - (sum(sizes) + 1)
    if sum(sizes) != x.shape[axis] or min(sizes, default=0) < 0:
        raise ValueError(f"sizes {sizes} do not split dimension {axis} of size {x.shape[axis]}")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _paddings(paddings, x) -> list[tuple[int, int]]:
    pairs = np.asarray(paddings).reshape(-1, 2).tolist()
    if len(pairs) != x.ndim:
        raise ValueError(f"paddings has {len(pairs)} rows for a rank-{x.ndim} input")
    return [(int(a), int(b)) for a, b in pairs]


@kernel("Pad", "PadV2")
def pad(node, inputs):
    x, paddings = inputs[:2]
    value = inputs[2] if node.op == "PadV2" else 0
    return np.pad(x, _paddings(paddings, x), constant_values=np.asarray(value, x.dtype))


class _AttrView:
    """A node as a kernel sees it, with some attrs given here: lets the fused ops below run the
    kernels of the ops they fuse."""

    def __init__(self, node, **attrs):
        self.node, self.attrs = node, attrs
        self.name, self.op = node.name, node.op

    def get_attr(self, name, *default):
        return self.attrs[name] if name in self.attrs else self.node.get_attr(name, *default)


@kernel("FusedResizeAndPadConv2D", "FusedPadConv2D")
def fused_resize_pad_conv2d(node, inputs):
    """What fuse_resize_pad_and_conv and fuse_pad_and_conv make: an optional bilinear resize
    (legacy sampling, no half-pixel centers), a mirror pad, then an NHWC convolution."""
    x, *middle, w = inputs
    if node.op == "FusedResizeAndPadConv2D":
        size, paddings = middle
        x = resize_bilinear(_AttrView(node, align_corners=bool(node.get_attr("resize_align_corners", False)),
                                      half_pixel_centers=False), [x, size]).astype(x.dtype, copy=False)
    else:
        (paddings,) = middle
    x = mirror_pad(node, [x, paddings])
    return conv2d(_AttrView(node, data_format="NHWC", dilations=[1, 1, 1, 1], explicit_paddings=[]), [x, w])


@kernel("MirrorPad")
def mirror_pad(node, inputs):
    x, paddings = inputs
    mode = {"REFLECT": "reflect", "SYMMETRIC": "symmetric"}[node.get_attr("mode")]
    pairs = _paddings(paddings, x)
    # numpy reflects again past the edge; TensorFlow refuses paddings beyond one reflection.
    limit_offset = 1 if mode == "reflect" else 0
    for dim, (size, (before, after)) in enumerate(zip(x.shape, pairs)):
        if min(before, after) < 0 or max(before, after) > size - limit_offset:
            raise ValueError(f"paddings {before}, {after} of dimension {dim} are out of range for "
                             f"size {size} in {node.get_attr('mode')} mode")
    return np.pad(x, pairs, mode=mode)


@kernel("Shape")
def shape(node, inputs):
    return np.asarray(inputs[0].shape, dtype=_dtype_attr(node, "out_type"))


@kernel("ShapeN")
def shape_n(node, inputs):
    dtype = _dtype_attr(node, "out_type")
    return tuple(np.asarray(x.shape, dtype=dtype) for x in inputs)


@kernel("Size")
def size(node, inputs):
    return np.asarray(inputs[0].size, dtype=_dtype_attr(node, "out_type"))


@kernel("Rank")
def rank(node, inputs):
    return np.asarray(inputs[0].ndim, dtype=np.int32)


@kernel("Fill")
def fill(node, inputs):
    dims, value = inputs
    return np.full(_ints(dims), value, dtype=value.dtype)


@kernel("ZerosLike", "OnesLike")
def zeros_like(node, inputs):
    return (np.zeros_like if node.op == "ZerosLike" else np.ones_like)(inputs[0])


@kernel("Range")
def range_(node, inputs):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs)
    dtype = _dtype_attr(node, "Tidx")
    if delta == 0:
        raise ValueError("Range needs a non-zero delta")
    if (delta > 0 and start > limit) or (delta < 0 and start < limit):
        raise ValueError(f"Range: start {start} and limit {limit} disagree with delta {delta}")
    if dtype.kind in "iu":
        count = (abs(int(limit) - int(start)) + abs(int(delta)) - 1) // abs(int(delta))
    else:
        count = math.ceil(abs((float(limit) - float(start)) / float(delta)))
    return (start.astype(dtype) + np.arange(count, dtype=dtype) * delta.astype(dtype)).astype(dtype)


@kernel("Tile")
def tile(node, inputs):
    x, multiples = inputs
    return np.tile(x, _ints(multiples))


@kernel("BroadcastTo")
def broadcast_to(node, inputs):
    x, shape = inputs
    return np.broadcast_to(x, _ints(shape))


# ---- slicing and gathering -----------------------------------------------------------------------

@kernel("Slice")
def slice_(node, inputs):
    x, begin, sizes = inputs
    begin, sizes = _ints(begin), _ints(sizes)
    index = []
    for dim, b, s in zip(x.shape, begin, sizes):
        end = dim if s == -1 else b + s
        if not (0 <= b <= dim and b <= end <= dim):
            raise ValueError(f"slice begin {begin} size {sizes} is out of bounds for shape {list(x.shape)}")
        index.append(slice(b, end))
    return x[tuple(index)]


@kernel("StridedSlice")
def strided_slice(node, inputs):
    x, begin, end, strides = inputs
    return x[strided_slice_index(node, x.shape, _ints(begin), _ints(end), _ints(strides))]


def strided_slice_index(node, shape, begin, end, strides) -> tuple:
    """The numpy index tuple that a StridedSlice's masks and begin/end/strides spell."""
    masks = {name: int(node.get_attr(name, 0)) for name in
             ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
    if bin(masks["ellipsis_mask"]).count("1") > 1:
        raise ValueError("at most one ellipsis is allowed")
    index: list = []
    for i in range(len(begin)):
        bit = 1 << i
        if masks["ellipsis_mask"] & bit:
            index.append(Ellipsis)
        elif masks["new_axis_mask"] & bit:
            index.append(np.newaxis)
        elif masks["shrink_axis_mask"] & bit:
            if strides[i] <= 0:
                raise ValueError("only stride 1 allowed on non-range indexing")
            index.append(("shrink", begin[i]))
        else:
            if strides[i] == 0:
                raise ValueError("strides must be non-zero")
            index.append(slice(None if masks["begin_mask"] & bit else begin[i],
                               None if masks["end_mask"] & bit else end[i], strides[i]))
    # Resolve shrink indices against the input dimension they address.
    consumed = sum(1 for item in index if item is not np.newaxis and item is not Ellipsis)
    if consumed > len(shape):
        raise ValueError(f"index has {consumed} dimensions, input has rank {len(shape)}")
    resolved = []
    dim = 0
    for item in index:
        if item is Ellipsis:
            dim += len(shape) - consumed
            resolved.append(item)
        elif item is np.newaxis:
            resolved.append(item)
        else:
            if isinstance(item, tuple):
                size, position = shape[dim], item[1]
                if not -size <= position < size:
                    raise ValueError(f"slice index {position} of dimension {dim} out of bounds")
                item = position % size
            resolved.append(item)
            dim += 1
    return tuple(resolved)


@kernel("GatherV2", "Gather")
def gather(node, inputs):
    if node.op == "Gather":
        (params, indices), axis, batch_dims = inputs, 0, 0
    else:
        params, indices, axis = inputs
        axis = _axis(axis, params.ndim)
        batch_dims = int(node.get_attr("batch_dims", 0))
        if batch_dims < 0:
            batch_dims += indices.ndim
        # Without these checks the batched gather below broadcasts or misreads the axes.
        if not 0 <= batch_dims <= min(axis, indices.ndim):
            raise ValueError(f"batch_dims {batch_dims} must be in [0, min(axis {axis}, rank of "
                             f"indices {indices.ndim})]")
        if params.shape[:batch_dims] != indices.shape[:batch_dims]:
            raise ValueError(f"the first {batch_dims} dims of params {list(params.shape)} and "
                             f"indices {list(indices.shape)} must match")
    if indices.size and (indices.min() < 0 or indices.max() >= params.shape[axis]):
        bad = indices.min() if indices.min() < 0 else indices.max()
        raise ValueError(f"index {bad} is not in [0, {params.shape[axis]})")
    if batch_dims == 0:
        return np.take(params, indices, axis=axis)
    # Batched: each batch row of params is gathered with its own row of indices.
    batch = params.shape[:batch_dims]
    grid = np.indices(batch, sparse=True)
    expand = (Ellipsis,) + (None,) * (indices.ndim - batch_dims)
    index = tuple(g[expand] for g in grid)
    moved = np.moveaxis(params, axis, batch_dims)
    out = moved[index + (indices,)]
    # out: batch + indices' own dims + params dims after the batch (without axis), in moved order.
    middle = axis - batch_dims
    own = indices.ndim - batch_dims
    if middle:
        order = list(range(batch_dims))
        rest = list(range(batch_dims + own, out.ndim))
        order += rest[:middle] + list(range(batch_dims, batch_dims + own)) + rest[middle:]
        out = out.transpose(order)
    return out


# ---- normalization -------------------------------------------------------------------------------

@kernel("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
def fused_batch_norm(node, inputs):
    x, scale, offset, mean, variance = inputs
    epsilon = float(node.get_attr("epsilon", 1e-4))
    nchw = node.get_attr("data_format", "NHWC") == "NCHW"
    work = np.float32 if x.dtype == np.float16 else x.dtype
    xw = x.astype(work, copy=False)
    axes = (0, 2, 3) if nchw else (0, 1, 2)
    if node.get_attr("is_training", True):
        mean = np.mean(xw, axis=axes, dtype=work)
        n = x.size // max(x.shape[1 if nchw else 3], 1)
        variance = np.var(xw, axis=axes, dtype=work)
        factor = float(node.get_attr("exponential_avg_factor", 1.0))
        batch_variance = variance * (n / max(n - 1, 1))
        if factor != 1.0:
            old_mean, old_var = (np.asarray(v, work) for v in inputs[3:5])
            out_mean = (1 - factor) * old_mean + factor * mean
            out_var = (1 - factor) * old_var + factor * batch_variance
        else:
            out_mean, out_var = mean, batch_variance
    else:
        out_mean, out_var = mean, variance
    shape = (1, -1, 1, 1) if nchw else (-1,)
    multiplier = (scale * np.reciprocal(np.sqrt(variance + np.asarray(epsilon, variance.dtype))))
    y = (xw - mean.reshape(shape)) * multiplier.reshape(shape) + offset.reshape(shape)
    outputs = (y.astype(x.dtype, copy=False), out_mean, out_var, mean, variance)
    if node.op == "FusedBatchNormV3":
        outputs += (np.zeros((0,), np.float32),)
    return outputs


@kernel("BatchNormWithGlobalNormalization")
def batch_norm_global(node, inputs):
    t, mean, variance, beta, gamma = inputs
    epsilon = np.asarray(node.get_attr("variance_epsilon"), t.dtype)
    multiplier = np.reciprocal(np.sqrt(variance + epsilon))
    if node.get_attr("scale_after_normalization"):
        multiplier = multiplier * gamma
    return (t - mean) * multiplier + beta


# ---- images and space/batch ----------------------------------------------------------------------

def _resize_axis(in_size: int, out_size: int, align_corners: bool, half_pixel: bool):
    """Lower and upper source indices and the interpolation weight for each output position."""
    if align_corners and out_size > 1:
        scale = (in_size - 1) / (out_size - 1)
    else:
        scale = in_size / out_size
    positions = np.arange(out_size, dtype=np.float32)
    scale = np.float32(scale)
    if half_pixel:
        source = (positions + np.float32(0.5)) * scale - np.float32(0.5)
        lower = np.floor(source)
        weight = source - lower
        upper = np.minimum(np.ceil(source), in_size - 1)
        lower = np.maximum(lower, 0)
    else:
        source = positions * scale
        lower = np.floor(source)
        weight = source - lower
        upper = np.minimum(lower + 1, in_size - 1)
    lower = np.minimum(lower, in_size - 1)
    return lower.astype(np.intp), upper.astype(np.intp), weight.astype(np.float32)


@kernel("ResizeBilinear")
def resize_bilinear(node, inputs):
    images, size = inputs
    out_h, out_w = _ints(size)
    align = bool(node.get_attr("align_corners", False))
    half = bool(node.get_attr("half_pixel_centers", False))
    if align and half:
        raise ValueError("align_corners and half_pixel_centers cannot both be true")
    x = images.astype(np.float32, copy=False)
    top, bottom, y_weight = _resize_axis(x.shape[1], out_h, align, half)
    left, right, x_weight = _resize_axis(x.shape[2], out_w, align, half)
    x_weight = x_weight[None, None, :, None]
    rows_top, rows_bottom = x[:, top], x[:, bottom]
    top_values = rows_top[:, :, left] + (rows_top[:, :, right] - rows_top[:, :, left]) * x_weight
    bottom_values = rows_bottom[:, :, left] + (rows_bottom[:, :, right] - rows_bottom[:, :, left]) * x_weight
    return top_values + (bottom_values - top_values) * y_weight[None, :, None, None]


@kernel("ResizeNearestNeighbor")
def resize_nearest_neighbor(node, inputs):
    images, size = inputs
    out_h, out_w = _ints(size)
    align = bool(node.get_attr("align_corners", False))
    half = bool(node.get_attr("half_pixel_centers", False))
    if align and half:
        raise ValueError("align_corners and half_pixel_centers cannot both be true")
    rows = _nearest_indices(images.shape[1], out_h, align, half)
    columns = _nearest_indices(images.shape[2], out_w, align, half)
    return images[:, rows][:, :, columns]


def _nearest_indices(in_size: int, out_size: int, align_corners: bool, half_pixel: bool):
    scale = np.float32((in_size - 1) / (out_size - 1) if align_corners and out_size > 1
                       else in_size / out_size)
    positions = np.arange(out_size, dtype=np.float32)
    if half_pixel:
        source = np.floor((positions + np.float32(0.5)) * scale)
    elif align_corners:
        source = np.floor(positions * scale + np.float32(0.5))     # C's roundf: half away from 0
    else:
        source = np.floor(positions * scale)
    return np.clip(source, 0, in_size - 1).astype(np.intp)


@kernel("DepthToSpace", "SpaceToDepth")
def depth_space(node, inputs):
    x = _nhwc_in(node, inputs[0])
    b = int(node.get_attr("block_size"))
    n, h, w, c = x.shape
    if node.op == "DepthToSpace":
        if c % (b * b):
            raise ValueError(f"depth {c} is not a multiple of block_size squared {b * b}")
        y = x.reshape(n, h, w, b, b, c // (b * b)).transpose(0, 1, 3, 2, 4, 5)
        y = y.reshape(n, h * b, w * b, c // (b * b))
    else:
        if h % b or w % b:
            raise ValueError(f"height {h} and width {w} must be multiples of block_size {b}")
        y = x.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5)
        y = y.reshape(n, h // b, w // b, b * b * c)
    return _nhwc_out(node, y)


@kernel("SpaceToBatchND")
def space_to_batch_nd(node, inputs):
    x, block, paddings = inputs
    block = _ints(block)
    m = len(block)
    pads = np.asarray(paddings).reshape(m, 2).tolist()
    x = np.pad(x, [(0, 0)] + [(int(a), int(b)) for a, b in pads] + [(0, 0)] * (x.ndim - 1 - m))
    n, spatial, rest = x.shape[0], x.shape[1:1 + m], x.shape[1 + m:]
    for dim, b in zip(spatial, block):
        if dim % b:
            raise ValueError(f"padded spatial size {dim} is not a multiple of block size {b}")
    split = [n]
    for dim, b in zip(spatial, block):
        split += [dim // b, b]
    x = x.reshape(split + list(rest))
    # (n, s1/b1, b1, s2/b2, b2, ..., rest) -> (b1, b2, ..., n, s1/b1, s2/b2, ..., rest)
    order = [2 + 2 * i for i in range(m)] + [0] + [1 + 2 * i for i in range(m)] + \
        list(range(1 + 2 * m, x.ndim))
    x = x.transpose(order)
    return x.reshape([n * math.prod(block)] + [d // b for d, b in zip(spatial, block)] + list(rest))


@kernel("BatchToSpaceND")
def batch_to_space_nd(node, inputs):
    x, block, crops = inputs
    block = _ints(block)
    m = len(block)
    crops = np.asarray(crops).reshape(m, 2).tolist()
    total = math.prod(block)
    for i, (a, b) in enumerate(crops):
        if min(a, b) < 0 or a + b > x.shape[1 + i] * block[i]:
            raise ValueError(f"crops {a}, {b} of spatial dimension {i} are negative or larger "
                             f"than its size {x.shape[1 + i] * block[i]}")
    if x.shape[0] % total:
        raise ValueError(f"batch {x.shape[0]} is not a multiple of the block size product {total}")
    n = x.shape[0] // total
    spatial, rest = x.shape[1:1 + m], x.shape[1 + m:]
    x = x.reshape(block + [n] + list(spatial) + list(rest))
    # (b1, ..., bm, n, s1, ..., sm, rest) -> (n, s1, b1, s2, b2, ..., rest)
    order = [m]
    for i in range(m):
        order += [m + 1 + i, i]
    order += list(range(2 * m + 1, x.ndim))
    x = x.transpose(order).reshape([n] + [s * b for s, b in zip(spatial, block)] + list(rest))
    index = [slice(None)] + [slice(int(a), x.shape[1 + i] - int(b)) for i, (a, b) in enumerate(crops)]
    return x[tuple(index)]
