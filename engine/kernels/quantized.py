"""Kernels for TensorFlow's eight-bit ops, bit-exact with TensorFlow 2.21's CPU kernels.

The arithmetic lives in `quantization.py`; these kernels read attrs and inputs, check what
TensorFlow checks, and shape the outputs. Codes are held as plain integers (quint8 -> uint8, qint32
-> int32, ...); ranges are float32 scalars. Where TensorFlow's behaviour is surprising (a padding
offset rounded toward zero, dilations ignored, broadcasting by modulo), the kernel reproduces it and
says so.
"""
from __future__ import annotations

import weakref

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..dtypes import DT_BFLOAT16, DT_FLOAT
from . import chunked, kernel
from . import quantization as Q
from .chunked import for_chunks

F32 = np.float32


# ---- helpers -------------------------------------------------------------------------------------

def _first(value) -> np.float32:
    """flat<float>()(0): TensorFlow reads the first element of a range input."""
    flat = np.asarray(value, dtype=F32).reshape(-1)
    if flat.size == 0:
        raise ValueError("a range input is empty")
    return F32(flat[0])


def _scalar_out(value) -> np.ndarray:
    return np.asarray(value, dtype=F32).reshape(())


def _codes(value, dtype) -> np.ndarray:
    """The codes as an array of the type's holder: `value` itself when it is one already. (A tensor
    decoded with an explicit byte order has an equal dtype that is another object, and for that
    np.asarray makes a new view each time: the caches keyed by a weights array would never hit.)"""
    holder = Q.qtype(dtype).holder
    if isinstance(value, np.ndarray) and value.dtype == holder:
        return value
    return np.asarray(value, dtype=holder)


def _check_range(lo, hi, a: str, b: str) -> None:
    if not hi > lo:
        raise ValueError(f"{b} must be larger than {a}.")


def _window_output_size(size: int, window: int, stride: int, padding: str) -> int:
    """GetWindowedOutputSize for VALID and SAME."""
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if padding == "VALID":
        span = size - window + stride
    elif padding == "SAME":
        span = size + stride - 1
    else:
        raise ValueError(f"padding must be SAME or VALID, got {padding!r}")
    # C++ division truncates toward zero: an overshoot of less than a stride gives 0 outputs.
    if span <= -stride:
        raise ValueError(f"computed output size would be negative: {int(span / stride)}")
    return max(span, 0) // stride


def _sliding_windows(padded: np.ndarray, out_h: int, out_w: int, window_h: int, window_w: int,
                     stride_h: int, stride_w: int, top: int, left: int) -> np.ndarray:
    """A view (N, out_h, out_w, window_h, window_w, C) of windows starting at (top, left)."""
    sn, sh, sw, sc = padded.strides
    base = padded[:, top:, left:, :]
    return as_strided(base, shape=(padded.shape[0], out_h, out_w, window_h, window_w, padded.shape[3]),
                      strides=(sn, sh * stride_h, sw * stride_w, sh, sw, sc), writeable=False)


# ---- QuantizeV2 and Dequantize -------------------------------------------------------------------

@kernel("QuantizeV2")
def quantize_v2(node, inputs):
    """QuantizeV2: float32 -> codes and the range actually used."""
    values, min_range, max_range = inputs
    values = np.asarray(values, dtype=F32)
    dtype = node.get_attr("T")
    mode = node.get_attr("mode", "MIN_COMBINED")
    round_mode = node.get_attr("round_mode", "HALF_AWAY_FROM_ZERO")
    narrow_range = bool(node.get_attr("narrow_range", False))
    axis = int(node.get_attr("axis", -1))
    ensure_minimum_range = float(node.get_attr("ensure_minimum_range", 0.01))
    if axis >= values.ndim:
        raise ValueError(f"Axis must be less than input dimension({values.ndim}), got {axis}")
    # Only axis > -1 selects per-slice ranges; other negative values mean one range.
    slices = values.shape[axis] if axis > -1 else 1
    if axis <= -1:
        for name, bound in (("min_range", min_range), ("max_range", max_range)):
            if np.size(bound) != 1:
                raise ValueError(f"If axis is not specified, {name} must contain a single float "
                                 f"element, but it contains {np.size(bound)} elements")
    if slices == 1:
        codes, lo, hi = Q.quantize(values, _first(min_range), _first(max_range), dtype, mode,
                                   round_mode, narrow_range, ensure_minimum_range)
        return codes, _scalar_out(lo), _scalar_out(hi)
    codes, lo, hi = Q.quantize_per_axis(values, min_range, max_range, dtype, axis, mode, round_mode,
                                        narrow_range, ensure_minimum_range)
    return codes, lo.reshape(np.shape(min_range)), hi.reshape(np.shape(max_range))


@kernel("Dequantize")
def dequantize(node, inputs):
    """Dequantize: codes -> float32 (or bfloat16, held as float32)."""
    codes, min_range, max_range = inputs
    dtype = node.get_attr("T")
    codes = _codes(codes, dtype)
    mode = node.get_attr("mode", "MIN_COMBINED")
    narrow_range = bool(node.get_attr("narrow_range", False))
    axis = int(node.get_attr("axis", -1))
    out_dtype = int(node.get_attr("dtype", DT_FLOAT))
    if out_dtype not in (DT_FLOAT, DT_BFLOAT16):
        raise ValueError("Output type must be bfloat16 or float")
    if out_dtype == DT_BFLOAT16 and mode != "MIN_COMBINED":
        raise ValueError(f"When output type is bfloat16, Mode string must be 'MIN_COMBINED', "
                         f"is '{mode}'")
    if axis >= codes.ndim:
        raise ValueError(f"Axis must be less than input dimension({codes.ndim}), got {axis}")
    slices = codes.shape[axis] if axis > -1 else 1
    if np.size(min_range) != slices or np.size(max_range) != slices:
        raise ValueError(f"input_min_tensor and input_max_tensor must have {slices} elements")
    if slices == 1:
        out = Q.dequantize(codes, _first(min_range), _first(max_range), dtype, mode, narrow_range)
    else:
        out = Q.dequantize_per_axis(codes, min_range, max_range, dtype, axis, mode, narrow_range)
    return Q.round_to_bfloat16(out) if out_dtype == DT_BFLOAT16 else out


