"""Whole-model float inference: our numpy evaluator against TensorFlow, in one run.

For each model, both run the same seeded random input: ours through a prepared `Evaluator`
(graph loaded and plan built once; values that depend only on Consts computed by the warm-up run
and kept, as a TensorFlow session folds constants once), TensorFlow through `Session.run` on the
imported GraphDef. After one warm-up each, the runs alternate (ours, TF,
ours, ...) so that both see the same machine load; the table gives the medians, their ratio and
the largest difference between the two outputs (relative to the largest output value).

    python benchmarks/bench_inference.py [--runs N] [--threads T] [--only mobilenet_v2] [--models DIR]

`--threads T` gives both sides T threads: numpy's BLAS (OPENBLAS_NUM_THREADS, set before numpy
is imported) and TensorFlow's session (intra- and inter-op pools). On a loaded machine, threaded
OpenBLAS waits a scheduler time slice for its helper threads on every matrix product, so
`--threads 1` gives the steadier comparison there.

Models come from `benchmarks/make_models.py` (built on demand if missing). These machines are
shared and noisy: quote the ratio from one run, not the absolute times.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _threads_from_argv() -> int:
    """--threads, read before numpy is imported, since OpenBLAS reads its thread count then."""
    for index, arg in enumerate(sys.argv):
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
        if arg == "--threads" and index + 1 < len(sys.argv):
            return int(sys.argv[index + 1])
    return 0


THREADS = _threads_from_argv()
if THREADS:
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(THREADS)

import numpy as np  # noqa: E402

from gtt_rules.engine.evaluator import Evaluator, random_feeds  # noqa: E402
from gtt_rules.engine.graph import Graph  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
MODELS = ["mobilenet_v2", "inception_v3"]


def ensure_model(directory: pathlib.Path, name: str) -> pathlib.Path:
    path = directory / f"{name}.pb"
    if not path.exists():
        subprocess.run([sys.executable, str(HERE / "make_models.py"), "--only", name,
                        "--out", str(directory)], check=True)
    return path


def tensorflow_runner(path: pathlib.Path, feeds: dict[str, np.ndarray], outputs: list[str]):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto()
    if THREADS:
        config.intra_op_parallelism_threads = THREADS
        config.inter_op_parallelism_threads = THREADS
    session = tf.compat.v1.Session(graph=graph, config=config)
    fetches = [o if ":" in o else f"{o}:0" for o in outputs]
    feed_dict = {(k if ":" in k else f"{k}:0"): v for k, v in feeds.items()}
    return lambda: session.run(fetches, feed_dict=feed_dict), session


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_model(path: pathlib.Path, runs: int) -> dict:
    graph = Graph.load(path)
    outputs = [node.name for node in graph.sinks()]
    feeds = random_feeds(graph, seed=0)
    evaluator = Evaluator(graph, outputs, fed=feeds, cache_constants=True)
    ours = lambda: evaluator.run(feeds)  # noqa: E731
    theirs, session = tensorflow_runner(path, feeds, outputs)
    try:
        _, our_values = timed(ours)          # warm-up
        _, their_values = timed(theirs)
        our_times, their_times = [], []
        for _ in range(runs):
            our_times.append(timed(ours)[0])
            their_times.append(timed(theirs)[0])
    finally:
        session.close()
    error = max(float(np.max(np.abs(a.astype(np.float64) - b)) / max(float(np.max(np.abs(b))), 1e-30))
                for a, b in zip(our_values, their_values))
    return {"model": path.stem, "nodes": len(graph), "ours": statistics.median(our_times),
            "tf": statistics.median(their_times), "error": error}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (default 5)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both sides (default: each library's own choice)")
    parser.add_argument("--only", action="append", choices=MODELS, help="models to run (repeatable)")
    parser.add_argument("--models", type=pathlib.Path, default=HERE / "models",
                        help="folder of the NAME.pb models (default benchmarks/models)")
    args = parser.parse_args(argv)

    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
    print(f"numpy {np.__version__} with {blas.get('name', '?')} {blas.get('version', '')}; "
          f"{os.cpu_count()} CPUs; threads {THREADS or 'default'}; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    rows = [bench_model(ensure_model(args.models, name), args.runs) for name in (args.only or MODELS)]

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Float inference, median of {args.runs} runs after warm-up",
                  title_justify="left")
    for column in ("model", "nodes", "gtt-rules (ms)", "TensorFlow (ms)", "ratio", "max diff (rel)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(row["model"], f"{row['nodes']:,}", f"{row['ours'] * 1000:.1f}",
                      f"{row['tf'] * 1000:.1f}", f"{row['ours'] / row['tf']:.2f}x", f"{row['error']:.1e}")
    Console().print(table)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
