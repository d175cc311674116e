"""TensorFlow's eight-bit arithmetic as plain numpy functions (no graph objects).

Everything here reproduces what TensorFlow 2.21's CPU kernels compute, bit for bit: the formulas
of `quantization_utils.h`, `quantize_op.cc` and `dequantize_op.cc`, with the same float32-versus-double
intermediates and the same rounding. Rules reuse these functions to compute constants; the kernels
in `quantized.py` are thin wrappers around them.

Quantized values are held as their integer codes: quint8 -> uint8, qint8 -> int8, quint16 -> uint16,
qint16 -> int16, qint32 -> int32. Ranges are float32 scalars.

Two families of formulas exist in TensorFlow and both are needed, because different ops use
different ones and they round differently:
- the scalar "reference" functions (`float_to_quantized`, `quantized_to_float`), computed in double;
- the Eigen "struct" functions (`quantize_eigen`, `dequantize_eigen`), computed in float32; QuantizeV2
  MIN_FIRST, Dequantize MIN_FIRST, Requantize, QuantizedConcat and QuantizedBiasAdd use these.

What the TensorFlow binary does beyond its sources, all measured against 2.21 and mirrored here:
- The numbers are those of TensorFlow's reference kernels: TensorFlow with oneDNN off
  (TF_ENABLE_ONEDNN_OPTS=0) and TensorFlow on ARM, where eight-bit graphs ship (see `quantize`'s
  `onednn` for what x86 TensorFlow runs by default instead).
- Kernels run with denormals flushed to zero (FTZ/DAZ): see `_ftz`.
- A qint32 converts to int64 or double through float (`widen_codes`).
- Eigen's float -> small-integer casts saturate in vector code but wrap in the scalar tail
  (`_store_cast`).

Large tensors are processed in cache-sized chunks over a small thread pool (`chunked.py`), and
the common 8- and 16-bit cases take shortcuts that make fewer numpy passes but give the same
bits: clamping before rounding (rounding is monotonic), integer tricks for half-away rounding,
and exact-integer bounds (`_quantize_eigen_8bit`, `_quantize_small`, `_affine`,
`_requantize_32_to_8_no_wrap`, `exact_matmul_int32`); each says why it is exact.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from . import chunked
from .chunked import buffer, filled, for_chunks

F32 = np.float32
F64 = np.float64

DT_QINT8, DT_QUINT8, DT_QINT32, DT_QINT16, DT_QUINT16 = 11, 12, 13, 15, 16


class QType(NamedTuple):
    """Facts about one quantized type."""

    enum: int
    name: str
    holder: np.dtype
    lowest: int
    highest: int
    bits: int

    @property
    def signed(self) -> bool:
        return self.lowest < 0


QTYPES: dict[int, QType] = {
    DT_QINT8: QType(DT_QINT8, "qint8", np.dtype(np.int8), -128, 127, 8),
    DT_QUINT8: QType(DT_QUINT8, "quint8", np.dtype(np.uint8), 0, 255, 8),
    DT_QINT16: QType(DT_QINT16, "qint16", np.dtype(np.int16), -32768, 32767, 16),
    DT_QUINT16: QType(DT_QUINT16, "quint16", np.dtype(np.uint16), 0, 65535, 16),
    DT_QINT32: QType(DT_QINT32, "qint32", np.dtype(np.int32), -(2 ** 31), 2 ** 31 - 1, 32),
}
_BY_HOLDER = {t.holder: t for t in QTYPES.values()}
_BY_NAME = {t.name: t for t in QTYPES.values()}


def qtype(dt) -> QType:
    """The QType for a DataType enum, a name ("quint8") or the numpy dtype that holds the codes."""
    if isinstance(dt, QType):
        return dt
    if isinstance(dt, str):
        if dt in _BY_NAME:
            return _BY_NAME[dt]
        raise ValueError(f"{dt!r} is not a quantized type")
    if isinstance(dt, (int, np.integer)) and not isinstance(dt, bool):
        if int(dt) in QTYPES:
            return QTYPES[int(dt)]
        raise ValueError(f"DataType {int(dt)} is not a quantized type")
    holder = np.dtype(dt)
    if holder in _BY_HOLDER:
        return _BY_HOLDER[holder]
    raise ValueError(f"numpy dtype {holder} does not hold a quantized type")


# TensorFlow's x86 builds enable oneDNN by default (TF_ENABLE_ONEDNN_OPTS). Its graph pass then
# replaces some quantized ops whose input is not a Const by oneDNN kernels that round differently,
# and its float kernels (DepthwiseConv2dNative, for one) differ in the last bits, which moves the
# ranges an uncalibrated graph computes at run time and with them whole codes. The evaluator does
# not mirror that (a trained CNN's eight-bit graph, run whole, differed by 0.017 in its softmax); it
# follows TensorFlow's reference kernels, which are what runs on the phones and boards that
# eight-bit models ship to (ARM builds have no oneDNN), whatever TF_ENABLE_ONEDNN_OPTS says.

_FLT_MIN = F32(np.finfo(F32).tiny)
# Below this a scale times a code (at most 2^32) can land among the float32 subnormals.
_TINY_SCALE = F32(2.0 ** -94)


def _ftz(value) -> np.float32:
    """Flush a float32 subnormal to zero: TensorFlow runs its kernels with FTZ/DAZ set."""
    value = F32(value)
    return F32(np.copysign(F32(0), value)) if abs(value) < _FLT_MIN else value


def _flush_subnormals(values: np.ndarray) -> np.ndarray:
    """In place: float32 subnormals become signed zeros, as under FTZ."""
    tiny = np.abs(values) < _FLT_MIN
    if tiny.any():
        values[tiny] = np.copysign(F32(0), values[tiny])
    return values


def _daz(values: np.ndarray, scale) -> np.ndarray:
    """values, with subnormals read as zero if `scale` could lift one to a code step.

    TensorFlow's kernels run with DAZ set, so subnormal inputs count as zero; at ordinary scales
    (below 2^100) a subnormal times the scale still rounds to zero, and nothing needs doing.
    """
    if abs(F32(scale)) < F32(2.0 ** 100):
        return values
    return _flush_subnormals(np.array(values, dtype=F32))


# ---- rounding ------------------------------------------------------------------------------------

_PREV_HALF_F32 = F32(0.49999997)            # the float just below 0.5
_PREV_HALF_F64 = F64(0.49999999999999994)   # the double just below 0.5


def round_half_away(values: np.ndarray) -> np.ndarray:
    """std::round (half away from zero) in the array's own precision, float32 or float64.

    Adding the largest value below one half (with the sign of x) and truncating is exact in that
    precision; it is also how Eigen vectorizes `.round()`, which the Eigen-based kernels use.
    """
    values = np.asarray(values)
    half = _PREV_HALF_F32 if values.dtype == np.float32 else _PREV_HALF_F64
    return np.trunc(values + np.copysign(half, values).astype(values.dtype, copy=False))


def _round_f32(value) -> np.float32:
    return F32(round_half_away(np.asarray(value, dtype=F32)))


def _round_f64(value) -> float:
    return float(round_half_away(np.asarray(value, dtype=F64)))


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 -> nearest-even bfloat16, returned as float32 (how gtt-rules holds bfloat16)."""
    bits = np.ascontiguousarray(values, dtype=F32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding) & np.uint32(0xFFFF0000)).view(F32)
    return np.where(np.isnan(values), values, rounded).astype(F32)


