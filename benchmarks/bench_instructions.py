"""Rule application counted in CPU instructions: a speed comparison that repeats from run to run.

    python benchmarks/bench_instructions.py [--sizes 10k,100k] [--against OTHER_CHECKOUT]

Wall-clock time on a shared machine moves by several percent from one run to the next, more than
the differences a change to the engine makes. The instructions executed move by less than 0.1%
once the two sources of variation are pinned:
  * string hashing (PYTHONHASHSEED=1): the order of sets changes the work by up to a few percent;
  * OpenBLAS's worker threads (OPENBLAS_NUM_THREADS=1), which spin, and are counted, when idle.

Each size runs twice under valgrind's cachegrind (Debian package `valgrind`): loading the rules and
building the graph of `bench_rules.py` (generate, `Graph`, `check_dtypes`, `gc.collect()`), and the
same followed by every stage's `apply_rules`. Rule application is the difference. With
`--against DIR`, the same runs in DIR, a checkout with its own `.venv` (an earlier commit, say, from
`git worktree add`), and the table gives the ratio.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import gc
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def _bench_rules(root: pathlib.Path):
    spec = importlib.util.spec_from_file_location("bench_rules", root / "benchmarks" / "bench_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(n_nodes: int, apply: bool) -> None:
    """Build the graph of `n_nodes`; with `apply`, run every standard rule set over it."""
    from gtt_rules import load_rules
    from gtt_rules.engine import validation
    from gtt_rules.engine.driver import apply_rules
    from gtt_rules.engine.graph import Graph

    bench = _bench_rules(pathlib.Path.cwd())
    stages = load_rules(bench.STDLIB_SETS)
    graph_def, protected, _, _ = bench.generate(n_nodes)
    graph = Graph(graph_def)
    validation.check_dtypes(graph)
    gc.collect()
    if apply:
        for stage in stages:
            apply_rules(graph, stage.rules, protected=protected)


def count(root: pathlib.Path, n_nodes: int, apply: bool) -> int:
    """Instructions of one worker run in checkout `root`, with its own interpreter."""
    python = root / ".venv" / "bin" / "python"
    env = {**os.environ, "PYTHONHASHSEED": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           str(python if python.exists() else sys.executable), str(HERE / "bench_instructions.py"),
           "--worker", str(n_nodes)] + (["--apply"] if apply else [])
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"worker in {root} failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def applying(root: pathlib.Path, n_nodes: int) -> int:
    """Instructions of rule application alone: the two runs (on two cores when there are two)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        built, applied = pool.map(lambda apply: count(root, n_nodes, apply), (False, True))
    return applied - built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k", help="comma-separated node counts (10k, 100k, 25000)")
    parser.add_argument("--against", metavar="DIR", help="another checkout to compare with")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--apply", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.apply)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install -y valgrind")
    bench = _bench_rules(HERE.parent)
    roots = [HERE.parent] + ([pathlib.Path(args.against).resolve()] if args.against else [])
    print("| nodes | " + " | ".join(str(r) for r in roots) + (" | ratio |" if args.against else " |"))
    print("|---" * (len(roots) + 1 + bool(args.against)) + "|")
    for n_nodes in (bench._size(text) for text in args.sizes.split(",")):
        counts = [applying(root, n_nodes) for root in roots]
        cells = [f"{c / 1e6:,.1f} M" for c in counts] + ([f"{counts[0] / counts[1]:.3f}"] if args.against else [])
        print(f"| {bench._label(n_nodes)} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
