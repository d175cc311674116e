"""Rule application at scale: the standard rule sets on generated graphs of 10k, 100k and 1M nodes.

    python benchmarks/bench_rules.py [--sizes 10k,100k,1M] [--extra-rules 50] [--no-extra]
                                     [--repeat 3] [--repeat-limit 200k] [--timeout SECONDS]
                                     [--json PATH]
    python benchmarks/bench_rules.py --worker 100000 --extra-rules 0 --profile prof.out
                                     (one size in this process, cProfile of rule application)

Targets (shared/DESIGN.md, Performance; issue 3):
  * the 100k-node graph in under 5 s on this 2-core machine (rule application);
  * 10x the nodes costs at most 12x the time (10k -> 100k -> 1M; other size ratios r are held to
    r ** log10(12), the same exponent);
  * per-node cost stays flat when rules are added that never match (dispatch by root op).

The graphs are generated in memory (no TensorFlow needed). They look like inference graphs and
give every standard rule set work, plus near misses for the matcher:
  * one Placeholder-fed chain per ~1,000 nodes, [1, 8, 8, 4] NHWC, ending in an Identity output;
  * residual conv blocks: Identity -> Conv2D(w: Const 1x1x4x4) -> Mul(per-channel Const)
    -> BiasAdd -> Relu -> CheckNumerics -> AddV2(residual)     (cleanup x2, Mul fold)
  * depthwise blocks: Mul(Const, DepthwiseConv2dNative(...)) -> Relu  (Mul fold, scale first)
  * Keras-style blocks: Conv2D -> FusedBatchNormV3(is_training=false) -> Relu (batch-norm fold)
  * quantized blocks: QuantizeV2 -> Dequantize -> QuantizeV2 -> QuantizedRelu -> Dequantize;
    half of them requantize to another range, so the cancellation rule is tried and refused;
  * shared-conv blocks: Conv2D read by a Mul and a Relu (uses(conv) == 2: the fold is refused);
  * a head: Reshape -> MatMul(w: Const 4x4) -> Mul(Const) -> BiasAdd -> Softmax -> Identity.
Weights are tiny (at most 16 floats) so the memory figures measure the graph, not the weights.
One chain is built from NodeDef messages; the others are byte copies of it under another
fixed-width prefix (`c00000/` -> `c00001/`), which generates 1M nodes in a few seconds.
The generator knows how often each stdlib rule should fire; a run checks the fires of the rules
the loaded rule sets have, and that no other rule fires.

Each (size, variant) runs in a fresh subprocess that prints one JSON object; a worker that runs
past --timeout is killed and reported as not finishing (larger sizes are then skipped). Timed
separately: construction (what `Graph.load` does with a parsed file: `Graph(graph_def)`, which
indexes and validates, then `check_dtypes`, as every graph the tool rewrites is loaded), rule application
(every stage of `load_rules(["cleanup", "batch_norm", "quantization"])` through `apply_rules`),
and serialization (`Graph.to_bytes()`). Memory is from /proc/self/status: "graph MB" is the RSS
growth from generating the GraphDef and building the Graph; each phase's peak is VmHWM, reset
(clear_refs) at the start of the phase, so it includes what is resident (GraphDef and Graph).
The time per rule is the driver's own report (match + rewrite); the rest of the apply time is the
driver's pass over the graph (topological order, worklist, dispatch).

The second experiment adds N generated rules (default 50) to every stage, each on a unary op that
never occurs in the graph (`rule never-k: n = Erf(x) => n -> x`), and compares µs per node.
Machines are shared and noisy: quote the ratios, measured in one run, not the absolute seconds.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

STDLIB_SETS = ["cleanup", "batch_norm", "quantization"]
TIME_TARGET_100K = 5.0   # seconds for rule application on the 100k-node graph
GROWTH_TARGET = 12.0     # time ratio for 10x the nodes
FLAT_TARGET = 1.25       # µs/node with the never-matching rules / without (noise allowance)

# Unary ops for the never-matching rules; the first N that the op registry knows and the graph
# does not use are taken.
NEVER_OPS = [
    "Erf", "Erfc", "Erfinv", "Lgamma", "Digamma", "Expm1", "Log1p", "Rsqrt", "Sqrt", "Square",
    "Reciprocal", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh",
    "Atanh", "Ceil", "Floor", "Round", "Rint", "Sign", "Softsign", "Softplus", "Selu", "Elu",
    "Relu6", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Inv", "IsNan", "IsInf",
    "IsFinite", "OnesLike", "ZerosLike", "BesselI0e", "BesselI1e", "Dawsn", "Expint",
    "FresnelCos", "FresnelSin", "Spence", "Invert", "PopulationCount", "Snapshot",
    "PreventGradient", "Ndtri", "Real", "Imag", "Conj",
]


# ---- the generated graph ---------------------------------------------------------------------------

def _size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = 1
    if text.endswith("k"):
        text, scale = text[:-1], 1_000
    elif text.endswith("m"):
        text, scale = text[:-1], 1_000_000
    return int(float(text) * scale)


def _label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


class _ChainBuilder:
    """NodeDefs of one chain, appended to a GraphDef, with the expected rewrite counts."""

    # Block kinds in the order a chain cycles through them.
    PATTERN = ["conv", "depthwise", "conv", "quant", "shared", "fused", "depthwise", "quant"]

    def __init__(self, pb, graph_def, prefix: str):
        import numpy as np
        from gtt_rules.engine.tensors import encode_tensor

        self.pb = pb
        self.graph_def = graph_def
        self.prefix = prefix
        # Rewrites each rule should make (by rule name), if the rule set has that rule.
        self.expected: dict[str, int] = {}
        self.protected: list[str] = []
        f32, q8, i32 = pb.DT_FLOAT, pb.DT_QUINT8, pb.DT_INT32
        self.F32, self.Q8, self.I32 = f32, q8, i32
        rng = np.random.default_rng(0)
        w = lambda *shape: encode_tensor(rng.uniform(0.5, 1.5, shape).astype(np.float32))  # noqa: E731
        self.tensors = {
            "w_conv": w(1, 1, 4, 4), "w_dw": w(1, 1, 4, 1), "w_mm": w(4, 4),
            "scale": w(4), "bias": w(4), "var": w(4),
            "lo": encode_tensor(np.float32(-6.0)), "hi": encode_tensor(np.float32(6.0)),
            "hi2": encode_tensor(np.float32(8.0)),
            "shape": encode_tensor(np.array([-1, 4], dtype=np.int32)),
        }

    def node(self, name: str, op: str, inputs=(), **attrs) -> str:
        nd = self.graph_def.node.add()
        nd.name = f"{self.prefix}{name}"
        nd.op = op
        nd.input.extend(inputs)
        for key, value in attrs.items():
            attr = nd.attr[key]
            if isinstance(value, bool):
                attr.b = value
            elif isinstance(value, int) and key in ("T", "U", "dtype", "Tinput", "out_type", "Tshape"):
                attr.type = value
            elif isinstance(value, int):
                attr.i = value
            elif isinstance(value, float):
                attr.f = value
            elif isinstance(value, str):
                attr.s = value.encode()
            elif isinstance(value, list):
                attr.list.i.extend(value)
            elif isinstance(value, tuple):  # a shape
                attr.shape.SetInParent()
                for d in value:
                    attr.shape.dim.add(size=d)
            else:  # a TensorProto
                attr.tensor.CopyFrom(value)
        return nd.name

    def const(self, name: str, tensor: str) -> str:
        tp = self.tensors[tensor]
        return self.node(name, "Const", dtype=tp.dtype, value=tp)

    def conv2d(self, name, x, w, op="Conv2D"):
        attrs = dict(T=self.F32, strides=[1, 1, 1, 1], padding="SAME", data_format="NHWC",
                     dilations=[1, 1, 1, 1])
        if op == "Conv2D":
            attrs.update(use_cudnn_on_gpu=True)
        return self.node(name, op, [x, w], **attrs)

    def build(self, blocks: int) -> None:
        x = self.node("input", "Placeholder", dtype=self.F32, shape=(1, 8, 8, 4))
        self.protected.append(x)
        for b in range(blocks):
            kind = self.PATTERN[b % len(self.PATTERN)]
            x = getattr(self, "_" + kind)(f"block{b:04d}/", x, b)
        self._head(x)

    def _conv(self, p, x, b):
        F = self.F32
        i = self.node(p + "read", "Identity", [x], T=F)
        w = self.const(p + "weights", "w_conv")
        conv = self.conv2d(p + "conv", i, w)
        s = self.const(p + "bn/scale", "scale")
        mul = self.node(p + "bn/mul", "Mul", [conv, s], T=F)
        bias = self.const(p + "bn/offset", "bias")
        ba = self.node(p + "bn/add", "BiasAdd", [mul, bias], T=F, data_format="NHWC")
        relu = self.node(p + "relu", "Relu", [ba], T=F)
        chk = self.node(p + "check", "CheckNumerics", [relu], T=F, message="relu output")
        self.expect("remove-identity", "remove-check-numerics", "fold-mul-into-conv")
        return self.node(p + "residual", "AddV2", [chk, x], T=F)

    def _depthwise(self, p, x, b):
        F = self.F32
        w = self.const(p + "depthwise_weights", "w_dw")
        dw = self.conv2d(p + "depthwise", x, w, op="DepthwiseConv2dNative")
        s = self.const(p + "bn/scale", "scale")
        mul = self.node(p + "bn/mul", "Mul", [s, dw], T=F)  # scale first: commutative matching
        self.expect("fold-mul-into-conv")
        return self.node(p + "relu", "Relu", [mul], T=F)

    def _quant(self, p, x, b):
        lo = self.const(p + "min", "lo")
        hi = self.const(p + "max", "hi")
        qattrs = dict(T=self.Q8, mode="MIN_FIRST", round_mode="HALF_AWAY_FROM_ZERO",
                      narrow_range=False, axis=-1, ensure_minimum_range=0.01)
        dattrs = dict(T=self.Q8, mode="MIN_FIRST", narrow_range=False, axis=-1, dtype=self.F32)
        q = self.node(p + "quantize", "QuantizeV2", [x, lo, hi], **qattrs)
        dq = self.node(p + "dequantize", "Dequantize", [q, lo, hi], **dattrs)
        cancels = (b // len(self.PATTERN)) % 2 == 0
        hi_again = hi if cancels else self.const(p + "max_wide", "hi2")
        q2 = self.node(p + "requantize", "QuantizeV2", [dq, lo, hi_again], **qattrs)
        if cancels:
            self.expect("cancel-dequantize-quantize")
        qr = self.node(p + "relu", "QuantizedRelu", [q2, q2 + ":1", q2 + ":2"],
                       Tinput=self.Q8, out_type=self.Q8)
        return self.node(p + "relu_float", "Dequantize", [qr, qr + ":1", qr + ":2"], **dattrs)

    def _shared(self, p, x, b):
        F = self.F32
        w = self.const(p + "weights", "w_conv")
        conv = self.conv2d(p + "conv", x, w)
        s = self.const(p + "scale", "scale")
        mul = self.node(p + "mul", "Mul", [conv, s], T=F)   # uses(conv) == 2: not folded
        side = self.node(p + "side", "Relu", [conv], T=F)
        return self.node(p + "merge", "AddV2", [mul, side], T=F)

    def _fused(self, p, x, b):
        F = self.F32
        w = self.const(p + "weights", "w_conv")
        conv = self.conv2d(p + "conv", x, w)
        params = [self.const(p + "bn/" + name, "var" if name == "variance" else "bias")
                  for name in ("gamma", "beta", "mean", "variance")]
        bn = self.node(p + "bn/FusedBatchNormV3", "FusedBatchNormV3", [conv] + params, T=F, U=F,
                       epsilon=0.001, exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
        self.expect("fold-fused-batch-norm")
        return self.node(p + "relu", "Relu", [bn], T=F)

    def expect(self, *rules: str) -> None:
        for rule in rules:
            self.expected[rule] = self.expected.get(rule, 0) + 1

    def _head(self, x):
        F = self.F32
        shape = self.const("head/shape", "shape")
        flat = self.node("head/flatten", "Reshape", [x, shape], T=F, Tshape=self.I32)
        w = self.const("head/weights", "w_mm")
        mm = self.node("head/matmul", "MatMul", [flat, w], T=F, transpose_a=False, transpose_b=False)
        s = self.const("head/bn/scale", "scale")
        mul = self.node("head/bn/mul", "Mul", [mm, s], T=F)
        bias = self.const("head/bias", "bias")
        ba = self.node("head/bias_add", "BiasAdd", [mul, bias], T=F, data_format="NHWC")
        sm = self.node("head/softmax", "Softmax", [ba], T=F)
        self.expect("fold-mul-into-conv")
        self.protected.append(self.node("output", "Identity", [sm], T=F))  # stays: an output


CHAIN_NODES = 1000   # about this many nodes per Placeholder-fed chain


def generate(n_nodes: int):
    """(GraphDef of about n_nodes nodes, protected names, expected rewrites per stage)."""
    from gtt_rules.engine.proto import graph_def_pb2 as pb

    chains = max(1, round(n_nodes / CHAIN_NODES))
    if chains >= 100_000:
        raise SystemExit("at most 99,999 chains (about 100M nodes)")
    per_chain = n_nodes / chains
    # Find the block count whose chain length is closest to per_chain.
    def build(blocks):
        template = pb.GraphDef()
        builder = _ChainBuilder(pb, template, "c00000/")
        builder.build(blocks)
        return blocks, template, builder

    cycle = 2 * len(_ChainBuilder.PATTERN)
    sample = build(cycle)[1]
    per_block = (len(sample.node) - build(0)[1].node.__len__()) / cycle
    guess = max(1, round((per_chain - len(build(0)[1].node)) / per_block))
    best = min((build(b) for b in range(max(1, guess - 3), guess + 4)),
               key=lambda item: abs(len(item[1].node) - per_chain))
    blocks, template, builder = best
    template.versions.producer = 1882
    head = template.SerializeToString()
    body = pb.GraphDef(node=template.node).SerializeToString()
    prefix = b"c00000/"
    parts = [head]
    for c in range(1, chains):
        parts.append(body.replace(prefix, f"c{c:05d}/".encode()))
    graph_def = pb.GraphDef.FromString(b"".join(parts))
    del parts, body
    protected = [f"c{c:05d}/" + name[len("c00000/"):] for c in range(chains) for name in builder.protected]
    expected = {k: v * chains for k, v in builder.expected.items()}
    return graph_def, protected, expected, {"chains": chains, "blocks_per_chain": blocks,
                                            "nodes_per_chain": len(template.node)}


def never_rules_text(count: int, ops_in_graph: set[str]) -> str:
    from gtt_rules.engine import op_registry

    ops = [op for op in NEVER_OPS if op not in ops_in_graph and (d := op_registry.get_op(op)) is not None
           and len(d.inputs) == 1 and not d.inputs[0].number_attr and not d.inputs[0].type_list_attr]
    if len(ops) < count:
        raise SystemExit(f"only {len(ops)} suitable never-matching ops, asked for {count}")
    lines = ["# Generated: rules whose root op never occurs in the benchmark graph.\n"]
    for k, op in enumerate(ops[:count]):
        lines.append(f"rule never-{k}:\n    n = {op}(x)\n    => n -> x\n\n")
    return "".join(lines)


# ---- worker: one size, one variant, in a fresh process --------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_worker(n_nodes: int, extra_rules: int, profile: str | None) -> dict:
    from gtt_rules.engine import validation
    from gtt_rules.engine.driver import apply_rules
    from gtt_rules.engine.graph import Graph
    from gtt_rules import load_rules

    stages = load_rules(STDLIB_SETS)
    base_kb = _status_kb("VmRSS")

    t0 = time.perf_counter()
    graph_def, protected, expected, shape = generate(n_nodes)
    t1 = time.perf_counter()
    ops_in_graph = {nd.op for nd in graph_def.node}
    if extra_rules:
        with tempfile.TemporaryDirectory(prefix="bench_rules.") as tmp:
            path = pathlib.Path(tmp) / "never.rules"
            path.write_text(never_rules_text(extra_rules, ops_in_graph))
            (never,) = load_rules([str(path)])
        # Into every stage: a stage of their own would add a pass over the graph, not a dispatch cost.
        for stage in stages:
            stage.rules = list(stage.rules) + list(never.rules)

    for stage in stages:
        if stage.rules is None:
            raise SystemExit(f"stage '{stage.name}' is a Python pass, not a rule set")
    loaded = {rule.name for stage in stages for rule in stage.rules}

    gc.collect()
    reset = _reset_peak()   # from here on, each phase's peak includes the resident GraphDef
    t2 = time.perf_counter()
    graph = Graph(graph_def)
    validation.check_dtypes(graph)  # as Graph.load checks every file; the rewrites reuse what it works out
    t3 = time.perf_counter()
    del graph_def  # the Graph holds the message; as after Graph.load, nothing else does
    construct_peak_kb = _status_kb("VmHWM")
    nodes_before = len(graph)
    gc.collect()
    rss_built_kb = _status_kb("VmRSS")

    per_stage = {}
    rewrites = visits = 0
    fires: dict[str, int] = {}
    rule_seconds: dict[str, float] = {}  # matching + rewriting, per rule (the driver's report)
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    reset = reset and _reset_peak()
    t4 = time.perf_counter()
    for stage in stages:
        s0 = time.perf_counter()
        report = apply_rules(graph, stage.rules, protected=protected)
        per_stage[stage.name] = {"seconds": time.perf_counter() - s0, "rewrites": report.rewrites,
                                 "visits": report.visits, "stop": report.stop_reason,
                                 "nodes_after": report.nodes_after}
        rewrites += report.rewrites
        visits += report.visits
        for rule, count in report.fires.items():
            fires[rule] = fires.get(rule, 0) + count
        for rule, seconds in report.seconds.items():
            rule_seconds[rule] = rule_seconds.get(rule, 0.0) + seconds
    t5 = time.perf_counter()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    apply_peak_kb = _status_kb("VmHWM")
    nodes_after = len(graph)

    reset = reset and _reset_peak()
    t6 = time.perf_counter()
    data = graph.to_bytes()
    t7 = time.perf_counter()
    serialize_peak_kb = _status_kb("VmHWM")
    out_bytes = len(data)
    del data
    if reset:
        peak_kb = max(construct_peak_kb, apply_peak_kb, serialize_peak_kb)
    else:  # no resettable mark: the peak since the process started, generation included
        import resource
        peak_kb = max(_status_kb("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        construct_peak_kb = apply_peak_kb = serialize_peak_kb = None

    # The rules the generated material should fire, among those loaded; nothing else should fire.
    want = {rule: count for rule, count in expected.items() if rule in loaded}
    unexpected = {rule: count for rule, count in fires.items() if rule not in want}
    as_expected = all(fires.get(rule, 0) == count for rule, count in want.items()) and not unexpected
    mb = lambda kb: None if kb is None else kb / 1024  # noqa: E731
    return {
        "n": n_nodes, "extra_rules": extra_rules, **shape,
        "nodes_before": nodes_before, "nodes_after": nodes_after,
        "rewrites": rewrites, "visits": visits, "fires": fires, "rule_seconds": rule_seconds,
        "expected_fires": want, "unexpected_fires": unexpected, "rewrites_as_expected": as_expected,
        "material_without_rule": sorted(set(expected) - loaded),
        "generate_s": t1 - t0, "construct_s": t3 - t2, "apply_s": t5 - t4, "serialize_s": t7 - t6,
        "stages": per_stage, "out_bytes": out_bytes,
        "base_rss_mb": base_kb / 1024, "built_rss_mb": rss_built_kb / 1024,
        "graph_mb": (rss_built_kb - base_kb) / 1024,
        "construct_peak_mb": mb(construct_peak_kb), "apply_peak_mb": mb(apply_peak_kb),
        "serialize_peak_mb": mb(serialize_peak_kb), "peak_mb": peak_kb / 1024,
    }


# ---- driver: spawn workers, print the tables -------------------------------------------------------

def _spawn(n: int, extra: int, profile: str | None, timeout: float | None) -> dict:
    """One worker's JSON result, or {"timeout": seconds} when it ran out of time."""
    cmd = [sys.executable, __file__, "--worker", str(n), "--extra-rules", str(extra)]
    if profile:
        cmd += ["--profile", profile]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
        return {"n": n, "extra_rules": extra, "timeout": timeout}
    if proc.returncode != 0:
        raise SystemExit(f"worker for {_label(n)} nodes (extra rules {extra}) failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    """The run with the median apply time (the lower middle one for an even count)."""
    if any("timeout" in r for r in runs):
        return next(r for r in runs if "timeout" in r)
    ordered = sorted(runs, key=lambda r: r["apply_s"])
    result = dict(ordered[(len(ordered) - 1) // 2])
    result["apply_s_all"] = [r["apply_s"] for r in runs]
    return result


def _us_per_node(r: dict) -> float:
    return r["apply_s"] / r["nodes_before"] * 1e6


def _done(r: dict | None) -> bool:
    return r is not None and "timeout" not in r and "skipped" not in r


def _missing(r: dict | None) -> str:
    if r is None:
        return "not run"
    if "timeout" in r:
        return f"did not finish in {r['timeout']:.0f} s (killed)"
    return r["skipped"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="comma-separated node counts (10k, 1M, 25000)")
    parser.add_argument("--extra-rules", type=int, default=50, help="never-matching rules for experiment 2")
    parser.add_argument("--no-extra", action="store_true", help="skip experiment 2")
    parser.add_argument("--extra-sizes", default=None,
                        help="sizes for experiment 2 (default: the same as --sizes)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per size and variant, the median kept (sizes up to --repeat-limit)")
    parser.add_argument("--repeat-limit", default="200k",
                        help="larger sizes run once (default 200k: 1M runs once)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per worker before it is killed and reported as not finishing "
                             "(0: no limit); larger sizes are then skipped")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="PATH", help="(with --worker) cProfile rule application into PATH")
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(run_worker(args.worker, args.extra_rules, args.profile)))
        return 0

    timeout = args.timeout or None
    args.repeat_limit = _size(args.repeat_limit)
    sizes = sorted({_size(s) for s in args.sizes.split(",") if s.strip()})
    extra_sizes = sizes if args.extra_sizes is None else [_size(s) for s in args.extra_sizes.split(",") if s.strip()]
    base: dict[int, dict] = {}
    extra: dict[int, dict] = {}
    repeats: dict[int, int] = {}
    gave_up_at = None
    for n in sizes:
        if gave_up_at is not None:
            base[n] = {"n": n, "skipped": f"skipped: {_label(gave_up_at)} did not finish"}
            continue
        with_extra = not args.no_extra and args.extra_rules and n in extra_sizes
        repeat = args.repeat if n <= args.repeat_limit else 1
        print(f"... {_label(n)} nodes{f' (and + {args.extra_rules} never-matching rules)' if with_extra else ''}"
              f", {repeat} run(s)", file=sys.stderr, flush=True)
        started = time.perf_counter()
        # Interleaved (base, extra, base, extra, ...) so drift in the machine's load hits both alike.
        base_runs, extra_runs = [], []
        for _ in range(repeat):
            base_runs.append(_spawn(n, 0, None, timeout))
            if not _done(base_runs[-1]):
                break
            if with_extra:
                extra_runs.append(_spawn(n, args.extra_rules, None, timeout))
        base[n] = _median(base_runs)
        repeats[n] = len(base_runs)
        if extra_runs:
            extra[n] = _median(extra_runs)
        print(f"    {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if not _done(base[n]):
            gave_up_at = n

    print(f"## Rule application: stdlib {', '.join(STDLIB_SETS)} "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs; runs per size, median kept: "
          f"{', '.join(f'{_label(n)} x{k}' for n, k in repeats.items())})\n")
    print("| size | nodes before | nodes after | rewrites (as expected) | visits | construct s | apply s "
          "| µs/node | serialize s | graph MB | peak construct MB | peak apply MB | peak serialize MB | peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        r = base[n]
        if not _done(r):
            print(f"| {_label(n)} | | | | | | {_missing(r)} | | | | | | | |")
            continue
        fmt = lambda mb: "n/a" if mb is None else f"{mb:,.0f}"  # noqa: E731
        print(f"| {_label(n)} | {r['nodes_before']:,} | {r['nodes_after']:,} | {r['rewrites']:,} "
              f"({'yes' if r['rewrites_as_expected'] else 'NO'}) | {r['visits']:,} | {r['construct_s']:.2f} "
              f"| {r['apply_s']:.2f} | {_us_per_node(r):.1f} | {r['serialize_s']:.2f} | {fmt(r['graph_mb'])} "
              f"| {fmt(r['construct_peak_mb'])} | {fmt(r['apply_peak_mb'])} | {fmt(r['serialize_peak_mb'])} "
              f"| {fmt(r['peak_mb'])} |")
    print()
    done = [n for n in sizes if _done(base[n])]
    if done:
        print("Per stage (apply seconds / rewrites):\n")
        names = list(base[done[0]]["stages"])
        print("| size | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for n in done:
            st = base[n]["stages"]
            print(f"| {_label(n)} | " + " | ".join(f"{st[k]['seconds']:.2f} s / {st[k]['rewrites']:,}" for k in names) + " |")
        print()
        rules = sorted({rule for n in done for rule in base[n]["fires"]} |
                       {rule for n in done for rule in base[n]["expected_fires"]})
        print("Fires per rule (actual / expected from the generated material):\n")
        print("| size | " + " | ".join(rules) + " |")
        print("|---|" + "---:|" * len(rules))
        for n in done:
            r = base[n]
            print(f"| {_label(n)} | " + " | ".join(
                f"{r['fires'].get(rule, 0):,} / {r['expected_fires'].get(rule, 0):,}" for rule in rules) + " |")
        # Where the time goes: the driver's time per rule (match + rewrite); the rest is the driver's
        # own pass over the graph (topological order, worklist, dispatch).
        largest = done[-1]
        r = base[largest]
        ranked = sorted(r["rule_seconds"].items(), key=lambda item: -item[1])
        in_rules = sum(r["rule_seconds"].values())
        print(f"\nTime per rule at {_label(largest)} (match + rewrite; apply total {r['apply_s']:.2f} s):\n")
        print("| rule | seconds | share of apply | fires | µs per fire |")
        print("|---|---:|---:|---:|---:|")
        for rule, seconds in ranked[:10]:
            fired = r["fires"].get(rule, 0)
            per = f"{seconds / fired * 1e6:,.0f}" if fired else "-"
            print(f"| {rule} | {seconds:.2f} | {seconds / r['apply_s']:.0%} | {fired:,} | {per} |")
        rest = r["apply_s"] - in_rules
        print(f"| (driver: topological order, worklist, dispatch) | {rest:.2f} | {rest / r['apply_s']:.0%} | | |")
        missing = sorted({rule for n in done for rule in base[n]["material_without_rule"]})
        if missing:
            print(f"\n(The graph has material for rules this rule set lacks: {', '.join(missing)}.)")
        print()

    verdicts = []
    if len(sizes) > 1:
        print("Growth (apply time, same run):\n")
        print("| from -> to | node ratio | time ratio | µs/node ratio | target |")
        print("|---|---:|---:|---:|---|")
        for a, b in zip(sizes, sizes[1:]):
            ra, rb = base[a], base[b]
            if not _done(ra):
                print(f"| {_label(a)} -> {_label(b)} | | | | not measured |")
                verdicts.append((f"growth {_label(a)} -> {_label(b)}: not measured ({_missing(ra)} at {_label(a)})", False))
                continue
            if not _done(rb):
                if "timeout" in rb:
                    # A lower bound: the worker ran at least this long (generation and construction included).
                    bound = rb["timeout"] / ra["apply_s"]
                    allowed = (b / a) ** math.log10(GROWTH_TARGET)
                    ok = False if bound > allowed else None
                    print(f"| {_label(a)} -> {_label(b)} | {b / a:.2f}x | > {bound:.0f}x (killed) | | "
                          f"<= {allowed:.1f}x {'FAIL' if ok is False else 'unknown'} |")
                    verdicts.append((f"growth {_label(a)} -> {_label(b)}: {_label(b)} {_missing(rb)}, "
                                     f"more than {bound:.0f}x the {_label(a)} time (<= {allowed:.1f}x)", False))
                else:
                    print(f"| {_label(a)} -> {_label(b)} | | | | {_missing(rb)} |")
                    verdicts.append((f"growth {_label(a)} -> {_label(b)}: not measured ({_missing(rb)})", False))
                continue
            node_ratio = rb["nodes_before"] / ra["nodes_before"]
            time_ratio = rb["apply_s"] / ra["apply_s"]
            # 12x for 10x is time ~ nodes^log10(12); sizes not exactly 10x apart get the same exponent.
            allowed = node_ratio ** math.log10(GROWTH_TARGET)
            ok = time_ratio <= allowed
            print(f"| {_label(a)} -> {_label(b)} | {node_ratio:.2f}x | {time_ratio:.2f}x "
                  f"| {_us_per_node(rb) / _us_per_node(ra):.2f}x | <= {allowed:.1f}x {'PASS' if ok else 'FAIL'} |")
            verdicts.append((f"growth {_label(a)} -> {_label(b)}: {time_ratio:.2f}x for {node_ratio:.1f}x nodes "
                             f"(<= {allowed:.1f}x)", ok))
        print()
    if extra:
        print(f"Dispatch: + {args.extra_rules} never-matching rules in every stage:\n")
        print("| size | µs/node without | µs/node with | ratio | apply s without | apply s with | target |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for n in sizes:
            if n not in extra:
                continue
            if not _done(extra[n]):
                print(f"| {_label(n)} | {_us_per_node(base[n]):.1f} | | | {base[n]['apply_s']:.2f} | "
                      f"{_missing(extra[n])} | FAIL |")
                verdicts.append((f"flat dispatch at {_label(n)}: {_missing(extra[n])}", False))
                continue
            ratio = _us_per_node(extra[n]) / _us_per_node(base[n])
            ok = ratio <= FLAT_TARGET and extra[n]["rewrites"] == base[n]["rewrites"]
            print(f"| {_label(n)} | {_us_per_node(base[n]):.1f} | {_us_per_node(extra[n]):.1f} | {ratio:.2f}x "
                  f"| {base[n]['apply_s']:.2f} | {extra[n]['apply_s']:.2f} | <= {FLAT_TARGET}x {'PASS' if ok else 'FAIL'} |")
            verdicts.append((f"flat dispatch at {_label(n)}: {ratio:.2f}x per node with {args.extra_rules} "
                             f"extra rules (<= {FLAT_TARGET}x)", ok))
        print()
    hundred_k = next((n for n in sizes if 90_000 <= n <= 110_000), None)
    if hundred_k is not None:
        r = base[hundred_k]
        if _done(r):
            t = r["apply_s"]
            verdicts.insert(0, (f"100k-node graph applied in {t:.2f} s (< {TIME_TARGET_100K:.0f} s)",
                                t < TIME_TARGET_100K))
        else:
            verdicts.insert(0, (f"100k-node graph: {_missing(r)} (< {TIME_TARGET_100K:.0f} s)", False))
    for n in done:
        verdicts.append((f"rewrites at {_label(n)} match the generated material", base[n]["rewrites_as_expected"]))
    print("Targets:\n")
    for text, ok in verdicts:
        print(f"- {'PASS' if ok else 'FAIL'}: {text}")

    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"base": base, "extra": extra}, indent=2))
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