def _cast_float_to_int32(values: np.ndarray) -> np.ndarray:
    """float -> int32 truncation as x86 does it: values outside int32 become INT32_MIN (cvttps2dq)."""
    values = np.asarray(values)
    out_of_range = ~((values >= -2147483648.0) & (values < 2147483648.0))
    safe = np.where(out_of_range, 0, values)
    result = np.trunc(safe).astype(np.int32)
    if out_of_range.any():
        result[out_of_range] = np.iinfo(np.int32).min
    return result


# ---- the scalar reference functions of quantization_utils.h (double intermediates) ----------------

def widen_codes(codes, dtype) -> np.ndarray:
    """Codes as int64 the way TensorFlow widens them.

    Eigen's QInt32 converts to other arithmetic types only through `operator float`, so when
    TensorFlow casts a qint32 to int64 or double, the value is first rounded to float32: codes
    beyond 2^24 lose their low bits. Smaller types convert exactly.
    """
    codes = np.asarray(codes)
    if qtype(dtype).bits == 32:
        return codes.astype(F32).astype(np.int64)
    return codes.astype(np.int64)


def _steps(t: QType) -> tuple[float, float]:
    number_of_steps = float(1 << t.bits)
    range_adjust = number_of_steps / (number_of_steps - 1.0)
    return number_of_steps, range_adjust


def float_to_quantized_unclamped(values, range_min, range_max, dtype) -> np.ndarray:
    """FloatToQuantizedUnclamped<T>: the int64 code of float32 `values`, not clamped to T."""
    t = qtype(dtype)
    values = np.asarray(values, dtype=F32)
    range_min, range_max = F32(range_min), F32(range_max)
    if range_min == range_max:
        return np.full(values.shape, t.lowest, dtype=np.int64)
    number_of_steps, range_adjust = _steps(t)
    range_ = F64(range_max - range_min) * range_adjust
    range_scale = number_of_steps / range_
    if values.ndim == 0:
        # One value (a zero point, a clamp code): the same double arithmetic on Python floats,
        # many times faster than numpy's scalar machinery.
        scale = float(range_scale)
        # round() returns doubles and TensorFlow subtracts them as doubles.
        difference = (_round_half_away_float(float(values) * scale)
                      - _round_half_away_float(float(range_min) * scale))
        if abs(difference) < 2.0 ** 62:
            return np.int64(int(difference) + t.lowest)
    quantized = (round_half_away(values.astype(F64) * range_scale)
                 - _round_f64(F64(range_min) * range_scale))
    return quantized.astype(np.int64) + t.lowest


def _round_half_away_float(value: float) -> float:
    """round_half_away for one double (Python floats are IEEE doubles); NaN stays NaN."""
    if not math.isfinite(value):
        return value
    return float(math.trunc(value + math.copysign(0.49999999999999994, value)))


def float_to_quantized(values, range_min, range_max, dtype) -> np.ndarray:
    """FloatToQuantized<T>: float32 values to codes of T, saturating."""
    t = qtype(dtype)
    codes = float_to_quantized_unclamped(values, range_min, range_max, t)
    return np.clip(codes, t.lowest, t.highest).astype(t.holder)


def quantized_to_float(codes, range_min, range_max, dtype) -> np.ndarray:
    """QuantizedToFloat<T>: codes of T to float32, computed in double."""
    t = qtype(dtype)
    codes = np.asarray(codes)
    range_min, range_max = F32(range_min), F32(range_max)
    if range_min == range_max:
        return np.full(codes.shape, range_min, dtype=F32)
    number_of_steps, range_adjust = _steps(t)
    range_ = F64(range_max - range_min) * range_adjust
    range_scale = range_ / number_of_steps
    # TensorFlow rounds the minimum with range_scale narrowed to float, for compatibility with
    # DEQUANTIZE_WITH_EIGEN; the rest is double.
    scale_f = F32(range_scale)
    range_min_rounded = F64(_round_f32(range_min / scale_f) * scale_f)
    offset_input = widen_codes(codes, t).astype(F64) - t.lowest
    result = np.asarray(range_min_rounded + offset_input * range_scale).astype(F32)
    if range_scale < _TINY_SCALE:
        _flush_subnormals(result)
    return result


def float_for_one_quantized_level(range_min, range_max, dtype) -> np.float32:
    """FloatForOneQuantizedLevel<T>: (max - min) / (highest - lowest), all float32."""
    t = qtype(dtype)
    return F32(F32(range_max) - F32(range_min)) / F32(t.highest - t.lowest)


def quantization_range_for_multiplication(min_a, max_a, min_b, max_b, dtype_a, dtype_b,
                                          dtype_c) -> tuple[np.float32, np.float32]:
    """QuantizationRangeForMultiplication<T1, T2, T3>: the output range of a product of codes.

    For qint32 outputs, max = -min exactly: 2^31 - 1 rounds to 2^31 as a float.
    """
    c = qtype(dtype_c)
    level = (float_for_one_quantized_level(min_a, max_a, dtype_a)
             * float_for_one_quantized_level(min_b, max_b, dtype_b))
    return F32(level * F32(c.lowest)), F32(level * F32(c.highest))


def requantize_in_new_range(codes, min_input, max_input, min_new, max_new, dtype_in,
                            dtype_out) -> np.ndarray:
    """RequantizeInNewRange<T1, T2>: QuantizedToFloat then FloatToQuantized (the scalar path)."""
    as_float = quantized_to_float(codes, min_input, max_input, dtype_in)
    return float_to_quantized(as_float, min_new, max_new, dtype_out)


def requantize_8_to_32_params(min_input, max_input, min_output, max_output) -> tuple[int, int]:
    """Code 0 and the step of quint8 codes in a qint32 range (RequantizeManyInNewRange8To32Bit).

    TensorFlow's quint8 -> qint32 fast path maps code v to `code_0 + v * mult` (clamped to int32)
    instead of requantizing each value; `mult` is narrowed to int32.
    """
    code_0 = float_to_quantized_unclamped(
        quantized_to_float(0, min_input, max_input, DT_QUINT8), min_output, max_output, DT_QINT32)
    code_1 = float_to_quantized_unclamped(
        quantized_to_float(1, min_input, max_input, DT_QUINT8), min_output, max_output, DT_QINT32)
    mult = int(np.int64(code_1 - code_0).astype(np.int32))
    return int(code_0), mult


