"""Our eight-bit kernels against TensorFlow's, side by side in one run.

Each row times one op on the same inputs: TensorFlow's eager raw op and our kernel through
KERNELS[op](node, inputs), after a warm-up, as the median of N runs taken in alternating blocks.
It also checks that both give the same codes and ranges, and prints which BLAS kernel numpy used
and the load average. The ratio and target use medians; the best-of-N columns show what each side
does when the shared machine leaves it alone.

    python benchmarks/bench_quantized_kernels.py [--runs N]

Targets (DESIGN.md): QuantizeV2 and Dequantize at least as fast as TensorFlow (ratio <= 1);
QuantizedMatMul and QuantizedConv2D within 2x. OPENBLAS_CORETYPE, when set, pins OpenBLAS to an
older kernel and slows numpy's matmul; unset it for this command only to see the machine's best.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from gtt_rules.engine.graph import Node  # noqa: E402
from gtt_rules.engine.kernels import KERNELS, load_all  # noqa: E402
from gtt_rules.engine.proto import graph_def_pb2 as pb  # noqa: E402

QUINT8, QINT32 = 12, 13


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


def paired_median_ms(ours, theirs, runs: int, warmup: int = 3, blocks: int = 5):
    """Median times of two callables, measured in alternating blocks.

    Both sides keep worker threads spinning for a while after a call (TensorFlow's Eigen pool,
    OpenBLAS), so each block starts after a pause and the blocks alternate, letting neither side
    run while the other's threads still hold the cores.
    """
    for fn in (ours, theirs):
        for _ in range(warmup):
            fn()
    samples = ([], [])
    per_block = max(1, runs // blocks)
    for _ in range(blocks):
        for fn, times in zip((ours, theirs), samples):
            time.sleep(0.05)
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
    return tuple((statistics.median(times) * 1e3, min(times) * 1e3) for times in samples)


def codes(tf, tensor) -> np.ndarray:
    plain = {tf.quint8: tf.uint8, tf.qint32: tf.int32}
    if tensor.dtype in plain:
        tensor = tf.bitcast(tensor, plain[tensor.dtype])
    return np.asarray(tensor)


def same(ours, theirs, tf) -> bool:
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, (tuple, list)) else (theirs,)
    def raw(v):
        return np.ascontiguousarray(v).reshape(-1).view(np.uint8)
    return len(ours) == len(theirs) and all(
        np.array_equal(raw(a), raw(codes(tf, b))) for a, b in zip(ours, theirs))


def cases(tf, rng):
    """(name, target ratio, our callable, TensorFlow's callable)."""
    f32 = np.float32
    for label, shape in (("1x224x224x3", (1, 224, 224, 3)), ("4M", (4 * 1024 * 1024,))):
        x = (rng.standard_normal(shape) * 2).astype(f32)
        for mode in ("MIN_FIRST", "MIN_COMBINED"):
            node = make_node("QuantizeV2", T=QUINT8, mode=mode)
            lo, hi = f32(-3.5), f32(4.25)
            yield (f"QuantizeV2 {mode} {label}", 1.0,
                   lambda n=node, x=x, lo=lo, hi=hi: KERNELS["QuantizeV2"](n, [x, lo, hi]),
                   lambda x=x, lo=lo, hi=hi, m=mode: tf.raw_ops.QuantizeV2(
                       input=x, min_range=lo, max_range=hi, T=tf.quint8, mode=m))
            q = rng.integers(0, 256, shape).astype(np.uint8)
            tq = tf.constant(q, dtype=tf.quint8)
            node = make_node("Dequantize", T=QUINT8, mode=mode)
            yield (f"Dequantize {mode} {label}", 1.0,
                   lambda n=node, q=q, lo=lo, hi=hi: KERNELS["Dequantize"](n, [q, lo, hi]),
                   lambda tq=tq, lo=lo, hi=hi, m=mode: tf.raw_ops.Dequantize(
                       input=tq, min_range=lo, max_range=hi, mode=m))

    a = rng.integers(0, 256, (256, 1024)).astype(np.uint8)
    b = rng.integers(0, 256, (1024, 1024)).astype(np.uint8)
    ta, tb = tf.constant(a, dtype=tf.quint8), tf.constant(b, dtype=tf.quint8)
    ranges = [f32(-1.0), f32(1.5), f32(-0.5), f32(0.75)]
    node = make_node("QuantizedMatMul", T1=QUINT8, T2=QUINT8, Toutput=QINT32)
    yield ("QuantizedMatMul 256x1024x1024", 2.0,
           lambda: KERNELS["QuantizedMatMul"](node, [a, b, *ranges]),
           lambda: tf.raw_ops.QuantizedMatMul(a=ta, b=tb, min_a=ranges[0], max_a=ranges[1],
                                              min_b=ranges[2], max_b=ranges[3]))

    x = rng.integers(0, 256, (1, 56, 56, 64)).astype(np.uint8)
    w = rng.integers(0, 256, (3, 3, 64, 64)).astype(np.uint8)
    tx, tw = tf.constant(x, dtype=tf.quint8), tf.constant(w, dtype=tf.quint8)
    ranges = [f32(0.0), f32(6.0), f32(-0.8), f32(0.7)]
    node = make_node("QuantizedConv2D", Tinput=QUINT8, Tfilter=QUINT8, out_type=QINT32,
                     strides=[1, 1, 1, 1], padding="SAME")
    yield ("QuantizedConv2D 1x56x56x64 * 3x3x64x64", 2.0,
           lambda: KERNELS["QuantizedConv2D"](node, [x, w, *ranges]),
           lambda: tf.raw_ops.QuantizedConv2D(input=tx, filter=tw, min_input=ranges[0],
                                              max_input=ranges[1], min_filter=ranges[2],
                                              max_filter=ranges[3], strides=[1, 1, 1, 1],
                                              padding="SAME"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25, help="timed runs per op and side (median)")
    args = parser.parse_args()

    import tensorflow as tf
    load_all()
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, BLAS: {blas_description()}")
    print(f"TensorFlow {tf.__version__}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r}, "
          f"cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    header = (f"{'op':40} {'ours ms':>8} {'TF ms':>8} {'ratio':>6} {'target':>6} {'met':>4} "
              f"{'exact':>5} | {'best ours':>9} {'best TF':>8} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for name, target, ours, theirs in cases(tf, rng):
        exact = same(ours(), theirs(), tf)
        (ours_ms, ours_best), (tf_ms, tf_best) = paired_median_ms(ours, theirs, args.runs)
        ratio = ours_ms / tf_ms
        print(f"{name:40} {ours_ms:8.2f} {tf_ms:8.2f} {ratio:6.2f} {target:6.1f} "
              f"{'yes' if ratio <= target else 'NO':>4} {'yes' if exact else 'NO':>5} | "
              f"{ours_best:9.2f} {tf_best:8.2f} {ours_best / tf_best:6.2f}")


if __name__ == "__main__":
    main()
