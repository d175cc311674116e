"""`gtt-rules calibrate`: run an eight-bit graph on sample inputs and freeze its requantization ranges."""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Iterator

import numpy as np

from gtt_rules.console import console
from gtt_rules.errors import GttRulesError, UsageError


def register(commands) -> None:
    """Add the `calibrate` subcommand to an argparse subparsers object."""
    from gtt_rules.cli import _add_graph_output
    from gtt_rules.cli_run import add_max_memory_option, parse_seed

    parser = commands.add_parser(
        "calibrate", help="freeze an eight-bit graph's requantization ranges from sample inputs",
        description="Run GRAPH (made by quantize_nodes) on sample inputs, record the range every "
                    "RequantizationRange computes, and write OUT with each replaced by two Consts, "
                    "so the runtime no longer scans each 32-bit result for its range.")
    parser.add_argument("graph", metavar="GRAPH", help="a .pb or .pbtxt GraphDef file")
    _add_graph_output(parser)
    parser.add_argument("--outputs", metavar="A,B", help="comma-separated outputs the graph computes "
                                                         "(default: its likely outputs)")
    parser.add_argument("--inputs", metavar="A,B", help="accepted for GTT-style command lines; the "
                                                        "inputs are the graph's Placeholders")
    samples = parser.add_mutually_exclusive_group()
    samples.add_argument("--feed-dir", metavar="DIR", help="one .npz per sample, one array per input, "
                                                           "keyed by the input's name")
    samples.add_argument("--random", type=int, metavar="N", default=None,
                         help="N seeded random samples of each input's dtype and shape (default 10 "
                              "when no --feed-dir)")
    parser.add_argument("--seed", type=parse_seed, default=0, help="seed of the first random sample (default 0)")
    add_max_memory_option(parser)
    parser.add_argument("--min-percentile", type=float, default=0.0, metavar="P",
                        help="per node, take the min at P%% from the bottom of the sorted mins "
                             "(default 0: the smallest seen)")
    parser.add_argument("--max-percentile", type=float, default=0.0, metavar="P",
                        help="per node, take the max at P%% from the top of the sorted maxes "
                             "(default 0: the largest seen)")
    parser.add_argument("--log", metavar="FILE",
                        help="also write the recorded ranges as a GTT min/max log, for "
                             "freeze_requantization_ranges(min_max_log_file=FILE)")
    parser.set_defaults(run=calibrate_command)


def calibrate_command(args: argparse.Namespace) -> int:
    from gtt_rules.cli import _output_path
    from gtt_rules.cli_run import check_output_path, parse_outputs
    from gtt_rules.engine import calibration
    from gtt_rules.engine.graph import Graph

    output = _output_path(args, args.graph)
    for name in ("min_percentile", "max_percentile"):
        if not 0.0 <= getattr(args, name) < 100.0:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 100)")
    if args.random is not None and args.random < 1:
        raise UsageError("--random needs at least 1 sample")
    log = None
    if args.log:
        log = check_output_path(args.log, args.graph)
        if log.resolve() == output.resolve():
            raise UsageError("--log and -o name the same file", path=args.log)
    graph = Graph.load(args.graph)
    outputs = parse_outputs(args.outputs, graph)
    if not calibration.requantization_ranges(graph):
        # Nothing measures a range at run time (no quantize_nodes, or fixed fallback ranges): the
        # graph is already what calibration would make of it.
        graph.save(output, text=True if args.output_as_text else None)
        console(stderr=True).print(f"{args.graph} has no RequantizationRange: nothing to freeze; "
                                   f"written unchanged -> {output}")
        return 0
    if args.feed_dir:
        files = _sample_files(pathlib.Path(args.feed_dir))
        samples, count = _file_samples(files, graph), len(files)
    else:
        count = args.random or 10
        samples = _random_samples(graph, args.seed, count)
    progress = _progress(count)
    try:
        records = calibration.record_ranges(graph, samples, outputs, on_sample=progress)
    except GttRulesError as error:
        raise error.located(args.graph) from None
    finally:
        progress(None)
    ranges = {name: calibration.chosen_range(observed, args.min_percentile, args.max_percentile)
              for name, observed in records.items()}
    calibration.freeze_ranges(graph, ranges)
    if log is not None:
        from gtt_rules.engine.graph import write_atomically
        text = calibration.min_max_log(records).encode()
        write_atomically(log, lambda f: f.write(text))
    graph.save(output, text=True if args.output_as_text else None)
    console(stderr=True).print(f"froze {len(ranges)} requantization range{'s' if len(ranges) != 1 else ''} "
                               f"over {count} sample{'s' if count != 1 else ''} -> {output}")
    return 0


def _sample_files(folder: pathlib.Path) -> list[pathlib.Path]:
    if not folder.is_dir():
        raise UsageError("no such folder", path=str(folder))
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise UsageError("holds no .npz sample files", path=str(folder))
    return files


def _file_samples(files: list[pathlib.Path], graph) -> Iterator[dict[str, np.ndarray]]:
    from gtt_rules.cli_run import load_npz
    from gtt_rules.engine.evaluator import check_feed
    from gtt_rules.engine.graph import TensorRef

    inputs = {node.name for node in graph.placeholders()}
    for path in files:
        sample = load_npz(path)
        missing = sorted(inputs - set(sample))
        if missing:
            raise UsageError(f"has no array for input{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                             path=str(path))
        # Checked here, so that an error names the sample's file rather than the graph's.
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


def _progress(total: int):
    """A callback showing samples done on a terminal (silent otherwise); call with None to finish."""
    if not sys.stderr.isatty():
        return lambda done: None
    from rich.progress import Progress

    bar = Progress(console=console(stderr=True), transient=True)
    task = bar.add_task("calibrating", total=total)
    bar.start()

    def update(done):
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)
    return update
