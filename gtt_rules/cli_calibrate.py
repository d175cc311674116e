"""`gtt-rules calibrate`: run an eight-bit graph on sample inputs and freeze the ranges it computes at run time."""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from typing import Iterator

import numpy as np

from gtt_rules.console import console, markup, plain
from gtt_rules.errors import GttRulesError, UsageError


def register(commands) -> None:
    """Add the `calibrate` subcommand to an argparse subparsers object."""
    from gtt_rules.cli import add_graph_input, add_graph_output
    from gtt_rules.cli_run import add_max_memory_option

    parser = commands.add_parser(
        "calibrate", help="freeze the ranges an eight-bit graph computes at run time, from sample inputs",
        description="Run GRAPH (made by quantize_nodes or --pipeline eightbit) on sample inputs, record "
                    "every range it computes when it runs (the Min and Max a QuantizeV2 quantizes over, "
                    "the range a RequantizationRange finds for a Requantize), and write OUT with each "
                    "replaced by Consts: static ranges, so an input's result no longer depends on what "
                    "else is in its batch, and no scans at run time.")
    add_graph_input(parser)
    add_graph_output(parser)
    parser.add_argument("--outputs", metavar="A,B", help="comma-separated outputs the graph computes "
                                                         "(default: its likely outputs)")
    parser.add_argument("--inputs", metavar="A,B", help="accepted for GTT-style command lines; the "
                                                        "inputs are the graph's Placeholders")
    add_sample_options(parser, default_random=10)
    add_max_memory_option(parser)
    parser.add_argument("--min-percentile", type=float, default=0.0, metavar="P",
                        help="per node, take the min at P%% from the bottom of the sorted per-sample mins "
                             "(GTT's freeze_requantization_ranges; default 0: the smallest seen)")
    parser.add_argument("--max-percentile", type=float, default=0.0, metavar="P",
                        help="per node, take the max at P%% from the top of the sorted per-sample maxes "
                             "(default 0: the largest seen)")
    parser.add_argument("--log", metavar="FILE",
                        help="also write the recorded ranges as a GTT min/max log, for "
                             "freeze_requantization_ranges(min_max_log_file=FILE)")
    parser.set_defaults(run=calibrate_command)


def add_sample_options(parser: argparse.ArgumentParser, *, default_random: int | None) -> None:
    """The options that name calibration samples and how ranges are estimated from them (shared by
    `calibrate` and `apply`, whose --pipeline eightbit then writes a calibrated graph)."""
    from gtt_rules.cli_run import parse_seed

    when = f"default {default_random} when no other samples are given" if default_random else \
        "calibrates the result"
    samples = parser.add_mutually_exclusive_group()
    samples.add_argument("--feed-dir", metavar="DIR", help="calibration samples: one .npz per sample, one "
                                                           "array per input, keyed by the input's name")
    samples.add_argument("--samples", metavar="FILE.npz", help="calibration samples stacked: one array per "
                                                               "input, whose first axis is the sample index")
    samples.add_argument("--random", type=int, metavar="N", default=None,
                         help=f"N seeded random calibration samples of each input's dtype and shape ({when})")
    parser.add_argument("--seed", type=parse_seed, default=0, help="seed of the first random sample (default 0)")
    parser.add_argument("--estimator", choices=calibration_estimators(), default="minmax",
                        help="how a range is chosen from the samples: minmax (smallest min, largest max; "
                             "the default), percentile (per sample, the values between the (100-P)th and Pth "
                             "percentiles, then minmax), moving-average (of per-sample mins and maxes, decay "
                             "0.9, as quantization-aware training tracks ranges)")
    parser.add_argument("--percentile", type=float, metavar="P", default=None,
                        help="P for --estimator percentile (default 99.99)")
    parser.add_argument("--jobs", type=int, metavar="N", default=None,
                        help="processes that measure the samples (default: one per core this process "
                             "may use, up to four; 1 measures them all in this process). The ranges "
                             "are the same for any N")
    if default_random is None:     # apply: it has the float graph and the steps to run again
        parser.add_argument("--keep-float-above", type=float, metavar="ERR", default=None,
                            help="after calibrating, measure the error each converted layer adds against "
                                 "the float graph on the samples (relative RMS, averaged over channels), "
                                 "keep the worst float "
                                 "(exclude_node), convert again, and repeat until none adds more than ERR")


