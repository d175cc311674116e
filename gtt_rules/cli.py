"""The `gtt-rules` command line.

Exit codes: 0 success, 1 a check failed (a comparison beyond tolerance, a failing fixture),
2 bad usage or bad input. Bad input is reported on one line, without a traceback, and no output
file is written or left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import warnings
from typing import Callable, Sequence

from gtt_rules.console import capped, console, human_bytes, markup, plain
from gtt_rules.engine.limits import LimitWarning, max_memory, memory_budget
from gtt_rules.errors import GttRulesError, GttRulesWarning, UsageError, did_you_mean

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

PROG = "gtt-rules"


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError, so usage errors take the same one-line path as the rest."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise UsageError(message)


def _bool_flag(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not '{text}'")


class _Step(argparse.Action):
    """Collect --rules, --pipeline and --transforms in the order given: they run in that order."""

    def __call__(self, parser, namespace, values, option_string=None):
        steps = getattr(namespace, self.dest, None) or []
        steps.append((option_string.lstrip("-"), values))
        setattr(namespace, self.dest, steps)


GRAPH_HELP = ("a GraphDef (.pb binary, .pbtxt text), a memory-mapped package, or a SavedModel "
              "folder (its serving_default signature frozen)")


def add_graph_input(parser: argparse.ArgumentParser) -> None:
    """GRAPH, or GTT's spelling --in_graph."""
    parser.add_argument("graph", metavar="GRAPH", nargs="?", help=GRAPH_HELP)
    parser.add_argument("--in_graph", dest="in_graph", metavar="GRAPH", help=argparse.SUPPRESS)


def add_graph_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", "--out_graph", dest="output", required=True, metavar="OUT",
                        help="where to write the result (.pb binary, .pbtxt text; '-': stdout)")
    parser.add_argument("--output_as_text", "--output-as-text", dest="output_as_text", nargs="?", const=True,
                        default=None, type=_bool_flag, metavar="BOOL",
                        help="write text format (=false: binary) whatever the suffix; by default the "
                             "suffix decides")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow OUT to be the input graph, or any other file this command reads")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Rewrite TensorFlow GraphDef files with declarative rules.")
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    summarize = commands.add_parser("summarize", help="show a graph's inputs, outputs, ops and size",
                                    description="Show a graph's likely inputs and outputs, op "
                                                "histogram and parameter count, like summarize_graph.")
    add_graph_input(summarize)
    summarize.add_argument("--json", action="store_true", help="print JSON instead of tables")
    summarize.set_defaults(run=_summarize)

    apply = commands.add_parser(
        "apply", help="rewrite a graph with rules and write the result",
        description="Read GRAPH, apply rules to a fixed point, write OUT atomically. Each --rules "
                    "runs to its own fixed point, in the order given.")
    add_graph_input(apply)
    add_graph_output(apply)
    apply.add_argument("--rules", action=_Step, dest="steps", metavar="SPEC",
                       help="a .rules file, or a rule set, pass or pipeline name, optionally with "
                            "arguments: 'quantize_weights(minimum_size=16)' (repeatable)")
    apply.add_argument("--pipeline", action=_Step, dest="steps", metavar="NAME",
                       help="a named pipeline, e.g. optimize_for_inference (repeatable)")
    apply.add_argument("--transforms", action=_Step, dest="steps", metavar="TEXT",
                       help="a Graph Transform Tool transform string, e.g. "
                            "'strip_unused_nodes fold_constants(ignore_errors=true)'")
    apply.add_argument("--inputs", metavar="NAMES", help="comma-separated graph inputs (default: the placeholders)")
    apply.add_argument("--outputs", metavar="NAMES", help="comma-separated graph outputs (default: the sinks)")
    apply.add_argument("--trace", action="store_true", help="print every rule application")
    apply.add_argument("--json", action="store_true", help="print the report as JSON")
    apply.add_argument("--quiet", "-q", action="store_true",
                       help="print only warnings and errors: no stage tables, closing line or progress")
    apply.add_argument("--report", metavar="REPORT.html",
                       help="write a page of the stages and a picture of what changed, before and after")
    apply.add_argument("--max-rewrites", type=int, metavar="N", help="stop with an error after N rewrites")
    apply.add_argument("--output-format", "--output_format", choices=("graphdef", "memmapped"),
                       default="graphdef", help="graphdef (default), or memmapped: TensorFlow's "
                                                "memory-mapped package, as `memmap` writes it")
    from gtt_rules.cli_calibrate import add_sample_options
    add_sample_options(apply, default_random=None)
    from gtt_rules.cli_run import add_max_memory_option
    add_max_memory_option(apply)
    apply.set_defaults(run=_apply)

    check = commands.add_parser("check", help="check .rules files for errors",
                                description="Parse and statically check .rules files: syntax, ops, "
                                            "attrs, input counts, names, functions and types.")
    check.add_argument("paths", nargs="+", metavar="PATH", help=".rules files")
    check.add_argument("--json", action="store_true", help="print JSON: each file's counts or errors")
    check.set_defaults(run=_check)

    test = commands.add_parser("test", help="run the test blocks of .rules files",
                               description="Run every `test` block: apply the rules to the given "
                                           "graph and compare with the expected one.")
    test.add_argument("paths", nargs="+", metavar="PATH", help=".rules files or folders")
    test.add_argument("--json", action="store_true", help="print JSON: every test's result")
    test.set_defaults(run=_test)

    listing = commands.add_parser("list", help="list the standard rule sets and pipelines",
                                  description="List every rule set (with parameters and defaults) "
                                              "and pipeline of the standard library and the given files.")
    listing.add_argument("paths", nargs="*", metavar="PATH", help="more .rules files to include")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_list)

    from gtt_rules.cli_run import register as register_run_commands
    register_run_commands(commands)
    from gtt_rules.cli_calibrate import register as register_calibrate
    register_calibrate(commands)
    from gtt_rules.diff import register as register_diff
    register_diff(commands)
    from gtt_rules.cli_freeze import register as register_freeze
    register_freeze(commands)
    from gtt_rules.cli_memmap import register as register_memmap
    register_memmap(commands)
    return parser


