"""Regressions found by differential fuzzing of the kernels against TensorFlow's own kernels.

Each test runs the minimized input in both and compares; where TensorFlow rejects the input, ours
must raise EvaluationError.
"""
from __future__ import annotations

import numpy as np
import pytest

from gtt_rules.errors import EvaluationError
from test_float_kernels import assert_close, ours, theirs
from test_quantized_kernels import QINT8, QINT32, QUINT8, assert_outputs, random_codes, run, tq

F32 = np.float32
I32 = np.int32


def expect_both_reject(tf, op, tf_kwargs, inputs, **attrs):
    with pytest.raises(tf.errors.InvalidArgumentError):
        theirs(tf, op, **tf_kwargs)
    with pytest.raises(EvaluationError):
        ours(op, inputs, **attrs)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32],
                         ids=lambda d: np.dtype(d).name)
def test_mean_of_small_ints_does_not_wrap(tf, dtype):
    # TensorFlow sums in 64 bits: the mean of [100, 100, 100] in int8 is 100, not 300 wrapped / 3.
    info = np.iinfo(dtype)
    x = np.array([[info.max, info.max, info.max - 3], [info.min, 7, info.min + 1]], dtype)
    for axes in ([0], [1], [0, 1]):
        a = np.asarray(axes, I32)
        assert_close(ours("Mean", [x, a]), theirs(tf, "Mean", input=x, axis=a))


@pytest.mark.parametrize("source,target", [((0, 3), [0, -1]), ((0, 3, 3), [2, -1, 0]),
                                           ((0, 1, 1), [-1, 0]), ((2, 0), [-1, 0, 5])], ids=str)
def test_reshape_infers_minus_one_beside_a_zero(tf, source, target):
    x = np.zeros(source, F32)
    shape = np.asarray(target, I32)
    assert_close(ours("Reshape", [x, shape]), theirs(tf, "Reshape", tensor=x, shape=shape))


@pytest.mark.parametrize("op", ["Conv2D", "DepthwiseConv2dNative", "MaxPool", "AvgPool"])
@pytest.mark.parametrize("shape,window,stride", [((2, 7, 2, 3), (2, 5), 2), ((1, 1, 4, 2), (4, 3), 2),
                                                 ((2, 3, 5, 1), (6, 6), (3, 2))], ids=str)
def test_window_overshooting_by_less_than_a_stride_is_empty(tf, op, shape, window, stride):
    # TensorFlow's output size (in + pads - window + stride) / stride truncates toward zero.
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(F32)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    attrs = dict(strides=[1, sh, sw, 1], padding="VALID")
    if op in ("MaxPool", "AvgPool"):
        attrs["ksize"] = [1, *window, 1]
        arg = "input" if op == "MaxPool" else "value"
        assert_close(ours(op, [x], **attrs), theirs(tf, op, **{arg: x}, **attrs))
        return
    w = rng.standard_normal((*window, shape[3], 1 if op != "Conv2D" else 2)).astype(F32)
    if op == "DepthwiseConv2dNative" and sh != sw:
        return      # its reference kernel takes equal strides only
    assert_close(ours(op, [x, w], **attrs), theirs(tf, op, input=x, filter=w, **attrs))


def test_window_overshooting_by_a_stride_is_still_an_error(tf):
    x = np.zeros((1, 1, 4, 2), F32)
    w = np.zeros((5, 3, 2, 1), F32)
    attrs = dict(strides=[1, 2, 2, 1], padding="VALID")
    expect_both_reject(tf, "Conv2D", dict(input=x, filter=w, **attrs), [x, w], **attrs)
    pool = dict(ksize=[1, 5, 3, 1], **attrs)
    expect_both_reject(tf, "MaxPool", dict(input=x, **pool), [x], **pool)


@pytest.mark.parametrize("op", ["QuantizedMaxPool", "QuantizedAvgPool"])
@pytest.mark.parametrize("ksize,strides", [([1, 5, 5, 1], [1, 1, 3, 1]), ([1, 2, 5, 1], [1, 3, 2, 1]),
                                           ([1, 6, 4, 1], [1, 3, 2, 1])], ids=str)
def test_quantized_pool_with_an_empty_output(tf, op, ksize, strides):
    x = np.random.default_rng(0).integers(0, 256, (2, 6, 3, 1)).astype(np.uint8)
    lo, hi = F32(-1), F32(1)
    want = getattr(tf.raw_ops, op)(input=tq(tf, x, QUINT8), min_input=lo, max_input=hi,
                                   ksize=ksize, strides=strides, padding="VALID")
    got = run(op, [x, lo, hi], T=QUINT8, ksize=ksize, strides=strides, padding="VALID")
    assert_outputs(got, want, tf)


@pytest.mark.parametrize("mode", ["REFLECT", "SYMMETRIC"])
@pytest.mark.parametrize("paddings", [[[0, 3]], [[2, 0]], [[1, 1]], [[0, 2]]], ids=str)
def test_mirror_pad_beyond_one_reflection(tf, mode, paddings):
    x = np.arange(2, dtype=F32)
    p = np.asarray(paddings, I32)
    try:
        want = theirs(tf, "MirrorPad", input=x, paddings=p, mode=mode)
    except tf.errors.InvalidArgumentError:
        with pytest.raises(EvaluationError, match="out of range"):
            ours("MirrorPad", [x, p], mode=mode)
        return
    assert_close(ours("MirrorPad", [x, p], mode=mode), want)


