"""The eight-bit kernels against TensorFlow's own kernels (eager raw ops), bit for bit.

Every case compares the output codes with np.array_equal and the output ranges bitwise. Kernels
are called the way the evaluator calls them, through KERNELS[op](node, inputs), with real Nodes
whose attrs are encoded and decoded like a GraphDef's.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gtt_rules.engine.graph import Node
from gtt_rules.engine.kernels import KERNELS, load_all
from gtt_rules.engine.kernels import quantization as Q
from gtt_rules.engine.proto import graph_def_pb2 as pb

load_all()
F32 = np.float32
QUINT8, QINT8, QINT32, QINT16, QUINT16 = 12, 11, 13, 15, 16
SEEDS = range(8)


# ---- helpers -------------------------------------------------------------------------------------

def make_node(op: str, **attrs) -> Node:
    node = Node(pb.NodeDef(name=op.lower(), op=op))
    for name, value in attrs.items():
        node.set_attr(name, value)
    return node


def run(op: str, inputs, **attrs):
    out = KERNELS[op](make_node(op, **attrs), inputs)
    return out if isinstance(out, tuple) else (out,)


def tf_dtype(tf, dt):
    return {QUINT8: tf.quint8, QINT8: tf.qint8, QINT32: tf.qint32, QINT16: tf.qint16,
            QUINT16: tf.quint16, 1: tf.float32}[dt]


def tf_codes(tf, tensor) -> np.ndarray:
    """The integer codes of a TensorFlow tensor (quantized types bitcast to plain integers)."""
    plain = {tf.quint8: tf.uint8, tf.qint8: tf.int8, tf.qint32: tf.int32, tf.qint16: tf.int16,
             tf.quint16: tf.uint16}
    if tensor.dtype in plain:
        tensor = tf.bitcast(tensor, plain[tensor.dtype])
    return tensor.numpy()


def tq(tf, codes, dt):
    return tf.constant(np.asarray(codes), dtype=tf_dtype(tf, dt))


def assert_same(ours, theirs, what=""):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    if ours.dtype.kind == "f" or theirs.dtype.kind == "f":
        assert ours.dtype == np.float32 and theirs.dtype == np.float32, what
        same = np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    else:
        assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != {theirs.dtype}"
        same = np.array_equal(ours, theirs)
    if not same:
        bad = np.argwhere(ours.view(np.uint32) != theirs.view(np.uint32)
                          if ours.dtype.kind == "f" else ours != theirs)
        first = tuple(bad[0]) if ours.ndim else ()
        raise AssertionError(f"{what}: {len(bad)} of {ours.size} differ; first at {first}: "
                             f"ours {ours[first]!r}, TensorFlow {theirs[first]!r}")


def assert_outputs(ours, theirs, tf):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_same(a, tf_codes(tf, b), f"output {i}")


def random_codes(rng, shape, dt) -> np.ndarray:
    t = Q.qtype(dt)
    return rng.integers(t.lowest, t.highest, size=shape, endpoint=True).astype(t.holder)


def random_range(rng):
    """Ranges of every kind: around zero, positive, negative-only, tiny, huge."""
    kind = rng.integers(0, 6)
    scale = float(10.0 ** rng.uniform(-3, 3))
    if kind == 0:
        return F32(-rng.uniform(0, 1) * scale), F32(rng.uniform(0.01, 1) * scale)
    if kind == 1:
        return F32(0.0), F32(rng.uniform(0.01, 1) * scale)
    if kind == 2:
        lo = F32(rng.uniform(0.01, 1) * scale)
        return lo, F32(lo + rng.uniform(0.01, 1) * scale)
    if kind == 3:
        hi = F32(-rng.uniform(0.01, 1) * scale)
        return F32(hi - rng.uniform(0.01, 1) * scale), hi
    if kind == 4:
        return F32(-1e-3), F32(2e-3)
    return F32(-scale * 50), F32(scale * 3)


# Hand-picked ranges: symmetric, ReLU-like, not containing zero, negative-only, empty, tiny, huge.
EDGE_RANGES = [(-1.0, 1.0), (0.0, 6.0), (0.5, 2.0), (-2.0, -0.5), (0.0, 0.0), (1.0, 1.0),
               (-1e-4, 1e-4), (0.0, 1e-6), (-1000.0, 3.0), (-0.3, 123.4), (-65504.0, 65504.0),
               (-3.7, 0.2)]


# ---- QuantizeV2 ----------------------------------------------------------------------------------

QUANTIZE_CASES = [
    (dt, mode, rm, narrow)
    for dt in (QUINT8, QINT8, QUINT16, QINT16, QINT32)
    for mode in ("MIN_COMBINED", "MIN_FIRST", "SCALED")
    for rm in (("HALF_AWAY_FROM_ZERO", "HALF_TO_EVEN") if mode == "SCALED" else ("HALF_AWAY_FROM_ZERO",))
    for narrow in ((False, True) if mode == "SCALED" else (False,))
    # TensorFlow's oneDNN pass sends qint32 SCALED + HALF_TO_EVEN to a kernel that does not exist.
    if not (dt == QINT32 and mode == "SCALED" and rm == "HALF_TO_EVEN")
]


def quantize_inputs(rng, lo, hi, size):
    span = max(abs(lo), abs(hi), 1e-3)
    x = (rng.standard_normal(size) * span * 1.2).astype(F32)
    x[:6] = [lo, hi, 0, lo * 2, hi * 2, (lo + hi) / 2]
    # Values that land exactly halfway between codes, to exercise the rounding rules.
    lo_a, hi_a = Q.adjusted_range(lo, hi)
    step = (np.float64(hi_a) - np.float64(lo_a)) / 255.0
    ties = (np.float64(lo_a) + (rng.integers(0, 255, 64) + 0.5) * step).astype(F32)
    return np.concatenate([x, ties])


@pytest.mark.parametrize("dt,mode,round_mode,narrow", QUANTIZE_CASES)
def test_quantize_v2(tf, dt, mode, round_mode, narrow):
    rng = np.random.default_rng(dt * 7 + len(mode))
    for lo, hi in EDGE_RANGES + [random_range(rng) for _ in range(4)]:
        x = quantize_inputs(rng, F32(lo), F32(hi), 700).reshape(-1, 2, 2)
        theirs = tf.raw_ops.QuantizeV2(input=x, min_range=lo, max_range=hi, T=tf_dtype(tf, dt),
                                       mode=mode, round_mode=round_mode, narrow_range=narrow)
        ours = run("QuantizeV2", [x, F32(lo), F32(hi)], T=dt, mode=mode, round_mode=round_mode,
                   narrow_range=narrow)
        assert_outputs(ours, theirs, tf)


@pytest.mark.parametrize("minimum", [0.0, 1e-6, 0.01, 0.5])
def test_quantize_v2_ensure_minimum_range(tf, minimum):
    # With minimum 0 an empty range makes an infinite scale: the codes then show how each cast
    # handles NaN and infinity (vector body, scalar tail of n % 8 elements, qint32's lrint).
    rng = np.random.default_rng(3)
    for (lo, hi), size in itertools.product(
            [(0.0, 0.0), (1e-5, 1e-5), (-1e-7, 1e-7), (2.0, 2.0), (-3.0, -3.0)], [7, 9, 300]):
        x = (rng.standard_normal(size) * 0.01).astype(F32)
        for dt, mode in [(QUINT8, "MIN_FIRST"), (QINT8, "MIN_COMBINED"), (QUINT8, "MIN_COMBINED"),
                         (QINT8, "SCALED"), (QINT16, "MIN_COMBINED"), (QINT32, "MIN_COMBINED"),
                         (QUINT16, "MIN_FIRST")]:
            theirs = tf.raw_ops.QuantizeV2(input=x, min_range=lo, max_range=hi, T=tf_dtype(tf, dt),
                                           mode=mode, ensure_minimum_range=minimum)
            ours = run("QuantizeV2", [x, F32(lo), F32(hi)], T=dt, mode=mode,
                       ensure_minimum_range=minimum)
            assert_outputs(ours, theirs, tf)


@pytest.mark.parametrize("dt,mode", [(QUINT8, "MIN_COMBINED"), (QINT8, "SCALED"),
                                     (QINT8, "MIN_COMBINED"), (QUINT8, "SCALED")])
def test_quantize_v2_per_axis(tf, dt, mode):
    rng = np.random.default_rng(11)
    for axis, shape in [(0, (3, 5)), (1, (2, 4, 3)), (2, (2, 3, 5))]:
        x = (rng.standard_normal(shape) * 3).astype(F32)
        n = shape[axis]
        lo = np.array([random_range(rng)[0] for _ in range(n)], F32)
        hi = lo + np.abs(rng.standard_normal(n)).astype(F32) + F32(0.1)
        theirs = tf.raw_ops.QuantizeV2(input=x, min_range=lo, max_range=hi, T=tf_dtype(tf, dt),
                                       mode=mode, axis=axis)
        ours = run("QuantizeV2", [x, lo, hi], T=dt, mode=mode, axis=axis)
        assert_outputs(ours, theirs, tf)


def test_quantize_v2_rank0_and_big(tf):
    # oneDNN's MIN_FIRST truncates (and wraps) a rank-0 input instead of rounding.
    for v in [0.7, -1.5, 1.5, 3.0, -0.999, 0.99999, 0.0]:
        x = F32(v)
        theirs = tf.raw_ops.QuantizeV2(input=x, min_range=-1.0, max_range=1.0, T=tf.quint8,
                                       mode="MIN_FIRST")
        assert_outputs(run("QuantizeV2", [x, F32(-1), F32(1)], T=QUINT8, mode="MIN_FIRST"),
                       theirs, tf)
    # Large inputs go through the threaded chunked path.
    x = np.random.default_rng(0).standard_normal(600_000).astype(F32) * 4
    for dt, mode in [(QUINT8, "MIN_FIRST"), (QUINT8, "MIN_COMBINED"), (QINT8, "MIN_COMBINED"),
                     (QINT8, "SCALED"), (QINT16, "MIN_FIRST")]:
        theirs = tf.raw_ops.QuantizeV2(input=x, min_range=-5.0, max_range=7.0, T=tf_dtype(tf, dt),
                                       mode=mode)
        assert_outputs(run("QuantizeV2", [x, F32(-5), F32(7)], T=dt, mode=mode), theirs, tf)


# ---- Dequantize ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dt,mode,narrow", [
    (dt, mode, narrow) for dt in (QUINT8, QINT8, QUINT16, QINT16, QINT32)
    for mode in ("MIN_COMBINED", "MIN_FIRST", "SCALED")
    for narrow in ((False, True) if mode == "SCALED" else (False,))])
def test_dequantize(tf, dt, mode, narrow):
    rng = np.random.default_rng(dt + 100)
    for lo, hi in EDGE_RANGES + [random_range(rng) for _ in range(4)]:
        codes = random_codes(rng, (7, 31), dt)
        codes[0, :2] = [Q.qtype(dt).lowest, Q.qtype(dt).highest]
        theirs = tf.raw_ops.Dequantize(input=tq(tf, codes, dt), min_range=lo, max_range=hi,
                                       mode=mode, narrow_range=narrow)
        ours = run("Dequantize", [codes, F32(lo), F32(hi)], T=dt, mode=mode, narrow_range=narrow)
        assert_outputs(ours, (theirs,), tf)


@pytest.mark.parametrize("dt,mode", [(QUINT8, "MIN_COMBINED"), (QINT8, "SCALED"),
                                     (QINT8, "MIN_COMBINED"), (QUINT16, "SCALED")])
def test_dequantize_per_axis(tf, dt, mode):
    rng = np.random.default_rng(5)
    for axis, shape in [(0, (3, 5)), (1, (2, 4, 3)), (3, (2, 2, 3, 6))]:
        codes = random_codes(rng, shape, dt)
        n = shape[axis]
        lo = np.array([random_range(rng)[0] for _ in range(n)], F32)
        hi = lo + np.abs(rng.standard_normal(n)).astype(F32) + F32(0.1)
        theirs = tf.raw_ops.Dequantize(input=tq(tf, codes, dt), min_range=lo, max_range=hi,
                                       mode=mode, axis=axis)
        ours = run("Dequantize", [codes, lo, hi], T=dt, mode=mode, axis=axis)
        assert_outputs(ours, (theirs,), tf)


def test_dequantize_bfloat16_and_big(tf):
    rng = np.random.default_rng(9)
    codes = random_codes(rng, (50, 40), QINT8)
    theirs = tf.raw_ops.Dequantize(input=tq(tf, codes, QINT8), min_range=-3.3, max_range=2.1,
                                   mode="MIN_COMBINED", dtype=tf.bfloat16)
    ours = run("Dequantize", [codes, F32(-3.3), F32(2.1)], T=QINT8, mode="MIN_COMBINED", dtype=14)
    assert_same(ours[0], tf.cast(theirs, tf.float32).numpy(), "bfloat16")
    codes = random_codes(rng, (600_000,), QUINT8)
    for mode in ("MIN_COMBINED", "MIN_FIRST", "SCALED"):
        theirs = tf.raw_ops.Dequantize(input=tq(tf, codes, QUINT8), min_range=-2.0, max_range=5.0,
                                       mode=mode)
        ours = run("Dequantize", [codes, F32(-2), F32(5)], T=QUINT8, mode=mode)
        assert_outputs(ours, (theirs,), tf)


def test_min_first_round_trip_of_zero(tf):
    # QuantizeV2 rounds min * (255 / span) and Dequantize rounds min / (span / 255): in [-1, 1]
    # the first is -127.5 exactly (-> -128) and the second -127.49999 (-> -127), so 0.0 comes
    # back as one step, 2/255. Both TensorFlow and gtt-rules do this.
    for lo, hi, expected in [(-1.0, 1.0, F32(2.0) / F32(255)), (-0.37, 5.1, 0.0), (-3.3, 0.77, 0.0)]:
        zeros = np.zeros(3, F32)
        q = tf.raw_ops.QuantizeV2(input=zeros, min_range=lo, max_range=hi, T=tf.quint8,
                                  mode="MIN_FIRST")
        theirs = tf.raw_ops.Dequantize(input=q.output, min_range=q.output_min,
                                       max_range=q.output_max, mode="MIN_FIRST")
        codes, a, b = run("QuantizeV2", [zeros, F32(lo), F32(hi)], T=QUINT8, mode="MIN_FIRST")
        ours = run("Dequantize", [codes, a, b], T=QUINT8, mode="MIN_FIRST")
        assert_outputs(ours, (theirs,), tf)
        assert np.all(ours[0] > 0) if expected else np.all(ours[0] == 0)


# ---- QuantizedMatMul -----------------------------------------------------------------------------

def matmul_cases():
    rng = np.random.default_rng(21)
    cases = []
    for seed in SEEDS:
        r = np.random.default_rng(seed)
        m, k, n = (int(v) for v in r.integers(1, 40, 3))
        cases.append((seed, m, k, n, *random_range(r), *random_range(r),
                      bool(r.integers(2)), bool(r.integers(2))))
    # Long K (several exact float chunks), ranges without zero, huge offsets that wrap int32.
    cases += [(100, 5, 3000, 7, -1.0, 1.0, 0.0, 6.0, False, False),
              (101, 9, 1500, 4, 0.5, 2.0, -2.0, -0.5, True, False),
              (102, 3, 700, 5, 1000.0, 1000.5, -3.0, 1.0, False, True),
              (103, 2, 64, 3, -1e-6, 1e-6, -7e4, 7e4, True, True),
              (104, 1, 1, 1, 0.0, 1.0, 0.0, 1.0, False, False)]
    del rng
    return cases


@pytest.mark.parametrize("seed,m,k,n,min_a,max_a,min_b,max_b,transpose_a,transpose_b",
                         matmul_cases())
def test_quantized_mat_mul(tf, seed, m, k, n, min_a, max_a, min_b, max_b, transpose_a, transpose_b):
    rng = np.random.default_rng(seed)
    a = random_codes(rng, (k, m) if transpose_a else (m, k), QUINT8)
    b = random_codes(rng, (n, k) if transpose_b else (k, n), QUINT8)
    ranges = [F32(min_a), F32(max_a), F32(min_b), F32(max_b)]
    theirs = tf.raw_ops.QuantizedMatMul(a=tq(tf, a, QUINT8), b=tq(tf, b, QUINT8), min_a=ranges[0],
                                        max_a=ranges[1], min_b=ranges[2], max_b=ranges[3],
                                        transpose_a=transpose_a, transpose_b=transpose_b)
    ours = run("QuantizedMatMul", [a, b, *ranges], T1=QUINT8, T2=QUINT8, Toutput=QINT32,
               transpose_a=transpose_a, transpose_b=transpose_b)
    assert_outputs(ours, theirs, tf)


# ---- QuantizedConv2D -----------------------------------------------------------------------------

def conv_cases():
    cases = []
    for seed in SEEDS:
        r = np.random.default_rng(seed + 50)
        h, w = (int(v) for v in r.integers(1, 12, 2))
        fh, fw = (int(v) for v in r.integers(1, 5, 2))
        padding = "SAME" if r.integers(2) else "VALID"
        stride = int(r.integers(1, 4))
        if padding == "VALID":
            h, w = max(h, fh), max(w, fw)
        cases.append((seed, int(r.integers(1, 3)), h, w, int(r.integers(1, 6)), fh, fw,
                      int(r.integers(1, 6)), stride, padding, *random_range(r), *random_range(r)))
    # Odd sizes with stride 2 (SAME and VALID), strides that skip the last input, batch > 1,
    # input ranges where zero has no code (negative offset, offset above 255), 1x1 filters.
    cases += [(200, 2, 7, 9, 3, 3, 3, 4, 2, "SAME", -1.0, 1.0, -1.0, 1.0),
              (201, 1, 8, 8, 2, 1, 1, 3, 4, "VALID", 0.0, 6.0, -0.5, 0.5),
              (202, 1, 8, 8, 2, 1, 1, 3, 4, "SAME", 0.0, 6.0, -0.5, 0.5),
              (203, 3, 6, 5, 4, 3, 2, 2, 2, "VALID", -2.0, 3.0, 0.0, 1.0),
              (204, 1, 5, 5, 2, 3, 3, 2, 1, "SAME", 0.5, 2.0, -1.0, 1.0),
              (205, 1, 5, 6, 2, 3, 3, 2, 2, "SAME", -2.0, -0.5, -1.0, 1.0),
              (206, 2, 9, 7, 3, 5, 3, 2, 3, "SAME", 1000.0, 1000.3, -1.0, 2.0),
              (207, 1, 4, 4, 70, 2, 2, 5, 1, "VALID", -1.0, 1.0, 0.0, 1.0)]
    return cases


@pytest.mark.parametrize("seed,batch,h,w,depth,fh,fw,out_depth,stride,padding,"
                         "min_input,max_input,min_filter,max_filter", conv_cases())
def test_quantized_conv2d(tf, seed, batch, h, w, depth, fh, fw, out_depth, stride, padding,
                          min_input, max_input, min_filter, max_filter):
    rng = np.random.default_rng(seed)
    x = random_codes(rng, (batch, h, w, depth), QUINT8)
    f = random_codes(rng, (fh, fw, depth, out_depth), QUINT8)
    ranges = [F32(min_input), F32(max_input), F32(min_filter), F32(max_filter)]
    strides = [1, stride, stride, 1]
    theirs = tf.raw_ops.QuantizedConv2D(input=tq(tf, x, QUINT8), filter=tq(tf, f, QUINT8),
                                        min_input=ranges[0], max_input=ranges[1],
                                        min_filter=ranges[2], max_filter=ranges[3],
                                        strides=strides, padding=padding)
    ours = run("QuantizedConv2D", [x, f, *ranges], Tinput=QUINT8, Tfilter=QUINT8, out_type=QINT32,
               strides=strides, padding=padding)
    assert_outputs(ours, theirs, tf)


def test_quantized_conv2d_in_chunks(tf, monkeypatch):
    # A small im2col budget makes the kernel run the GEMM over several row blocks.
    from gtt_rules.engine.kernels import quantized
    monkeypatch.setattr(quantized, "_IM2COL_FLOATS", 500)
    rng = np.random.default_rng(7)
    x = random_codes(rng, (2, 13, 11, 6), QUINT8)
    f = random_codes(rng, (3, 3, 6, 5), QUINT8)
    ranges = [F32(-0.7), F32(2.0), F32(-1.0), F32(0.3)]
    for stride, padding in [(1, "SAME"), (2, "VALID"), (2, "SAME")]:
        strides = [1, stride, stride, 1]
        theirs = tf.raw_ops.QuantizedConv2D(input=tq(tf, x, QUINT8), filter=tq(tf, f, QUINT8),
                                            min_input=ranges[0], max_input=ranges[1],
                                            min_filter=ranges[2], max_filter=ranges[3],
                                            strides=strides, padding=padding)
        ours = run("QuantizedConv2D", [x, f, *ranges], Tinput=QUINT8, Tfilter=QUINT8,
                   out_type=QINT32, strides=strides, padding=padding)
        assert_outputs(ours, theirs, tf)


def test_range_errors_match_tensorflow(tf):
    a = np.zeros((2, 2), np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_a must be larger than min_a"):
        tf.raw_ops.QuantizedMatMul(a=tq(tf, a, QUINT8), b=tq(tf, a, QUINT8), min_a=1.0, max_a=1.0,
                                   min_b=0.0, max_b=1.0)
    with pytest.raises(ValueError, match="max_a must be larger than min_a"):
        run("QuantizedMatMul", [a, a, F32(1), F32(1), F32(0), F32(1)], T1=QUINT8, T2=QUINT8)
    x = np.zeros(4, F32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than input_min_range"):
        tf.raw_ops.QuantizeV2(input=x, min_range=1.0, max_range=0.0, T=tf.qint8, mode="SCALED")
    with pytest.raises(ValueError, match="larger than input_min_range"):
        run("QuantizeV2", [x, F32(1), F32(0)], T=QINT8, mode="SCALED")
    with pytest.raises(tf.errors.InvalidArgumentError, match="requested_output_min must be <= 0"):
        tf.raw_ops.Requantize(input=tq(tf, np.zeros(3, np.int32), QINT32), input_min=-1.0,
                              input_max=1.0, requested_output_min=0.5, requested_output_max=1.0,
                              out_type=tf.quint8)
    with pytest.raises(ValueError, match="requested_output_min must be <= 0"):
        run("Requantize", [np.zeros(3, np.int32), F32(-1), F32(1), F32(0.5), F32(1)],
            Tinput=QINT32, out_type=QUINT8)


def test_quantized_conv2d_refuses_dilations(tf):
    rng = np.random.default_rng(1)
    x = random_codes(rng, (1, 9, 9, 3), QUINT8)
    f = random_codes(rng, (3, 3, 3, 2), QUINT8)
    ranges = [F32(-1), F32(1), F32(-1), F32(1)]
    with pytest.raises(tf.errors.InvalidArgumentError, match="dilated rate"):
        tf.raw_ops.QuantizedConv2D(input=tq(tf, x, QUINT8), filter=tq(tf, f, QUINT8),
                                   min_input=ranges[0], max_input=ranges[1], min_filter=ranges[2],
                                   max_filter=ranges[3], strides=[1, 1, 1, 1], padding="SAME",
                                   dilations=[1, 2, 2, 1])
    with pytest.raises(ValueError, match="dilated rate"):
        run("QuantizedConv2D", [x, f, *ranges], Tinput=QUINT8, Tfilter=QUINT8, out_type=QINT32,
            strides=[1, 1, 1, 1], padding="SAME", dilations=[1, 2, 2, 1])


# ---- bias add and activations --------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dt", [QUINT8, QINT8])
def test_quantized_bias_add(tf, seed, dt):
    rng = np.random.default_rng(seed + 300)
    shape = tuple(int(v) for v in rng.integers(1, 6, rng.integers(2, 5)))
    x = random_codes(rng, shape, dt)
    bias = random_codes(rng, (shape[-1],), dt)
    ranges = [*random_range(rng), *random_range(rng)]
    theirs = tf.raw_ops.QuantizedBiasAdd(input=tq(tf, x, dt), bias=tq(tf, bias, dt),
                                         min_input=ranges[0], max_input=ranges[1],
                                         min_bias=ranges[2], max_bias=ranges[3], out_type=tf.qint32)
    ours = run("QuantizedBiasAdd", [x, bias, *ranges], T1=dt, T2=dt, out_type=QINT32)
    assert_outputs(ours, theirs, tf)


@pytest.mark.parametrize("op", ["QuantizedRelu", "QuantizedRelu6", "QuantizedReluX"])
@pytest.mark.parametrize("dt", [QUINT8, QINT32])
def test_quantized_relu(tf, op, dt):
    rng = np.random.default_rng(len(op) + dt)
    for lo, hi in EDGE_RANGES[:4] + [(-10.0, 3.0), (-1.0, 20.0)] + [random_range(rng) for _ in range(4)]:
        if lo == hi:
            continue
        x = random_codes(rng, (4, 9), dt)
        tf_op = op
        extra = []
        if op == "QuantizedReluX":
            # TensorFlow 2.21 registers no kernel for QuantizedReluX; with max_value 6 it must
            # agree with QuantizedRelu6.
            tf_op, extra = "QuantizedRelu6", [F32(6.0)]
        theirs = getattr(tf.raw_ops, tf_op)(features=tq(tf, x, dt), min_features=F32(lo),
                                            max_features=F32(hi), out_type=tf_dtype(tf, dt))
        ours = run(op, [x, *extra, F32(lo), F32(hi)], Tinput=dt, out_type=dt)
        assert_outputs(ours, theirs, tf)


# ---- pooling -------------------------------------------------------------------------------------

def pool_cases():
    cases = []
    for seed in SEEDS:
        r = np.random.default_rng(seed + 400)
        k = [int(v) for v in r.integers(1, 4, 2)]
        s = [int(v) for v in r.integers(1, 4, 2)]
        padding = "SAME" if r.integers(2) else "VALID"
        h, w = (int(v) for v in r.integers(3, 11, 2))
        cases.append((seed, int(r.integers(1, 3)), h, w, int(r.integers(1, 5)), k, s, padding))
    cases += [(500, 2, 7, 7, 3, [3, 3], [2, 2], "SAME"), (501, 1, 8, 5, 2, [2, 2], [2, 2], "VALID"),
              (502, 1, 5, 5, 1, [3, 3], [1, 1], "SAME"), (503, 1, 9, 9, 2, [2, 3], [3, 2], "SAME")]
    return cases


@pytest.mark.parametrize("seed,batch,h,w,depth,k,s,padding", pool_cases())
@pytest.mark.parametrize("op", ["QuantizedMaxPool", "QuantizedAvgPool"])
def test_quantized_pool(tf, op, seed, batch, h, w, depth, k, s, padding):
    rng = np.random.default_rng(seed)
    x = random_codes(rng, (batch, h, w, depth), QUINT8)
    lo, hi = random_range(rng)
    ksize, strides = [1, *k, 1], [1, *s, 1]
    theirs = getattr(tf.raw_ops, op)(input=tq(tf, x, QUINT8), min_input=lo, max_input=hi,
                                     ksize=ksize, strides=strides, padding=padding)
    ours = run(op, [x, lo, hi], T=QUINT8, ksize=ksize, strides=strides, padding=padding)
    assert_outputs(ours, theirs, tf)


# ---- concat and reshape --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dt", [QUINT8, QINT32])
def test_quantized_concat(tf, seed, dt):
    rng = np.random.default_rng(seed + 600)
    rank = int(rng.integers(1, 4))
    axis = int(rng.integers(0, rank))
    base = [int(v) for v in rng.integers(1, 5, rank)]
    n = int(rng.integers(2, 5))           # TensorFlow's op requires N >= 2
    values, mins, maxes = [], [], []
    shared = random_range(rng)
    for i in range(n):
        shape = list(base)
        shape[axis] = int(rng.integers(1, 4))
        values.append(random_codes(rng, shape, dt))
        lo, hi = shared if i == 0 or rng.integers(3) == 0 else random_range(rng)
        mins.append(F32(lo))
        maxes.append(F32(hi))
    theirs = tf.raw_ops.QuantizedConcat(concat_dim=np.int32(axis),
                                        values=[tq(tf, v, dt) for v in values],
                                        input_mins=mins, input_maxes=maxes)
    ours = run("QuantizedConcat", [np.int32(axis), *values, *mins, *maxes], N=n, T=dt)
    assert_outputs(ours, theirs, tf)


def test_quantized_reshape(tf):
    x = random_codes(np.random.default_rng(0), (2, 3, 4), QUINT8)
    shape = np.array([4, -1], np.int32)
    theirs = tf.raw_ops.QuantizedReshape(tensor=tq(tf, x, QUINT8), shape=shape,
                                         input_min=F32(-1.5), input_max=F32(2.5))
    ours = run("QuantizedReshape", [x, shape, F32(-1.5), F32(2.5)], T=QUINT8)
    assert_outputs(ours, theirs, tf)


# ---- requantization ------------------------------------------------------------------------------

def int32_cases():
    cases = []
    for seed in SEEDS:
        r = np.random.default_rng(seed + 700)
        lo, hi = random_range(r)
        spread = int(10 ** r.uniform(2, 9.3))
        cases.append((seed, lo, hi, spread))
    cases += [(800, -1.0, 1.0, 2 ** 31 - 1), (801, 0.0, 6.0, 1000), (802, -5.0, -1.0, 70000),
              (803, -1e-3, 1e-3, 2 ** 20), (804, -3e4, 3e4, 2 ** 28)]
    return cases


def random_int32(rng, spread, size=500) -> np.ndarray:
    x = rng.integers(-spread, spread, size=size, endpoint=True)
    return np.clip(x, -(2 ** 31), 2 ** 31 - 1).astype(np.int32)


@pytest.mark.parametrize("seed,lo,hi,spread", int32_cases())
def test_requantization_range(tf, seed, lo, hi, spread):
    x = random_int32(np.random.default_rng(seed), spread)
    theirs = tf.raw_ops.RequantizationRange(input=tq(tf, x, QINT32), input_min=F32(lo),
                                            input_max=F32(hi))
    ours = run("RequantizationRange", [x, F32(lo), F32(hi)], Tinput=QINT32)
    assert_outputs(ours, theirs, tf)


@pytest.mark.parametrize("seed,lo,hi,spread", int32_cases())
def test_requantize(tf, seed, lo, hi, spread):
    rng = np.random.default_rng(seed)
    x = random_int32(rng, spread)
    for out_lo, out_hi in [(-1.0, 1.0), (0.0, 6.0), (-1e-3, 0.0), (0.0, 0.0),
                           (F32(-rng.uniform(0, 5)), F32(rng.uniform(0, 5)))]:
        theirs = tf.raw_ops.Requantize(input=tq(tf, x, QINT32), input_min=F32(lo),
                                       input_max=F32(hi), requested_output_min=F32(out_lo),
                                       requested_output_max=F32(out_hi), out_type=tf.quint8)
        ours = run("Requantize", [x, F32(lo), F32(hi), F32(out_lo), F32(out_hi)], Tinput=QINT32,
                   out_type=QUINT8)
        assert_outputs(ours, theirs, tf)


@pytest.mark.parametrize("seed,lo,hi,spread", int32_cases())
def test_quantize_down_and_shrink_range(tf, seed, lo, hi, spread):
    x = random_int32(np.random.default_rng(seed), spread)
    theirs = tf.raw_ops.QuantizeDownAndShrinkRange(input=tq(tf, x, QINT32), input_min=F32(lo),
                                                   input_max=F32(hi), out_type=tf.quint8)
    ours = run("QuantizeDownAndShrinkRange", [x, F32(lo), F32(hi)], Tinput=QINT32, out_type=QUINT8)
    assert_outputs(ours, theirs, tf)


# ---- QuantizedAdd and QuantizedMul ---------------------------------------------------------------

ELEMENTWISE_SHAPES = [((3, 4), (3, 4)), ((5,), (1,)), ((1,), (2, 3)), ((), (4, 2)),
                      ((2, 3, 4), (4,)), ((4,), (2, 3, 4)), ((2, 3), (2, 1)), ((1, 6), (6,)),
                      ((2, 1, 4), (1, 4)), ((7, 5), (5,))]


@pytest.mark.parametrize("x_shape,y_shape", ELEMENTWISE_SHAPES)
@pytest.mark.parametrize("op", ["QuantizedAdd", "QuantizedMul"])
def test_quantized_add_mul(tf, op, x_shape, y_shape):
    rng = np.random.default_rng(len(x_shape) * 10 + len(y_shape) + len(op))
    for _ in range(4):
        x = random_codes(rng, x_shape, QUINT8)
        y = random_codes(rng, y_shape, QUINT8)
        ranges = [*random_range(rng), *random_range(rng)]
        if ranges[0] == ranges[1] or ranges[2] == ranges[3]:
            continue
        theirs = getattr(tf.raw_ops, op)(x=tq(tf, x, QUINT8), y=tq(tf, y, QUINT8),
                                         min_x=ranges[0], max_x=ranges[1], min_y=ranges[2],
                                         max_y=ranges[3])
        ours = run(op, [x, y, *ranges], T1=QUINT8, T2=QUINT8, Toutput=QINT32)
        assert_outputs(ours, theirs, tf)


# ---- QuantizedResizeBilinear ---------------------------------------------------------------------

def resize_cases():
    cases = []
    for seed in SEEDS:
        r = np.random.default_rng(seed + 900)
        h, w = (int(v) for v in r.integers(1, 9, 2))
        oh, ow = (int(v) for v in r.integers(1, 17, 2))
        align, half = [(False, False), (True, False), (False, True)][seed % 3]
        cases.append((seed, int(r.integers(1, 3)), h, w, int(r.integers(1, 5)), oh, ow, align, half))
    cases += [(950, 1, 4, 4, 3, 4, 4, False, False), (951, 2, 3, 5, 1, 7, 11, True, True),
              (952, 1, 6, 6, 3, 3, 3, False, True), (953, 1, 2, 9, 8, 5, 20, False, False)]
    return cases


@pytest.mark.parametrize("seed,batch,h,w,channels,out_h,out_w,align,half", resize_cases())
@pytest.mark.parametrize("dt", [QUINT8, QINT32, 1])
def test_quantized_resize_bilinear(tf, dt, seed, batch, h, w, channels, out_h, out_w, align, half):
    rng = np.random.default_rng(seed)
    if dt == 1:
        x = rng.standard_normal((batch, h, w, channels)).astype(F32)
        images = tf.constant(x)
    else:
        x = random_codes(rng, (batch, h, w, channels), dt) if dt == QUINT8 else \
            random_int32(rng, 2 ** 30, (batch, h, w, channels))
        images = tq(tf, x, dt)
    size = np.array([out_h, out_w], np.int32)
    theirs = tf.raw_ops.QuantizedResizeBilinear(images=images, size=size, min=F32(-2), max=F32(3),
                                                align_corners=align, half_pixel_centers=half)
    ours = run("QuantizedResizeBilinear", [x, size, F32(-2), F32(3)], T=dt, align_corners=align,
               half_pixel_centers=half)
    assert_outputs(ours, theirs, tf)


# ---- shared math ---------------------------------------------------------------------------------

def test_round_half_away():
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, 0.49999997, -0.49999997, 8388607.5, 1e30, -0.0],
                 dtype=F32)
    expected = np.array([1, -1, 2, -2, 3, 0, -0, 8388608, 1e30, 0], dtype=F32)
    assert np.array_equal(Q.round_half_away(x), expected)
    assert Q.round_half_away(x.astype(np.float64)).tolist()[:4] == [1, -1, 2, -2]


def test_exact_int_matmul_uses_every_path():
    rng = np.random.default_rng(0)
    for bound_a, bound_b in [(128, 128), (300, 255), (2 ** 20, 2 ** 12), (2 ** 30, 2 ** 30)]:
        a = rng.integers(-bound_a, bound_a, (5, 700), endpoint=True)
        b = rng.integers(-bound_b, bound_b, (700, 3), endpoint=True)
        exact = a.astype(object) @ b.astype(object)
        got = Q.exact_int_matmul(a.astype(F32) if bound_a < 2 ** 24 else a,
                                 b.astype(F32) if bound_b < 2 ** 24 else b, bound_a, bound_b)
        wrap = np.array([[Q.wrap_int64(int(v)) for v in row] for row in exact])
        assert np.array_equal(got, wrap)


# ---- chunked, threaded and fast paths ------------------------------------------------------------

@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 1000 elements spread over 3 threads from 3000 elements on: the paths that large
    tensors take, exercised (with several chunks, uneven last chunks and thread hand-offs) on
    tensors small enough for many cases."""
    from gtt_rules.engine.kernels import chunked
    monkeypatch.setattr(chunked, "CHUNK", 1000)
    monkeypatch.setattr(chunked, "PARALLEL_MIN", 3000)
    monkeypatch.setattr(chunked, "THREADS", 3)


