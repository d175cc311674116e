"""`gtt-rules freeze` against TensorFlow's convert_variables_to_constants_v2, as whole commands.

    python benchmarks/bench_freeze.py [--saved-model DIR] [--repeat 3]

The SavedModel is a Keras Inception-v3 (weights=None, 95 MB of variables), exported at benchmark
time unless --saved-model names one. The peer is a script that imports TensorFlow, loads the
SavedModel and freezes its serving signature with convert_variables_to_constants_v2 (control flow
lowered, as that function does by default), then writes the GraphDef. Each side runs as its own
process; the times are wall clock, start to exit. Also checked: TensorFlow runs our frozen graph
within 1e-6 relative of the signature's own run. Prints a markdown table; exits 1 if the 10x target
or the check is missed.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

PEER_SCRIPT = """
import sys
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
loaded = tf.saved_model.load(sys.argv[1])        # kept: the signature needs its variables alive
function = loaded.signatures["serving_default"]
frozen = convert_variables_to_constants_v2(function)
with open(sys.argv[2], "wb") as f:
    f.write(frozen.graph.as_graph_def().SerializeToString())
"""


def _export_inception(folder: pathlib.Path) -> None:
    import keras
    model = keras.applications.InceptionV3(weights=None)
    model.export(str(folder), verbose=False)


def _timed(argv: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """Wall-clock seconds and CPU seconds (user + system, all threads) of each run."""
    walls, cpus = [], []
    env = dict(os.environ, GTT_RULES_CACHE_DIR="", TF_CPP_MIN_LOG_LEVEL="2")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{argv[:2]} failed:\n{done.stderr[-2000:]}")
    return walls, cpus


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved-model", help="a SavedModel folder (default: export an Inception-v3)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        folder = pathlib.Path(args.saved_model) if args.saved_model else scratch / "inception_v3"
        if not args.saved_model:
            _export_inception(folder)
        ours_out, peer_out = scratch / "ours.pb", scratch / "peer.pb"
        gtt_rules = pathlib.Path(sys.executable).with_name("gtt-rules")
        ours, ours_cpu = _timed([str(gtt_rules), "freeze", str(folder), "-o", str(ours_out), "--overwrite"],
                                args.repeat)
        peer, peer_cpu = _timed([sys.executable, "-c", PEER_SCRIPT, str(folder), str(peer_out)], args.repeat)
        error = _check(folder, ours_out)
        weights = sum(p.stat().st_size for p in (folder / "variables").iterdir())
        ours_nodes, peer_nodes = _count_nodes(ours_out), _count_nodes(peer_out)
        ours_s, peer_s = statistics.median(ours), statistics.median(peer)
        ours_c, peer_c = statistics.median(ours_cpu), statistics.median(peer_cpu)
        print(f"SavedModel: {folder.name}, {weights / 1e6:.1f} MB of variables; median of {args.repeat} "
              f"runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print("| command | wall s | wall runs s | CPU s | nodes out | output MB | wall speed-up | CPU ratio |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        print(f"| gtt-rules freeze | {ours_s:.2f} | {' '.join(f'{t:.2f}' for t in ours)} | {ours_c:.2f} | "
              f"{ours_nodes:,} | {ours_out.stat().st_size / 1e6:.1f} | {peer_s / ours_s:.1f}x | "
              f"{peer_c / ours_c:.1f}x |")
        print(f"| TensorFlow import + load + convert_variables_to_constants_v2 | {peer_s:.2f} | "
              f"{' '.join(f'{t:.2f}' for t in peer)} | {peer_c:.2f} | {peer_nodes:,} | "
              f"{peer_out.stat().st_size / 1e6:.1f} | 1.0x | 1.0x |")
        checks = {"at least 10x faster": peer_s / ours_s >= 10,
                  f"TensorFlow runs ours within 1e-6 relative of the signature (max {error:.1e})": error <= 1e-6}
        print()
        for name, ok in checks.items():
            print(f"- {'met' if ok else 'MISSED'}: {name}")
        return 0 if all(checks.values()) else 1


def _count_nodes(path: pathlib.Path) -> int:
    from gtt_rules.engine.proto import graph_def_pb2
    return len(graph_def_pb2.GraphDef.FromString(path.read_bytes()).node)


def _check(folder: pathlib.Path, frozen: pathlib.Path) -> float:
    import numpy as np
    import tensorflow as tf
    from conftest import tf_run

    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    (key,) = signature.structured_input_signature[1]
    spec = signature.structured_input_signature[1][key]
    feed = np.random.default_rng(0).normal(size=[1] + spec.shape.as_list()[1:]).astype(np.float32)
    expected = {k: v.numpy() for k, v in signature(**{key: tf.constant(feed)}).items()}
    keys = sorted(expected)
    actual = tf_run(frozen.read_bytes(), {key: feed}, keys)
    return max(float(np.max(np.abs(a - expected[k])) / np.max(np.abs(expected[k]))) for k, a in zip(keys, actual))


if __name__ == "__main__":
    sys.exit(main())