# ---- matrix products -----------------------------------------------------------------------------

def _offset(range_min, range_max, dtype) -> int:
    """The code of real zero, FloatToQuantizedUnclamped<T>(0), narrowed to int32 as TF does."""
    value = int(Q.float_to_quantized_unclamped(F32(0.0), range_min, range_max, dtype))
    return int(np.int64(value).astype(np.int32))


def _wrap32(values: np.ndarray) -> np.ndarray:
    """int64 -> int32 modulo 2^32: the accumulators wrap as TensorFlow's int32 arithmetic does."""
    return values.astype(np.int32)


# Offsets up to this size keep codes minus offset exact in float32 with room to spare.
_SMALL_OFFSET = 1 << 15


def _shifted(codes: np.ndarray, centre: int, out: np.ndarray | None = None) -> np.ndarray:
    """quint8 codes minus `centre` as float32 (exact)."""
    if out is None:
        out = np.empty(codes.shape, F32)
    if centre == 128:
        out[...] = np.bitwise_xor(codes, np.uint8(0x80)).view(np.int8)   # one cast, no subtract
    else:
        out[...] = codes
        if centre:
            np.subtract(out, F32(centre), out=out)
    return out


def _gemm_centre(a_offset: int, b_offset: int) -> int:
    """What to subtract from the left codes: their offset, unless an offset is too large."""
    small = abs(a_offset) <= _SMALL_OFFSET and abs(b_offset) <= _SMALL_OFFSET
    return a_offset if small else 128


def _offset_gemm(bound_a: int, a_centre: int, a_offset: int, b_codes: np.ndarray, b_offset: int,
                 key: np.ndarray | None = None):
    """A function (a - a_centre as float32, out) -> sum_k (a - a_offset)(b - b_offset) into the
    int32 array out, exact, modulo 2^32 (TensorFlow's int32 accumulators wrap).

    |a - a_centre| <= bound_a. With a_centre = a_offset (see _gemm_centre) this is one float32
    sgemm of exactly shifted codes, with K split only where partial sums could pass 2^24 (see
    Q.exact_matmul_int32): no widening, and the product is cast straight into out. `key` is
    the array b_codes was reshaped from, for the cache of prepared weights.
    """
    if a_centre != a_offset or abs(b_offset) > _SMALL_OFFSET:
        def wide(a_centred: np.ndarray, out: np.ndarray) -> None:
            out[...] = _offset_gemm_wide(a_centred, bound_a, a_offset, b_codes, b_offset)
        return wide
    b, chunks = _prepared_weights(b_codes if key is None else key, b_codes, b_offset, bound_a)

    def multiply(a_shifted: np.ndarray, out: np.ndarray) -> None:
        Q.exact_matmul_int32(a_shifted, bound_a, b, chunks, out=out)

    return multiply


# Constant right-hand codes (a model's filters) as the GEMM takes them, by the codes array: as
# float32 minus their offset, and their K splits for each bound of the left codes seen (the bound
# follows the input's range, which calibration measures anew for every sample). Finding the splits
# reads all of |b| a few times, which for a late ResNet layer (3x3x512x512 filter, 7x7 input) costs
# a third of the product itself; the float copy is fresh memory otherwise, a page fault per 4 KB on
# every call (MTCNN's ONet: its 1152x256 dense layer 1.1 ms a call, 0.2 ms prepared). Entries
# check the codes against a copy before use, and live as long as the codes array, up to
# PREPARED_MAX_BYTES of floats in all.
_PREPARED: dict[int, tuple] = {}
PREPARED_MAX_BYTES = 256 << 20


def _prepared_weights(codes: np.ndarray, view: np.ndarray, b_offset: int, bound_a: int):
    """(b, Q.k_chunks(b, bound_a)) for b = view - b_offset as read-only float32, where view is a
    view of the array `codes` (a reshape or transpose), remembered for the same codes array and
    view."""
    layout = (view.shape, view.strides, b_offset)
    entry = _PREPARED.get(id(codes))
    if not (entry is not None and entry[0]() is codes and entry[2] == layout
            and entry[1].shape == codes.shape and np.array_equal(entry[1], codes)):
        b = view.astype(F32)
        b -= F32(b_offset)
        b.flags.writeable = False
        entry = None, None, layout, b, {}
        try:
            entry = (weakref.ref(codes, lambda _, key=id(codes): _PREPARED.pop(key, None)),
                     codes.copy(), layout, b, {})
        except TypeError:
            pass
        else:
            if len(_PREPARED) >= 512 or \
                    sum(e[3].nbytes for e in _PREPARED.values()) + b.nbytes > PREPARED_MAX_BYTES:
                _PREPARED.clear()
            _PREPARED[id(codes)] = entry
    b, chunks = entry[3], entry[4]
    if bound_a not in chunks:
        chunks[bound_a] = Q.k_chunks(b, bound_a)
    return b, chunks[bound_a]


def _offset_gemm_wide(a_centred: np.ndarray, bound_a: int, a_offset: int, b_codes: np.ndarray,
                      b_offset: int) -> np.ndarray:
    """_offset_gemm for offsets far outside the codes (ranges far from zero): a_centred holds
    a - 128, and the offsets come back through row and column sums in int64."""
    b = _shifted(b_codes, 128)
    k = a_centred.shape[1]
    # One extra column of ones makes the same product return the row sums of a.
    b_ext = np.empty((k, b.shape[1] + 1), dtype=F32)
    b_ext[:, :-1] = b
    b_ext[:, -1] = 1
    product = Q.exact_int_matmul(a_centred, b_ext, bound_a, 128)
    row_sums = product[:, -1]
    col_sums = b.sum(axis=0, dtype=np.float64).astype(np.int64)
    da, db = 128 - a_offset, 128 - b_offset
    total = product[:, :-1]
    total += row_sums[:, None] * db
    total += col_sums[None, :] * da
    total += np.int64(Q.wrap_int64(k * da * db))
    return _wrap32(total)


