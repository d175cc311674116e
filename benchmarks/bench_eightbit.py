"""Eight-bit models: how fast we make them, and how fast they run, next to TensorFlow's own tools.

1. Weight quantization of a frozen graph: `quantize_weights` (load, rewrite, save) against the
   TensorFlow Lite converter with its default (dynamic-range) optimization on the same file; time
   and output size. Runs alternate, medians are reported.
2. Inference: the float model and its eight-bit version (`--pipeline eightbit`, then `calibrate`
   on a few random inputs) in TensorFlow, and both in our evaluator; medians of alternating runs,
   and the cosine similarity of the eight-bit outputs to the float ones.

    python benchmarks/bench_eightbit.py [--runs N] [--threads T] [--weights-model inception_v3]
                                        [--inference-model mobilenet_v2 ...] [--models DIR]

Models come from `benchmarks/make_models.py` (built on demand). These machines are shared and
noisy: quote ratios from one run. TensorFlow runs its reference kernels (TF_ENABLE_ONEDNN_OPTS=0,
as in the tests): those define the eight-bit arithmetic our evaluator reproduces bit for bit.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from bench_inference import THREADS, ensure_model, tensorflow_runner, timed  # also sets thread env

import numpy as np  # noqa: E402

from gtt_rules import apply, load_rules  # noqa: E402
from gtt_rules import calibration  # noqa: E402
from gtt_rules.engine.evaluator import Evaluator, random_feeds  # noqa: E402
from gtt_rules.engine.graph import Graph  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def _io(graph: Graph) -> tuple[list[str], list[str]]:
    return [n.name for n in graph.placeholders()], [n.name for n in graph.sinks()]


def quantize_weights_ours(path: pathlib.Path, out: pathlib.Path, specs: list[str], io) -> None:
    """Load, rewrite and save in this process, the rules read afresh (a new Library each time)."""
    from gtt_rules import standard_library
    from gtt_rules.rules.library import load_rules as load_with

    graph = Graph.load(path)
    apply(graph, load_with(specs, standard_library()), inputs=io[0], outputs=io[1])
    graph.save(out)


def quantize_weights_cli(path: pathlib.Path, out: pathlib.Path, specs: list[str], io) -> None:
    """The same as a user runs it: a fresh `gtt-rules apply` process, imports and all."""
    command = [sys.executable, "-m", "gtt_rules", "apply", str(path), "-o", str(out),
               "--inputs", ",".join(io[0]), "--outputs", ",".join(io[1])]
    for spec in specs:
        command += ["--rules", spec]
    # An installed package has its bytecode compiled; let this one keep its own between runs,
    # even where the environment says not to write any (recompiling costs ~0.15 s a run).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(command, check=True, capture_output=True, env=env)


def quantize_weights_tflite(path: pathlib.Path, out: pathlib.Path, io) -> None:
    import tensorflow as tf

    inputs, outputs, shapes = io
    converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(str(path), inputs, outputs, shapes)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    out.write_bytes(converter.convert())


WEIGHT_FLOWS = {"quantize_weights": ["quantize_weights"],
                "optimize_for_inference, quantize_weights": ["optimize_for_inference", "quantize_weights"]}


def bench_weights(path: pathlib.Path, runs: int, workdir: pathlib.Path) -> list[dict]:
    """One row per flow of ours; TensorFlow Lite's converter timed alongside, runs alternating."""
    tflite_out = workdir / "weights.tflite"
    graph = Graph.load(path)            # inputs, outputs and input shapes, read once, outside the clocks
    inputs, outputs = _io(graph)
    io = (inputs, outputs, {name: [max(d, 1) for d in graph[name].get_attr("shape")] for name in inputs})
    del graph
    times = {"tflite": []}
    for label in WEIGHT_FLOWS:
        times[label], times[label + " (cli)"] = [], []
    for _ in range(runs):
        times["tflite"].append(timed(lambda: quantize_weights_tflite(path, tflite_out, io))[0])
        for label, specs in WEIGHT_FLOWS.items():
            out = workdir / f"weights_{len(specs)}.pb"
            times[label].append(timed(lambda: quantize_weights_ours(path, out, specs, io))[0])
            times[label + " (cli)"].append(timed(lambda: quantize_weights_cli(path, out, specs, io))[0])
    tflite = statistics.median(times["tflite"])
    rows = []
    for label, specs in WEIGHT_FLOWS.items():
        rows.append({"flow": label, "in_process": statistics.median(times[label]),
                     "cli": statistics.median(times[label + " (cli)"]), "tflite": tflite,
                     "size": (workdir / f"weights_{len(specs)}.pb").stat().st_size,
                     "tflite_size": tflite_out.stat().st_size, "float_size": path.stat().st_size})
    return rows