def calibration_estimators() -> tuple[str, ...]:
    from gtt_rules.calibration import ESTIMATORS
    return ESTIMATORS


def samples_given(args: argparse.Namespace) -> bool:
    """True if the command line names calibration samples."""
    return bool(args.feed_dir or args.samples or args.random is not None)


def check_sample_options(args: argparse.Namespace) -> None:
    """UsageError for sample options that cannot work, before anything is read."""
    if args.random is not None and args.random < 1:
        raise UsageError("--random needs at least 1 sample")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs needs at least 1 process")
    bound = getattr(args, "keep_float_above", None)
    if bound is not None:
        if not samples_given(args):
            raise UsageError("--keep-float-above needs calibration samples (--samples, --feed-dir or --random)")
        if not bound > 0.0:
            raise UsageError("--keep-float-above must be above 0")
    if args.percentile is not None:
        if args.estimator != "percentile":
            raise UsageError("--percentile needs --estimator percentile")
        if not 50.0 < args.percentile <= 100.0:
            raise UsageError("--percentile must be in (50, 100]")


def sample_feeds(args: argparse.Namespace, graph):
    """The samples the options name, checked against the graph's inputs as they are read, and
    their count."""
    if args.feed_dir:
        files = _sample_files(pathlib.Path(args.feed_dir))
        return _file_samples(files, graph), len(files)
    if args.samples:
        return _stacked_samples(pathlib.Path(args.samples), graph)
    count = args.random or 10
    return _random_samples(graph, args.seed, count), count


def calibrate(graph, args: argparse.Namespace, outputs: list[str], label: str, *, samples=None,
              min_percentile: float = 0.0, max_percentile: float = 0.0):
    """Freeze every range `graph` computes at run time from `samples` (default: those the options
    name); returns the records and the number of samples. Errors name `label` (the graph's file)."""
    from gtt_rules import progress
    from gtt_rules import calibration

    samples, count = sample_feeds(args, graph) if samples is None else (samples, len(samples))
    percentile = None
    if args.estimator == "percentile":
        percentile = args.percentile if args.percentile is not None else 99.99
    with progress.step("calibrating", total=count) as shown:
        try:
            records = calibration.record_ranges(graph, samples, percentile=percentile, workers=args.jobs,
                                                on_sample=lambda done: shown.advance(done - shown.done))
        except GttRulesError as error:
            raise error.located(label) from None
    ranges = {name: calibration.estimate(observed, args.estimator, min_percentile=min_percentile,
                                         max_percentile=max_percentile)
              for name, observed in records.items()}
    calibration.freeze_ranges(graph, ranges, protected=outputs)
    # The widening of each frozen range around zero is constant now: computed once, here.
    from gtt_rules import load_rules
    inputs = [node.name for node in graph.placeholders()]
    for stage in load_rules(['fold_constants(exclude_op=["Dequantize"])']):
        stage.run(graph, inputs=inputs, outputs=outputs)
    return records, count