@kernel("QuantizedMatMul")
def quantized_mat_mul(node, inputs):
    """QuantizedMatMul: quint8 x quint8 -> qint32, as gemmlowp computes it (offsets, int32 wrap)."""
    a, b, min_a, max_a, min_b, max_b = inputs
    t1, t2 = node.get_attr("T1"), node.get_attr("T2")
    tout = node.get_attr("Toutput", Q.DT_QINT32)
    if (t1, t2, tout) != (Q.DT_QUINT8, Q.DT_QUINT8, Q.DT_QINT32):
        raise ValueError("QuantizedMatMul is only implemented for quint8 x quint8 -> qint32")
    if np.ndim(min_a) != 0:
        raise ValueError(f"min_a must be a scalar, but got shape {np.shape(min_a)}")
    for name, value in (("max_a", max_a), ("min_b", min_b), ("max_b", max_b)):
        if np.size(value) != 1:
            raise ValueError(f"{name} must be a scalar, but got shape {np.shape(value)}")
    min_a, max_a, min_b, max_b = map(_first, (min_a, max_a, min_b, max_b))
    _check_range(min_a, max_a, "min_a", "max_a")
    _check_range(min_b, max_b, "min_b", "max_b")
    a, b = _codes(a, t1), _codes(b, t2)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError("In[0] and In[1] must be matrices")
    weights = b
    if node.get_attr("transpose_a", False):
        a = a.T
    if node.get_attr("transpose_b", False):
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"Matrix size-incompatible: In[0]: {a.shape}, In[1]: {b.shape}")
    a_offset, b_offset = _offset(min_a, max_a, t1), _offset(min_b, max_b, t2)
    centre = _gemm_centre(a_offset, b_offset)
    bound = max(abs(centre), abs(255 - centre))
    out = np.empty((a.shape[0], b.shape[1]), np.int32)
    _offset_gemm(bound, centre, a_offset, b, b_offset, key=weights)(_shifted(a, centre), out)
    lo, hi = Q.quantization_range_for_multiplication(min_a, max_a, min_b, max_b, t1, t2, tout)
    return out, _scalar_out(lo), _scalar_out(hi)


# Patches per GEMM call in the conv: keeps the im2col buffer near 16 MB, as TensorFlow's does.
_IM2COL_FLOATS = 4 * 1024 * 1024