class _Version(argparse.Action):
    """--version, which looks the version up only when asked: importlib.metadata takes ~30 ms to
    import and search, at every start otherwise."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="show program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("gtt-rules")
    except Exception:  # not installed as a distribution: running from a source tree
        return "unknown"


# ---- commands ----

def _summarize(args: argparse.Namespace) -> int:
    from gtt_rules import progress
    from gtt_rules.engine.graph_io import source_format
    from gtt_rules.engine.savedmodel import DEFAULT_SIGNATURE
    from gtt_rules.summary import summarize

    source = input_path(args)
    summary = {"format": source_format(source), **summarize(progress.load_graph(source))}
    if summary["format"] == "saved_model":
        summary["signature"] = DEFAULT_SIGNATURE     # the one every command freezes
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    _print_summary(source, summary)
    return EXIT_OK


def _print_summary(path: str, summary: dict) -> None:
    from rich.table import Table

    out = console()
    params = summary["parameters"]
    kind = {"memmapped": " (memory-mapped package)",
            "saved_model": f" (SavedModel, signature '{markup(summary.get('signature'))}' frozen)"}
    out.print(f"[bold]{markup(path)}[/bold]{kind.get(summary['format'], '')}: {summary['nodes']:,} nodes, "
                  f"{params['count']:,} parameters in {params['consts']:,} Consts "
                  f"({human_bytes(params['bytes'])}), {summary['control_edges']:,} control edges, "
                  f"{summary['functions']} library functions")
    for title, rows, columns in (
        ("Likely inputs", summary["inputs"], ("name", "op", "dtype", "shape")),
        ("Likely outputs", summary["outputs"], ("name", "op", "dtypes")),
    ):
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(_cell(row[c]) for c in columns))
        out.print(table if rows else f"{title}: none found")
    ops = Table(title="Ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in summary["ops"].items():
        ops.add_row(markup(op), str(count))
    out.print(ops)


def _cell(value) -> str:
    if value is None:
        return "?"
    if isinstance(value, list):
        return markup("[" + ", ".join("?" if v is None or v == -1 else str(v) for v in value) + "]")
    return markup(value)


def _tensors(text: str | None) -> list | None:
    """The TensorRefs of a comma-separated --inputs/--outputs list (`name` or `name:port`)."""
    from gtt_rules.engine.graph import TensorRef
    if text is None:
        return None
    return [TensorRef.parse(name.strip()) for name in text.split(",") if name.strip()]


def _apply(args: argparse.Namespace) -> int:
    from gtt_rules import progress, report as apply_report
    from gtt_rules.engine.driver import Limits
    from gtt_rules.engine.graph import Graph
    from gtt_rules.engine.graph_io import stored_bytes
    from gtt_rules.engine.output import STDOUT, check_output

    started = time.perf_counter()
    source = input_path(args)
    if not args.steps:     # as in GTT: a run that would only copy the graph is a mistake
        raise UsageError("no transform given: add --transforms, --rules or --pipeline")
    steps = _steps(args.steps)  # rules are checked before the graph is read
    output = output_path(args, source)     # after the rules: they are inputs too
    page = args.report and check_output(args.report, source, output)
    if page and os.path.realpath(page) == os.path.realpath(output):
        raise UsageError("--report and -o name the same file", path=page)
    report_to = sys.stderr if output == STDOUT else sys.stdout   # stdout may hold the graph
    from gtt_rules.cli_calibrate import calibrate_after_apply, check_sample_options, with_float
    check_sample_options(args)
    if args.output_format == "memmapped" and args.output_as_text:
        raise UsageError("--output_as_text and --output-format memmapped exclude each other")
    graph = progress.load_graph(source)
    nodes_before = len(graph)
    inputs, outputs = _tensors(args.inputs), _tensors(args.outputs)
    for ref in (inputs or []) + (outputs or []):
        if ref.node not in graph:
            raise UsageError(f"{source}: no node named '{ref.node}' (from --inputs/--outputs)"
                             f"{did_you_mean(ref.node, (n.name for n in graph))}")
        count = graph.num_outputs(graph[ref.node])
        if count is not None and ref.port >= count:
            raise UsageError(f"{source}: node '{ref.node}' has no output {ref.port} (it has {count}; "
                             f"from --inputs/--outputs)")
    # The rules keep whole nodes: a port only picks which node.
    inputs = None if inputs is None else [ref.node for ref in inputs]
    outputs = None if outputs is None else [ref.node for ref in outputs]
    inputs = inputs if inputs is not None else [n.name for n in graph.placeholders()]
    outputs = outputs if outputs is not None else [n.name for n in graph.sinks()]
    limits = Limits(max_rewrites=args.max_rewrites)
    on_apply = (lambda a: print(apply_report.trace_line(a), file=report_to)) if args.trace and not args.json else None

    def run_steps(graph, steps):
        reports = []
        for label, stages, ignore_errors in steps:
            before = graph.to_bytes() if ignore_errors else None
            try:
                for stage in stages:
                    shown.describe(plain(stage.name))
                    report = stage.run(graph, inputs=inputs, outputs=outputs, limits=limits,
                                       trace=args.trace, on_apply=on_apply)
                    reports.append((stage.name, report))
                    shown.advance()
            except GttRulesError as error:
                if not ignore_errors:
                    raise
                print(capped(f"{PROG}: warning: {plain(label)} failed and was skipped (ignore_errors): {error}"),
                      file=sys.stderr)
                graph = Graph.from_bytes(before)
        return graph, reports

    original = graph.to_bytes() if args.keep_float_above is not None or page else None
    with progress.step("applying", total=sum(len(stages) for _, stages, _ in steps)) as shown:
        graph, reports = run_steps(graph, steps)
    # With --keep-float-above, the steps run again from the original, keeping layers float.
    rerun = None if args.keep_float_above is None else \
        lambda kept: run_steps(Graph.from_bytes(original), with_float(steps, kept))
    graph, reports, calibrated = calibrate_after_apply(graph, reports, args, outputs, str(source), original, rerun)
    with progress.step(f"writing {plain(output)}"):
        if args.output_format == "memmapped":
            from gtt_rules.engine import memmapped
            memmapped.save(graph, output)
        else:
            graph.save(output, text=args.output_as_text)
    sizes = (stored_bytes(source), stored_bytes(output) if output != STDOUT else len(graph.to_bytes()))
    if page:
        with progress.step(f"writing {plain(page)}"):
            apply_report.write_page(page, Graph.from_bytes(original), graph, reports, source, output, sizes)
    if args.json:
        print(json.dumps({"output": str(output), "stages": [
            {"name": name, **report.to_json(),
             **({"trace": [vars(a) for a in report.applications]} if args.trace else {})}
            for name, report in reports]}, indent=2), file=report_to)
    elif reports and not args.quiet:
        _print_reports(reports)
    for line in (calibrated or "").splitlines():     # plain() would escape the line breaks
        if not args.quiet or line.startswith("note:"):   # a note warns; the rest is what was done
            console(stderr=True).print(plain(line), markup=False, highlight=False)
    if not args.quiet and not args.json:
        print(apply_report.closing_line(output, (nodes_before, len(graph)), sizes, time.perf_counter() - started),
              file=sys.stderr)
    return EXIT_OK


def _steps(options: list[tuple[str, str]]) -> list[tuple[str, list, bool]]:
    """(label, stages, ignore_errors) for each --rules, --pipeline and --transforms, in order."""
    from gtt_rules.rules.gtt import transform_stages
    from gtt_rules import standard_library

    library = standard_library()
    steps = []
    for option, value in options:
        if option == "transforms":
            steps += [(t.name, stages, t.ignore_errors) for t, stages in transform_stages(value, library)]
        else:
            steps.append((value, library.stages(value), False))
    return steps


_NOTES_SHOWN = 20  # per stage; --json has them all


def _print_reports(reports) -> None:
    from rich.table import Table

    from gtt_rules.report import change_counts

    out = console(stderr=True)
    for name, report in reports:
        for note in report.notes[:_NOTES_SHOWN]:
            out.print(plain(f"{name}: {note}"), markup=False, highlight=False)
        if len(report.notes) > _NOTES_SHOWN:
            out.print(f"{name}: ... and {len(report.notes) - _NOTES_SHOWN} more (--json lists all)")
        if not report.fires:
            milliseconds = sum(report.seconds.values()) * 1000
            out.print(f"{markup(name)}: {report.nodes_before:,} -> {report.nodes_after:,} nodes "
                          f"({report.stop_reason}, {milliseconds:.1f} ms)")
            continue
        table = Table(title=f"{markup(name)}: {report.nodes_before:,} -> {report.nodes_after:,} nodes"
                            f"{change_counts(report)}, {report.rewrites:,} rewrites, {report.stop_reason}",
                      title_justify="left")
        table.add_column("rule")
        table.add_column("fires", justify="right")
        table.add_column("ms", justify="right")
        for rule in sorted(set(report.fires) | set(report.seconds)):
            table.add_row(markup(rule), str(report.fires[rule]), f"{report.seconds[rule] * 1000:.1f}")
        out.print(table)


def _check(args: argparse.Namespace) -> int:
    from gtt_rules import standard_library

    failed = False
    files = []
    for path in args.paths:
        library = standard_library()
        try:
            compiled = library.load_file(path)
        except GttRulesError as error:
            failed = True
            errors = getattr(error, "all_errors", [error])
            files.append({"path": str(path), "ok": False, "errors": [_error_json(e) for e in errors]})
            if not args.json:
                for each in errors:
                    _print_error(each)
            continue
        counts = {"rules": sum(len(rs.rules) for rs in compiled.rulesets.values()),
                  "rule_sets": len(compiled.rulesets), "pipelines": len(compiled.pipelines),
                  "tests": len(compiled.tests)}
        files.append({"path": str(path), "ok": True, **counts})
        if not args.json:
            print(f"{plain(path)}: ok ({counts['rules']} rules, {counts['rule_sets']} rule sets, "
                  f"{counts['pipelines']} pipelines, {counts['tests']} tests)")
    if args.json:
        print(json.dumps({"ok": not failed, "files": files}, indent=2))
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _error_json(error: GttRulesError) -> dict:
    """An error's located fields, as `_print_error` shows them."""
    return {"message": error.message, "path": error.path, "line": error.line, "column": error.column,
            "node": error.node, "hint": error.hint, "text": str(error)}


