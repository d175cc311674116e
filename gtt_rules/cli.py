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
from typing import Callable, Sequence

from gtt_rules.errors import GttRulesError, UsageError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

PROG = "gtt-rules"


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError, so usage errors take the same one-line path as the rest."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise UsageError(message)


def _add_graph_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", "--out_graph", dest="output", required=True, metavar="OUT",
                        help="where to write the result (.pb binary, .pbtxt text)")
    parser.add_argument("--output_as_text", "--output-as-text", dest="output_as_text", action="store_true",
                        help="write text format whatever the suffix")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow OUT to be the input file itself")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Rewrite TensorFlow GraphDef files with declarative rules.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    summarize = commands.add_parser("summarize", help="show a graph's inputs, outputs, ops and size",
                                    description="Show a graph's likely inputs and outputs, op "
                                                "histogram and parameter count, like summarize_graph.")
    summarize.add_argument("graph", metavar="GRAPH", help="a .pb or .pbtxt GraphDef file")
    summarize.add_argument("--json", action="store_true", help="print JSON instead of tables")
    summarize.set_defaults(run=_summarize)

    apply = commands.add_parser("apply", help="rewrite a graph and write the result",
                                description="Read GRAPH, apply rules, write OUT atomically.")
    apply.add_argument("graph", metavar="GRAPH", nargs="?", help="a .pb or .pbtxt GraphDef file")
    apply.add_argument("--in_graph", dest="in_graph", metavar="GRAPH", help=argparse.SUPPRESS)
    _add_graph_output(apply)
    apply.set_defaults(run=_apply)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("gtt-rules")
    except Exception:  # not installed as a distribution: running from a source tree
        return "unknown"


# ---- commands ----

def _summarize(args: argparse.Namespace) -> int:
    from gtt_rules.engine.graph import Graph
    from gtt_rules.engine.summary import summarize

    summary = summarize(Graph.load(args.graph))
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    _print_summary(args.graph, summary)
    return EXIT_OK


def _print_summary(path: str, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    params = summary["parameters"]
    console.print(f"[bold]{path}[/bold]: {summary['nodes']:,} nodes, "
                  f"{params['count']:,} parameters in {params['consts']:,} Consts "
                  f"({_human_bytes(params['bytes'])}), {summary['control_edges']:,} control edges, "
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
        console.print(table if rows else f"{title}: none found")
    ops = Table(title="Ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in summary["ops"].items():
        ops.add_row(op, str(count))
    console.print(ops)


def _cell(value) -> str:
    if value is None:
        return "?"
    if isinstance(value, list):
        return "[" + ", ".join("?" if v is None or v == -1 else str(v) for v in value) + "]"
    return str(value)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _apply(args: argparse.Namespace) -> int:
    from gtt_rules.engine.graph import Graph

    source = _input_path(args)
    output = _output_path(args, source)
    graph = Graph.load(source)
    graph.save(output, text=True if args.output_as_text else None)
    return EXIT_OK


def _input_path(args: argparse.Namespace) -> str:
    if args.graph and args.in_graph and args.graph != args.in_graph:
        raise UsageError("give the input graph once: either GRAPH or --in_graph")
    source = args.graph or args.in_graph
    if not source:
        raise UsageError("the input graph is missing: give GRAPH (or --in_graph)")
    return source


def _output_path(args: argparse.Namespace, source: str) -> pathlib.Path:
    """Check OUT before any work, so a bad OUT fails fast and the input stays safe."""
    output = pathlib.Path(args.output)
    if output.is_dir():
        raise UsageError(f"{output}: is a directory; give a file name for the output")
    if not output.parent.exists() and str(output.parent):
        raise UsageError(f"{output}: the folder {output.parent} does not exist")
    if output.exists() and os.path.exists(source) and os.path.samefile(output, source) and not args.overwrite:
        raise UsageError(f"{output}: refusing to write over the input graph; pass --overwrite to allow it")
    return output


# ---- entry point ----

def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used as the console script)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        code = run(args)
    except GttRulesError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