def calibrate_command(args: argparse.Namespace) -> int:
    from gtt_rules import progress
    from gtt_rules.cli import input_path, output_path
    from gtt_rules.cli_run import parse_outputs
    from gtt_rules import calibration
    from gtt_rules.engine.output import check_output, write_output

    args.graph = input_path(args)
    files = _sample_files(pathlib.Path(args.feed_dir)) if args.feed_dir else []
    output = check_output(output_path(args, args.graph), *map(str, files), *filter(None, [args.samples]))
    for name in ("min_percentile", "max_percentile"):
        if not 0.0 <= getattr(args, name) < 100.0:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 100)")
    check_sample_options(args)
    log = None
    if args.log:
        log = check_output(args.log, args.graph, *map(str, files))
        if os.path.realpath(log) == os.path.realpath(output):
            raise UsageError("--log and -o name the same file", path=args.log)
    graph = progress.load_graph(args.graph)
    outputs = parse_outputs(args.outputs, graph)
    if not calibration.runtime_ranges(graph):
        # Nothing measures a range at run time (no quantize_nodes, fixed fallback ranges, or
        # calibrated already): the graph is already what calibration would make of it.
        graph.save(output, text=args.output_as_text)
        console(stderr=True).print(f"{markup(args.graph)} computes no range at run time: nothing to freeze; "
                                   f"written unchanged -> {markup(output)}")
        return 0
    records, count = calibrate(graph, args, outputs, args.graph, min_percentile=args.min_percentile,
                               max_percentile=args.max_percentile)
    # The graph first: its save checks it, and a graph that fails must not leave a log behind.
    with progress.step(f"writing {plain(output)}"):
        graph.save(output, text=args.output_as_text)
    if log is not None:
        text = calibration.min_max_log(records).encode()
        write_output(log, lambda f: f.write(text))
    console(stderr=True).print(f"froze {_ranges(len(records))} over {count} sample{'s' if count != 1 else ''} "
                               f"-> {markup(output)}")
    return 0


def calibrate_after_apply(graph, reports: list, args: argparse.Namespace, outputs: list[str], label: str,
                          original: bytes | None = None, rerun=None):
    """What `apply` does after its steps: calibrate when samples are named, and with
    --keep-float-above keep layers float, measured against the `original` graph, through
    `rerun(kept_names) -> (graph, reports)`. Returns
    the graph, the reports, and what to tell the user: what was frozen and kept float, or that the
    graph computes ranges at run time, if it does."""
    from gtt_rules import calibration

    dynamic = len(calibration.runtime_ranges(graph))
    if not samples_given(args):
        return graph, reports, (f"note: {_ranges(dynamic)} computed at run time (answers depend on batch mates); "
                                f"calibrate with --samples, --feed-dir or --random, or run `gtt-rules calibrate`"
                                if dynamic else None)
    if not dynamic:
        return graph, reports, "calibration samples given, but the graph computes no range at run time: nothing to freeze"
    if rerun is None:
        records, count = calibrate(graph, args, outputs, label)
        return graph, reports, f"calibrated: froze {_ranges(len(records))} over {count} sample{'s' if count != 1 else ''}"
    return _keep_float_above(graph, reports, args, outputs, label, original, rerun)


def _keep_float_above(graph, reports, args, outputs, label, original: bytes, rerun):
    """Calibrate, measure the error each converted layer adds against the float graph, keep the
    worst float and convert again, until no layer adds more than the bound (TFLite's quantization
    debugger builds its deny-list in the same spirit)."""
    from gtt_rules import calibration
    from gtt_rules.engine.graph import Graph

    samples, count = sample_feeds(args, graph)
    samples = list(samples)
    float_graph = Graph.from_bytes(original)
    kept: list[str] = []
    while True:
        records, _ = calibrate(graph, args, outputs, label, samples=samples)
        added = calibration.layer_errors(float_graph, graph, samples)
        over = {name: error for name, error in added.items() if error > args.keep_float_above and name not in kept}
        if not over:
            break
        kept.append(max(over, key=over.get))
        graph, reports = rerun(kept)
    worst = max(added.values(), default=0.0)
    lines = [f"calibrated: froze {_ranges(len(records))} over {count} sample{'s' if count != 1 else ''}"]
    lines += [f"kept float (error added above {args.keep_float_above:g}): '{name}'" for name in kept]
    lines.append(f"largest error a converted layer adds now: {worst:.3g} (relative RMS, averaged over channels)")
    return graph, reports, "\n".join(lines)