def _rules_files(paths: list[str]) -> list[pathlib.Path]:
    found = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found += sorted(path.rglob("*.rules"))
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    return found


def _test(args: argparse.Namespace) -> int:
    from gtt_rules import standard_library
    from gtt_rules.rules.fixtures import run_file

    results = [result for path in _rules_files(args.paths) for result in run_file(path, standard_library())]
    failed = sum(not result.passed for result in results)
    if args.json:
        print(json.dumps({"passed": len(results) - failed, "failed": failed, "tests": [
            {"name": r.name, "location": r.location, "passed": r.passed, "message": None if r.passed else r.message}
            for r in results]}, indent=2))
        return EXIT_CHECK_FAILED if failed else EXIT_OK
    for result in results:
        print(plain(f"PASS {result.location} {result.name}" if result.passed else
                    f"FAIL {result.location} {result.name}: {result.message}"))
    print(f"{len(results) - failed} passed, {failed} failed")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from gtt_rules.rules.compiler import PipelineDef
    from gtt_rules import standard_library
    from gtt_rules.rules.registry import GraphPass

    library = standard_library()
    library.load_stdlib()
    for path in _rules_files(args.paths):
        library.load_file(path)
    entries = []
    for name in library.names():
        item = library.find(name)
        if isinstance(item, PipelineDef):
            entries.append({"name": name, "kind": "pipeline", "file": item.path,
                            "stages": [s.name for s in item.stages]})
            continue
        entry = {"name": name, "kind": "pass" if isinstance(item, GraphPass) else "ruleset", "file": item.path,
                 "params": [{"name": p.name, "type": f"[{p.type}]" if p.is_list else p.type,
                             "default": _param_default(p)} for p in item.params]}
        entry["doc"] = item.doc
        if not isinstance(item, GraphPass):
            entry["rules"] = [r.name for r in item.rules]
        entries.append(entry)
    if args.json:
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    from rich.table import Table

    table = Table(title="Rule sets and pipelines", title_justify="left")
    for column in ("name", "kind", "parameters (defaults)", "contents"):
        table.add_column(column)
    for entry in entries:
        params = ", ".join(f"{p['name']}: {p['type']} " + ("(required)" if p["default"] is None else
                                                           f"= {_default_text(p)}") for p in entry.get("params", []))
        contents = entry.get("doc") or ", ".join(entry.get("rules") or entry.get("stages") or [])
        table.add_row(markup(entry["name"]), entry["kind"], markup(params or "-"), markup(contents))
    console().print(table)
    return EXIT_OK