@pytest.mark.parametrize("shape,crops", [((4, 1), [[1, 2]]), ((1, 2), [[2, 2]]),
                                         ((4, 1, 1, 2), [[2, 1], [0, 1]]), ((4, 1), [[1, 1]])], ids=str)
def test_batch_to_space_crops_larger_than_the_space(tf, shape, crops):
    x = np.random.default_rng(2).standard_normal(shape).astype(F32)
    c = np.asarray(crops, I32)
    block = np.full(len(crops), 2 if shape[0] % 2 == 0 else 1, I32)
    try:
        want = theirs(tf, "BatchToSpaceND", input=x, block_shape=block, crops=c)
    except tf.errors.InvalidArgumentError:
        with pytest.raises(EvaluationError, match="crops"):
            ours("BatchToSpaceND", [x, block, c])
        return
    assert_close(ours("BatchToSpaceND", [x, block, c]), want)


@pytest.mark.parametrize("params_shape,index_shape,axis,batch_dims",
                         [((2, 3, 4), (2, 1), 0, 1), ((2, 2, 4), (2, 2, 3), -2, 2),
                          ((4, 1, 2), (1, 2), -2, -1), ((3, 1), (1, 1), -1, -1),
                          ((2, 3, 4), (2, 3), 2, -1)], ids=str)
def test_gather_v2_checks_batch_dims(tf, params_shape, index_shape, axis, batch_dims):
    params = np.random.default_rng(3).standard_normal(params_shape).astype(F32)
    indices = np.zeros(index_shape, I32)
    a = np.int32(axis)
    kwargs = dict(params=params, indices=indices, axis=a, batch_dims=batch_dims)
    try:
        want = theirs(tf, "GatherV2", **kwargs)
    except tf.errors.InvalidArgumentError:
        with pytest.raises(EvaluationError, match="batch_dims|must match"):
            ours("GatherV2", [params, indices, a], batch_dims=batch_dims)
        return
    assert_close(ours("GatherV2", [params, indices, a], batch_dims=batch_dims), want)


def test_resize_nearest_neighbor_refuses_both_flags(tf):
    x = np.zeros((1, 3, 3, 1), F32)
    size = np.asarray([5, 5], I32)
    flags = dict(align_corners=True, half_pixel_centers=True)
    expect_both_reject(tf, "ResizeNearestNeighbor", dict(images=x, size=size, **flags), [x, size],
                       **flags)


