"""Our eight-bit kernels against TensorFlow's, and against our own float kernels, in one run.

Table 1 times each op on the same inputs two ways: TensorFlow's eager raw op and our kernel
through KERNELS[op](node, inputs), after a warm-up, as the median of N runs taken in alternating
blocks. It also checks that both give the same codes and ranges (bit for bit). Table 2 times our
eight-bit kernels against our float kernels for the same layer (conv, bias, activations, pooling
at MobileNet/ResNet-like sizes), the comparison that decides whether whole-model eight-bit
inference can keep up with float inference. Both tables print the medians, their ratio, and the
best-of-N times (what each side does when the shared machine leaves it alone).

    python benchmarks/bench_quantized_kernels.py [--runs N] [--threads T] [--only SUBSTRING]

Targets (issue #4): QuantizeV2 and Dequantize at least as fast as TensorFlow (ratio <= 1);
QuantizedMatMul and QuantizedConv2D within 2x. The tests and this benchmark use TensorFlow's
reference kernels (TF_ENABLE_ONEDNN_OPTS=0, see quantization.ONEDNN).

`--threads T` sets numpy's BLAS threads (OPENBLAS_NUM_THREADS, read before numpy is imported)
and the eight-bit kernels' own thread pool; TensorFlow keeps its defaults. On a loaded machine a
threaded OpenBLAS waits a scheduler time slice for its helper threads on every matrix product,
so the matrix rows are steadier with `--threads 1`. OPENBLAS_CORETYPE, when set, pins OpenBLAS to
an older kernel and slows numpy's matmul; unset it for this command only to see the machine's
best. The machines are shared and noisy: quote ratios from one run, not absolute times.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


import bench_inference  # noqa: E402,F401  (reads --threads, sets the BLAS threads before numpy loads)

import numpy as np  # noqa: E402

from gtt_rules.engine.graph import Node  # noqa: E402
from gtt_rules.engine.kernels import KERNELS, chunked, load_all  # noqa: E402
from gtt_rules.engine.proto import graph_def_pb2 as pb  # noqa: E402

FLOAT, QINT8, QUINT8, QINT32 = 1, 11, 12, 13
F32 = np.float32


def blas_description() -> str:
    """The BLAS library numpy uses and, for OpenBLAS, the CPU kernel it picked at run time."""
    try:
        from threadpoolctl import threadpool_info
        return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                         f"threads={i.get('num_threads')}" for i in threadpool_info()
                         if i.get("user_api") == "blas")
    except ImportError:
        pass
    info = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
    text = f"{info.get('name', '?')} {info.get('version', '')}"
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                  "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                corename = getattr(lib, f"{prefix}get_corename{suffix}", None)
                threads = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                if corename is not None:
                    corename.restype = ctypes.c_char_p
                    text += f", kernel {corename().decode()}"
                    if threads is not None:
                        text += f", {threads()} threads"
                    return text
    return text


def make_node(op: str, **attrs) -> Node:
    node = Node(pb.NodeDef(name=op.lower(), op=op))
    for name, value in attrs.items():
        node.set_attr(name, value)
    return node


def ours(op: str, inputs, **attrs):
    """A callable running our kernel for `op` on `inputs`."""
    node = make_node(op, **attrs)
    kernel = KERNELS[op]
    return lambda: kernel(node, list(inputs))


def paired_median_ms(first, second, runs: int, warmup: int = 3, blocks: int = 5):
    """Median and best times (ms) of two callables, measured in alternating blocks.

    Both sides keep worker threads spinning for a while after a call (TensorFlow's Eigen pool,
    OpenBLAS), so each block starts after a pause and the blocks alternate, letting neither side
    run while the other's threads still hold the cores.
    """
    for fn in (first, second):
        for _ in range(warmup):
            fn()
    samples = ([], [])
    per_block = max(1, runs // blocks)
    for _ in range(blocks):
        for fn, times in zip((first, second), samples):
            time.sleep(0.05)
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
    return tuple((statistics.median(times) * 1e3, min(times) * 1e3) for times in samples)


def codes(tf, tensor) -> np.ndarray:
    plain = {tf.quint8: tf.uint8, tf.qint8: tf.int8, tf.qint32: tf.int32}
    if tensor.dtype in plain:
        tensor = tf.bitcast(tensor, plain[tensor.dtype])
    return np.asarray(tensor)


def same(ours_out, theirs, tf) -> bool:
    ours_out = ours_out if isinstance(ours_out, tuple) else (ours_out,)
    theirs = theirs if isinstance(theirs, (tuple, list)) else (theirs,)

    def raw(v):
        return np.ascontiguousarray(v).reshape(-1).view(np.uint8)
    return len(ours_out) == len(theirs) and all(
        np.array_equal(raw(a), raw(codes(tf, b))) for a, b in zip(ours_out, theirs))


# ---- table 1: ours against TensorFlow ------------------------------------------------------------

def tf_cases(tf, rng):
    """(name, target ratio or None, our callable, TensorFlow's callable)."""
    lo, hi = F32(-3.5), F32(4.25)
    qtypes = {QUINT8: (tf.quint8, np.uint8, 0, 255), QINT8: (tf.qint8, np.int8, -128, 127)}
    for label, shape in (("1x224x224x3", (1, 224, 224, 3)), ("4M", (4 * 1024 * 1024,))):
        x = (rng.standard_normal(shape) * 2).astype(F32)
        tx = tf.constant(x)     # TensorFlow's kernel gets its own tensor, as ours gets its array
        for dtype in (QUINT8, QINT8):
            tf_type, holder, lowest, highest = qtypes[dtype]
            q = rng.integers(lowest, highest, shape, endpoint=True).astype(holder)
            tq = tf.constant(q.view(np.uint8) if dtype == QUINT8 else q, dtype=tf_type)
            for mode in ("MIN_FIRST", "MIN_COMBINED", "SCALED"):
                if dtype == QINT8 and label != "4M":
                    continue
                name = f"{mode} {'' if dtype == QUINT8 else 'qint8 '}{label}"
                yield (f"QuantizeV2 {name}", 1.0,
                       ours("QuantizeV2", [x, lo, hi], T=dtype, mode=mode),
                       lambda tx=tx, m=mode, t=tf_type: tf.raw_ops.QuantizeV2(
                           input=tx, min_range=lo, max_range=hi, T=t, mode=m))
                yield (f"Dequantize {name}", 1.0,
                       ours("Dequantize", [q, lo, hi], T=dtype, mode=mode),
                       lambda tq=tq, m=mode: tf.raw_ops.Dequantize(
                           input=tq, min_range=lo, max_range=hi, mode=m))

    a = rng.integers(0, 256, (256, 1024)).astype(np.uint8)
    b = rng.integers(0, 256, (1024, 1024)).astype(np.uint8)
    ta, tb = tf.constant(a, dtype=tf.quint8), tf.constant(b, dtype=tf.quint8)
    ranges = [F32(-1.0), F32(1.5), F32(-0.5), F32(0.75)]
    yield ("QuantizedMatMul 256x1024x1024", 2.0,
           ours("QuantizedMatMul", [a, b, *ranges], T1=QUINT8, T2=QUINT8, Toutput=QINT32),
           lambda: tf.raw_ops.QuantizedMatMul(a=ta, b=tb, min_a=ranges[0], max_a=ranges[1],
                                              min_b=ranges[2], max_b=ranges[3]))

    for shape, filter_shape in (((1, 56, 56, 64), (3, 3, 64, 64)),
                                ((1, 56, 56, 64), (1, 1, 64, 256))):
        x = rng.integers(0, 256, shape).astype(np.uint8)
        w = rng.integers(0, 256, filter_shape).astype(np.uint8)
        tx, tw = tf.constant(x, dtype=tf.quint8), tf.constant(w, dtype=tf.quint8)
        ranges = [F32(0.0), F32(6.0), F32(-0.8), F32(0.7)]
        yield (f"QuantizedConv2D {'x'.join(map(str, shape))} * "
               f"{'x'.join(map(str, filter_shape))}", 2.0,
               ours("QuantizedConv2D", [x, w, *ranges], Tinput=QUINT8, Tfilter=QUINT8,
                    out_type=QINT32, strides=[1, 1, 1, 1], padding="SAME"),
               lambda tx=tx, tw=tw, r=ranges: tf.raw_ops.QuantizedConv2D(
                   input=tx, filter=tw, min_input=r[0], max_input=r[1], min_filter=r[2],
                   max_filter=r[3], strides=[1, 1, 1, 1], padding="SAME"))

    # What follows a conv in an eight-bit graph, on a real conv's accumulators (1x56x56x256).
    acc, acc_lo, acc_hi = _conv_accumulators(rng)
    tacc = tf.constant(acc, dtype=tf.qint32)
    yield ("RequantizationRange 1x56x56x256", None,
           ours("RequantizationRange", [acc, acc_lo, acc_hi], Tinput=QINT32),
           lambda: tf.raw_ops.RequantizationRange(input=tacc, input_min=acc_lo,
                                                  input_max=acc_hi))
    out_lo, out_hi = KERNELS["RequantizationRange"](make_node("RequantizationRange",
                                                              Tinput=QINT32),
                                                    [acc, acc_lo, acc_hi])
    yield ("Requantize 1x56x56x256", None,
           ours("Requantize", [acc, acc_lo, acc_hi, out_lo, out_hi], Tinput=QINT32,
                out_type=QUINT8),
           lambda: tf.raw_ops.Requantize(input=tacc, input_min=acc_lo, input_max=acc_hi,
                                         requested_output_min=out_lo,
                                         requested_output_max=out_hi, out_type=tf.quint8))
    x = rng.integers(0, 256, (1, 56, 56, 256)).astype(np.uint8)
    bias = rng.integers(0, 256, 256).astype(np.uint8)
    tx, tbias = tf.constant(x, dtype=tf.quint8), tf.constant(bias, dtype=tf.quint8)
    yield ("QuantizedBiasAdd 1x56x56x256", None,
           ours("QuantizedBiasAdd", [x, bias, F32(-1), F32(2), F32(-0.5), F32(0.5)], T1=QUINT8,
                T2=QUINT8, out_type=QINT32),
           lambda: tf.raw_ops.QuantizedBiasAdd(input=tx, bias=tbias, min_input=F32(-1),
                                               max_input=F32(2), min_bias=F32(-0.5),
                                               max_bias=F32(0.5), out_type=tf.qint32))
    for op in ("QuantizedRelu", "QuantizedRelu6"):
        yield (f"{op} 1x56x56x256", None,
               ours(op, [x, F32(-3), F32(7)], Tinput=QUINT8, out_type=QUINT8),
               lambda op=op: getattr(tf.raw_ops, op)(features=tx, min_features=F32(-3),
                                                     max_features=F32(7), out_type=tf.quint8))
    for op in ("QuantizedMaxPool", "QuantizedAvgPool"):
        yield (f"{op} 3x3/2 1x56x56x256", None,
               ours(op, [x, F32(-3), F32(7)], T=QUINT8, ksize=[1, 3, 3, 1],
                    strides=[1, 2, 2, 1], padding="SAME"),
               lambda op=op: getattr(tf.raw_ops, op)(input=tx, min_input=F32(-3),
                                                     max_input=F32(7), ksize=[1, 3, 3, 1],
                                                     strides=[1, 2, 2, 1], padding="SAME"))


def _conv_accumulators(rng):
    """The qint32 output of a ResNet-like 1x1 conv (64 -> 256 channels at 56x56), and its range."""
    x = rng.integers(0, 256, (1, 56, 56, 64)).astype(np.uint8)
    w = np.clip(rng.normal(128, 30, (1, 1, 64, 256)), 0, 255).astype(np.uint8)
    acc, lo, hi = KERNELS["QuantizedConv2D"](
        make_node("QuantizedConv2D", Tinput=QUINT8, Tfilter=QUINT8, out_type=QINT32,
                  strides=[1, 1, 1, 1], padding="SAME"),
        [x, w, F32(0.0), F32(6.0), F32(-1.0), F32(1.0)])
    return acc, lo, hi


# ---- table 2: our eight-bit kernels against our float kernels --------------------------------

def float_cases(rng):
    """(name, our eight-bit callable, our float callable) for the same layer."""
    convs = [("ResNet 3x3", (1, 56, 56, 64), (3, 3, 64, 64), 1),
             ("ResNet 3x3", (1, 28, 28, 128), (3, 3, 128, 128), 1),
             ("ResNet 3x3", (1, 14, 14, 256), (3, 3, 256, 256), 1),
             ("ResNet 1x1", (1, 56, 56, 256), (1, 1, 256, 64), 1),
             ("ResNet 1x1/2", (1, 56, 56, 256), (1, 1, 256, 512), 2),
             ("MobileNet 1x1", (1, 112, 112, 32), (1, 1, 32, 16), 1),
             ("MobileNet 1x1", (1, 56, 56, 24), (1, 1, 24, 144), 1),
             ("MobileNet 3x3/2", (1, 224, 224, 3), (3, 3, 3, 32), 2)]
    for label, shape, filter_shape, stride in convs:
        x = rng.integers(0, 256, shape).astype(np.uint8)
        w = np.clip(rng.normal(128, 30, filter_shape), 0, 255).astype(np.uint8)
        strides = [1, stride, stride, 1]
        yield (f"Conv2D {label} {'x'.join(map(str, shape[1:]))}->{filter_shape[-1]}",
               ours("QuantizedConv2D", [x, w, F32(0), F32(6), F32(-1), F32(1)], Tinput=QUINT8,
                    Tfilter=QUINT8, out_type=QINT32, strides=strides, padding="SAME"),
               ours("Conv2D", [rng.standard_normal(shape).astype(F32),
                               rng.standard_normal(filter_shape).astype(F32)],
                    T=FLOAT, strides=strides, padding="SAME"))
    a = rng.integers(0, 256, (256, 1024)).astype(np.uint8)
    b = rng.integers(0, 256, (1024, 1024)).astype(np.uint8)
    yield ("MatMul 256x1024x1024",
           ours("QuantizedMatMul", [a, b, F32(-1), F32(1.5), F32(-0.5), F32(0.75)], T1=QUINT8,
                T2=QUINT8, Toutput=QINT32),
           ours("MatMul", [rng.standard_normal((256, 1024)).astype(F32),
                           rng.standard_normal((1024, 1024)).astype(F32)], T=FLOAT))

    shape = (1, 56, 56, 256)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    xf = rng.standard_normal(shape).astype(F32)
    bias, bias_f = rng.integers(0, 256, 256).astype(np.uint8), rng.standard_normal(256).astype(F32)
    relu = ours("Relu", [xf], T=FLOAT)
    acc, acc_lo, acc_hi = _conv_accumulators(rng)
    out_lo, out_hi = KERNELS["RequantizationRange"](make_node("RequantizationRange",
                                                              Tinput=QINT32),
                                                    [acc, acc_lo, acc_hi])
    # Requantization has no float counterpart: it stands against one float Relu of its shape.
    yield ("RequantizationRange (vs Relu) 56x56x256",
           ours("RequantizationRange", [acc, acc_lo, acc_hi], Tinput=QINT32), relu)
    yield ("Requantize (vs Relu) 56x56x256",
           ours("Requantize", [acc, acc_lo, acc_hi, out_lo, out_hi], Tinput=QINT32,
                out_type=QUINT8), relu)
    yield ("BiasAdd 56x56x256",
           ours("QuantizedBiasAdd", [x, bias, F32(-1), F32(2), F32(-0.5), F32(0.5)], T1=QUINT8,
                T2=QUINT8, out_type=QINT32),
           ours("BiasAdd", [xf, bias_f], T=FLOAT))
    yield ("Relu 56x56x256", ours("QuantizedRelu", [x, F32(-3), F32(7)], Tinput=QUINT8,
                                  out_type=QUINT8), relu)
    yield ("Relu6 56x56x256", ours("QuantizedRelu6", [x, F32(-3), F32(7)], Tinput=QUINT8,
                                   out_type=QUINT8), ours("Relu6", [xf], T=FLOAT))
    for op in ("MaxPool", "AvgPool"):
        for k, s, padding in ((3, 2, "SAME"), (2, 2, "VALID")):
            attrs = dict(ksize=[1, k, k, 1], strides=[1, s, s, 1], padding=padding)
            yield (f"{op} {k}x{k}/{s} {padding} 56x56x256",
                   ours(f"Quantized{op}", [x, F32(-3), F32(7)], T=QUINT8, **attrs),
                   ours(op, [xf], T=FLOAT, **attrs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25, help="timed runs per op and side (median)")
    parser.add_argument("--threads", type=int, default=0,
                        help="BLAS threads and the eight-bit kernels' threads (default: all)")
    parser.add_argument("--only", default="", help="only rows whose name contains this")
    args = parser.parse_args()
    if args.threads:
        chunked.THREADS = args.threads

    import tensorflow as tf
    load_all()
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, BLAS: {blas_description()}")
    print(f"TensorFlow {tf.__version__}, TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE')!r}, cpus={os.cpu_count()}, eight-bit threads "
          f"{chunked.THREADS}, load average {os.getloadavg()[0]:.1f}")

    header = (f"{'op':44} {'ours ms':>8} {'TF ms':>8} {'ratio':>6} {'target':>6} {'met':>4} "
              f"{'exact':>5} | {'best ours':>9} {'best TF':>8} {'ratio':>6}")
    print(f"\n{header}\n{'-' * len(header)}")
    for name, target, mine, theirs in tf_cases(tf, rng):
        if args.only not in name:
            continue
        exact = same(mine(), theirs(), tf)
        (ours_ms, ours_best), (tf_ms, tf_best) = paired_median_ms(mine, theirs, args.runs)
        ratio = ours_ms / tf_ms
        met = "-" if target is None else "yes" if ratio <= target else "NO"
        print(f"{name:44} {ours_ms:8.2f} {tf_ms:8.2f} {ratio:6.2f} "
              f"{'-' if target is None else f'{target:.1f}':>6} {met:>4} "
              f"{'yes' if exact else 'NO':>5} | {ours_best:9.2f} {tf_best:8.2f} "
              f"{ours_best / tf_best:6.2f}")

    header = (f"{'eight-bit vs float (ours)':44} {'8-bit ms':>8} {'float ms':>8} {'ratio':>6} | "
              f"{'best 8-bit':>10} {'best float':>10} {'ratio':>6}")
    print(f"\n{header}\n{'-' * len(header)}")
    for name, quantized, floating in float_cases(rng):
        if args.only not in name:
            continue
        (q_ms, q_best), (f_ms, f_best) = paired_median_ms(quantized, floating, args.runs)
        print(f"{name:44} {q_ms:8.2f} {f_ms:8.2f} {q_ms / f_ms:6.2f} | {q_best:10.2f} "
              f"{f_best:10.2f} {q_best / f_best:6.2f}")


if __name__ == "__main__":
    main()
