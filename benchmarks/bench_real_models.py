"""Eight-bit conversion of real trained models: ours against TensorFlow Lite's, in one run.

For each model of tests/real_models.py (the digits CNN, fer's emotion CNN, MTCNN's ONet, the
musicnn tagger, Basic Pitch), on its real inputs and its calibration samples (the same feed
directory for both converters: TFLite's representative dataset is exactly what `calibrate` gets):

1. Conversion as whole commands, each a fresh process: ours is `gtt-rules apply --pipeline
   eightbit --feed-dir` on the calibration samples (conversion and calibration in one command,
   the same file as `apply --pipeline eightbit` then `calibrate --feed-dir`); TFLite's is its
   full-integer converter (TFLiteConverter.from_frozen_graph, Optimize.DEFAULT, the same samples
   as representative dataset, TFLITE_BUILTINS_INT8 only; float input and output so that both
   take the same feeds). If the converter refuses an int8-only model, it is rerun allowing float
   ops, and the table says "mixed".
2. Sizes: the float GraphDef, ours eight-bit, TFLite's full-integer flatbuffer.
3. Task scores (tests/real_models.agreement, the tests' metric): top-1 agreement with the float
   model (note F1 for Basic Pitch) and accuracy against labels where they exist, for the float
   model, ours in TensorFlow (the whole batch at once, and one sample at a time: uncalibrated
   ranges depend on the batch), and TFLite's interpreter (one sample at a time).
4. Weight-only flows beside TFLite's dynamic-range model: agreement of `quantize_weights` and
   `round_weights` (run in TensorFlow) and of TFLite with Optimize.DEFAULT and no dataset.
5. Eight-bit inference of one batch: TensorFlow against our evaluator (median of --runs).

    python benchmarks/bench_real_models.py [--runs N] [--only NAME] [--models DIR]

Models and calibration samples are built by scripts/make_real_models.py's builder into the
git-ignored benchmarks/models/real/ when missing. TensorFlow runs its reference kernels
(TF_ENABLE_ONEDNN_OPTS=0), the configuration our eight-bit kernels reproduce. gtt-rules is
byte-compiled first, as an installed package is. The machines are shared and noisy: quote ratios
from one run.
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
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import warnings  # noqa: E402

import numpy as np  # noqa: E402

import real_models  # noqa: E402

MODELS_DIR = HERE / "models" / "real"
INFERENCE_BATCH = 16


def ensure_model(directory: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """The model's .pb and its calibration feed directory, built when missing."""
    path, feeds = directory / f"{name}.pb", directory / f"{name}_feeds"
    if not path.exists():
        real_models.write(name, directory)
    if not feeds.exists():
        real_models.write_feed_dir(name, feeds)
    return path, feeds


def compile_package() -> None:
    """Byte-compile gtt-rules as installing it does (TensorFlow's modules come compiled): an
    editable checkout run under PYTHONDONTWRITEBYTECODE, as here, compiles every one of its modules
    from source in every command, ~0.2 s of CPU."""
    import compileall
    import importlib.util

    for package in ("gtt_rules", "gtt_rules.engine", "gtt_rules.rules", "gtt_rules.grammar",
                    "gtt_rules.stdlib_rules"):
        for folder in importlib.util.find_spec(package).submodule_search_locations:
            compileall.compile_dir(folder, quiet=2)