def eight_bit_model(path: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """The model through `--pipeline eightbit`, its ranges calibrated on 4 random inputs."""
    graph = Graph.load(path)
    inputs, outputs = _io(graph)
    apply(graph, load_rules("eightbit"), inputs=inputs, outputs=outputs)
    records = calibration.record_ranges(graph, (random_feeds(graph, seed) for seed in range(4)))
    calibration.freeze_ranges(graph, {name: calibration.chosen_range(observed, 0.0, 0.0)
                                      for name, observed in records.items()})
    out = workdir / f"{path.stem}_eightbit.pb"
    graph.save(out)
    return out


def bench_inference(float_path: pathlib.Path, eight_path: pathlib.Path, runs: int) -> dict:
    float_graph, eight_graph = Graph.load(float_path), Graph.load(eight_path)
    _, outputs = _io(float_graph)
    feeds = random_feeds(float_graph, seed=11)
    runners, sessions = {}, []
    for label, graph, path in (("float", float_graph, float_path), ("eight", eight_graph, eight_path)):
        evaluator = Evaluator(graph, outputs, fed=feeds, cache_constants=True)
        runners[f"ours_{label}"] = (lambda e: lambda: e.run(feeds))(evaluator)
        runner, session = tensorflow_runner(path, feeds, outputs)
        runners[f"tf_{label}"] = runner
        sessions.append(session)
    try:
        values = {key: run() for key, run in runners.items()}      # warm-up
        times = {key: [] for key in runners}
        for _ in range(runs):
            for key, run in runners.items():
                times[key].append(timed(run)[0])
    finally:
        for session in sessions:
            session.close()

    def cosine(a, b):
        a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"model": float_path.stem, **{key: statistics.median(t) for key, t in times.items()},
            "cosine_tf": cosine(values["tf_eight"][0], values["tf_float"][0]),
            "cosine_ours": cosine(values["ours_eight"][0], values["tf_eight"][0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="threads for both sides")
    parser.add_argument("--weights-model", default="inception_v3")
    parser.add_argument("--inference-model", action="append", help="(repeatable; default mobilenet_v2, resnet50)")
    parser.add_argument("--models", type=pathlib.Path, default=HERE / "models")
    parser.add_argument("--part", choices=["weights", "inference"], action="append",
                        help="run only this part (repeatable; default both)")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console(width=200)
    console.print(f"{os.cpu_count()} CPUs; threads {THREADS or 'default'}; load average "
                  f"{os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        parts = args.part or ["weights", "inference"]
        if "weights" in parts:
            print_weights(console, args, workdir)
        if "inference" in parts:
            print_inference(console, args, workdir)
    console.print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


def print_weights(console, args, workdir: pathlib.Path) -> None:
    from rich.table import Table

    rows = bench_weights(ensure_model(args.models, args.weights_model), args.runs, workdir)
    table = Table(title=f"Weight quantization of {args.weights_model} ({rows[0]['float_size'] / 1e6:.1f} MB), "
                        f"median of {args.runs}; TFLite converter (dynamic range) {rows[0]['tflite']:.2f} s, "
                        f"{rows[0]['tflite_size'] / 1e6:.2f} MB", title_justify="left")
    for column in ("gtt-rules flow", "in process s", "speedup", "fresh CLI process s", "speedup", "MB",
                   "size vs TFLite"):
        table.add_column(column, justify="left" if column == "gtt-rules flow" else "right")
    for row in rows:
        table.add_row(row["flow"], f"{row['in_process']:.2f}", f"{row['tflite'] / row['in_process']:.1f}x",
                      f"{row['cli']:.2f}", f"{row['tflite'] / row['cli']:.1f}x", f"{row['size'] / 1e6:.2f}",
                      f"{row['size'] / row['tflite_size']:.3f}")
    console.print(table)


def print_inference(console, args, workdir: pathlib.Path) -> None:
    from rich.table import Table

    table = Table(title=f"Inference, float vs eight-bit (eightbit + calibrate), median of {args.runs}",
                  title_justify="left")
    for column in ("model", "TF float ms", "TF 8-bit ms", "TF 8/float", "ours float ms", "ours 8-bit ms",
                   "ours 8/float", "cos 8-bit vs float (TF)", "cos ours vs TF (8-bit)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in args.inference_model or ["mobilenet_v2", "resnet50"]:
        path = ensure_model(args.models, name)
        r = bench_inference(path, eight_bit_model(path, workdir), args.runs)
        table.add_row(r["model"], f"{r['tf_float'] * 1e3:.1f}", f"{r['tf_eight'] * 1e3:.1f}",
                      f"{r['tf_eight'] / r['tf_float']:.2f}x", f"{r['ours_float'] * 1e3:.1f}",
                      f"{r['ours_eight'] * 1e3:.1f}", f"{r['ours_eight'] / r['ours_float']:.2f}x",
                      f"{r['cosine_tf']:.4f}", f"{r['cosine_ours']:.6f}")
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