def requantize_8_to_32(codes, min_input, max_input, min_output, max_output) -> np.ndarray:
    """quint8 codes -> qint32 codes in a new range, with TensorFlow's code_0 + v * mult formula."""
    code_0, mult = requantize_8_to_32_params(min_input, max_input, min_output, max_output)
    # One multiply per code value: a 256-entry table, exact by construction.
    table = np.clip(code_0 + np.arange(256, dtype=np.int64) * mult,
                    -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
    return table[np.asarray(codes, dtype=np.uint8)]


# ---- the Eigen "struct" functions (float32 intermediates) ----------------------------------------

class _QuantizeParams(NamedTuple):
    range_scale: np.float32
    offset: np.float32           # range_min_scaled - lowest
    lower: np.float32            # clamp bounds that convert back to int32 safely
    upper: np.float32


@np.errstate(all="ignore")   # empty or infinite ranges give inf/NaN silently, as in C
def _quantize_params(range_min, range_max, t: QType) -> _QuantizeParams:
    """FloatToQuantizedStruct<T>."""
    range_min, range_max = F32(range_min), F32(range_max)
    number_of_steps = float(1 << t.bits)
    if range_max == range_min:
        range_scale = F32(0.0)
    else:
        range_scale = F32((number_of_steps - 1.0) / F64(range_max - range_min))
    range_min_scaled = _round_f32(range_min * range_scale)
    lower = max(F32(t.lowest), F32(-2.147483648e9))
    upper = min(F32(t.highest), F32(2.147483520e9))
    return _QuantizeParams(range_scale, F32(range_min_scaled - F32(t.lowest)), lower, upper)


def quantize_eigen(values, range_min, range_max, dtype, out: np.ndarray | None = None) -> np.ndarray:
    """QUANTIZE_WITH_EIGEN: float32 values to codes of T, all in float32, saturating.

    round(x * scale) - (round(min * scale) - lowest), clamped, truncated to int32.
    """
    t = qtype(dtype)
    values = np.asarray(values, dtype=F32)
    p = _quantize_params(range_min, range_max, t)
    if out is None:
        out = np.empty(values.shape, dtype=t.holder)
    flat_in, flat_out = _daz(values.reshape(-1), p.range_scale), out.reshape(-1)
    if not _quantize_eigen_8bit(flat_in, p, t, flat_out):
        _parallel(values.size, lambda s: _quantize_eigen_chunk(flat_in[s], p, flat_out[s]))
    return out


def _quantize_eigen_8bit(x: np.ndarray, p: _QuantizeParams, t: QType, out: np.ndarray) -> bool:
    """QUANTIZE_WITH_EIGEN to an 8-bit type in half the passes; False when it does not apply.

    Rounding is monotonic, so clamping y = x * scale to [offset + lowest, offset + highest] first
    gives the same codes and keeps everything small (NaN is patched afterwards: numpy's fmax
    treats signaling NaNs differently in its vector and scalar loops). The rounding is done on
    A = trunc(2y), an int16: round_half_away(y) = (A + 1) >> 1 for A >= 0 and A >> 1 below, i.e.
    (A + 1 + (A >> 15)) >> 1. 2y is computed as x * (2 * scale), which doubles exactly.
    """
    offset, scale2 = p.offset, F32(2) * p.range_scale
    if (t.bits != 8 or not np.isfinite(scale2) or not np.isfinite(offset)
            or abs(offset) > 8192 or offset != np.trunc(offset)):
        return False
    lo = filled(F32(2) * F32(offset + t.lowest), F32, x.size)
    hi = filled(F32(2) * F32(offset + t.highest), F32, x.size)
    shift = np.int16(1 - 2 * int(offset))
    one, fifteen = np.int16(1), np.int16(15)

    def worker():
        y, a, sign = buffer(F32, x.size), buffer(np.int16, x.size), buffer(np.int16, x.size, 1)

        def step(start: int, stop: int) -> None:
            n = stop - start
            yn, an, sn = y[:n], a[:n], sign[:n]
            np.multiply(x[start:stop], scale2, out=yn)
            np.maximum(yn, lo[:n], out=yn)      # keeps NaN, for the patch below
            np.minimum(yn, hi[:n], out=yn)
            an[...] = yn
            np.right_shift(an, fifteen, out=sn)
            np.add(an, sn, out=an)
            np.add(an, shift, out=an)
            np.right_shift(an, one, out=an)
            out[start:stop] = an
            if np.isnan(yn.min()):
                out[start:stop][np.isnan(yn)] = 0      # NaN truncates to INT32_MIN: low byte 0
        return step

    for_chunks(x.size, worker)
    return True


def _quantize_eigen_chunk(x: np.ndarray, p: _QuantizeParams, out: np.ndarray) -> None:
    scaled = np.multiply(x, p.range_scale, dtype=F32)
    rounded = _round_half_away_inplace(scaled)
    np.subtract(rounded, p.offset, out=rounded)
    np.clip(rounded, p.lower, p.upper, out=rounded)
    if out.dtype == np.int32:
        out[...] = _cast_float_to_int32(rounded)
        return
    out[...] = rounded
    if np.isnan(rounded.min()):
        # NaN survives Eigen's clamps, truncates to INT32_MIN and keeps its low bits: code 0.
        out[np.isnan(rounded)] = 0


def _round_half_away_inplace(x: np.ndarray) -> np.ndarray:
    """round_half_away on a float32 buffer we own, in place."""
    sign = x.view(np.uint32) & np.uint32(0x80000000)
    sign |= np.uint32(0x3EFFFFFF)                  # the bits of 0.49999997
    np.add(x, sign.view(F32), out=x)
    np.trunc(x, out=x)
    return x


class _DequantizeParams(NamedTuple):
    range_scale: np.float32
    offset: np.float32           # range_min_rounded - lowest * range_scale


@np.errstate(all="ignore")   # empty or infinite ranges give inf/NaN silently, as in C
def _dequantize_params(range_min, range_max, t: QType) -> _DequantizeParams:
    """QuantizedToFloatStruct<T>."""
    range_min, range_max = F32(range_min), F32(range_max)
    number_of_steps = float(1 << t.bits)
    range_scale = _ftz(F64(range_max - range_min) / (number_of_steps - 1.0))
    if range_max == range_min:
        range_min_rounded = range_min
    else:
        range_min_rounded = _ftz(_round_f32(range_min / range_scale) * range_scale)
    return _DequantizeParams(range_scale,
                             _ftz(range_min_rounded - _ftz(F32(t.lowest) * range_scale)))


def dequantize_eigen(codes, range_min, range_max, dtype, out: np.ndarray | None = None) -> np.ndarray:
    """DEQUANTIZE_WITH_EIGEN: (range_min_rounded - lowest * scale) + code * scale, in float32."""
    t = qtype(dtype)
    codes = np.asarray(codes)
    p = _dequantize_params(range_min, range_max, t)
    if out is None:
        out = np.empty(codes.shape, dtype=F32)
    _affine(codes.reshape(-1), p.range_scale, p.offset, out.reshape(-1))
    if 0 < abs(p.range_scale) < _TINY_SCALE:
        _flush_subnormals(out)
    return out


def _affine(codes: np.ndarray, scale, offset, out: np.ndarray, flip: int = 0) -> None:
    """out = float32(codes ^ flip) * scale + offset, two roundings as in TensorFlow (no FMA).

    `flip` (the sign bit of a signed type, applied to the codes' unsigned view) turns code c
    into c + 2^(bits-1), exactly, in the cheap byte domain rather than as a float addition.
    A 256-entry table would be exact too, but numpy's gather costs twice these three passes.
    """
    if flip:
        codes = codes.view(np.dtype(codes.dtype.str.replace("i", "u")))
    if offset is not None and offset == 0 and (np.signbit(offset) or scale > 0):
        offset = None       # adding zero changes no bits here (it would turn -0.0 into +0.0)

    def worker():
        flipped = buffer(codes.dtype, codes.size) if flip else None

        def step(start: int, stop: int) -> None:
            o = out[start:stop]
            if flip:
                c = flipped[:stop - start]
                np.bitwise_xor(codes[start:stop], codes.dtype.type(flip), out=c)
                o[...] = c
            else:
                o[...] = codes[start:stop]     # a plain cast first: casting ufunc loops are slow
            np.multiply(o, scale, out=o)
            if offset is not None:
                np.add(o, offset, out=o)

        return step

    for_chunks(codes.size, worker)


def requantize_eigen(codes, min_input, max_input, min_output, max_output, dtype_in,
                     dtype_out) -> np.ndarray:
    """RequantizeManyInNewRangeUsingEigen<T1, T2>: codes of T1 in one range to codes of T2 in another.

    qint32 -> quint8 has TensorFlow's own fixed-point formula; other pairs dequantize and quantize
    through the float32 Eigen structs.
    """
    tin, tout = qtype(dtype_in), qtype(dtype_out)
    codes = np.asarray(codes)
    if tin.enum == DT_QINT32 and tout.enum == DT_QUINT8:
        return _requantize_32_to_8(codes, min_input, max_input, min_output, max_output)
    as_float = dequantize_eigen(codes, min_input, max_input, tin)
    return quantize_eigen(as_float, min_output, max_output, tout)


def _requantize_32_to_8(codes, min_input, max_input, min_output, max_output) -> np.ndarray:
    """The fixed-point qint32 -> quint8 path of RequantizeManyInNewRangeUsingEigen."""
    fp_shift = 16
    min_input, max_input = F32(min_input), F32(max_input)
    min_output, max_output = F32(min_output), F32(max_output)
    input_range = F32(max_input - min_input)
    output_range = F32(max_output - min_output)
    recip_output_range = F32(0.0) if output_range == 0.0 else F32(255.0 / F64(output_range))
    input_rezero = F32(F64(F32(min_input + max_input)) / 2.0)
    if output_range == 0.0:
        range_scale_fp = 0
        output_offset_fp = 0
    else:
        range_scale_fp = int(math.trunc(255.0 * (1 << fp_shift) * F64(input_range)
                                        / F64(output_range)))
        # Rounded half away from zero: TensorFlow 2.21's kernel does so (its older source
        # truncated); truncation is one code low whenever the fraction passes one half.
        offset = (1 << fp_shift) * (F64(min_output) * 255.0) / F64(output_range)
        output_offset_fp = int(_round_half_away_float(offset))
    # float32 throughout: rezero * recip * 65536 are all floats in TensorFlow's source.
    input_offset_fp = int(math.trunc(float(F32(input_rezero * recip_output_range)
                                           * F32(1 << fp_shift))))
    constant = np.int64(input_offset_fp - output_offset_fp + (1 << (fp_shift - 1)))
    scale = np.int64(wrap_int64(range_scale_fp))
    out = np.empty(codes.shape, dtype=np.uint8)
    flat_in, flat_out = codes.reshape(-1), out.reshape(-1)
    if flat_in.size and scale >= 0:
        smallest, largest = int(flat_in.min()), int(flat_in.max())
        biggest = max(-smallest, largest)
        # Codes widen through float32: exactly below 2^24, by at most 128 above.
        widest = biggest + (128 if biggest > 1 << 24 else 0)
        if widest * int(scale) + abs(int(constant)) * (1 << 32) < 1 << 62:
            window = _codes_to_8bit_window(int(scale), int(constant), smallest, largest)
            clip = window is not None and window != (smallest, largest)
            if window is not None:         # the codes' own range, as the clamp will leave it
                smallest, largest = window
            # Below 2^24 the float32 round trip that widens qint32 changes nothing; below
            # 2^31 - 64 it cannot round up to 2^31, so float32 -> int32 is a safe cast.
            widen = ("exact" if max(-smallest, largest) <= 1 << 24
                     else "int32" if largest < (1 << 31) - 64 else "int64")
            _requantize_32_to_8_no_wrap(flat_in, int(scale), int(constant), window, clip,
                                        widen, flat_out)
            return out

    def chunk(s):
        wide = widen_codes(flat_in[s], DT_QINT32)
        wide *= scale                      # wraps like the C++ int64 product
        wide >>= 32
        wide += constant
        wide >>= fp_shift
        np.clip(wide, 0, 255, out=wide)
        flat_out[s] = wide

    _parallel(codes.size, chunk)
    return out


def _requantize_32_to_8_no_wrap(codes: np.ndarray, scale: int, constant: int,
                                window: tuple[int, int] | None, clip: bool, widen: str,
                                out: np.ndarray) -> None:
    """_requantize_32_to_8 when no code * scale wraps: (v * scale + constant * 2^32) >> 48.

    Without wrapping, ((v * scale) >> 32 + constant) >> 16 is that single shift (floors
    compose), and it is monotonic in v: with a `window` (see _codes_to_8bit_window) the codes
    are clamped to it first if `clip` (else they all lie in it already), and the results then
    lie within [0, 255]; without one the results, well within int16, are clamped there.
    `widen` says how codes (once clamped) go through float32 to int64: "exact" (no change),
    "int32" or "int64" (the slow cast).
    """
    scale64, shifted, by = np.int64(scale), np.int64(constant << 32), np.int64(48)
    if window is not None:
        lo, hi = np.int32(window[0]), np.int32(window[1])
    else:
        lo, hi = np.int16(0), np.int16(255)

    def worker():
        narrow, wide, small, floats = (buffer(dtype, codes.size)
                                       for dtype in (np.int32, np.int64, np.int16, F32))

        def step(start: int, stop: int) -> None:
            n = stop - start
            v, w = codes[start:stop], wide[:n]
            if clip:
                v = np.clip(v, lo, hi, out=narrow[:n])
            if widen == "exact":
                w[...] = v
            elif widen == "int32":
                f = floats[:n]
                f[...] = v
                narrow[:n] = f
                w[...] = narrow[:n]
            else:
                w[...] = v.astype(F32)
            np.multiply(w, scale64, out=w)
            np.add(w, shifted, out=w)
            np.right_shift(w, by, out=w)
            if window is not None:
                out[start:stop] = w
            else:
                s = small[:n]
                s[...] = w
                np.clip(s, lo, hi, out=s)
                out[start:stop] = s

        return step

    for_chunks(codes.size, worker)


def _codes_to_8bit_window(scale: int, constant: int, smallest: int,
                          largest: int) -> tuple[int, int] | None:
    """A range of int32 codes to clamp codes in [smallest, largest] to, after which
    (float32(v) * scale + constant * 2^32) >> 48 lies in [0, 255] and equals what clamping that
    result would give; None if there is none.

    The value is non-decreasing in v (scale >= 0), so the codes that map into [0, 255] form an
    interval. Its ends solve v * scale + constant * 2^32 >= 0 and < 2^56 exactly where codes
    are exact in float32 (within 2^24), and are otherwise found by binary search among the
    given codes. Clamping to it is right if the ends that bind map to 0 and 255 (a scale
    above 2^48 steps over codes).
    """
    shifted = constant << 32

    def code(v: int) -> int:
        return (int(F32(v)) * scale + shifted) >> 48

    def first(predicate, lo: int, hi: int) -> int:   # the smallest v in [lo, hi) passing, or hi
        while lo < hi:
            mid = (lo + hi) // 2
            if predicate(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    if scale <= 0:
        return None
    if code(smallest) >= 0 and code(largest) <= 255:
        return smallest, largest                       # nothing to clamp
    low, high = -(shifted // scale), ((1 << 56) - shifted - 1) // scale
    if max(-low, high) > 1 << 24:
        low = first(lambda v: code(v) >= 0, smallest, largest + 1)
        high = first(lambda v: code(v) > 255, smallest, largest + 1) - 1
    low, high = max(low, smallest), min(high, largest)
    if low > high:
        return None
    if (low > smallest and code(low) != 0) or (high < largest and code(high) != 255):
        return None
    return low, high


def wrap_int64(value: int) -> int:
    """A Python int reduced to a signed 64-bit value, as C++ int64 arithmetic wraps."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


# ---- QuantizeV2 and Dequantize -------------------------------------------------------------------

def adjusted_range(input_min, input_max, ensure_minimum_range=0.01) -> tuple[np.float32, np.float32]:
    """The range today's QuantizeV2 really uses: widened to contain 0 and at least a minimum width.

    min = min(0, input_min); max = max(0, input_max, min + max(1, |input_min|, |input_max|) * e).
    """
    input_min, input_max = F32(input_min), F32(input_max)
    min_range = min(F32(0.0), input_min)
    epsilon = F32(max(F32(1.0), max(abs(input_min), abs(input_max))) * F32(ensure_minimum_range))
    max_range = max(F32(0.0), max(input_max, F32(min_range + epsilon)))
    return F32(min_range), F32(max_range)


def quantize(values, range_min, range_max, dtype, mode: str = "MIN_COMBINED",
             round_mode: str = "HALF_AWAY_FROM_ZERO", narrow_range: bool = False,
             ensure_minimum_range: float = 0.01,
             onednn: bool = False) -> tuple[np.ndarray, np.float32, np.float32]:
    """QuantizeV2 with one range: float32 values -> (codes, output_min, output_max).

    `onednn` gives what one QuantizeV2 computes in x86 TensorFlow with oneDNN on, which runs quint8
    MIN_FIRST and quint8/qint8 SCALED + HALF_TO_EVEN (without narrow_range) on its own kernel:
    for measuring how far that configuration's codes differ; no graph is run with it.
    """
    t = qtype(dtype)
    values = np.asarray(values, dtype=F32)
    input_min, input_max = F32(range_min), F32(range_max)
    _check_quantize_modes(mode, round_mode)
    if input_max < input_min:
        raise ValueError("input_max_range must be larger than input_min_range.")
    min_range, max_range = adjusted_range(input_min, input_max, ensure_minimum_range)
    if onednn:
        if mode == "MIN_FIRST" and t.enum == DT_QUINT8:
            return _quantize_min_first_onednn(values, min_range, max_range), min_range, max_range
        if (mode == "SCALED" and round_mode == "HALF_TO_EVEN" and not narrow_range
                and t.enum in (DT_QUINT8, DT_QINT8)):
            return _quantize_scaled_onednn(values, min_range, max_range, t)
    if mode == "MIN_FIRST":
        return quantize_eigen(values, min_range, max_range, t), min_range, max_range
    out = np.empty(values.shape, dtype=t.holder)
    lo, hi = _quantize_slice(values.reshape(-1), min_range, max_range, t, mode, round_mode,
                             narrow_range, out.reshape(-1))
    return out, lo, hi


def _quantize_min_first_onednn(values: np.ndarray, min_range, max_range) -> np.ndarray:
    """oneDNN's MIN_FIRST to quint8: a binary add with scales, round half to even, saturate.

    s = 255 / (max - min); code = rne(s * x + s * (-min)), both products rounded to float32 first.
    A rank-0 input takes another path: (x - min) * s truncated and wrapped modulo 256.
    """
    min_range, max_range = F32(min_range), F32(max_range)
    if values.ndim == 0:
        scale = F32(255.0 / F64(F32(max_range - min_range)))
        code = int(_cast_float_to_int32(F32(F32(values - min_range) * scale)))
        return np.asarray(code & 0xFF, dtype=np.uint8)
    if values.ndim > 5:
        raise ValueError("Input dims must be <= 5 and >= 1")
    with np.errstate(all="ignore"):      # an empty range divides by zero, as in TensorFlow
        scale = F32(F32(255.0) / F32(max_range - min_range))
        shift = F32(scale * F32(-min_range))
    out = np.empty(values.shape, dtype=np.uint8)
    flat_in, flat_out = values.reshape(-1), out.reshape(-1)

    def chunk(s):
        v = np.multiply(flat_in[s], scale)
        np.add(v, shift, out=v)
        np.clip(v, F32(0), F32(255), out=v)
        np.rint(v, out=v)
        flat_out[s] = v
        if np.isnan(v.min()):
            # oneDNN saturates with min before max, so NaN becomes 255.
            flat_out[s][np.isnan(v)] = 255

    _parallel(values.size, chunk)
    return out


def _quantize_scaled_onednn(values: np.ndarray, min_range, max_range,
                            t: QType) -> tuple[np.ndarray, np.float32, np.float32]:
    """oneDNN's SCALED: a symmetric range of max |bound| and a scale of 127.5 (signed) or 255.

    The signed target of 127.5 means -max_abs quantizes to -128, not -127, despite the kernel's
    comment about dropping one bucket.
    """
    if values.ndim == 0 or values.ndim > 5:
        raise ValueError("Input dims must be <= 5 and >= 1")
    max_abs = max(abs(F32(min_range)), abs(F32(max_range)))
    target = F32(127.5) if t.signed else F32(255.0)
    with np.errstate(all="ignore"):
        scale = _ftz(target / max_abs)
    out = np.empty(values.shape, dtype=t.holder)
    flat_in, flat_out = values.reshape(-1), out.reshape(-1)

    def chunk(s):
        v = np.multiply(flat_in[s], scale)
        np.clip(v, F32(t.lowest), F32(t.highest), out=v)
        np.rint(v, out=v)
        flat_out[s] = v
        if np.isnan(v.min()):
            flat_out[s][np.isnan(v)] = t.highest      # min before max: NaN saturates high

    _parallel(values.size, chunk)
    return out, (F32(-max_abs) if t.signed else F32(0.0)), F32(max_abs)


def quantize_per_axis(values, range_mins, range_maxs, dtype, axis: int, mode: str = "MIN_COMBINED",
                      round_mode: str = "HALF_AWAY_FROM_ZERO", narrow_range: bool = False,
                      ensure_minimum_range: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """QuantizeV2 with one range per slice along `axis` (MIN_COMBINED and SCALED only)."""
    t = qtype(dtype)
    values = np.asarray(values, dtype=F32)
    _check_quantize_modes(mode, round_mode)
    if mode == "MIN_FIRST":
        raise NotImplementedError("MIN_FIRST mode is not implemented for Quantize with axis != -1.")
    mins = np.asarray(range_mins, dtype=F32)
    maxs = np.asarray(range_maxs, dtype=F32)
    slices = values.shape[axis]
    if mins.size != slices or maxs.size != slices:
        raise ValueError(f"min_range and max_range must have {slices} elements, one per slice of "
                         f"axis {axis}")
    moved = np.moveaxis(values, axis, 0)
    out = np.empty(moved.shape, dtype=t.holder)
    out_min = np.empty(mins.shape, dtype=F32)
    out_max = np.empty(maxs.shape, dtype=F32)
    flat_min, flat_max = out_min.reshape(-1), out_max.reshape(-1)
    for i in range(slices):
        if maxs.reshape(-1)[i] < mins.reshape(-1)[i]:
            raise ValueError("input_max_range must be larger than input_min_range.")
        lo, hi = adjusted_range(mins.reshape(-1)[i], maxs.reshape(-1)[i], ensure_minimum_range)
        flat_min[i], flat_max[i] = _quantize_slice(moved[i].reshape(-1), lo, hi, t, mode,
                                                   round_mode, narrow_range, out[i].reshape(-1))
    return np.moveaxis(out, 0, axis), out_min, out_max


def _check_quantize_modes(mode: str, round_mode: str) -> None:
    if mode not in ("MIN_COMBINED", "MIN_FIRST", "SCALED"):
        raise ValueError(f"Mode string must be 'MIN_COMBINED', 'MIN_FIRST', or 'SCALED', is '{mode}'")
    if round_mode not in ("HALF_AWAY_FROM_ZERO", "HALF_TO_EVEN"):
        raise ValueError(f"Round mode string must be 'HALF_AWAY_FROM_ZERO' or 'HALF_TO_EVEN', "
                         f"is '{round_mode}'")
    if round_mode == "HALF_TO_EVEN" and mode != "SCALED":
        raise ValueError(f"Round mode 'HALF_TO_EVEN' only supported for mode 'SCALED', "
                         f"but mode is '{mode}'.")


@np.errstate(all="ignore")   # empty or infinite ranges give inf/NaN silently, as in C
def _quantize_slice(x: np.ndarray, min_range, max_range, t: QType, mode: str, round_mode: str,
                    narrow_range: bool, out: np.ndarray) -> tuple[np.float32, np.float32]:
    """QuantizeSlice of quantize_op.cc for MIN_COMBINED and SCALED, on an already adjusted range."""
    min_range, max_range = F32(min_range), F32(max_range)
    if mode == "MIN_COMBINED":
        with np.errstate(all="ignore"):       # an empty range gives an infinite scale, as in C
            scale_factor = F32((float(t.highest) - float(t.lowest))
                               / F64(F32(max_range - min_range)))
        half_range = F32((float(t.highest) - float(t.lowest) + 1) / 2.0) if t.signed else None
        x = _daz(x, scale_factor)
        if _quantize_small(x, t, min_range, max_range, min_range, scale_factor, half_range,
                           "HALF_AWAY_FROM_ZERO" if t.signed else "ADD_HALF", out):
            return min_range, max_range
        if t.signed:
            def chunk(s):
                # Eigen clamps with min then max; the same as clip for min <= max.
                v = np.clip(x[s], min_range, max_range)
                np.subtract(v, min_range, out=v)
                np.multiply(v, scale_factor, out=v)
                np.subtract(v, half_range, out=v)
                _round_half_away_inplace(v)
                _store_cast(v, out[s], t, x.size - x.size % 8 - s.start)
        else:
            def chunk(s):
                # Eigen clamps with min then max; the same as clip for min <= max.
                v = np.clip(x[s], min_range, max_range)
                np.subtract(v, min_range, out=v)
                np.multiply(v, scale_factor, out=v)
                np.add(v, F32(0.5), out=v)
                _store_cast(v, out[s], t, x.size - x.size % 8 - s.start)
        _parallel(x.size, chunk)
        return min_range, max_range

    # SCALED: a symmetric scale chosen from the side that saturates first.
    min_output_value = t.lowest + (1 if narrow_range else 0)
    max_output_value = t.highest
    flt_max = F32(np.finfo(F32).max)
    scale_from_min = (F32(min_output_value) / min_range
                      if F32(min_output_value) * min_range > 0 else flt_max)
    scale_from_max = (F32(max_output_value) / max_range
                      if F32(max_output_value) * max_range > 0 else flt_max)
    scale_factor = F32(min(scale_from_min, scale_from_max))
    min_range = _ftz(F32(min_output_value) / scale_factor)
    max_range = _ftz(F32(max_output_value) / scale_factor)
    x = _daz(x, scale_factor)
    if _quantize_small(x, t, min_range, max_range, F32(0), scale_factor, None, round_mode, out):
        return min_range, max_range

    def chunk(s):
        v = np.clip(x[s], min_range, max_range)
        np.multiply(v, scale_factor, out=v)
        if round_mode == "HALF_TO_EVEN":
            np.rint(v, out=v)
        else:
            _round_half_away_inplace(v)
        _store_cast(v, out[s], t, x.size - x.size % 8 - s.start)
    _parallel(x.size, chunk)
    return min_range, max_range


def _quantize_small(x: np.ndarray, t: QType, lo, hi, shift, scale, half, rounding: str,
                    out: np.ndarray) -> bool:
    """QuantizeSlice's arithmetic for 8- and 16-bit types in few passes; False if it does not apply.

    The float before the cast is (clamp(x, lo, hi) - shift) * scale - half, then rounded
    ("HALF_AWAY_FROM_ZERO", "HALF_TO_EVEN") or, for MIN_COMBINED's unsigned types, plus 0.5
    ("ADD_HALF"). The clamps come first and bound every value, so numpy's truncating float ->
    integer cast stores exactly what TensorFlow's (truncate, saturate) does, and half-away
    rounding is x + copysign(0.49999997, x) followed by that truncation. NaN codes are patched
    in afterwards.
    """
    if t.bits > 16 or not all(np.isfinite(v) for v in (lo, hi, scale)):
        return False
    if rounding == "HALF_AWAY_FROM_ZERO" and half is None and lo >= shift and scale >= 0:
        rounding = "HALF_AWAY_POSITIVE"       # no negative values: no sign to look at
    # Every clamped value lies between the results for lo and hi: check those two fit the type.
    with np.errstate(all="ignore"):
        ends = [np.trunc(_small_code(np.array([v], F32), shift, scale, half, rounding)[0])
                for v in (lo, hi)]
    if not all(np.isfinite(e) and t.lowest <= e <= t.highest for e in ends):
        return False
    lo_full, hi_full = filled(lo, F32, x.size), filled(hi, F32, x.size)

    def worker():
        v, bits = buffer(F32, x.size), buffer(np.uint32, x.size)

        def step(start: int, stop: int) -> None:
            n = stop - start
            vn = v[:n]
            np.maximum(x[start:stop], lo_full[:n], out=vn)     # keeps NaN, patched below
            np.minimum(vn, hi_full[:n], out=vn)
            _small_code(vn, shift, scale, half, rounding, bits[:n])
            out[start:stop] = vn
            if np.isnan(vn.min()):
                # NaN: vector code stores the lowest code, the scalar tail (see below) 0.
                out[start:stop][np.isnan(vn)] = t.lowest

        return step

    for_chunks(x.size, worker)
    # The scalar loop for the last n % 8 elements keeps the low bits of INT32_MIN: 0.
    tail = x.size - x.size % 8
    if tail < x.size:
        nan = np.isnan(x[tail:])
        if nan.any():
            out[tail:][nan] = 0
    return True


def _small_code(v: np.ndarray, shift, scale, half, rounding: str,
                bits: np.ndarray | None = None) -> np.ndarray:
    """In place: the float whose truncation is the code (see _quantize_small)."""
    if shift != 0:
        np.subtract(v, shift, out=v)
    np.multiply(v, scale, out=v)
    if half is not None:
        np.subtract(v, half, out=v)
    if rounding == "ADD_HALF":
        np.add(v, F32(0.5), out=v)
    elif rounding == "HALF_TO_EVEN":
        np.rint(v, out=v)
    elif rounding == "HALF_AWAY_POSITIVE":
        np.add(v, _PREV_HALF_F32, out=v)
    else:
        if bits is None:
            bits = np.empty(v.shape, np.uint32)
        np.bitwise_and(v.view(np.uint32), np.uint32(0x80000000), out=bits)
        np.bitwise_or(bits, np.uint32(0x3EFFFFFF), out=bits)     # +-0.49999997
        np.add(v, bits.view(F32), out=v)
    return v


def _store_cast(v: np.ndarray, out: np.ndarray, t: QType, tail_start: int) -> None:
    """Eigen's `.cast<T>()` of (rounded) floats, as TensorFlow's x86 build executes it.

    - qint32 converts through lrint to a 64-bit long, keeping the low 32 bits: large values wrap
      and NaN or infinity becomes 0.
    - 8- and 16-bit types truncate to int32 (x86 gives INT32_MIN for NaN and out-of-range values);
      vector code then packs with saturation, but the scalar loop for the last n % 8 elements
      keeps the low bits, so a non-finite value becomes the lowest code in the body and 0 in the
      tail. `tail_start` is where that tail begins, relative to this chunk. (Large tensors split
      into per-thread blocks, each with its own tail; only the single-block case is mirrored.)
    """
    finite = np.isfinite(v)
    if t.bits == 32:
        if finite.all() and (np.abs(v) < 2.0 ** 63).all():
            out[...] = v.astype(np.int64).astype(np.int32)
        else:
            ok = finite & (np.abs(v) < 2.0 ** 63)
            wide = np.where(ok, v, 0).astype(np.int64)
            out[...] = wide.astype(np.int32)
        return
    if finite.all():
        out[...] = np.clip(np.trunc(v), t.lowest, t.highest)
        return
    ints = _cast_float_to_int32(v)
    result = np.clip(ints, t.lowest, t.highest)
    if tail_start < v.size:
        tail = slice(max(tail_start, 0), None)
        result[tail] = ints[tail].astype(t.holder).astype(np.int32)
    out[...] = result


def dequantize(codes, range_min, range_max, dtype, mode: str = "MIN_COMBINED",
               narrow_range: bool = False, onednn: bool = False) -> np.ndarray:
    """Dequantize with one range: codes of T -> float32.

    With `onednn` (x86 TensorFlow's default, see `quantize`), SCALED quint8 with narrow_range takes the scale
    max(min / 1, max / 255): oneDNN counts the narrowed lowest code, TensorFlow's kernel does not.
    """
    t = qtype(dtype)
    codes = np.asarray(codes)
    if mode == "MIN_FIRST":
        return dequantize_eigen(codes, range_min, range_max, t)
    out = np.empty(codes.shape, dtype=F32)
    if (onednn and mode == "SCALED" and narrow_range
            and t.enum == DT_QUINT8):
        scale = _ftz(max(F32(range_min) / F32(1), F32(range_max) / F32(255)))
        out[...] = codes
        np.multiply(out, scale, out=out)
        return out
    _dequantize_slice(codes.reshape(-1), range_min, range_max, t, mode, narrow_range, out.reshape(-1))
    return out


def dequantize_per_axis(codes, range_mins, range_maxs, dtype, axis: int,
                        mode: str = "MIN_COMBINED", narrow_range: bool = False) -> np.ndarray:
    """Dequantize with one range per slice along `axis` (MIN_COMBINED and SCALED only)."""
    t = qtype(dtype)
    codes = np.asarray(codes)
    if mode == "MIN_FIRST":
        raise NotImplementedError("MIN_FIRST mode is not implemented for Dequantize with axis != -1.")
    mins = np.asarray(range_mins, dtype=F32).reshape(-1)
    maxs = np.asarray(range_maxs, dtype=F32).reshape(-1)
    slices = codes.shape[axis]
    if mins.size != slices or maxs.size != slices:
        raise ValueError(f"min_range and max_range must have {slices} elements, one per slice of "
                         f"axis {axis}")
    moved = np.moveaxis(codes, axis, 0)
    out = np.empty(moved.shape, dtype=F32)
    for i in range(slices):
        _dequantize_slice(moved[i].reshape(-1), mins[i], maxs[i], t, mode, narrow_range,
                          out[i].reshape(-1))
    return np.moveaxis(out, 0, axis)


@np.errstate(all="ignore")   # empty or infinite ranges give inf/NaN silently, as in C
def _dequantize_slice(q: np.ndarray, range_min, range_max, t: QType, mode: str, narrow_range: bool,
                      out: np.ndarray) -> None:
    range_min, range_max = F32(range_min), F32(range_max)
    if mode == "MIN_COMBINED":
        steps = F32(F32(t.highest) - F32(t.lowest))
        scale_factor = _ftz(F32(range_max - range_min) / steps)
        half_range = F32(F32(steps + F32(1)) / F32(2)) if t.signed else F32(0)
        if t.bits <= 16:
            # ((code + half_range) * scale) + min; code + half_range is exact on the bits.
            _affine(q, scale_factor, range_min, out, (1 << (t.bits - 1)) if t.signed else 0)
        else:
            def chunk(s):
                o = out[s]
                o[...] = q[s]
                np.add(o, half_range, out=o)
                np.multiply(o, scale_factor, out=o)
                np.add(o, range_min, out=o)
            _parallel(q.size, chunk)
    elif mode == "SCALED":
        min_output_value = t.lowest + (1 if narrow_range else 0)
        if t.lowest == 0:
            scale_factor = _ftz(range_max / F32(t.highest))
        else:
            scale_factor = _ftz(max(range_min / F32(min_output_value),
                                    range_max / F32(t.highest)))
        if t.bits <= 16:
            _affine(q, scale_factor, None, out)
        else:
            def chunk(s):
                # cast<int>() of a qint32 goes through float, and float 2^31 truncates to
                # INT32_MIN: the largest codes dequantize to -max.
                o = out[s]
                o[...] = _cast_float_to_int32(q[s].astype(F32))
                np.multiply(o, scale_factor, out=o)
            _parallel(q.size, chunk)
    else:
        raise ValueError(f"Mode string must be 'MIN_COMBINED', 'MIN_FIRST', or 'SCALED', is '{mode}'")
    if 0 < abs(scale_factor) < _TINY_SCALE or 0 < abs(range_min) < _TINY_SCALE:
        _flush_subnormals(out)


def requantize_table_8_to_32(dtype, min_input, max_input, min_output, max_output) -> np.ndarray:
    """requantize_eigen of all 256 codes of an 8-bit type into qint32, indexed by the code's byte
    (its unsigned view, so qint8 -1 is entry 255): a lookup table for ops that requantize codes.

    The same float32 arithmetic as requantize_eigen, without its chunking (256 values).
    """
    t = qtype(dtype)
    codes = np.arange(256, dtype=np.uint8).view(t.holder)
    dq = _dequantize_params(min_input, max_input, t)
    values = codes.astype(F32)
    np.multiply(values, dq.range_scale, out=values)
    np.add(values, dq.offset, out=values)
    if 0 < abs(dq.range_scale) < _TINY_SCALE:
        _flush_subnormals(values)
    q32 = qtype(DT_QINT32)
    p = _quantize_params(min_output, max_output, q32)
    with np.errstate(all="ignore"):
        values = _daz(values, p.range_scale)
        np.multiply(values, p.range_scale, out=values)
        _round_half_away_inplace(values)
        np.subtract(values, p.offset, out=values)
        np.clip(values, p.lower, p.upper, out=values)
        if np.isnan(values).any():
            return _cast_float_to_int32(values)
        return values.astype(np.int32)          # clamped to int32's range: a plain cast


# ---- ranges of the ops that combine two inputs -----------------------------------------------------

def quantized_add_range(input_min, input_max, smaller_min, smaller_max) -> tuple[np.float32, np.float32]:
    """GetOutputMinAndMaxForQuantizedAdd (QuantizedBiasAdd): symmetric, 2^17 times the widest input."""
    output_max = F32(max(F32(input_max), max(-F32(input_min), max(F32(smaller_max),
                                                                  -F32(smaller_min))))
                     * F32(1 << 17))
    return F32(-output_max), output_max


# ---- exact integer matrix products on float BLAS ---------------------------------------------------

def exact_int_matmul(a: np.ndarray, b: np.ndarray, bound_a: int, bound_b: int) -> np.ndarray:
    """a @ b for integer-valued float32 matrices, exact, as int64.

    |a| <= bound_a and |b| <= bound_b elementwise. float32 holds every integer up to 2^24, so a
    float32 product over a K-chunk whose partial sums stay within 2^24 is exact whatever order BLAS
    adds in; chunks are accumulated in int64. Bounds too large for float32 fall back to float64
    chunks (exact to 2^53) and then to int64 arithmetic.
    """
    per_product = max(1, bound_a) * max(1, bound_b)
    if per_product <= (1 << 24) // 16:
        return _chunked_matmul(a, b, max(1, (1 << 24) // per_product), F32)
    if per_product <= (1 << 53) // 64:
        return _chunked_matmul(a.astype(F64), b.astype(F64), max(1, (1 << 53) // per_product), F64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def _chunked_matmul(a: np.ndarray, b: np.ndarray, chunk: int, dtype) -> np.ndarray:
    k = a.shape[1]
    if k <= chunk:
        return np.matmul(a, b, dtype=dtype).astype(np.int64)
    total = np.zeros((a.shape[0], b.shape[1]), dtype=np.int64)
    for start in range(0, k, chunk):
        part = np.matmul(a[:, start:start + chunk], b[start:start + chunk], dtype=dtype)
        total += part.astype(np.int64)
    return total


def exact_matmul_int32(a: np.ndarray, bound_a: int, b: np.ndarray,
                       chunks: list[tuple[int, int]] | None = None,
                       out: np.ndarray | None = None) -> np.ndarray:
    """a @ b modulo 2^32 as int32, for integer-valued float32 a (|a| <= bound_a) and b.

    A float32 sum is exact, in any order and with or without FMA, while every partial sum stays
    within 2^24; here each is at most bound_a times the column sum of |b| over its K-chunk, so K
    is split where those sums would pass 2^24 (usually not at all: one sgemm, cast straight to
    int32). Chunk results (exact integers) add up in int32, which wraps like TensorFlow's
    accumulators. When even one row of b is too large, the float64/int64 path takes over.
    `chunks` may pass k_chunks(b, bound_a), computed once for a b used many times.
    """
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), np.int32)
    chunks = chunks or k_chunks(b, bound_a)
    if not chunks:
        bound_b = int(np.abs(b).max(initial=0))
        out[...] = exact_int_matmul(a, b, bound_a, bound_b).astype(np.int32)
        return out
    if len(chunks) == 1 and out.flags.c_contiguous:
        # The float32 product goes straight into out's memory and is converted there, a block
        # at a time: no product-sized temporary (fresh memory costs page faults).
        chunked.matmul(a, b, out=out.view(F32))
        flat = out.reshape(-1)
        floats = flat.view(F32)
        for start in range(0, flat.size, 1 << 16):
            flat[start:start + (1 << 16)] = floats[start:start + (1 << 16)]
        return out
    for i, (start, stop) in enumerate(chunks):
        part = chunked.matmul(a[:, start:stop], b[start:stop])
        if i == 0:
            out[...] = part                   # exact integers: the cast loses nothing
        else:
            out += part.astype(np.int32)
    return out


_EXACT_F32 = float(1 << 24)


def k_chunks(b: np.ndarray, bound_a: int) -> list[tuple[int, int]]:
    """K-ranges whose bound_a * sum_k |b[k, j]| stays within 2^24 for every column j ([]: none).

    The sums are float32: exact up to 2^24, far above the limit they are compared with.
    """
    abs_b = np.abs(b)
    k = abs_b.shape[0]
    if k == 0 or bound_a * float(abs_b.sum(axis=0).max(initial=0)) <= _EXACT_F32:
        return [(0, k)]
    if bound_a * float(abs_b.max()) > _EXACT_F32:
        return []
    # Equal parts, as few as the column sums allow (a part always fits once it is one row).
    parts = 2
    while True:
        bounds = [(i * k // parts, (i + 1) * k // parts) for i in range(parts)]
        # (A sum per part: np.add.reduceat along axis 0 is many times slower.)
        if all(bound_a * float(abs_b[lo:hi].sum(axis=0).max()) <= _EXACT_F32
               for lo, hi in bounds):
            return bounds
        parts = min(k, parts * 2)


# ---- parallel elementwise work ---------------------------------------------------------------------

def _parallel(n: int, fn: Callable[[slice], None]) -> None:
    """Run fn(slice) over [0, n) in cache-sized chunks, on all cores when n is large."""
    for_chunks(n, lambda: lambda start, stop: fn(slice(start, stop)))