def run_command(command: list[str]) -> float:
    """Seconds a fresh process takes to run `command` (which must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def convert_ours(path: pathlib.Path, feeds: pathlib.Path, out: pathlib.Path) -> float:
    return run_command([sys.executable, "-m", "gtt_rules", "apply", str(path), "-o", str(out),
                        "--pipeline", "eightbit", "--feed-dir", str(feeds)])


def convert_tflite(path: pathlib.Path, feeds: pathlib.Path | None, out: pathlib.Path,
                   int8_only: bool) -> float:
    """TFLite's converter as a whole command: this script's `tflite` subcommand."""
    command = [sys.executable, __file__, "tflite", str(path), str(out)]
    if feeds is not None:
        command += ["--feeds", str(feeds)] + (["--int8-only"] if int8_only else [])
    return run_command(command)


def tflite_main(argv: list[str]) -> int:
    """`tflite GRAPH OUT [--feeds DIR [--int8-only]]`: convert GRAPH with TFLite's converter,
    full-integer with DIR as representative dataset, else dynamic range."""
    parser = argparse.ArgumentParser(prog="bench_real_models.py tflite")
    parser.add_argument("graph", type=pathlib.Path)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--feeds", type=pathlib.Path)
    parser.add_argument("--int8-only", action="store_true")
    args = parser.parse_args(argv)
    import tensorflow as tf

    spec = real_models.SPECS[args.graph.stem]
    shape = [1 if d < 0 else d for d in spec.input_shape]
    converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
        str(args.graph), [spec.input], [o.split(":")[0] for o in spec.outputs], {spec.input: shape})
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if args.feeds:
        samples = sorted(args.feeds.glob("*.npz"))
        converter.representative_dataset = lambda: ([np.load(s)[spec.input]] for s in samples)
        if args.int8_only:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    args.out.write_bytes(converter.convert())
    return 0


def tflite_outputs(path: pathlib.Path, name: str, inputs: np.ndarray) -> list[np.ndarray]:
    """The interpreter's outputs, one sample at a time, stacked, in the spec's output order."""
    import tensorflow as tf

    spec = real_models.SPECS[name]
    with warnings.catch_warnings():     # its deprecation notice: TensorFlow 2.21 still ships it
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (entry,) = interpreter.get_input_details()
    exits = {detail["name"]: detail["index"] for detail in interpreter.get_output_details()}
    # TFLite names outputs after the nodes, sometimes with a suffix: match by prefix.
    order = [next(index for key, index in exits.items() if key.split(":")[0] == o.split(":")[0])
             for o in spec.outputs]
    results = []
    for sample in inputs:
        interpreter.set_tensor(entry["index"], sample[None])
        interpreter.invoke()
        results.append([interpreter.get_tensor(index)[0] for index in order])
    return [np.stack(column) for column in zip(*results)]


def time_inference(path: pathlib.Path, name: str, inputs: np.ndarray, runs: int) -> tuple[float, float]:
    """Median seconds of one batch in TensorFlow and in our evaluator, runs alternating."""
    import tensorflow as tf

    from gtt_rules.engine.evaluator import Evaluator
    from gtt_rules.engine.graph import Graph

    spec = real_models.SPECS[name]
    feeds = {spec.input: inputs}
    evaluator = Evaluator(Graph.load(path), list(spec.outputs), fed=feeds, cache_constants=True)
    graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=graph)
    fetches, tf_feeds = list(spec.outputs), {f"{spec.input}:0": inputs}
    try:
        session.run(fetches, tf_feeds)
        evaluator.run(feeds)
        theirs, ours = [], []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(fetches, tf_feeds)
            theirs.append(time.perf_counter() - start)
            start = time.perf_counter()
            evaluator.run(feeds)
            ours.append(time.perf_counter() - start)
    finally:
        session.close()
    return statistics.median(theirs), statistics.median(ours)


def bench(name: str, directory: pathlib.Path, runs: int) -> dict:
    spec = real_models.SPECS[name]
    path, feeds = ensure_model(directory, name)
    samples = real_models.samples(name)
    work = directory / "out"
    work.mkdir(exist_ok=True)
    row: dict = {"model": name, "float_size": path.stat().st_size}

    scored = spec.outputs.index(spec.scored)

    def scores(label: str, outputs) -> None:
        got = outputs[scored]
        row[f"{label}_agree"] = real_models.agreement(spec.task, got, reference)
        if samples.labels is not None:
            row[f"{label}_acc"] = real_models.agreement(spec.task, got, samples.labels)

    reference = real_models.run_in_tensorflow(path, name, samples.inputs)[scored]
    scores("float", [reference if o == spec.scored else None for o in spec.outputs])

    ours = work / f"{name}.eightbit.pb"
    tflite = work / f"{name}.int8.tflite"
    ours_times, tflite_times = [], []
    row["tflite_kind"] = "int8"
    for _ in range(runs):
        ours_times.append(convert_ours(path, feeds, ours))
        try:
            int8_only = row["tflite_kind"] == "int8"
            tflite_times.append(convert_tflite(path, feeds, tflite, int8_only=int8_only))
        except RuntimeError:
            row["tflite_kind"] = "mixed"
            tflite_times.append(convert_tflite(path, feeds, tflite, int8_only=False))
    row.update(ours_time=statistics.median(ours_times), tflite_time=statistics.median(tflite_times),
               ours_size=ours.stat().st_size, tflite_size=tflite.stat().st_size)
    try:
        scores("ours", real_models.run_in_tensorflow(ours, name, samples.inputs))
        scores("ours1", real_models.run_in_tensorflow(ours, name, samples.inputs, one_by_one=True))
        batch = samples.inputs[:INFERENCE_BATCH]
        row["tf_infer"], row["ours_infer"] = time_inference(ours, name, batch, max(runs, 3))
    except Exception as error:     # TensorFlow refuses the graph: say why in the table
        row["ours_error"] = _reason(str(error))
    scores("tflite", tflite_outputs(tflite, name, samples.inputs))

    for flow in ("quantize_weights", "round_weights"):
        out = work / f"{name}.{flow}.pb"
        run_command([sys.executable, "-m", "gtt_rules", "apply", str(path), "-o", str(out),
                     "--rules", flow])
        scores(flow, real_models.run_in_tensorflow(out, name, samples.inputs))
    dynamic = work / f"{name}.dynamic.tflite"
    convert_tflite(path, None, dynamic, int8_only=False)
    scores("dynamic", tflite_outputs(dynamic, name, samples.inputs))
    return row


def _reason(message: str) -> str:
    """The line of a TensorFlow error that says what is wrong (not where it was detected)."""
    context = ("Graph execution error", "Detected at node", "Node:", "Original stack")
    lines = [line for line in message.splitlines()
             if line.strip() and not line.startswith((*context, " ", "\t"))]
    return (lines or message.splitlines() or ["?"])[0][:90]


def _score(row: dict, label: str) -> str:
    if f"{label}_agree" not in row:
        return "-"
    text = f"{row[f'{label}_agree']:.3f}"
    return text + (f" / {row[f'{label}_acc']:.3f}" if f"{label}_acc" in row else "")


def report(rows: list[dict]) -> None:
    print("\nEight-bit conversion (whole commands) and task scores: agreement with float "
          "(top-1; note F1 for basic_pitch) / accuracy vs labels")
    header = ("model", "float KB", "ours KB", "tflite KB", "ours s", "tflite s", "speed-up",
              "float", "ours batch", "ours 1-by-1", "tflite int8")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([
            r["model"], f"{r['float_size'] / 1e3:.0f}",
            f"{r['ours_size'] / 1e3:.0f} ({r['ours_size'] / r['float_size']:.0%})",
            f"{r['tflite_size'] / 1e3:.0f} ({r['tflite_size'] / r['float_size']:.0%}, "
            f"{r['tflite_kind']})",
            f"{r['ours_time']:.1f}", f"{r['tflite_time']:.1f}",
            f"{r['tflite_time'] / r['ours_time']:.1f}x",
            _score(r, "float"),
            _score(r, "ours") if "ours_error" not in r else f"TF refuses: {r['ours_error']}",
            _score(r, "ours1"), _score(r, "tflite")]))
    print("\nWeight-only flows, run in TensorFlow, beside TFLite's dynamic-range model")
    print("model | quantize_weights | round_weights | tflite dynamic range")
    for r in rows:
        print(f"{r['model']} | {_score(r, 'quantize_weights')} | {_score(r, 'round_weights')} | "
              f"{_score(r, 'dynamic')}")
    print(f"\nEight-bit inference, one batch of up to {INFERENCE_BATCH} (median seconds)")
    print("model | TensorFlow | ours | ours / TF")
    for r in rows:
        if "tf_infer" in r:
            print(f"{r['model']} | {r['tf_infer']:.3f} | {r['ours_infer']:.3f} | "
                  f"{r['ours_infer'] / r['tf_infer']:.1f}x")
        else:
            print(f"{r['model']} | - | - | (TensorFlow refuses ours)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tflite"]:
        return tflite_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="conversions per tool (median)")
    parser.add_argument("--only", action="append", choices=real_models.NAMES)
    parser.add_argument("--models", type=pathlib.Path, default=MODELS_DIR)
    args = parser.parse_args(argv)
    compile_package()
    rows = []
    for name in args.only or real_models.NAMES:
        print(f"{name}...", file=sys.stderr, flush=True)
        rows.append(bench(name, args.models, args.runs))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