def _param_default(param):
    """A parameter's default as a user writes it: a dtype by its name (`float`), not its enum number."""
    from gtt_rules.engine.dtypes import dtype_name
    if param.type != "dtype":
        return param.default
    if param.is_list:
        return [dtype_name(d) for d in param.default]
    return None if param.default is None else dtype_name(param.default)


def _default_text(param: dict) -> str:
    if param["type"] == "dtype":
        return str(param["default"])
    if param["type"] == "[dtype]":
        return "[" + ", ".join(param["default"]) + "]"
    return repr(param["default"])


def input_path(args: argparse.Namespace) -> str:
    if args.graph and args.in_graph and args.graph != args.in_graph:
        raise UsageError("give the input graph once: either GRAPH or --in_graph")
    source = args.graph or args.in_graph
    if not source:
        raise UsageError("the input graph is missing: give GRAPH (or --in_graph)")
    return source


def output_path(args: argparse.Namespace, source: str,
                 refusal: str = "refusing to write over the input graph; pass --overwrite to allow it") -> str:
    """Check OUT (`args.output`) before any work, so a bad OUT fails fast and the input stays safe."""
    from gtt_rules.engine.output import STDOUT, check_output
    if args.output == STDOUT and not args.output_as_text and sys.stdout.isatty():
        # Binary protobuf on a terminal is garbage on screen and can send it control sequences.
        hint = ", or pass --output_as_text" if args.output_as_text is not False else ""
        raise UsageError(f"refusing to write a binary graph to a terminal; redirect stdout{hint}")
    return check_output(args.output, source, refusal=refusal)