def adversarial_floats(rng, lo, hi, size, nan: bool):
    """Random bit patterns (infinities, subnormals, huge values), values around the range, and
    exact ties and their neighbours for every scale the modes derive from it."""
    bits = rng.integers(0, 2 ** 32, size // 4, dtype=np.uint64).astype(np.uint32).view(F32)
    if not nan:
        bits = bits[~np.isnan(bits)]
    span = max(abs(lo), abs(hi), 1e-3)
    with np.errstate(over="ignore"):
        near = (rng.standard_normal(size // 4) * span * 1.3).astype(F32)
    a, b = (np.float64(v) for v in Q.adjusted_range(lo, hi))
    ties = []
    for steps in (255.0, 127.0, 127.5, 65535.0, 32767.0):
        t = (rng.integers(-300, 300, size // 20) + 0.5) * (b - a) / steps
        ties += [a + t, -t, t]
    with np.errstate(over="ignore"):      # ties of huge ranges overflow to infinity: wanted too
        ties = np.concatenate(ties).astype(F32)
    ties = np.concatenate([ties, np.nextafter(ties, F32(np.inf)), np.nextafter(ties, -F32(np.inf))])
    special = np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, lo, hi, a, b, 3e38, -3e38], F32)
    x = np.concatenate([bits, near, ties, special])
    rng.shuffle(x)
    return x


FAST_RANGES = [(-3.5, 4.25), (0.0, 6.0), (-1.0, 1.0), (-2.0, -0.5), (5.0, 6.0), (0.0, 0.0),
               (-1e-4, 1e-4), (-1000.0, 3.0), (1e-30, 2e-30), (-3e38, 3e38)]


@pytest.mark.parametrize("dt,mode,round_mode,narrow", [
    case for case in QUANTIZE_CASES if Q.qtype(case[0]).bits <= 16])
def test_quantize_v2_in_threaded_chunks(tf, small_chunks, dt, mode, round_mode, narrow):
    # NaN codes depend on where TensorFlow's threads split the tensor for the signed types'
    # MIN_COMBINED and SCALED (the scalar tail of each block stores 0); elsewhere NaN is code 0.
    nan = mode == "MIN_FIRST" or not Q.qtype(dt).signed
    rng = np.random.default_rng(dt * 31 + len(mode) + len(round_mode) + narrow)
    for lo, hi in FAST_RANGES:
        with np.errstate(over="ignore"):
            if not nan and np.isinf(F32(hi) - F32(lo)):
                continue                      # an infinite span makes NaN from any value
        x = adversarial_floats(rng, F32(lo), F32(hi), 12_000, nan)
        if nan:
            x[-3:] = np.nan                  # in the scalar tail too
        theirs = tf.raw_ops.QuantizeV2(input=x, min_range=lo, max_range=hi, T=tf_dtype(tf, dt),
                                       mode=mode, round_mode=round_mode, narrow_range=narrow)
        ours = run("QuantizeV2", [x, F32(lo), F32(hi)], T=dt, mode=mode, round_mode=round_mode,
                   narrow_range=narrow)
        assert_outputs(ours, theirs, tf)
        # ensure_minimum_range 0 lets an empty range through: infinite scales, non-finite
        # values before the cast (where TensorFlow's block tails differ, as for NaN above).
        if lo == hi and nan:
            theirs = tf.raw_ops.QuantizeV2(input=x, min_range=lo, max_range=hi,
                                           T=tf_dtype(tf, dt), mode=mode, round_mode=round_mode,
                                           narrow_range=narrow, ensure_minimum_range=0.0)
            ours = run("QuantizeV2", [x, F32(lo), F32(hi)], T=dt, mode=mode,
                       round_mode=round_mode, narrow_range=narrow, ensure_minimum_range=0.0)
            assert_outputs(ours, theirs, tf)


@pytest.mark.parametrize("dt", [QUINT8, QINT8, QUINT16, QINT16])
@pytest.mark.parametrize("mode", ["MIN_COMBINED", "MIN_FIRST", "SCALED"])
def test_dequantize_in_threaded_chunks(tf, small_chunks, dt, mode):
    rng = np.random.default_rng(dt + len(mode))
    codes = random_codes(rng, (7, 1429), dt)
    codes[0, :2] = [Q.qtype(dt).lowest, Q.qtype(dt).highest]
    for lo, hi in FAST_RANGES:
        for narrow in (False, True) if mode == "SCALED" else (False,):
            theirs = tf.raw_ops.Dequantize(input=tq(tf, codes, dt), min_range=lo, max_range=hi,
                                           mode=mode, narrow_range=narrow)
            ours = run("Dequantize", [codes, F32(lo), F32(hi)], T=dt, mode=mode,
                       narrow_range=narrow)
            assert_outputs(ours, (theirs,), tf)


REQUANTIZE_PATHS = [
    # (input range, requested output range, code spread, extra codes): codes within 2^24 (exact
    # widening), beyond it (through float, int32 cast), at the very top (int64 cast), outputs so
    # narrow that one code step skips output codes (no window), products that wrap int64.
    ((-50.0, 50.0), (-3.0, 4.0), 2 ** 20, []),
    ((-50.0, 50.0), (-3.0, 4.0), 2 ** 28, [2 ** 24 + 1, -(2 ** 24) - 3]),
    ((-50.0, 50.0), (-30.0, 40.0), 2 ** 31 - 1, [2 ** 31 - 1, 2 ** 31 - 64, -(2 ** 31)]),
    ((-4195.9, 4195.9), (0.0, 4e-4), 500, []),
    ((-1.0, 1.0), (-1e-6, 1e-6), 2 ** 31 - 1, [2 ** 31 - 1]),
    ((0.0, 6.0), (0.0, 6.0), 2 ** 31 - 1, [2 ** 31 - 1, -(2 ** 31)]),
    ((-1e-3, 1e-3), (-1e-5, 0.0), 2 ** 16, []),
    ((2.0, 1.0), (-1.0, 1.0), 2 ** 20, []),
]


@pytest.mark.parametrize("in_range,out_range,spread,extra", REQUANTIZE_PATHS)
def test_requantize_paths_in_threaded_chunks(tf, small_chunks, in_range, out_range, spread,
                                             extra):
    rng = np.random.default_rng(spread % 1000)
    x = random_int32(rng, spread, 9_001)
    x[:len(extra)] = extra
    x[-len(extra) or len(x):] = extra
    lo, hi = (F32(v) for v in in_range)
    theirs = tf.raw_ops.Requantize(input=tq(tf, x, QINT32), input_min=lo, input_max=hi,
                                   requested_output_min=F32(out_range[0]),
                                   requested_output_max=F32(out_range[1]), out_type=tf.quint8)
    ours = run("Requantize", [x, lo, hi, F32(out_range[0]), F32(out_range[1])], Tinput=QINT32,
               out_type=QUINT8)
    assert_outputs(ours, theirs, tf)
    theirs = tf.raw_ops.QuantizeDownAndShrinkRange(input=tq(tf, x, QINT32), input_min=lo,
                                                   input_max=hi, out_type=tf.quint8)
    ours = run("QuantizeDownAndShrinkRange", [x, lo, hi], Tinput=QINT32, out_type=QUINT8)
    assert_outputs(ours, theirs, tf)


@pytest.mark.parametrize("dt", [QUINT8, QINT8])
def test_quantized_bias_add_in_threaded_chunks(tf, small_chunks, dt):
    rng = np.random.default_rng(dt)
    for shape in [(3, 7, 11, 37), (9000, 1), (2, 5000)]:
        x = random_codes(rng, shape, dt)
        bias = random_codes(rng, shape[-1:], dt)
        ranges = [*random_range(rng), *random_range(rng)]
        theirs = tf.raw_ops.QuantizedBiasAdd(input=tq(tf, x, dt), bias=tq(tf, bias, dt),
                                             min_input=ranges[0], max_input=ranges[1],
                                             min_bias=ranges[2], max_bias=ranges[3],
                                             out_type=tf.qint32)
        ours = run("QuantizedBiasAdd", [x, bias, *ranges], T1=dt, T2=dt, out_type=QINT32)
        assert_outputs(ours, theirs, tf)


def test_quantized_avg_pool_wide_windows(tf):
    # Windows of more than 128 codes sum in int32 rather than int16.
    rng = np.random.default_rng(3)
    x = random_codes(rng, (2, 30, 27, 3), QUINT8)
    x[0] = 255
    for k, s, padding in [(12, 5, "SAME"), (13, 13, "VALID"), (11, 1, "SAME")]:
        theirs = tf.raw_ops.QuantizedAvgPool(input=tq(tf, x, QUINT8), min_input=F32(-1),
                                             max_input=F32(1), ksize=[1, k, k, 1],
                                             strides=[1, s, s, 1], padding=padding)
        ours = run("QuantizedAvgPool", [x, F32(-1), F32(1)], T=QUINT8, ksize=[1, k, k, 1],
                   strides=[1, s, s, 1], padding=padding)
        assert_outputs(ours, theirs, tf)


# Offsets at the extremes (zero at code 0 or 255) with the farthest codes make every product
# 255 * 255, the largest partial sums: K then splits into several exact float32 chunks.
EXTREME = {"zero at 0": ((0.0, 1.0), 255), "zero at 255": ((-1.0, 0.0), 0)}


@pytest.mark.parametrize("a_case", sorted(EXTREME))
@pytest.mark.parametrize("b_case", sorted(EXTREME))
@pytest.mark.parametrize("k", [257, 258, 259, 1031, 40_000])
def test_quantized_mat_mul_extreme_offsets(tf, a_case, b_case, k):
    (a_range, a_far), (b_range, b_far) = EXTREME[a_case], EXTREME[b_case]
    rng = np.random.default_rng(k)
    a = random_codes(rng, (3, k), QUINT8)
    b = random_codes(rng, (k, 4), QUINT8)
    a[:2] = a_far                 # rows and columns of nothing but the largest products
    b[:, :2] = b_far
    ranges = [F32(v) for v in (*a_range, *b_range)]
    theirs = tf.raw_ops.QuantizedMatMul(a=tq(tf, a, QUINT8), b=tq(tf, b, QUINT8), min_a=ranges[0],
                                        max_a=ranges[1], min_b=ranges[2], max_b=ranges[3])
    ours = run("QuantizedMatMul", [a, b, *ranges], T1=QUINT8, T2=QUINT8, Toutput=QINT32)
    assert_outputs(ours, theirs, tf)       # K = 40000 wraps int32, as TensorFlow's sums do


@pytest.mark.parametrize("a_case", sorted(EXTREME))
@pytest.mark.parametrize("b_case", sorted(EXTREME))
def test_quantized_conv2d_extreme_offsets_long_k(tf, a_case, b_case):
    (a_range, a_far), (b_range, b_far) = EXTREME[a_case], EXTREME[b_case]
    rng = np.random.default_rng(len(a_case) + 3 * len(b_case))
    x = random_codes(rng, (1, 6, 5, 300), QUINT8)
    f = random_codes(rng, (3, 3, 300, 3), QUINT8)
    x[:, :3] = a_far
    f[..., 0] = b_far
    ranges = [F32(v) for v in (*a_range, *b_range)]
    for padding in ("SAME", "VALID"):
        theirs = tf.raw_ops.QuantizedConv2D(input=tq(tf, x, QUINT8), filter=tq(tf, f, QUINT8),
                                            min_input=ranges[0], max_input=ranges[1],
                                            min_filter=ranges[2], max_filter=ranges[3],
                                            strides=[1, 1, 1, 1], padding=padding)
        ours = run("QuantizedConv2D", [x, f, *ranges], Tinput=QUINT8, Tfilter=QUINT8,
                   out_type=QINT32, strides=[1, 1, 1, 1], padding=padding)
        assert_outputs(ours, theirs, tf)


def test_weights_reused_changed_or_transposed(tf):
    # The K splits of a weight array are remembered between calls: the same array again, with
    # other ranges, transposed, or changed in place must all still give TensorFlow's results.
    rng = np.random.default_rng(11)
    x = random_codes(rng, (1, 5, 4, 600), QUINT8)
    f = random_codes(rng, (2, 2, 600, 3), QUINT8)
    a = random_codes(rng, (3, 1200), QUINT8)
    w = random_codes(rng, (1200, 1200), QUINT8)
    for step in range(4):
        if step == 3:
            f[..., 1] = 0                        # in place: offsets far from these codes
            w[:, :600] = 255
        ranges = [F32(0.0), F32(1.0), F32(-1.0 + step * 0.4), F32(step * 0.3)]
        theirs = tf.raw_ops.QuantizedConv2D(input=tq(tf, x, QUINT8), filter=tq(tf, f, QUINT8),
                                            min_input=ranges[0], max_input=ranges[1],
                                            min_filter=ranges[2], max_filter=ranges[3],
                                            strides=[1, 1, 1, 1], padding="SAME")
        for _ in range(2):                       # the second call finds its K splits known
            ours = run("QuantizedConv2D", [x, f, *ranges], Tinput=QUINT8, Tfilter=QUINT8,
                       out_type=QINT32, strides=[1, 1, 1, 1], padding="SAME")
            assert_outputs(ours, theirs, tf)
        for transpose_b in (False, True, False):
            theirs = tf.raw_ops.QuantizedMatMul(a=tq(tf, a, QUINT8), b=tq(tf, w, QUINT8),
                                                min_a=ranges[0], max_a=ranges[1],
                                                min_b=ranges[2], max_b=ranges[3],
                                                transpose_b=transpose_b)
            ours = run("QuantizedMatMul", [a, w, *ranges], T1=QUINT8, T2=QUINT8,
                       Toutput=QINT32, transpose_b=transpose_b)
            assert_outputs(ours, theirs, tf)


@pytest.mark.parametrize("k", [1, 257, 258, 259, 1031, 5000])
@pytest.mark.parametrize("bound", [128, 255, 1530, 70_000])
def test_exact_matmul_int32(k, bound):
    rng = np.random.default_rng(k + bound)
    a = rng.integers(-bound, bound, (4, k), endpoint=True)
    b = rng.integers(-255, 255, (k, 5), endpoint=True)
    a[0], b[:, 0] = bound, 255            # the largest partial sums
    a[1], b[:, 1] = -bound, 255
    exact = (a.astype(object) @ b.astype(object)) % 2 ** 32
    chunks = Q.k_chunks(b.astype(F32), bound)
    assert all(bound * np.abs(b[s:e]).sum(axis=0).max() <= 2 ** 24 for s, e in chunks)
    assert [s for s, _ in chunks[1:]] == [e for _, e in chunks[:-1]]
    got = Q.exact_matmul_int32(a.astype(F32), bound, b.astype(F32))
    assert got.dtype == np.int32
    assert np.array_equal(got.astype(np.int64) % 2 ** 32, exact.astype(np.int64))


def test_for_chunks_covers_each_element_once_and_reports_errors(monkeypatch):
    from gtt_rules.engine.kernels import chunked
    monkeypatch.setattr(chunked, "PARALLEL_MIN", 10)
    monkeypatch.setattr(chunked, "THREADS", 3)
    for n, chunk in [(0, 7), (1, 7), (10, 3), (1000, 7), (1001, 1000)]:
        seen = np.zeros(n, np.int64)
        workers = []

        def worker():
            workers.append(1)

            def step(start, stop):
                seen[start:stop] += 1
            return step
        chunked.for_chunks(n, worker, chunk=chunk)
        assert np.all(seen == 1)
        assert 1 <= len(workers) <= 3 if n else not workers   # nothing to do, no step on no elements

    def failing():
        def step(start, stop):
            if start >= 500:
                raise ValueError("chunk failed")
        return step
    with pytest.raises(ValueError, match="chunk failed"):
        chunked.for_chunks(1000, failing, chunk=100)


# ---- TensorFlow without oneDNN -------------------------------------------------------------------

_REFERENCE_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import tensorflow as tf
    from gtt_rules.engine.kernels import quantization as Q
    onednn = os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    rng = np.random.default_rng(0)
    bad = 0
    for lo, hi in [(-1, 1), (-3.7, 0.2), (0, 6), (-2, -0.5), (0, 0), (-1e-4, 1e-4), (-1000, 3)]:
        x = (rng.standard_normal(4000) * max(abs(lo), abs(hi), 1)).astype(np.float32)
        cases = [(tf.quint8, 12, "MIN_FIRST", "HALF_AWAY_FROM_ZERO"),
                 (tf.quint8, 12, "SCALED", "HALF_TO_EVEN"), (tf.qint8, 11, "SCALED", "HALF_TO_EVEN"),
                 (tf.qint32, 13, "SCALED", "HALF_TO_EVEN")]
        for tt, dt, mode, rm in cases:
            if onednn and dt == 13:
                continue  # TensorFlow with oneDNN has no kernel for qint32 SCALED

            r = tf.raw_ops.QuantizeV2(input=x, min_range=lo, max_range=hi, T=tt, mode=mode,
                                      round_mode=rm)
            plain = {12: tf.uint8, 11: tf.int8, 13: tf.int32}[dt]
            codes, a, b = Q.quantize(x, lo, hi, dt, mode, rm, onednn=onednn)
            bad += not (np.array_equal(codes, tf.bitcast(r.output, plain).numpy())
                        and a == r.output_min.numpy() and b == r.output_max.numpy())
            if dt == 13:
                # Include the top codes, which qint32 SCALED dequantizes with the wrong sign.
                top = np.array([2**31 - 1, 2**31 - 100, 2**31 - 128, 2**31 - 129, -2**31, 5],
                               np.int32)
                for c in (codes, top):
                    d = tf.raw_ops.Dequantize(input=tf.constant(c, tf.qint32), min_range=a,
                                              max_range=b, mode=mode).numpy()
                    ours = Q.dequantize(c, a, b, dt, mode, onednn=onednn)
                    bad += not np.array_equal(ours.view(np.uint32), d.view(np.uint32))
    print("mismatches", bad)
    sys.exit(1 if bad else 0)
""")


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_both_semantics_match_tensorflow_with_the_same_onednn_setting(onednn):
    """One QuantizeV2 or Dequantize equals TensorFlow's: the reference kernels with oneDNN off (0),
    what the evaluator runs, and `onednn=True` with x86's oneDNN on (1)."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _REFERENCE_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


_EVALUATOR_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from gtt_rules.engine.graph import Node
    from gtt_rules.engine.kernels import KERNELS, load_all
    from gtt_rules.engine.proto import graph_def_pb2 as pb
    load_all()
    def node(op, **attrs):
        made = Node(pb.NodeDef(name=op.lower(), op=op))
        for name, value in attrs.items():
            made.set_attr(name, value)
        return made
    x, codes = np.load(sys.argv[1]), np.load(sys.argv[2])
    quantized = KERNELS["QuantizeV2"](node("QuantizeV2", T=12, mode="MIN_FIRST"),
                                      [x, np.float32(-1.3), np.float32(2.9)])[0]
    pooled = KERNELS["QuantizedAvgPool"](node("QuantizedAvgPool", T=12, ksize=[1, 2, 2, 1],
                                              strides=[1, 2, 2, 1], padding="VALID"),
                                         [codes, np.float32(0), np.float32(1)])[0]
    np.savez(sys.argv[3], quantized=quantized, pooled=pooled)
""")


def test_the_evaluator_runs_the_reference_kernels_whatever_tf_enable_onednn_opts_says(tf, tmp_path):
    """TF_ENABLE_ONEDNN_OPTS=1 does not switch the evaluator to (an incomplete mirror of) x86's
    oneDNN kernels: a whole eight-bit graph under oneDNN differs in float ops too, so the
    evaluator's numbers are always those of TensorFlow with oneDNN off."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1.3, 2.9, 4000).astype(F32)
    codes = rng.integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "codes.npy", codes)
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _EVALUATOR_SCRIPT, str(tmp_path / "x.npy"),
                             str(tmp_path / "codes.npy"), str(tmp_path / "out.npz")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")
    # TensorFlow here runs with oneDNN off (conftest): the reference kernels.
    want = tf.raw_ops.QuantizeV2(input=x, min_range=-1.3, max_range=2.9, T=tf.quint8, mode="MIN_FIRST")
    assert np.array_equal(got["quantized"], tf_codes(tf, want.output))
    pooled = tf.raw_ops.QuantizedAvgPool(input=tq(tf, codes, QUINT8), min_input=0.0, max_input=1.0,
                                         ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID")
    assert np.array_equal(got["pooled"], tf_codes(tf, pooled.output))
    # ... which are not what oneDNN computes on these inputs.
    onednn, _, _ = Q.quantize(x, F32(-1.3), F32(2.9), QUINT8, "MIN_FIRST", onednn=True)
    assert not np.array_equal(onednn, got["quantized"])


def test_small_matrix_products_run_on_one_blas_thread_and_leave_the_setting_as_it_was(monkeypatch):
    from gtt_rules.engine.kernels import chunked

    seen = []

    class Library:                   # stands for OpenBLAS: records the thread count of each product
        threads = 4

        def get_num_threads(self):
            return self.threads

        def set_num_threads(self, count):
            self.threads = count
    library = Library()
    monkeypatch.setattr(chunked, "_blas_libraries", [library])
    monkeypatch.setattr(chunked, "GEMM_PARALLEL_MIN", 1 << 24)     # a big product stays cheap here
    real_matmul = np.matmul
    monkeypatch.setattr(chunked.np, "matmul", lambda *a, **k: seen.append(library.threads) or real_matmul(*a, **k))
    rng = np.random.default_rng(0)
    small, large = rng.standard_normal((8, 16)), rng.standard_normal((16, 4))
    np.testing.assert_array_equal(chunked.matmul(small, large), small @ large)
    big = np.zeros((1 << 12, 1 << 6), np.float32)
    chunked.matmul(big, np.zeros((1 << 6, 1 << 6), np.float32))      # 2^24 multiply-adds
    assert seen == [1, 4] and library.threads == 4
    found = chunked.openblas_libraries()     # numpy's own OpenBLAS (and any other loaded) is found, and obeys
    assert found
    for real in found:
        threads = real.get_num_threads()
        try:
            real.set_num_threads(1)
            assert real.get_num_threads() == 1
        finally:
            real.set_num_threads(threads)


def test_weights_read_from_a_graph_def_are_prepared_once_per_left_bound(monkeypatch):
    """A filter decoded from a GraphDef has a uint8 dtype that is not numpy's own object; its float
    copy and K splits are still made once and reused, also when the input's range (and so the
    bound of the left codes) changes from call to call, as it does while calibrating."""
    from gtt_rules.engine.tensors import decode_tensor, encode_tensor

    rng = np.random.default_rng(5)
    weights = decode_tensor(encode_tensor(rng.integers(0, 256, (300, 7)).astype(np.uint8), QUINT8))
    a = rng.integers(0, 256, (3, 300)).astype(np.uint8)
    calls = []
    real = Q.k_chunks
    monkeypatch.setattr(Q, "k_chunks", lambda b, bound: calls.append(bound) or real(b, bound))
    node = make_node("QuantizedMatMul", T1=QUINT8, T2=QUINT8, Toutput=QINT32)
    ranges = [[F32(-1.0), F32(3.0)], [F32(-20.0), F32(2.0)]]       # two input offsets, two bounds
    first = [KERNELS["QuantizedMatMul"](node, [a, weights, *r, F32(-0.5), F32(0.7)]) for r in ranges]
    again = [KERNELS["QuantizedMatMul"](node, [a, weights, *r, F32(-0.5), F32(0.7)]) for r in ranges]
    assert len(calls) == len(set(calls)) == 2
    for ours, before in zip(again, first):
        assert np.array_equal(ours[0], before[0])