@pytest.mark.parametrize("source", [np.float16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("target", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint32],
                         ids=lambda d: np.dtype(d).name)
def test_cast_to_int_truncates_like_tensorflow_and_saturates_out_of_range(tf, source, target):
    info = np.iinfo(target)
    # In range TensorFlow's result is defined: truncation toward zero.
    inside = np.array([0.0, -0.0, 0.9, -0.9, 1.5, -1.5, 7.99, -7.99, 100.5, -100.5], source)
    wide = inside.astype(np.float64)
    inside = inside[(wide > info.min - 1) & (wide < info.max + 1)]
    assert_close(ours("Cast", [inside], DstT=tf.as_dtype(target).as_datatype_enum),
                 theirs(tf, "Cast", x=inside, DstT=tf.as_dtype(target)))
    # Out of range C++ leaves it undefined (TensorFlow's x86 vector and scalar loops disagree):
    # ours saturates, and NaN is 0. +inf once came out as INT_MIN for int32 and int64.
    big, small = float(np.finfo(source).max), float(np.finfo(source).min)
    cases = [(np.inf, info.max), (-np.inf, info.min), (np.nan, 0)]
    cases += [(big, info.max)] if big > info.max else []
    cases += [(small, info.min)] if small < info.min else []
    (got,) = ours("Cast", [np.array([v for v, _ in cases], source)],
                  DstT=tf.as_dtype(target).as_datatype_enum)
    assert got.dtype == target
    assert got.tolist() == [want for _, want in cases]


def test_eight_bit_kernels_on_empty_tensors(tf):
    # The chunked loops ran one step over no elements, whose NaN check took the min of nothing.
    empty_f, empty_32 = np.zeros((0, 3), F32), np.zeros((0,), I32)
    lows, highs = np.full(3, -1, F32), np.full(3, 1, F32)
    assert_outputs(run("QuantizeV2", [empty_f, F32(-1), F32(1)], T=QUINT8),
                   tf.raw_ops.QuantizeV2(input=empty_f, min_range=F32(-1), max_range=F32(1), T=tf.quint8), tf)
    assert_outputs(run("QuantizeV2", [empty_f, lows, highs], T=QINT8, axis=1),
                   tf.raw_ops.QuantizeV2(input=empty_f, min_range=lows, max_range=highs, T=tf.qint8, axis=1), tf)
    assert_outputs(run("Requantize", [empty_32, F32(0), F32(0.1), F32(-1e-3), F32(2e-3)], Tinput=QINT32,
                       out_type=QINT8),
                   tf.raw_ops.Requantize(input=tq(tf, empty_32, QINT32), input_min=F32(0), input_max=F32(0.1),
                                         requested_output_min=F32(-1e-3), requested_output_max=F32(2e-3),
                                         out_type=tf.qint8), tf)


@pytest.mark.parametrize("dt", [QUINT8, QINT32], ids=["quint8", "qint32"])
@pytest.mark.parametrize("sizes", [(2, 0, 1), (0, 2, 1), (2, 1, 0), (0, 0)], ids=str)
def test_quantized_concat_with_empty_inputs(tf, dt, sizes):
    # TensorFlow's copier numbers only the non-empty inputs but reads every input's range: after
    # an empty input, each input is requantized from the range of the input before it.
    rng = np.random.default_rng(len(sizes) + sum(sizes))
    codes = [random_codes(rng, (size,), dt) for size in sizes]
    mins = [F32(m) for m in (-1, 1e-7, -0.0939)[:len(sizes)]]
    maxes = [F32(m) for m in (-1, 1e-7, 31.31)[:len(sizes)]]
    want = tf.raw_ops.QuantizedConcat(concat_dim=0, values=[tq(tf, c, dt) for c in codes],
                                      input_mins=mins, input_maxes=maxes)
    got = run("QuantizedConcat", [np.int32(0), *codes, *mins, *maxes], T=dt, N=len(sizes))
    assert_outputs(got, want, tf)


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min", "Prod"])
@pytest.mark.parametrize("axes", [[1, 1], [0, -2], [1, -1, 0]], ids=str)
def test_reductions_refuse_a_dimension_named_twice(tf, op, axes):
    x = np.arange(6, dtype=F32).reshape(2, 3)
    a = np.asarray(axes, I32)
    expect_both_reject(tf, op, dict(input=x, axis=a), [x, a])
    # Named once each, the same axes reduce as TensorFlow does.
    once = np.asarray(sorted({d % 2 for d in axes}), I32)
    assert_close(ours(op, [x, once]), theirs(tf, op, input=x, axis=once))


@pytest.mark.parametrize("bounds", [(3, 3), (1, 2), (0, 1)], ids=str)
def test_quantize_v2_without_an_axis_takes_one_range(tf, bounds):
    x = np.ones((2, 3), F32)
    low, high = np.full(bounds[0], -1, F32), np.full(bounds[1], 1, F32)
    expect_both_reject(tf, "QuantizeV2", dict(input=x, min_range=low, max_range=high, T=tf.quint8),
                       [x, low, high], T=QUINT8)


@pytest.mark.parametrize("mode", ["REFLECT", "SYMMETRIC"])
@pytest.mark.parametrize("padding, stride", [("VALID", 1), ("SAME", 2)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_fused_resize_pad_and_conv_run_as_tensorflow_runs_them(tf, mode, padding, stride, align_corners):
    # What fuse_pad_and_conv and fuse_resize_pad_and_conv emit had no kernel: the evaluator could
    # not run their results. TensorFlow's fused kernels are right only for one image per batch
    # and strides up to 2 (stdlib_rules/convolutions.rules), so that is where they are compared.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 5, 6, 3)).astype(F32)
    w = rng.standard_normal((3, 2, 3, 4)).astype(F32)
    size, pads = np.array([7, 9], I32), np.array([[0, 0], [1, 2], [2, 1], [0, 0]], I32)
    attrs = dict(mode=mode, strides=[1, stride, stride, 1], padding=padding)
    assert_close(ours("FusedResizeAndPadConv2D", [x, size, pads, w], resize_align_corners=align_corners, **attrs),
                 theirs(tf, "FusedResizeAndPadConv2D", input=x, size=size, paddings=pads, filter=w,
                        resize_align_corners=align_corners, **attrs), rtol=1e-4)
    assert_close(ours("FusedPadConv2D", [x, pads, w], **attrs),
                 theirs(tf, "FusedPadConv2D", input=x, paddings=pads, filter=w, **attrs), rtol=1e-4)



def test_fused_pad_conv_computes_the_pad_and_conv_it_stands_for_at_any_batch(tf):
    # TensorFlow's own fused kernel goes wrong from the second image on; ours is what its
    # MirrorPad and Conv2D compute.
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 5, 6, 2)).astype(F32)
    w = rng.standard_normal((3, 3, 2, 2)).astype(F32)
    pads = np.array([[0, 0], [2, 1], [1, 2], [0, 0]], I32)
    (padded,) = theirs(tf, "MirrorPad", input=x, paddings=pads, mode="SYMMETRIC")
    want = theirs(tf, "Conv2D", input=padded, filter=w, strides=[1, 1, 1, 1], padding="VALID")
    assert_close(ours("FusedPadConv2D", [x, pads, w], mode="SYMMETRIC", strides=[1, 1, 1, 1], padding="VALID"),
                 want, rtol=1e-4)