def with_float(steps: list, kept: list[str]) -> list:
    """apply's steps with the nodes named in `kept` added to every quantize_nodes and quantize_weights
    stage's exclude_node."""
    if not kept:
        return steps
    changed = []
    for label, stages, ignore_errors in steps:
        again = []
        for stage in stages:
            if stage.rules and stage.name in ("quantize_nodes", "quantize_weights"):
                params = dict(stage.rules[0].params)
                params["exclude_node"] = list(params.get("exclude_node") or []) + list(kept)
                stage = dataclasses.replace(stage, rules=[rule.with_params(params) for rule in stage.rules])
            again.append(stage)
        changed.append((label, again, ignore_errors))
    return changed


def _ranges(count: int) -> str:
    return f"{count} range{'s' if count != 1 else ''}"


def _stacked_samples(path: pathlib.Path, graph):
    """Samples from one .npz whose arrays' first axis is the sample index; a sample keeps a batch
    axis of 1 where the input's rank is the array's."""
    from gtt_rules.cli_run import load_npz

    arrays = load_npz(path)
    inputs = [node for node in graph.placeholders() if node.op == "Placeholder"]
    missing = sorted(node.name for node in inputs if node.name not in arrays)
    if missing:
        raise UsageError(f"has no array for input{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                         path=str(path))
    extra = sorted(set(arrays) - {node.name for node in inputs})
    if extra:
        raise UsageError(f"has an array '{extra[0]}', but the graph has no input of that name", path=str(path))
    counts = {name: (value.shape[0] if value.ndim else 0) for name, value in arrays.items()}
    count = min(counts.values())
    if count < 1 or len(set(counts.values())) > 1:
        raise UsageError(f"arrays must stack the same number of samples (at least 1) along their first "
                         f"axis; got {', '.join(f'{n}: {c}' for n, c in sorted(counts.items()))}", path=str(path))
    ranks = {}
    for node in inputs:
        shape = node.get_attr("shape", None)
        ranks[node.name] = None if shape is None else len(shape)

    def sample(i):
        return {name: value[i:i + 1] if ranks[name] == value.ndim else value[i] for name, value in arrays.items()}
    return _checked((sample(i) for i in range(count)), graph, path), count


def _sample_files(folder: pathlib.Path) -> list[pathlib.Path]:
    if not folder.is_dir():
        raise UsageError("no such folder", path=str(folder))
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise UsageError("holds no .npz sample files", path=str(folder))
    return files


def _file_samples(files: list[pathlib.Path], graph) -> Iterator[dict[str, np.ndarray]]:
    from gtt_rules.cli_run import load_npz

    inputs = {node.name for node in graph.placeholders()}
    for path in files:
        sample = load_npz(path)
        missing = sorted(inputs - set(sample))
        if missing:
            raise UsageError(f"has no array for input{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                             path=str(path))
        yield from _checked([sample], graph, path)


def _checked(samples, graph, path: pathlib.Path) -> Iterator[dict[str, np.ndarray]]:
    """Each sample, checked against the graph's inputs so that an error names the sample's file
    rather than the graph's."""
    from gtt_rules.engine.evaluator import check_feed
    from gtt_rules.engine.graph import TensorRef

    for sample in samples:
        for name, value in sample.items():
            ref = TensorRef.parse(name)
            if ref.node not in graph:
                raise UsageError(f"has an array '{name}', but the graph has no node of that name",
                                 path=str(path))
            try:
                check_feed(graph, ref, name, value)
            except GttRulesError as error:
                raise UsageError(error.message, path=str(path)) from None
        yield sample


def _random_samples(graph, seed: int, count: int) -> Iterator[dict[str, np.ndarray]]:
    from gtt_rules.engine.evaluator import random_feeds

    for i in range(count):
        yield random_feeds(graph, seed + i)
