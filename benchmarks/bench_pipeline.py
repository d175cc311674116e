"""optimize_for_inference against Grappler on the same frozen graph, in one run.

    python benchmarks/bench_pipeline.py [--model benchmarks/models/inception_v3.pb] [--repeat 3]

Grappler runs with constant folding, arithmetic optimization and remapping on. Both times include
nothing but the optimization itself (the graph is already parsed). Also checked: our result has no
batch-norm op, no Rsqrt, no Identity except at the outputs, and TensorFlow runs it within 1e-4
relative of the original. Prints a markdown table; exits 1 if a target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from collections import Counter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

import numpy as np  # noqa: E402

from conftest import grappler_optimize, random_feeds, tf_run  # noqa: E402
from gtt_rules.engine.graph import Graph  # noqa: E402
from gtt_rules import load_rules  # noqa: E402

BATCH_NORM_OPS = {"FusedBatchNorm", "FusedBatchNormV3", "BatchNormWithGlobalNormalization"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "inception_v3.pb"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    model = pathlib.Path(args.model)
    if not model.exists():
        print(f"{model} is missing: run `python benchmarks/make_models.py --only {model.stem}`", file=sys.stderr)
        return 2
    spec = json.loads(model.with_suffix(".json").read_text())
    data = model.read_bytes()
    outputs = [o.split(":")[0] for o in spec["outputs"]]
    inputs = [i["name"] for i in spec["inputs"]]

    ours_times, graph = [], None
    for _ in range(args.repeat):
        graph = Graph.from_bytes(data)
        stages = load_rules(["optimize_for_inference"])
        started = time.perf_counter()
        for stage in stages:
            stage.run(graph, inputs=inputs, outputs=outputs)
        ours_times.append(time.perf_counter() - started)
    grappler_times, grappled = [], None
    for _ in range(args.repeat):
        started = time.perf_counter()
        grappled = grappler_optimize(data, spec["outputs"])
        grappler_times.append(time.perf_counter() - started)

    ops = Counter(node.op for node in graph)
    feeds = random_feeds(spec, seed=1)
    expected = tf_run(data, feeds, spec["outputs"])
    actual = tf_run(graph.to_bytes(), feeds, spec["outputs"])
    error = max(float(np.max(np.abs(a - e) / (np.abs(e) + 1e-6))) for a, e in zip(actual, expected))
    ours, peer = statistics.median(ours_times), statistics.median(grappler_times)
    nodes_in = len(Graph.from_bytes(data))
    print(f"model: {model.name}, {nodes_in:,} nodes in\n")
    print("| pipeline | median s | nodes out | time vs Grappler |")
    print("|---|---:|---:|---:|")
    print(f"| gtt-rules optimize_for_inference | {ours:.3f} | {len(graph):,} | {ours / peer:.2f}x |")
    print(f"| Grappler (constant folding, arithmetic, remapping) | {peer:.3f} | {len(grappled.node):,} | 1.00x |")
    identities = [n.name for n in graph if n.op == "Identity" and n.name not in outputs]
    checks = {
        "time at most 1/4 of Grappler's": ours <= peer / 4,
        "no more nodes than Grappler": len(graph) <= len(grappled.node),
        "no batch-norm op, Rsqrt or inner Identity": not (BATCH_NORM_OPS & set(ops)) and not ops["Rsqrt"]
        and not identities,
        f"TensorFlow outputs within 1e-4 relative (max {error:.1e})": error <= 1e-4,
    }
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
