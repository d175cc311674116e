"""merge_duplicate_nodes at scale: seconds and nodes merged, on the real models, on the generated
graphs of bench_rules.py (chains that repeat each other's Consts) and on stress graphs.

    python benchmarks/bench_merge_duplicates.py [--sizes 10k,100k] [--stress 1000,2000,4000]

Stress graphs: one Placeholder read by k nodes, either k copies of one Relu (all merge into the
first) or k Identity nodes told apart by an attr (none merges: every one is a second root that
each root must look at, the worst case of a join through readers). The standard library's pass
groups nodes by content: the all-different stress graphs must stay linear in k.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from bench_rules import _size, generate  # noqa: E402

from gtt_rules import standard_library  # noqa: E402
from gtt_rules.engine.graph import Graph  # noqa: E402
from gtt_rules.rules.gtt import transform_stages  # noqa: E402

REAL = pathlib.Path(__file__).parent / "models" / "real"


def merge(graph: Graph, protected: list[str]) -> float:
    """Seconds merge_duplicate_nodes takes on `graph` (loading the library aside)."""
    stages = [stage for _, found in transform_stages("merge_duplicate_nodes", standard_library()) for stage in found]
    started = time.perf_counter()
    for stage in stages:
        stage.run(graph, inputs=[], outputs=protected)
    return time.perf_counter() - started


def stress(k: int, alike: bool) -> Graph:
    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": 1, "shape": [2]})
    for i in range(k):
        attrs = {"T": 1} if alike else {"T": 1, "_tag": i}
        graph.add_node(f"n{i}", "Relu" if alike else "Identity", ["x"], attrs=attrs)
    graph.add_node("out", "AddN", [f"n{i}" for i in range(k)], attrs={"T": 1, "N": k})
    return graph


def report(label: str, graph: Graph, protected: list[str]) -> None:
    before = len(graph)
    seconds = merge(graph, protected)
    print(f"{label:28} {before:>9,} nodes  {before - len(graph):>8,} merged  {seconds:8.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10k,100k")
    parser.add_argument("--stress", default="1000,2000,4000")
    args = parser.parse_args()
    for path in sorted(REAL.glob("*.pb")):
        import json
        spec = json.loads(path.with_suffix(".json").read_text())
        report(path.stem, Graph.from_bytes(path.read_bytes()),
               [i["name"] for i in spec["inputs"]] + [o.split(":")[0] for o in spec["outputs"]])
    for size in filter(None, args.sizes.split(",")):
        graph_def, protected, _, _ = generate(_size(size))
        report(f"generated {size}", Graph(graph_def), protected)
    for k in (int(k) for k in filter(None, args.stress.split(","))):
        report(f"stress {k} alike", stress(k, True), ["x", "out"])
        report(f"stress {k} all different", stress(k, False), ["x", "out"])


if __name__ == "__main__":
    main()
