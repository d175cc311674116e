"""Peak memory and time to first output running a ~95 MB model: plain GraphDef against the
memory-mapped package.

    python benchmarks/bench_memmapped.py [--model PATH]

Target (issue 14): running the memmapped package peaks at no more than half the memory of running
the plain graph. Variants, each in its own fresh subprocess, which loads the model and runs it once
on a seeded random input:

  plain, copied    the plain GraphDef loaded as before zero-copy loading: every tensor_content
                   parsed into the NodeDefs (graph_io.MIN_MAPPED_BYTES set past every tensor)
  plain, mapped    the plain GraphDef as Graph.load reads it now: big tensor_content left in the
                   file, the values views of the map
  memmapped        the package `gtt-rules memmap` writes, its regions views of the map

Reported: peak RSS (VmHWM, which counts the mapped file's pages once touched; they are the page
cache's, shared and dropped under pressure), the anonymous part after the run (RssAnon: the
process's own memory), time from the start of the process to the first output (imports, load,
run), load and run alone. Each figure is the least over --repeat processes. Each variant's
output must equal the first's.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "models" / "inception_v3.pb"

_WORKER = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
from gtt_rules.engine import graph_io
from gtt_rules.engine.evaluator import random_feeds, evaluate
from gtt_rules.engine.graph import Graph
path, copied = sys.argv[1], sys.argv[2] == "1"
if copied:
    graph_io.MIN_MAPPED_BYTES = 2**62
loading = time.perf_counter()
graph = Graph.load(path)
loaded = time.perf_counter()
outputs = [n.name for n in graph.sinks()]
feeds = random_feeds(graph, seed=0)
running = time.perf_counter()
(out,) = evaluate(graph, feeds, outputs[:1])
done = time.perf_counter()
status = {k: int(v.split()[0]) * 1024 for k, v in
          (line.split(":", 1) for line in open("/proc/self/status")) if k in ("VmHWM", "RssAnon", "RssFile")}
print(json.dumps({"load": loaded - loading, "run": done - running, "first_output": done - start,
                  "mapped": sum(1 for n in graph if n.mapped), **status,
                  "output": np.asarray(out, dtype=np.float64).ravel().tolist()}))
"""


def _measure(path: pathlib.Path, copied: bool, repeat: int) -> dict:
    """The variant's figures over `repeat` fresh processes: the least of each (noise only adds)."""
    rows = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", _WORKER, str(path), "1" if copied else "0"],
                                capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        rows[-1]["wall"] = time.perf_counter() - started
    return {key: rows[0][key] if key == "output" else min(row[key] for row in rows) for key in rows[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL,
                        help="a frozen GraphDef (benchmarks/make_models.py builds inception_v3)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per variant (least taken)")
    args = parser.parse_args(argv)
    from gtt_rules.engine import memmapped
    from gtt_rules.engine.graph import Graph

    with tempfile.TemporaryDirectory() as folder:
        package = pathlib.Path(folder) / "model.mmpb"
        regions = memmapped.save(Graph.load(args.model), package)
        size = args.model.stat().st_size
        print(f"{args.model.name}: {size / 1e6:.1f} MB; package {package.stat().st_size / 1e6:.1f} MB, "
              f"{regions} regions")
        rows = [("plain, copied", _measure(args.model, True, args.repeat)),
                ("plain, mapped", _measure(args.model, False, args.repeat)),
                ("memmapped", _measure(package, False, args.repeat))]
    reference = rows[0][1]["output"]
    print(f"{'variant':15s} {'peak RSS MB':>11s} {'anon MB':>8s} {'file MB':>8s} {'mapped':>6s} "
          f"{'load s':>7s} {'run s':>6s} {'first output s':>14s} {'process s':>9s}")
    for name, row in rows:
        assert row["output"] == reference, f"{name}: another output than plain, copied"
        print(f"{name:15s} {row['VmHWM'] / 1e6:11.1f} {row['RssAnon'] / 1e6:8.1f} "
              f"{row['RssFile'] / 1e6:8.1f} {row['mapped']:6d} {row['load']:7.3f} {row['run']:6.2f} "
              f"{row['first_output']:14.2f} {row['wall']:9.2f}")
    plain, package_row = rows[0][1], rows[2][1]
    ratio = package_row["VmHWM"] / plain["VmHWM"]
    print(f"memmapped peak / plain (copied) peak: {ratio:.2f} (target <= 0.50: "
          f"{'met' if ratio <= 0.5 else 'not met'}); anonymous: "
          f"{package_row['RssAnon'] / plain['RssAnon']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
