"""Load, walk and save a large frozen graph, beside bare protobuf parse + serialize of the same file.

    python benchmarks/bench_load_save.py [--model PATH] [--repeat N]

Target (shared/DESIGN.md, Performance; issue 2): gtt-rules load + walk + save within 1.5x of the bare
protobuf parse + serialize, and peak memory under 3x the file size. All figures come from one run,
so the ratio is what to quote; the machines are shared and the absolute seconds are noisy.

Every variant runs in its own fresh subprocess, so each one's peak memory is its own: the peak RSS
over the timed repeats minus the RSS right after the imports. The peak is VmHWM, reset right after
the imports (so an import's transient memory does not count); where Linux refuses the reset it is
ru_maxrss, which also covers the imports.

Variants, each timed as the median of N repeats of read file -> ... -> write a temp file:
  protobuf       bare peer: our generated GraphDef, ParseFromString + SerializeToString
  tensorflow     second reference: tf.compat.v1.GraphDef, the same steps
  gtt-rules      Graph.load, walk (topological order; every node's op, inputs, control inputs,
                 output dtypes), summarize, Graph.save
  gtt-rules load Graph.load only
  gtt-rules save Graph.save only (the graph loaded once, outside the timing)
The gtt-rules variant also checks, once and after the timing, that its saved file parses to a
message equal to the input.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "models" / "inception_v3.pb"
TIME_TARGET = 1.5      # ours / bare protobuf
MEMORY_TARGET = 3.0    # peak extra memory / file size
MB = 1024 * 1024

# (variant, worker key); the first one is the peer every ratio is taken against.
VARIANTS = [
    ("protobuf (bare, peer)", "protobuf"),
    ("tensorflow GraphDef", "tensorflow"),
    ("gtt-rules load+walk+save", "ours"),
    ("gtt-rules load only", "ours_load"),
    ("gtt-rules save only", "ours_save"),
]
LABELS = {kind: label for label, kind in VARIANTS}


# ---- worker side: runs in a fresh subprocess, prints one JSON object ------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Restart the VmHWM high-water mark at the current RSS (Linux: clear_refs 5); False if refused.

    ru_maxrss cannot be reset, so once the mark is reset VmHWM alone is the peak; otherwise an
    import's transient memory (TensorFlow's is large) would count as the variant's own.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb(reset: bool) -> int:
    # Both in KiB. VmHWM is the peak RSS since the last reset; ru_maxrss is the same mark since start.
    if reset:
        return _status_kb("VmHWM")
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _status_kb("VmHWM"))


def _walk(graph, output_dtypes) -> int:
    """Touch what a rule pass touches; returns a number so nothing is optimized away."""
    total = 0
    for node in graph.topological_order():
        op = node.op
        inputs = node.inputs
        control = node.control_inputs
        dtypes = output_dtypes(node)
        total += len(op) + len(inputs) + len(control) + (0 if dtypes is None else len(dtypes))
    return total


def run_worker(kind: str, model: pathlib.Path, repeat: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if kind == "tensorflow":
        import tensorflow as tf
        message_class = tf.compat.v1.GraphDef
    elif kind == "protobuf":
        from gtt_rules.engine.proto.graph_def_pb2 import GraphDef as message_class
    else:
        from gtt_rules.engine.graph import Graph
        from gtt_rules.summary import summarize
    gc.collect()
    base_kb = _status_kb("VmRSS")
    reset = _reset_peak()

    tmpdir = tempfile.TemporaryDirectory(prefix="bench_load_save.")
    out_path = pathlib.Path(tmpdir.name) / "out.pb"
    times: list[float] = []
    stages: dict[str, list[float]] = {}
    result: dict = {"kind": kind}

    def stage(name: str, seconds: float) -> None:
        stages.setdefault(name, []).append(seconds)

    graph = None
    if kind == "ours_save":
        # Loaded outside the timing. The loaded graph stays in the figure (it is resident while
        # saving), the transient memory of loading does not, when the high-water mark can be reset.
        graph = Graph.load(model)
        gc.collect()
        reset = _reset_peak()
    for _ in range(repeat):
        gc.collect()
        if kind in ("protobuf", "tensorflow"):
            t0 = time.perf_counter()
            data = model.read_bytes()
            t1 = time.perf_counter()
            message = message_class()
            message.ParseFromString(data)
            del data
            t2 = time.perf_counter()
            out = message.SerializeToString()
            t3 = time.perf_counter()
            with open(out_path, "wb") as f:
                f.write(out)
            t4 = time.perf_counter()
            del message, out
            stage("read", t1 - t0)
            stage("parse", t2 - t1)
            stage("serialize", t3 - t2)
            stage("write", t4 - t3)
            times.append(t4 - t0)
        elif kind == "ours":
            t0 = time.perf_counter()
            graph = Graph.load(model)
            t1 = time.perf_counter()
            result["walk_checksum"] = _walk(graph, graph.output_dtypes)
            t2 = time.perf_counter()
            summary = summarize(graph)
            t3 = time.perf_counter()
            graph.save(out_path)
            t4 = time.perf_counter()
            result["nodes"] = summary["nodes"]
            del graph, summary
            graph = None
            stage("load (read+parse+index+validate)", t1 - t0)
            stage("walk", t2 - t1)
            stage("summarize", t3 - t2)
            stage("save (serialize+write)", t4 - t3)
            times.append(t4 - t0)
        elif kind == "ours_load":
            t0 = time.perf_counter()
            graph = Graph.load(model)
            t1 = time.perf_counter()
            del graph
            graph = None
            times.append(t1 - t0)
        elif kind == "ours_save":
            t0 = time.perf_counter()
            graph.save(out_path)
            t1 = time.perf_counter()
            times.append(t1 - t0)
        else:
            raise SystemExit(f"unknown worker kind {kind!r}")
    peak_kb = _peak_kb(reset)
    del graph

    result.update({
        "times": times,
        "stages": {name: statistics.median(values) for name, values in stages.items()},
        "base_rss_mb": base_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "peak_extra_mb": (peak_kb - base_kb) / 1024,
        "peak_from": "VmHWM since the imports" if reset else "ru_maxrss since start",
    })

    if kind == "ours":
        # Once, after the timing and after the peak was read: the saved file equals the input.
        from gtt_rules.engine.proto.graph_def_pb2 import GraphDef
        original = GraphDef.FromString(model.read_bytes())
        saved = GraphDef.FromString(out_path.read_bytes())
        result["round_trip_equal"] = original == saved
        result["nodes_in_file"] = len(original.node)
    tmpdir.cleanup()
    return result


# ---- driver side ----------------------------------------------------------------------------------

def run_variant(kind: str, model: pathlib.Path, repeat: int) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Import gtt_rules from this checkout when it is not installed.
    root = str(HERE.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", kind,
         "--model", str(model), "--repeat", str(repeat)],
        capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"error: the {kind} worker failed (exit {proc.returncode})")
    # The JSON is the last line; TensorFlow may print its own lines first.
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL,
                        help=f"frozen GraphDef (.pb); default {DEFAULT_MODEL.relative_to(HERE.parent)}")
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats per variant (median)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", help=argparse.SUPPRESS)  # subset of worker keys
    args = parser.parse_args(argv)

    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.model, args.repeat)))
        return 0
    if not args.model.is_file():
        print(f"error: {args.model}: no such model file; generate it with\n"
              f"    python benchmarks/make_models.py --only inception_v3", file=sys.stderr)
        return 2

    size = args.model.stat().st_size
    args.model.read_bytes()  # warm the page cache so every variant reads the file the same way
    print(f"model: {args.model} ({size / MB:.1f} MB), {args.repeat} repeats per variant, "
          f"python {sys.version.split()[0]}", flush=True)

    results: dict[str, dict] = {}
    for label, kind in VARIANTS:
        if args.only and kind not in args.only:
            continue
        print(f"  running {label} ...", file=sys.stderr, flush=True)
        results[kind] = run_variant(kind, args.model, args.repeat)

    peer = statistics.median(results["protobuf"]["times"]) if "protobuf" in results else None
    print()
    print("| variant | median s | min s | x bare protobuf | peak extra MB | peak / file size |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, kind in VARIANTS:
        if kind not in results:
            continue
        r = results[kind]
        median = statistics.median(r["times"])
        ratio = f"{median / peer:.2f}x" if peer else "-"
        print(f"| {label} | {median:.3f} | {min(r['times']):.3f} | {ratio} | "
              f"{r['peak_extra_mb']:.0f} | {r['peak_extra_mb'] * MB / size:.2f}x |")

    for kind in ("protobuf", "ours"):
        if kind in results and results[kind]["stages"]:
            parts = ", ".join(f"{name} {seconds:.3f}" for name, seconds in results[kind]["stages"].items())
            print(f"\n{LABELS[kind]} stages (median s): {parts}")

    sources = sorted({r["peak_from"] for r in results.values()})
    print(f"\npeak memory: {'; '.join(sources)}, minus the RSS after the imports "
          f"(save only: with the graph already loaded)")

    failed = False
    if "ours" in results:
        ours = results["ours"]
        print(f"\nnodes: {ours.get('nodes_in_file')}; round trip: saved file "
              f"{'equals' if ours.get('round_trip_equal') else 'DIFFERS FROM'} the input as a message")
        failed |= not ours.get("round_trip_equal")
        if peer:
            ratio = statistics.median(ours["times"]) / peer
            ok = ratio <= TIME_TARGET
            failed |= not ok
            print(f"{'PASS' if ok else 'FAIL'}: time, load+walk+save is {ratio:.2f}x bare protobuf "
                  f"(target within {TIME_TARGET}x)")
        memory = ours["peak_extra_mb"] * MB / size
        ok = memory < MEMORY_TARGET
        failed |= not ok
        print(f"{'PASS' if ok else 'FAIL'}: memory, peak {ours['peak_extra_mb']:.0f} MB is {memory:.2f}x "
              f"the file size (target under {MEMORY_TARGET}x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