@kernel("QuantizedConv2D")
def quantized_conv2d(node, inputs):
    """QuantizedConv2D: NHWC quint8 input and HWIO quint8 filter -> qint32.

    TensorFlow's kernel differs from Conv2D in ways that are reproduced here:
    - the window origin is ((out - 1) * stride + filter - in) / 2 rounded toward zero (with 1 added
      before halving for VALID), also for VALID padding, so a large stride that does not divide
      evenly shifts VALID windows right/down;
    - dilations other than 1 are refused;
    - padding holds the input's zero code; when zero is not representable (offset < 0) padding
      adds nothing, and when the offset is above 255 the padding holds the offset's low byte.
    """
    values, filters, min_input, max_input, min_filter, max_filter = inputs
    tin, tfilter = node.get_attr("Tinput"), node.get_attr("Tfilter")
    tout = node.get_attr("out_type", Q.DT_QINT32)
    if (tin, tfilter, tout) != (Q.DT_QUINT8, Q.DT_QUINT8, Q.DT_QINT32):
        raise ValueError("QuantizedConv2D is only implemented for quint8 x quint8 -> qint32")
    strides = [int(s) for s in node.get_attr("strides")]
    if len(strides) != 4:
        raise ValueError("Sliding window strides field must specify 4 dimensions")
    if strides[1] != strides[2]:
        raise ValueError("Current implementation only supports equal length strides in the row "
                         "and column dimensions.")
    if strides[0] != 1 or strides[3] != 1:
        raise ValueError("Current implementation does not yet support strides in the batch and "
                         "depth dimensions.")
    padding = node.get_attr("padding")
    dilations = [int(d) for d in node.get_attr("dilations", [1, 1, 1, 1])]
    if len(dilations) != 4 or dilations[1] != 1 or dilations[2] != 1:
        raise ValueError("Current implementation only supports dilated rate as 1 in the row and "
                         "column dimensions.")
    values, filters = _codes(values, tin), _codes(filters, tfilter)
    if values.ndim != 4 or filters.ndim != 4:
        raise ValueError("input and filter must be 4-dimensional")
    batch, in_h, in_w, depth = values.shape
    f_h, f_w, f_depth, out_depth = filters.shape
    if depth != f_depth:
        raise ValueError(f"input and filter must have the same depth: {depth} vs {f_depth}")
    min_input, max_input, min_filter, max_filter = map(_first, (min_input, max_input, min_filter,
                                                               max_filter))
    stride = strides[1]
    out_h = _window_output_size(in_h, f_h, stride, padding)
    out_w = _window_output_size(in_w, f_w, stride, padding)
    lo, hi = Q.quantization_range_for_multiplication(min_input, max_input, min_filter, max_filter,
                                                     tin, tfilter, tout)
    out = np.empty((batch, out_h, out_w, out_depth), dtype=np.int32)
    if out.size == 0:
        return out, _scalar_out(lo), _scalar_out(hi)

    input_offset = _offset(min_input, max_input, tin)
    filter_offset = _offset(min_filter, max_filter, tfilter)
    # C division truncates toward zero; Python's // floors, so divide the magnitude. VALID adds 1
    # before halving (TensorFlow 2.21's im2col), so only a slack of 3 or more shifts its windows.
    valid = int(padding == "VALID")
    top = _trunc_div((out_h - 1) * stride + f_h - in_h + valid, 2)
    left = _trunc_div((out_w - 1) * stride + f_w - in_w + valid, 2)
    pad_code = input_offset & 0xFF if input_offset > 255 else input_offset
    centre = _gemm_centre(input_offset, filter_offset)
    pad_value = pad_code - centre
    # The input minus `centre`, surrounded by enough padding for every window.
    first_h, first_w = -top, -left
    last_h = (out_h - 1) * stride - top + f_h
    last_w = (out_w - 1) * stride - left + f_w
    low_h, low_w = min(0, first_h), min(0, first_w)
    high_h, high_w = max(in_h, last_h), max(in_w, last_w)
    # A scratch array that stays mapped between calls: fresh memory costs a page fault per
    # 4 KB page (see chunked.buffer). The GEMM writes only `out`, so nothing aliases it.
    padded = chunked.scratch((batch, high_h - low_h, high_w - low_w, depth), F32, "conv input")
    _shifted(values, centre, padded[:, -low_h:in_h - low_h, -low_w:in_w - low_w, :])
    needs_padding = low_h < 0 or low_w < 0 or high_h > in_h or high_w > in_w
    if needs_padding:
        padded[:, :-low_h] = pad_value
        padded[:, in_h - low_h:] = pad_value
        padded[:, :, :-low_w] = pad_value
        padded[:, :, in_w - low_w:] = pad_value
    bound = max(abs(centre), abs(255 - centre), abs(pad_value) if needs_padding else 0)
    windows = _sliding_windows(padded, out_h, out_w, f_h, f_w, stride, stride,
                               first_h - low_h, first_w - low_w)
    k = f_h * f_w * depth
    flat_out = out.reshape(batch, out_h * out_w, out_depth)
    rows_per_chunk = max(1, _IM2COL_FLOATS // max(k * out_w, 1))
    gemm = _offset_gemm(bound, centre, input_offset, filters.reshape(k, out_depth), filter_offset,
                        key=filters)
    for n in range(batch):
        for y0 in range(0, out_h, rows_per_chunk):
            y1 = min(out_h, y0 + rows_per_chunk)
            patches = np.ascontiguousarray(windows[n, y0:y1]).reshape(-1, k)
            gemm(patches, flat_out[n, y0 * out_w:y1 * out_w])
    return out, _scalar_out(lo), _scalar_out(hi)


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


# ---- bias add, activations -----------------------------------------------------------------------

@kernel("QuantizedBiasAdd")
def quantized_bias_add(node, inputs):
    """QuantizedBiasAdd: both inputs requantized into a symmetric qint32 range 2^17 times wider."""
    values, bias, min_input, max_input, min_bias, max_bias = inputs
    t1, t2 = node.get_attr("T1"), node.get_attr("T2")
    tout = node.get_attr("out_type", Q.DT_QINT32)
    if tout != Q.DT_QINT32 or (t1, t2) not in ((Q.DT_QUINT8, Q.DT_QUINT8), (Q.DT_QINT8, Q.DT_QINT8)):
        raise ValueError("QuantizedBiasAdd is only implemented for quint8 or qint8 -> qint32")
    values, bias = _codes(values, t1), _codes(bias, t2)
    if values.ndim < 2:
        raise ValueError(f"Input tensor must be at least 2D: {values.shape}")
    if bias.ndim != 1:
        raise ValueError(f"Biases must be 1D: {bias.shape}")
    if bias.shape[0] != values.shape[-1]:
        raise ValueError(f"Must provide as many biases as the last dimension of the input tensor: "
                         f"{bias.shape} vs. {values.shape}")
    min_input, max_input, min_bias, max_bias = map(_first, (min_input, max_input, min_bias, max_bias))
    lo, hi = Q.quantized_add_range(min_input, max_input, min_bias, max_bias)
    zero = np.int32(Q.float_to_quantized(F32(0.0), lo, hi, tout))
    # Each code maps to one qint32 value, so a table over all codes is exact and cheap.
    input_table = Q.requantize_table_8_to_32(t1, min_input, max_input, lo, hi)
    bias_table = Q.requantize_table_8_to_32(t2, min_bias, max_bias, lo, hi)
    bias_total = bias_table[bias.view(np.uint8)] + zero
    channels = bias.shape[0]
    out = np.empty(values.shape, np.int32)
    if out.size == 0:
        return out, _scalar_out(lo), _scalar_out(hi)
    rows = values.reshape(-1, channels).view(np.uint8)
    flat_out = out.reshape(-1, channels)

    def worker():
        def step(start: int, stop: int) -> None:
            part = flat_out[start:stop]
            # mode="wrap" (a no-op on byte indices into 256 entries) is numpy's fastest gather.
            np.take(input_table, rows[start:stop], mode="wrap", out=part)
            part += bias_total                # int32 addition wraps, as in TensorFlow
        return step

    for_chunks(rows.shape[0], worker, chunk=max(1, chunked.CHUNK // max(channels, 1)))
    return out, _scalar_out(lo), _scalar_out(hi)


@kernel("QuantizedRelu")
def quantized_relu(node, inputs):
    """QuantizedRelu: codes below real zero's code become that code; the range passes through."""
    values, min_input, max_input = inputs
    dtype = node.get_attr("Tinput")
    _check_same_type(node, dtype)
    lo, hi = _first(min_input), _first(max_input)
    t = Q.qtype(dtype)
    zero = Q.float_to_quantized(F32(0.0), lo, hi, t)
    # np.clip: numpy's maximum with a scalar operand skips its SIMD loop (20x slower on bytes).
    out = np.clip(_codes(values, dtype), zero, t.holder.type(t.highest))
    return out, _scalar_out(lo), _scalar_out(hi)


@kernel("QuantizedRelu6")
def quantized_relu6(node, inputs):
    """QuantizedRelu6: clamp codes to [code(0), code(6)]; the range passes through."""
    values, min_input, max_input = inputs
    return _relu_x(node, values, F32(6.0), min_input, max_input)


@kernel("QuantizedReluX")
def quantized_relu_x(node, inputs):
    """QuantizedReluX: clamp codes to [code(0), code(max_value)]; the range passes through."""
    values, max_value, min_input, max_input = inputs
    return _relu_x(node, values, _first(max_value), min_input, max_input)


def _relu_x(node, values, limit, min_input, max_input):
    dtype = node.get_attr("Tinput")
    _check_same_type(node, dtype)
    lo, hi = _first(min_input), _first(max_input)
    zero = Q.float_to_quantized(F32(0.0), lo, hi, dtype)
    top = Q.float_to_quantized(limit, lo, hi, dtype)
    # max then min, as TensorFlow: clip's order (and its speed, see quantized_relu).
    out = np.clip(_codes(values, dtype), zero, top)
    return out, _scalar_out(lo), _scalar_out(hi)


def _check_same_type(node, dtype) -> None:
    out_type = node.get_attr("out_type", Q.DT_QUINT8)
    if int(out_type) != int(dtype) or int(dtype) not in (Q.DT_QUINT8, Q.DT_QINT32):
        raise ValueError(f"{node.op} is only implemented for quint8 -> quint8 and qint32 -> qint32")


# ---- pooling -------------------------------------------------------------------------------------

def _pool_geometry(node, shape):
    ksize = [int(v) for v in node.get_attr("ksize")]
    strides = [int(v) for v in node.get_attr("strides")]
    padding = node.get_attr("padding")
    if len(ksize) != 4 or len(strides) != 4:
        raise ValueError("Sliding window ksize and strides fields must specify 4 dimensions")
    if ksize[0] != 1 or strides[0] != 1:
        raise ValueError("Pooling is not yet supported on the batch dimension.")
    if ksize[3] != 1 or strides[3] != 1:
        raise ValueError("Non-spatial pooling is not yet supported.")
    if len(shape) != 4:
        raise ValueError("tensor_in must be 4-dimensional")
    _, in_h, in_w, _ = shape
    out_h = _window_output_size(in_h, ksize[1], strides[1], padding)
    out_w = _window_output_size(in_w, ksize[2], strides[2], padding)
    # Standard pooling padding: half before (rounded down), the rest after, never negative.
    pad_top = max((out_h - 1) * strides[1] + ksize[1] - in_h, 0) // 2
    pad_left = max((out_w - 1) * strides[2] + ksize[2] - in_w, 0) // 2
    return ksize[1], ksize[2], strides[1], strides[2], out_h, out_w, pad_top, pad_left


def _pool(values: np.ndarray, node, fill, reduce):
    k_h, k_w, s_h, s_w, out_h, out_w, top, left = _pool_geometry(node, values.shape)
    batch, in_h, in_w, depth = values.shape
    need_h = (out_h - 1) * s_h + k_h
    need_w = (out_w - 1) * s_w + k_w
    padded = np.full((batch, max(need_h, top + in_h), max(need_w, left + in_w), depth), fill,
                     dtype=values.dtype)
    padded[:, top:top + in_h, left:left + in_w, :] = values
    windows = _sliding_windows(padded, out_h, out_w, k_h, k_w, s_h, s_w, 0, 0)
    return reduce(windows), (k_h, k_w, s_h, s_w, out_h, out_w, top, left)


@kernel("QuantizedMaxPool")
def quantized_max_pool(node, inputs):
    """QuantizedMaxPool: max over each window's valid codes; the range passes through."""
    values, min_input, max_input = inputs
    dtype = node.get_attr("T")
    values = _codes(values, dtype)
    lowest = Q.qtype(dtype).lowest
    out, _ = _window_reduce(values, node, lowest, values.dtype, np.maximum)
    return out, _scalar_out(_first(min_input)), _scalar_out(_first(max_input))


@kernel("QuantizedAvgPool")
def quantized_avg_pool(node, inputs):
    """QuantizedAvgPool: the sum of each window's valid codes over their count; the range passes
    through. TensorFlow's reference kernel truncates the quotient (x86's oneDNN one rounds half to
    even)."""
    values, min_input, max_input = inputs
    dtype = node.get_attr("T")
    t = Q.qtype(dtype)
    values = _codes(values, dtype)
    if t.bits == 8:
        # int16 holds a window of up to 128 codes; wider windows sum in int32.
        acc = np.int16 if np.prod(node.get_attr("ksize")) <= 128 else np.int32
        sums, geometry = _window_reduce(values, node, 0, acc, np.add)
    else:
        sums, geometry = _pool(values.astype(np.int64), node, 0, lambda w: w.sum(axis=(3, 4)))
    k_h, k_w, s_h, s_w, out_h, out_w, top, left = geometry
    in_h, in_w = values.shape[1:3]
    rows = _valid_counts(out_h, s_h, k_h, top, in_h)
    cols = _valid_counts(out_w, s_w, k_w, left, in_w)
    counts = (rows[:, None] * cols[None, :])[None, :, :, None]
    if (counts == 0).any():
        raise ValueError("a pooling window covers no input")
    if t.bits == 8:
        # TensorFlow's own kernel divides in int32, truncating toward zero. In float32 the sums
        # and counts are exact (< 2^24), and a correctly rounded quotient never crosses the
        # integer its exact value lies beyond, so truncating it gives the same.
        out = sums.astype(F32)
        np.divide(out, counts.astype(F32), out=out)
        return (out.astype(t.holder), _scalar_out(_first(min_input)),
                _scalar_out(_first(max_input)))
    quotient = np.abs(sums) // counts
    out = np.where(sums < 0, -quotient, quotient)
    out = np.clip(out, t.lowest, t.highest).astype(t.holder)
    return out, _scalar_out(_first(min_input)), _scalar_out(_first(max_input))


def _window_reduce(values: np.ndarray, node, fill, dtype, combine):
    """Every pooling window of `values` reduced with `combine` (np.maximum, np.add) in `dtype`,
    padding holding `fill`: one whole-tensor operation per window tap, whose operands are
    arrays (numpy's reductions over small strided window axes are several times slower)."""
    k_h, k_w, s_h, s_w, out_h, out_w, top, left = _pool_geometry(node, values.shape)
    batch, in_h, in_w, depth = values.shape
    if out_h == 0 or out_w == 0:    # the tap slices below assume at least one output
        return (np.full((batch, out_h, out_w, depth), fill, dtype),
                (k_h, k_w, s_h, s_w, out_h, out_w, top, left))
    need_h = (out_h - 1) * s_h + k_h
    need_w = (out_w - 1) * s_w + k_w
    padded = np.full((batch, max(need_h, top + in_h), max(need_w, left + in_w), depth), fill,
                     dtype)
    padded[:, top:top + in_h, left:left + in_w, :] = values
    total = None
    for i in range(k_h):
        for j in range(k_w):
            tap = padded[:, i:i + (out_h - 1) * s_h + 1:s_h, j:j + (out_w - 1) * s_w + 1:s_w, :]
            if total is None:
                total = tap.copy()
            else:
                combine(total, tap, out=total)
    if total is None:
        total = np.full((batch, out_h, out_w, depth), fill, dtype)
    return total, (k_h, k_w, s_h, s_w, out_h, out_w, top, left)


def _valid_counts(out_size: int, stride: int, window: int, pad: int, size: int) -> np.ndarray:
    starts = np.arange(out_size) * stride - pad
    return np.minimum(starts + window, size) - np.maximum(starts, 0)


# ---- concat, reshape -----------------------------------------------------------------------------

@kernel("QuantizedConcat")
def quantized_concat(node, inputs):
    """QuantizedConcat: inputs requantized into the union of their ranges (symmetric if signed)."""
    if (len(inputs) - 1) % 3:
        raise ValueError("QuantizedConcat takes concat_dim, N values, N mins and N maxes")
    n = (len(inputs) - 1) // 3
    concat_dim = np.asarray(inputs[0])
    if concat_dim.size != 1:
        raise ValueError(f"Concat dim tensor should be a scalar integer, but got shape "
                         f"{concat_dim.shape}")
    axis = int(concat_dim.reshape(-1)[0])
    dtype = node.get_attr("T")
    t = Q.qtype(dtype)
    values = [_codes(v, dtype) for v in inputs[1:1 + n]]
    mins = [_first(v) for v in inputs[1 + n:1 + 2 * n]]
    maxes = [_first(v) for v in inputs[1 + 2 * n:]]
    rank = values[0].ndim
    if not 0 <= axis < rank:
        raise ValueError(f"ConcatOp : Expected concatenating dimensions in the range [0, {rank}), "
                         f"but got {axis}")
    for i, v in enumerate(values):
        if v.ndim != rank or any(v.shape[d] != values[0].shape[d] for d in range(rank) if d != axis):
            raise ValueError(f"ConcatOp : Dimensions of inputs should match: shape[0] = "
                             f"{values[0].shape} vs. shape[{i}] = {v.shape}")
    overall_min, overall_max = F32(np.finfo(F32).max), F32(np.finfo(F32).min)
    for lo, hi in zip(mins, maxes):
        overall_min, overall_max = min(overall_min, lo), max(overall_max, hi)
    if t.signed:
        largest = max(abs(overall_min), abs(overall_max))
        out_min, out_max = F32(-largest), F32(largest)
    else:
        out_min, out_max = overall_min, overall_max
    # TensorFlow's copier numbers only the non-empty inputs but reads the ranges of all of them:
    # after an empty input, each input is requantized from the range of the one before it.
    present = [v for v in values if v.size] or values
    parts = [v if (lo == out_min and hi == out_max)
             else Q.requantize_eigen(v, lo, hi, out_min, out_max, t, t)
             for v, lo, hi in zip(present, mins, maxes)]
    return np.concatenate(parts, axis=axis), _scalar_out(out_min), _scalar_out(out_max)


@kernel("QuantizedReshape")
def quantized_reshape(node, inputs):
    """QuantizedReshape: Reshape, with the range passed through."""
    values, shape, min_input, max_input = inputs
    dims = [int(d) for d in np.asarray(shape).reshape(-1)]
    if sum(d == -1 for d in dims) > 1 or any(d < -1 for d in dims):
        raise ValueError(f"invalid shape {dims}")
    return (np.reshape(values, dims), np.asarray(min_input, dtype=F32),
            np.asarray(max_input, dtype=F32))


# ---- requantization ------------------------------------------------------------------------------

def _actual_range(values: np.ndarray, min_input, max_input, dtype):
    """The range the codes really use, with the minimum no larger than zero."""
    t = Q.qtype(dtype)
    # Starting points as in TensorFlow: an empty input gives (highest, lowest).
    smallest = int(values.min(initial=t.highest))
    largest = int(values.max(initial=t.lowest))
    lo = min(F32(0.0), Q.quantized_to_float(smallest, min_input, max_input, t).reshape(()))
    hi = Q.quantized_to_float(largest, min_input, max_input, t).reshape(())
    return F32(lo), F32(hi)


@kernel("RequantizationRange")
def requantization_range(node, inputs):
    """RequantizationRange: the float range a qint32 tensor's codes actually span."""
    values, min_input, max_input = inputs
    dtype = node.get_attr("Tinput")
    lo, hi = _actual_range(_codes(values, dtype), _first(min_input), _first(max_input), dtype)
    return _scalar_out(lo), _scalar_out(hi)


@kernel("Requantize")
def requantize(node, inputs):
    """Requantize: qint32 codes into a requested eight-bit range."""
    values, min_input, max_input, requested_min, requested_max = inputs
    tin, tout = node.get_attr("Tinput"), node.get_attr("out_type")
    requested_min, requested_max = _first(requested_min), _first(requested_max)
    if not requested_min <= 0.0:
        raise ValueError(f"requested_output_min must be <= 0, but got {requested_min}")
    if not requested_max >= 0.0:
        raise ValueError(f"requested_output_max must be >= 0, but got {requested_max}")
    values = _codes(values, tin)
    out = Q.requantize_eigen(values, _first(min_input), _first(max_input), requested_min,
                             requested_max, tin, tout)
    return out, _scalar_out(requested_min), _scalar_out(requested_max)


@kernel("QuantizeDownAndShrinkRange")
def quantize_down_and_shrink_range(node, inputs):
    """QuantizeDownAndShrinkRange: Requantize into the range RequantizationRange finds."""
    values, min_input, max_input = inputs
    tin, tout = node.get_attr("Tinput"), node.get_attr("out_type")
    values = _codes(values, tin)
    min_input, max_input = _first(min_input), _first(max_input)
    lo, hi = _actual_range(values, min_input, max_input, tin)
    out = Q.requantize_eigen(values, min_input, max_input, lo, hi, tin, tout)
    return out, _scalar_out(lo), _scalar_out(hi)


# ---- elementwise add and multiply ----------------------------------------------------------------

def _bcast_ndims(x_shape, y_shape) -> int:
    """How many dimensions TensorFlow's BCast keeps after merging runs with the same pattern."""
    if tuple(x_shape) == tuple(y_shape):
        return 1
    rank = max(len(x_shape), len(y_shape))
    xs = (1,) * (rank - len(x_shape)) + tuple(x_shape)
    ys = (1,) * (rank - len(y_shape)) + tuple(y_shape)
    runs, previous = 0, None
    for dx, dy in zip(reversed(xs), reversed(ys)):
        if dx != dy and dx != 1 and dy != 1:
            raise ValueError(f"Incompatible shapes: {tuple(x_shape)} vs. {tuple(y_shape)}")
        if dx == 1 and dy == 1:
            continue
        pattern = (dx == 1, dy == 1)
        if pattern != previous:
            runs += 1
            previous = pattern
    return max(runs, 1)


def _elementwise_plan(x: np.ndarray, y: np.ndarray):
    """TensorFlow's three cases for QuantizedAdd/QuantizedMul, with its modulo broadcasting.

    Returns (output shape, 'scalar_x' | 'scalar_y' | 'same' | 'vector', vector is x).
    """
    out_shape = np.broadcast_shapes(x.shape, y.shape)
    ndims = _bcast_ndims(x.shape, y.shape)
    if ndims <= 1:
        if x.size == 1:
            return out_shape, "scalar_x", False
        if y.size == 1:
            return out_shape, "scalar_y", False
        return out_shape, "same", False
    if ndims == 2:
        vector_is_x = x.size < y.size
        vector, tensor = (x, y) if vector_is_x else (y, x)
        if vector.size == 0:
            raise ValueError("vector must have at least 1 element")
        if tensor.size != int(np.prod(out_shape)):
            # TensorFlow only fills tensor.size outputs here and leaves the rest uninitialized.
            raise NotImplementedError(f"Broadcast between {x.shape} and {y.shape} is not supported")
        return out_shape, "vector", vector_is_x
    raise NotImplementedError(f"Broadcast between {x.shape} and {y.shape} is not supported yet.")


def _combine(x: np.ndarray, y: np.ndarray, fx, fy, op):
    """Apply op(fx(x_codes), fy(y_codes)) with TensorFlow's broadcasting cases."""
    out_shape, case, vector_is_x = _elementwise_plan(x, y)
    fx_flat, fy_flat = fx(x.reshape(-1)), fy(y.reshape(-1))
    if case == "scalar_x":
        out = op(fx_flat[0], fy_flat)
    elif case == "scalar_y":
        out = op(fx_flat, fy_flat[0])
    elif case == "same":
        out = op(fx_flat, fy_flat)
    else:
        # The shorter operand repeats with index i % size, whatever the broadcast pattern was.
        if vector_is_x:
            out = op(np.resize(fx_flat, fy_flat.size), fy_flat)
        else:
            out = op(fx_flat, np.resize(fy_flat, fx_flat.size))
    return np.asarray(out, dtype=np.int32).reshape(out_shape)


def _binary_operands(node, inputs):
    """The checked operands of QuantizedAdd and QuantizedMul: codes, scalar ranges and types."""
    x, y, min_x, max_x, min_y, max_y = inputs
    t1, t2 = node.get_attr("T1"), node.get_attr("T2")
    tout = node.get_attr("Toutput", Q.DT_QINT32)
    if (t1, t2, tout) != (Q.DT_QUINT8, Q.DT_QUINT8, Q.DT_QINT32):
        raise ValueError(f"{node.op} is only implemented for quint8 and quint8 -> qint32")
    for name, value in (("min_x", min_x), ("max_x", max_x), ("min_y", min_y), ("max_y", max_y)):
        if np.ndim(value) != 0:
            raise ValueError(f"`{name}` must be rank 0 but is rank {np.ndim(value)}")
    min_x, max_x, min_y, max_y = map(_first, (min_x, max_x, min_y, max_y))
    x, y = _codes(x, t1), _codes(y, t2)
    np.broadcast_shapes(x.shape, y.shape)
    _check_range(min_x, max_x, "min_x", "max_x")
    _check_range(min_y, max_y, "min_y", "max_y")
    return x, y, min_x, max_x, min_y, max_y, t1, t2, tout


@kernel("QuantizedAdd")
def quantized_add(node, inputs):
    """QuantizedAdd: quint8 + quint8 -> qint32 in a symmetric range 2^14 times the widest input."""
    x, y, min_x, max_x, min_y, max_y, t1, t2, tout = _binary_operands(node, inputs)
    biggest = max(abs(min(min_x, min_y)), abs(max(max_x, max_y)))
    out_max = F32(biggest * F32(1 << 14))
    out_min = F32(-out_max)
    x_table = _code_table(min_x, max_x, out_min, out_max)
    y_table = _code_table(min_y, max_y, out_min, out_max)
    _, case, _ = _elementwise_plan(x, y)
    if case == "scalar_x":
        # The scalar side goes through the double-precision requantization, not the table.
        x_table = Q.requantize_in_new_range(np.arange(256, dtype=np.uint8), min_x, max_x,
                                            out_min, out_max, t1, tout)
    elif case == "scalar_y":
        y_table = Q.requantize_in_new_range(np.arange(256, dtype=np.uint8), min_y, max_y,
                                            out_min, out_max, t2, tout)
    # mode="wrap" (a no-op on byte indices into 256 entries) is numpy's fastest gather.
    out = _combine(x, y, lambda c: np.take(x_table, c, mode="wrap"),
                   lambda c: np.take(y_table, c, mode="wrap"), np.add)
    return out, _scalar_out(out_min), _scalar_out(out_max)


def _code_table(in_min, in_max, out_min, out_max) -> np.ndarray:
    """quint8 -> qint32 with TensorFlow's code_0 + code * mult fast path, for all 256 codes."""
    return Q.requantize_8_to_32(np.arange(256, dtype=np.uint8), in_min, in_max, out_min, out_max)


@kernel("QuantizedMul")
def quantized_mul(node, inputs):
    """QuantizedMul: (x - zero_x) * (y - zero_y) in int32, with the product's range."""
    x, y, min_x, max_x, min_y, max_y, t1, t2, tout = _binary_operands(node, inputs)
    offset_x = _offset(min_x, max_x, t1)
    offset_y = _offset(min_y, max_y, t2)
    # int32 arithmetic wraps like TensorFlow's qint32 products.
    out = _combine(x, y, lambda c: c.astype(np.int32) - np.int32(offset_x),
                   lambda c: c.astype(np.int32) - np.int32(offset_y), np.multiply)
    lo, hi = Q.quantization_range_for_multiplication(min_x, max_x, min_y, max_y, t1, t2, tout)
    return out, _scalar_out(lo), _scalar_out(hi)


# ---- resize --------------------------------------------------------------------------------------

@kernel("QuantizedResizeBilinear")
def quantized_resize_bilinear(node, inputs):
    """QuantizedResizeBilinear: fixed-point interpolation (7 fraction bits for quint8, 30 for qint32).

    TensorFlow computes the scale as if half_pixel_centers were false and then uses half-pixel
    source coordinates when it is true; quint8 uses int16 arithmetic with C's truncating division.
    """
    images, size, min_input, max_input = inputs
    dtype = int(node.get_attr("T"))
    align_corners = bool(node.get_attr("align_corners", False))
    half_pixel = bool(node.get_attr("half_pixel_centers", False))
    if np.ndim(min_input) != 0 or np.ndim(max_input) != 0:
        raise ValueError("min and max must be scalars")
    lo, hi = _first(min_input), _first(max_input)
    if dtype == DT_FLOAT:
        images = np.asarray(images, dtype=F32)
    else:
        images = _codes(images, dtype)
    size = [int(v) for v in np.asarray(size).reshape(-1)]
    if images.ndim != 4:
        raise ValueError(f"input must be 4-dimensional: {images.shape}")
    if len(size) != 2:
        raise ValueError(f"shape_t must have two elements: {size}")
    batch, in_h, in_w, channels = images.shape
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output dimensions must be positive: {size}")
    if (out_h, out_w) == (in_h, in_w):
        return images.copy(), _scalar_out(lo), _scalar_out(hi)
    ys = _interpolation(out_h, in_h, align_corners, half_pixel)
    xs = _interpolation(out_w, in_w, align_corners, half_pixel)
    if dtype == DT_FLOAT:
        out = _lerp_float(images, ys, xs)
    elif dtype == Q.DT_QUINT8:
        out = _lerp_fixed(images, ys, xs, resolution=7, calc=np.int16).astype(np.uint8)
    elif dtype == Q.DT_QINT32:
        out = _lerp_fixed(images, ys, xs, resolution=30, calc=np.int64).astype(np.int32)
    else:
        raise ValueError("QuantizedResizeBilinear is only implemented for quint8, qint32 and float")
    return out, _scalar_out(lo), _scalar_out(hi)


def _interpolation(out_size: int, in_size: int, align_corners: bool, half_pixel: bool):
    """ComputeInterpolationWeights: lower and upper source indices and the float fraction."""
    if align_corners and out_size > 1:
        scale = F32(F32(in_size - 1) / F32(out_size - 1))
    else:
        scale = F32(F32(in_size) / F32(out_size))
    positions = np.arange(out_size, dtype=F32)
    if half_pixel:
        source = (positions + F32(0.5)) * scale - F32(0.5)
    else:
        source = positions * scale
    source = source.astype(F32)
    floor = np.floor(source)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(source).astype(np.int64), in_size - 1)
    lower = np.minimum(lower, upper)
    return lower, upper, (source - floor).astype(F32)


def _corners(images, ys, xs):
    y_lo, y_hi, _ = ys
    x_lo, x_hi, _ = xs
    top, bottom = images[:, y_lo], images[:, y_hi]
    return top[:, :, x_lo], top[:, :, x_hi], bottom[:, :, x_lo], bottom[:, :, x_hi]


def _lerp_float(images, ys, xs):
    top_left, top_right, bottom_left, bottom_right = _corners(images, ys, xs)
    x_lerp = xs[2][None, None, :, None]
    y_lerp = ys[2][None, :, None, None]
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return (top + (bottom - top) * y_lerp).astype(F32)


def _lerp_fixed(images, ys, xs, resolution: int, calc):
    """ComputeLerp<RESOLUTION, T, T_SCALE, T_CALC>, wrapping in T_CALC like the C++ code."""
    one = 1 << resolution
    scale_type = np.int16 if calc == np.int16 else np.int32
    # ilerp = (T_SCALE)((in - floor(in)) * 2^resolution), a truncating float -> int conversion.
    x_ilerp = (xs[2] * F32(one)).astype(scale_type).astype(np.int64)[None, None, :, None]
    y_ilerp = (ys[2] * F32(one)).astype(scale_type).astype(np.int64)[None, :, None, None]
    # static_cast<T_CALC>(qint32) goes through float (see Q.widen_codes).
    dtype = Q.DT_QINT32 if images.dtype == np.int32 else Q.DT_QUINT8
    top_left, top_right, bottom_left, bottom_right = (
        Q.widen_codes(c, dtype) for c in _corners(images, ys, xs))
    # Each T_CALC assignment (and MulOffset's return value) narrows; the rest is computed in int.
    top = _narrow(top_left * one + _narrow((top_right - top_left) * x_ilerp, calc), calc)
    bottom = _narrow(bottom_left * one + _narrow((bottom_right - bottom_left) * x_ilerp, calc), calc)
    # C's integer division truncates toward zero.
    out = _narrow(top + _trunc_divide(bottom - top, one) * y_ilerp, calc)
    return _trunc_divide(out + one // 2, one)


def _narrow(values: np.ndarray, calc) -> np.ndarray:
    """Store in T_CALC: int16 arithmetic keeps the low 16 bits (int64 is already exact)."""
    if calc == np.int16:
        return values.astype(np.int16).astype(np.int64)
    return values


def _trunc_divide(values: np.ndarray, divisor: int) -> np.ndarray:
    quotient = np.abs(values) // divisor
    return np.where(values < 0, -quotient, quotient)