def _print_error(error: GttRulesError) -> None:
    """One line naming the file, position and problem; then, for rules, the line and a hint."""
    print(capped(f"{PROG}: error: {error}"), file=sys.stderr)
    if error.excerpt:
        print("\n".join(capped(plain(line)) for line in error.excerpt.splitlines()), file=sys.stderr)
    if error.hint:
        print(capped(f"    hint: {plain(error.hint)}"), file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (a limit that skipped some work) on one line, as errors are."""
    if issubclass(category, (LimitWarning, GttRulesWarning)):
        print(capped(f"{PROG}: warning: {message}"), file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


# ---- entry point ----

def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used as the console script)."""
    from gtt_rules.engine.output import inputs_protected

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        from gtt_rules import progress
        progress.quiet = getattr(args, "quiet", False)
        run: Callable[[argparse.Namespace], int] = args.run
        with warnings.catch_warnings():
            warnings.simplefilter("default", LimitWarning)     # each one once, whatever else filters
            warnings.simplefilter("default", GttRulesWarning)
            warnings.showwarning = _show_warning
            with memory_budget(getattr(args, "max_memory", None) or max_memory()), \
                    inputs_protected(allow=getattr(args, "overwrite", False)):
                code = run(args)
    except GttRulesError as error:
        _print_error(error)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except MemoryError:
        print(f"{PROG}: error: out of memory", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:    # what no reader or writer turned into a located error
        where = f"{plain(error.filename)}: " if error.filename is not None else ""
        print(f"{PROG}: error: {where}{plain(error.strerror or error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return code


def _silence_stdout() -> None:
    """The reader of our stdout went away (`| head`): it has what it wanted. Point stdout at
    /dev/null, so that Python's flush at exit does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):   # stdout is not a file (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
