"""add_default_attributes and strip_default_attrs on bench_rules' generated graph (10,010 nodes).

    python benchmarks/bench_default_attrs.py [--nodes 10000] [--repeat 3]

Times each rule set's fixed point (apply_rules) in three settings: strip on the generated graph,
add on it, and add after strip (every default missing: the most work for add). Prints the best of
--repeat runs, the rewrites, and a hash of the result, so that two versions can be compared for
speed and for output. Machines are shared and noisy: compare runs made one after the other.
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_rules import generate  # noqa: E402  (the same graph as the rules benchmark)

from gtt_rules.engine.driver import apply_rules  # noqa: E402
from gtt_rules.engine.graph import Graph  # noqa: E402
from gtt_rules import load_rules  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args(argv)
    graph_def, protected, _, _ = generate(options.nodes)
    data = graph_def.SerializeToString()
    stages = {name: load_rules([name])[0] for name in ("add_default_attributes", "strip_default_attrs")}
    settings = [("strip", [], "strip_default_attrs"), ("add", [], "add_default_attributes"),
                ("add after strip", ["strip_default_attrs"], "add_default_attributes")]
    print(f"{len(Graph.from_bytes(data)):,} nodes")
    for label, before, timed in settings:
        best = None
        for _ in range(options.repeat):
            graph = Graph.from_bytes(data)
            for name in before:
                apply_rules(graph, stages[name].rules, protected=protected)
            start = time.perf_counter()
            report = apply_rules(graph, stages[timed].rules, protected=protected)
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        digest = hashlib.sha256(graph.to_bytes()).hexdigest()[:12]
        print(f"{label:16} {best:7.3f} s  {report.rewrites:6,} rewrites  result {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
