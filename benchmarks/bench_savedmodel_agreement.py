"""How closely a real SavedModel's outputs can agree: TensorFlow against itself, and against us.

    python benchmarks/bench_savedmodel_agreement.py [--samples 3]

Issue 14 asks that the graph `gtt-rules freeze` writes run, in TensorFlow and in our evaluator,
within 1e-6 relative of the SavedModel's own signature run. This script measures what that bound
means on Basic Pitch (the published SavedModel in tests/fixtures/real/): it runs the signature in
TensorFlow under several configurations, each in its own process (intra-op threads 1, 2 and the
default; oneDNN off and on), runs our frozen graph in TensorFlow and in our evaluator, and prints
each run's distance from the reference run (default threads, oneDNN off: the test suite's
configuration). The distance is the one tests/test_savedmodel_tf.py uses: the largest absolute
difference over the largest magnitude of the reference, maximised over outputs and input samples.

If TensorFlow's own runs differ from one another by more than 1e-6, no implementation whose float
sums are ordered differently can be held to 1e-6 of one of them.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from real_models import FIXTURES, basic_pitch_without_slots  # noqa: E402

SOURCE = FIXTURES / "basic_pitch_icassp_2022"
INPUT = "input_2"

# One configuration per process: thread counts and oneDNN are fixed when TensorFlow starts.
_WORKER = r"""
import os, sys
import numpy as np
mode, folder, feeds_path, out_path, threads = sys.argv[1:6]
feeds = dict(np.load(feeds_path))
samples = feeds.pop("samples")
results = {}
if mode == "evaluator":
    import gtt_rules
    from gtt_rules.engine.savedmodel import freeze
    graph = freeze(folder)
    keys = sorted(feeds["keys"].tolist())
    for i, sample in enumerate(samples):
        for key, value in zip(keys, gtt_rules.evaluate(graph, {INPUT: sample}, keys)):
            results[f"{i}/{key}"] = np.asarray(value)
else:
    import tensorflow as tf
    if int(threads):
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    if mode == "signature":
        run = tf.saved_model.load(folder).signatures["serving_default"]
        for i, sample in enumerate(samples):
            for key, value in run(**{INPUT: tf.constant(sample)}).items():
                results[f"{i}/{key}"] = value.numpy()
    else:   # our frozen graph, in TensorFlow
        from gtt_rules.engine.savedmodel import freeze
        graph_def = tf.compat.v1.GraphDef.FromString(freeze(folder).to_bytes())
        keys = sorted(feeds["keys"].tolist())
        with tf.Graph().as_default() as g:
            tf.compat.v1.import_graph_def(graph_def, name="")
            with tf.compat.v1.Session(graph=g, config=tf.compat.v1.ConfigProto(
                    intra_op_parallelism_threads=int(threads))) as session:
                for i, sample in enumerate(samples):
                    for key, value in zip(keys, session.run([k + ":0" for k in keys], {INPUT + ":0": sample})):
                        results[f"{i}/{key}"] = value
np.savez(out_path, **results)
""".replace("INPUT", repr(INPUT))

RUNS = [  # (label, mode, threads, oneDNN)
    ("TF signature, default threads, oneDNN off (reference)", "signature", 0, "0"),
    ("TF signature, default threads, oneDNN off, again", "signature", 0, "0"),
    ("TF signature, 1 thread, oneDNN off", "signature", 1, "0"),
    ("TF signature, 2 threads, oneDNN off", "signature", 2, "0"),
    ("TF signature, default threads, oneDNN on", "signature", 0, "1"),
    ("our frozen graph in TF, default threads, oneDNN off", "frozen", 0, "0"),
    ("our frozen graph in TF, 1 thread, oneDNN off", "frozen", 1, "0"),
    ("our frozen graph in our evaluator", "evaluator", 0, "0"),
]


def _distance(actual: dict, reference: dict) -> float:
    worst = 0.0
    for key, expected in reference.items():
        scale = max(float(np.max(np.abs(expected))), 1e-30)
        worst = max(worst, float(np.max(np.abs(actual[key].astype(np.float64) - expected))) / scale)
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="random audio clips (default 3)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(5)
    samples = (rng.normal(size=(args.samples, 1, 43844, 1)) * 0.1).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        model = basic_pitch_without_slots(scratch)  # TensorFlow's loader fails on its optimizer slots
        feeds = scratch / "feeds.npz"
        np.savez(feeds, samples=samples, keys=np.array([]))
        outputs = {}
        for label, mode, threads, onednn in RUNS:
            if mode != "signature":     # the frozen graph's outputs are named after the signature's keys
                keys = sorted({k.split("/", 1)[1] for k in outputs[RUNS[0][0]]})
                np.savez(feeds, samples=samples, keys=np.array(keys))
            out = scratch / f"{len(outputs)}.npz"
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="3", GTT_RULES_CACHE_DIR="")
            folder = model if mode == "signature" else SOURCE
            done = subprocess.run([sys.executable, "-c", _WORKER, mode, str(folder), str(feeds), str(out),
                                   str(threads)], env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
            outputs[label] = dict(np.load(out))
        reference = outputs[RUNS[0][0]]
        print(f"Basic Pitch, {args.samples} random clips; distance = max |a - ref| / max |ref| over outputs\n")
        print("| run | distance from the reference | within 1e-6 |")
        print("|---|---:|---|")
        for label, run in outputs.items():
            distance = _distance(run, reference)
            print(f"| {label} | {distance:.1e} | {'yes' if distance <= 1e-6 else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
