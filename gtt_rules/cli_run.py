"""`gtt-rules run` and `gtt-rules compare`: run graphs in numpy on real or seeded random inputs.

The check after every deployment step: run the model on a sample input and see that its answer
did not change. `run` prints (or saves) a graph's outputs; `compare` runs two graphs on the same
inputs and exits 1 when their outputs differ beyond tolerance.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tokenize
import zipfile
import zlib
from typing import Any

import numpy as np

from gtt_rules import progress
from gtt_rules.console import console, markup, plain
from gtt_rules.errors import GttRulesError, UsageError, did_you_mean

EXIT_OK, EXIT_CHECK_FAILED = 0, 1
DEFAULT_RTOL, DEFAULT_ATOL = 1e-4, 1e-5
_PREVIEW = 6   # how many leading values the summary shows


def register(commands) -> None:
    """Add the `run` and `compare` subcommands to an argparse subparsers object."""
    from gtt_rules.cli import GRAPH_HELP

    run = commands.add_parser("run", help="run a graph in numpy and show its outputs",
                              description="Run GRAPH on fed or seeded random inputs and print each "
                                          "output's shape, dtype and a summary of its values.")
    run.add_argument("graph", metavar="GRAPH", help=GRAPH_HELP)
    _add_run_options(run)
    run.add_argument("--save", metavar="OUT.npz",
                     help="write the outputs to OUT.npz, one array per output, keyed by its name "
                          "as given in --outputs ('-': stdout, and the summary goes to stderr)")
    run.add_argument("--overwrite", action="store_true",
                     help="allow OUT.npz to be one of the files this command reads")
    run.set_defaults(run=run_command)

    compare = commands.add_parser("compare", help="run two graphs on the same inputs and compare",
                                  description="Run graphs A and B on the same inputs; per output, "
                                              "report max absolute and relative error (relative to "
                                              "A), cosine similarity and top-1 agreement. Exits 1 "
                                              "when an output is beyond tolerance.")
    compare.add_argument("graph_a", metavar="A", help=f"the reference graph: {GRAPH_HELP}")
    compare.add_argument("graph_b", metavar="B", help="the graph to check against A")
    _add_run_options(compare)
    compare.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                         help=f"relative tolerance (default {DEFAULT_RTOL})")
    compare.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                         help=f"absolute tolerance (default {DEFAULT_ATOL})")
    compare.add_argument("--nan-fails", action="store_true",
                         help="a NaN fails the comparison (by default NaNs in the same places agree)")
    compare.add_argument("--per-layer", action="store_true",
                         help="A is float and B its eight-bit conversion: line up the layers they "
                              "share and show, in execution order, each one's SQNR (dB), cosine, max "
                              "abs error and eight-bit range (exit 0)")
    compare.add_argument("--html", metavar="REPORT.html",
                         help="with --per-layer, also write a self-contained page that plots SQNR "
                              "per layer beside the table")
    compare.add_argument("--overwrite", action="store_true",
                         help="allow REPORT.html to be one of the files this command reads")
    compare.set_defaults(run=compare_command)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", metavar="A,B",
                        help="comma-separated tensors to fetch (name or name:port); "
                             "default: the graph's likely outputs")
    parser.add_argument("--feed", action="append", default=[], metavar="NAME=FILE.npy",
                        help="feed the tensor NAME from a .npy file, or a .npz holding one array or "
                             "one named NAME; or FILE.npz alone: each of its arrays feeds the tensor "
                             "its key names (repeatable). Inputs not fed get seeded random values of "
                             "their dtype and shape")
    parser.add_argument("--seed", type=parse_seed, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_max_memory_option(parser)


def add_max_memory_option(parser: argparse.ArgumentParser) -> None:
    """--max-memory, for every command that evaluates or folds: `main` puts it in force."""
    from gtt_rules.engine.limits import DEFAULT_MAX_MEMORY, format_size
    parser.add_argument("--max-memory", type=_size, metavar="SIZE",
                        help=f"tensors an evaluation (or a constant fold) may hold at once, e.g. "
                             f"8GB or 512MiB (default {format_size(DEFAULT_MAX_MEMORY)})")


def _size(text: str) -> int:
    from gtt_rules.engine.limits import parse_size
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ---- shared steps --------------------------------------------------------------------------------

def load_feed_files(specs: list[str]) -> dict[str, np.ndarray]:
    """`NAME=FILE.npy` (or a one-array `NAME=FILE.npz`) and `FILE.npz` (each array feeds the tensor
    its key names, as `run --save` writes them) arguments to arrays; UsageError naming the file for
    anything unreadable."""
    feeds: dict[str, np.ndarray] = {}

    def add(name: str, value: np.ndarray) -> None:
        if name in feeds:
            raise UsageError(f"--feed: '{name}' is fed twice")
        feeds[name] = value

    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep and name.endswith(".npz"):
            for key, value in load_npz(pathlib.Path(name)).items():
                add(key, value)
            continue
        if not sep or not name or not path:
            raise UsageError(f"--feed {spec!r}: expected NAME=FILE.npy or FILE.npz")
        add(name, _load_feed(name, pathlib.Path(path)))
    return feeds


def feed_paths(specs: list[str]) -> list[str]:
    """The files --feed arguments read, so that no output overwrites one."""
    return [spec.partition("=")[2].strip() or spec.strip() for spec in specs]


def _load_feed(name: str, path: pathlib.Path) -> np.ndarray:
    """The array for tensor `name` in a .npy file, or in a .npz one with one array or one named `name`."""
    if not path.exists():
        raise UsageError("no such file", path=str(path))
    if path.is_dir():
        raise UsageError("is a directory, not a .npy file", path=str(path))
    try:
        with open(path, "rb") as f:
            is_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
            f.seek(0)
            if not is_zip:
                return read_array(f, os.fstat(f.fileno()).st_size)
    except _ARRAY_ERRORS as error:
        raise UsageError(f"not a readable .npy array: {_reason(error)}", path=str(path)) from None
    arrays = load_npz(path)
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    if name in arrays:
        return arrays[name]
    raise UsageError(f"holds {len(arrays)} arrays ({_names(arrays)}), none named '{name}'"
                     f"{did_you_mean(name, arrays)} (--feed {path} feeds each array by its name)",
                     path=str(path))


def _names(arrays: dict, shown: int = 5) -> str:
    names = ", ".join(list(arrays)[:shown])
    return names + (f" and {len(arrays) - shown} more" if len(arrays) > shown else "")


def load_npz(path: pathlib.Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a .npz file by name, each read as `read_array` reads it; UsageError naming
    the file (and the array) for anything unreadable.

    The sizes the archive declares are checked against `max_bytes` (default: the memory budget
    in force, --max-memory) before anything is
    decompressed: a few megabytes of zip can unpack to gigabytes. A member never unpacks to more
    than it declares (zipfile stops there), and `read_array` holds its .npy header to that size.
    """
    from gtt_rules.engine.limits import format_size, max_memory

    max_bytes = max_memory() if max_bytes is None else max_bytes
    arrays: dict[str, np.ndarray] = {}
    member = None
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            declared = sum(info.file_size for info in members)
            if declared > max_bytes:
                raise UsageError(f"its arrays unpack to {format_size(declared)}, over the memory budget of "
                                 f"{format_size(max_bytes)} (--max-memory raises it)", path=str(path))
            for info in members:
                member = info.filename
                if not member.endswith(".npy"):
                    raise ValueError("not a .npy array")
                with archive.open(info) as f:
                    arrays[member[:-len(".npy")]] = read_array(f, info.file_size)
    except (*_ARRAY_ERRORS, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as error:
        where = f"'{member}': " if member else ""
        raise UsageError(f"not a readable .npz sample: {where}{_reason(error)}", path=str(path)) from None
    return arrays


def read_array(stream, size: int) -> np.ndarray:
    """The array in .npy format in `stream` (`size` bytes), never unpickled. Its header is checked
    against the bytes that follow before anything is allocated: a tiny file can claim any shape.

    Raises one of `_ARRAY_ERRORS`: MemoryError too, as a .npz member's size can lie.
    """
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
        np.lib.format.read_array_header_2_0     # 3.0 differs only in how field names are encoded
    shape, _, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError(f"holds Python objects (dtype {dtype}), which only unpickling could load")
    needed, left = math.prod(shape) * dtype.itemsize, size - stream.tell()
    if needed > left:
        raise ValueError(f"its header claims shape {list(shape)} of {dtype} ({needed} bytes), but "
                         f"{left} bytes follow it")
    stream.seek(0)
    return np.lib.format.read_array(stream, allow_pickle=False)


_ZIP_MAGIC = b"PK\x03\x04"
# numpy's header parser lets tokenize's error through, for a header cut short inside brackets.
_ARRAY_ERRORS = (ValueError, OSError, EOFError, MemoryError, tokenize.TokenError)


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def parse_outputs(text: str | None, graph) -> list[str]:
    """The --outputs list, or the graph's likely outputs when it is not given."""
    if text is None:
        names = [node.name for node in graph.sinks()]
        if not names:
            raise UsageError("the graph has no likely outputs; name them with --outputs")
        return names
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError("--outputs is empty; give comma-separated tensor names")
    return names


def run_graph(graph, path: str, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Evaluate, locating any error in the graph file `path`."""
    from gtt_rules.engine.evaluator import evaluate
    try:
        with progress.step(f"running {plain(path)}"):
            return evaluate(graph, feeds, outputs)
    except GttRulesError as error:
        raise error.located(path) from None


def _feeds_for(graph, path: str, seed: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from gtt_rules.engine.evaluator import random_feeds
    try:
        return random_feeds(graph, seed, given)
    except GttRulesError as error:
        raise error.located(path) from None


def parse_seed(text: str) -> int:
    """An argparse type: numpy seeds random generators with non-negative integers only."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not '{text}'") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"a seed must not be negative, not {seed}")
    return seed


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays into one .npz through the one output writer: complete, or not at all."""
    from gtt_rules.engine.output import write_output
    write_output(path, lambda file: np.savez(file, **arrays))


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity."""
    return float(value) if math.isfinite(value) else None


def summarize_array(name: str, value: np.ndarray) -> dict[str, Any]:
    """Shape, dtype and a short summary of the values (min/max/mean for numbers)."""
    from gtt_rules.engine.dtypes import dtype_for_array, dtype_name
    try:
        dtype = dtype_name(dtype_for_array(value))
    except ValueError:
        dtype = str(value.dtype)
    summary: dict[str, Any] = {"name": name, "shape": list(value.shape), "dtype": dtype}
    # No whole-array copy (a float64 one, or a flattening of a strided view): outputs can be huge.
    first = value.flat[:_PREVIEW].tolist()
    if value.dtype.kind in "biuf" and value.size:
        summary.update(min=_finite(float(value.min())), max=_finite(float(value.max())),
                       mean=_finite(float(np.mean(value, dtype=np.float64))))
        summary["first"] = [_finite(v) if isinstance(v, float) else v for v in first]
    elif value.dtype.kind == "c" and value.size:
        summary["first"] = [[_finite(v.real), _finite(v.imag)] for v in first]
    else:
        summary["first"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in first]
    return summary


# ---- run -----------------------------------------------------------------------------------------

def run_command(args: argparse.Namespace) -> int:
    """`gtt-rules run`: evaluate GRAPH and print (and optionally save) its outputs."""
    from gtt_rules.engine.output import STDOUT, check_output
    given = load_feed_files(args.feed)
    feed_files = feed_paths(args.feed)
    save_path = check_output(args.save, args.graph, *feed_files) if args.save else None
    graph = progress.load_graph(args.graph)
    outputs = parse_outputs(args.outputs, graph)
    feeds = _feeds_for(graph, args.graph, args.seed, given)
    values = run_graph(graph, args.graph, outputs, feeds)
    if save_path is not None:
        save_npz(save_path, dict(zip(outputs, values)))
    summaries = [summarize_array(name, value) for name, value in zip(outputs, values)]
    to_stderr = save_path == STDOUT    # stdout holds the saved arrays
    if args.json:
        print(json.dumps({"graph": args.graph, "seed": args.seed,
                          "fed": sorted(given), "random": sorted(set(feeds) - set(given)),
                          "outputs": summaries, "saved": save_path},
                         indent=2), file=sys.stderr if to_stderr else sys.stdout)
        return EXIT_OK
    _print_run(args.graph, summaries, given, feeds, args.seed, save_path, to_stderr)
    return EXIT_OK


def _print_run(path, summaries, given, feeds, seed, save_path, to_stderr) -> None:
    from rich.table import Table

    out = console(stderr=to_stderr)
    random_names = sorted(set(feeds) - set(given))
    inputs = [f"{markup(name)} (file)" for name in sorted(given)] + \
             [f"{markup(name)} (random, seed {seed})" for name in random_names]
    out.print(f"[bold]{markup(path)}[/bold]: inputs {', '.join(inputs) if inputs else 'none'}")
    table = Table(title="Outputs", title_justify="left")
    widest = max((len(s["name"]) for s in summaries), default=6)
    table.add_column("output", min_width=min(widest, 32), overflow="fold")
    for column, justify in (("shape", "left"), ("dtype", "left"), ("min", "right"),
                            ("max", "right"), ("mean", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    table.add_column("first values", overflow="fold")
    for s in summaries:
        table.add_row(markup(s["name"]), _shape(s["shape"]), markup(s["dtype"]), _number(s.get("min"), 4),
                      _number(s.get("max"), 4), _number(s.get("mean"), 4),
                      markup(" ".join(_number(v, 4) if isinstance(v, (int, float)) or v is None else str(v)
                                      for v in s["first"][:3])))
    out.print(table)
    if save_path is not None:
        out.print(f"saved {len(summaries)} array{'' if len(summaries) == 1 else 's'} to {markup(save_path)}")


def _number(value, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, int)):
        return str(value)
    return f"{value:.{digits}g}"


def _shape(dims: list[int]) -> str:
    return "[" + ",".join(map(str, dims)) + "]"


# ---- compare -------------------------------------------------------------------------------------

def compare_arrays(a: np.ndarray, b: np.ndarray, rtol: float, atol: float,
                   nan_fails: bool = False) -> dict[str, Any]:
    """Max absolute and relative error (relative to `a`), cosine similarity, top-1 agreement.

    Within tolerance means same shape and, everywhere, equal values (the same infinity; NaN and
    NaN, unless `nan_fails`) or finite ones with |a - b| <= atol + rtol * |a|.
    Top-1 agreement is the fraction of rows (all axes but the last) whose argmax agrees.
    """
    result: dict[str, Any] = {"shape_a": list(a.shape), "shape_b": list(b.shape),
                              "max_abs_error": None, "max_rel_error": None,
                              "cosine_similarity": None, "top1_agreement": None}
    if a.shape != b.shape:
        result["within_tolerance"] = False
        result["problem"] = "shapes differ"
        return result
    if a.dtype.kind not in "biufc" or b.dtype.kind not in "biufc":
        equal = bool(np.array_equal(a, b))
        result["within_tolerance"] = equal
        if not equal:
            result["problem"] = "values differ"
        return result
    x = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64).reshape(-1)
    y = b.astype(np.complex128 if b.dtype.kind == "c" else np.float64).reshape(-1)
    with np.errstate(all="ignore"):     # infinities and NaNs are compared, not warned about
        same = x == y           # inf - inf is NaN: equal infinities must not count as a difference
        if not nan_fails:
            same |= np.isnan(x) & np.isnan(y)
        diff = np.where(same, 0.0, np.abs(x - y))
        if x.size:
            result["max_abs_error"] = _finite(float(np.max(diff)))
            rel = np.where(diff == 0, 0.0, diff / np.abs(x))
            result["max_rel_error"] = _finite(float(np.max(rel)))
            norm = float(np.linalg.norm(x) * np.linalg.norm(y))
            if norm == 0:
                cosine = 1.0 if not np.any(x) and not np.any(y) else 0.0
            else:
                cosine = float(np.real(np.vdot(x, y))) / norm
            result["cosine_similarity"] = _finite(cosine)
            if a.ndim >= 1 and a.shape[-1] > 1 and a.dtype.kind != "c":
                agree = np.argmax(a.reshape(-1, a.shape[-1]), axis=1) == np.argmax(b.reshape(-1, b.shape[-1]), axis=1)
                result["top1_agreement"] = float(np.mean(agree))
        # An infinity against anything else differs by inf (or NaN), never within a tolerance.
        within = bool(np.all(same | (np.isfinite(diff) & (diff <= atol + rtol * np.abs(x)))))
    result["within_tolerance"] = within
    if not within and nan_fails and (np.isnan(x).any() or np.isnan(y).any()):
        result["problem"] = "NaN (--nan-fails)"
    return result


def compare_command(args: argparse.Namespace) -> int:
    """`gtt-rules compare`: run A and B on the same inputs; exit 1 if any output differs too much."""
    from gtt_rules.engine.graph import TensorRef
    from gtt_rules.engine.output import check_output
    if not (args.rtol >= 0 and args.atol >= 0):     # NaN too: nothing would be within it
        raise UsageError("--rtol and --atol must be numbers, not negative")
    if args.html is not None and not args.per_layer:
        raise UsageError("--html writes the per-layer report; add --per-layer")
    given = load_feed_files(args.feed)
    feed_files = feed_paths(args.feed)
    html_path = check_output(args.html, args.graph_a, args.graph_b, *feed_files) if args.html else None
    graph_a = progress.load_graph(args.graph_a)
    graph_b = progress.load_graph(args.graph_b)
    # The same values for both: B's own inputs first, then A's, then the files, each overriding.
    feeds_a = _feeds_for(graph_a, args.graph_a, args.seed, given)
    feeds_b = _feeds_for(graph_b, args.graph_b, args.seed, feeds_a)
    feeds_b = {name: value for name, value in feeds_b.items() if TensorRef.parse(name).node in graph_b}
    if args.per_layer:
        return _per_layer(args, graph_a, graph_b, feeds_a, feeds_b, given, html_path)
    outputs = parse_outputs(args.outputs, graph_a)
    values_a = run_graph(graph_a, args.graph_a, outputs, feeds_a)
    values_b = run_graph(graph_b, args.graph_b, outputs, feeds_b)
    rows = []
    for name, a, b in zip(outputs, values_a, values_b):
        rows.append({"name": name, **compare_arrays(a, b, args.rtol, args.atol, args.nan_fails)})
    within = all(row["within_tolerance"] for row in rows)
    if args.json:
        print(json.dumps({"a": args.graph_a, "b": args.graph_b, "seed": args.seed, "rtol": args.rtol,
                          "atol": args.atol, "nan_fails": args.nan_fails, "within_tolerance": within,
                          "outputs": rows, "reference": _reference()}, indent=2))
    else:
        _print_compare(args, rows, within)
    return EXIT_OK if within else EXIT_CHECK_FAILED


def _print_compare(args, rows, within) -> None:
    from rich.table import Table

    out = console()
    out.print(f"[bold]A[/bold] {markup(args.graph_a)}\n[bold]B[/bold] {markup(args.graph_b)}\n"
                  f"rtol {args.rtol:g}, atol {args.atol:g}, inputs seed {args.seed}")
    table = Table()
    widest = max((len(row["name"]) for row in rows), default=6)
    table.add_column("output", min_width=min(widest, 32), overflow="fold")
    for column, justify in (("shape", "left"), ("max abs err", "right"), ("max rel err", "right"),
                            ("cosine", "right"), ("top-1", "right"), ("", "left")):
        table.add_column(column, justify=justify, no_wrap=True)
    for row in rows:
        shape = _shape(row["shape_a"])
        if row["shape_a"] != row["shape_b"]:
            shape += " vs " + _shape(row["shape_b"])
        top1 = "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.1%}"
        status = "[green]ok[/green]" if row["within_tolerance"] else \
            f"[red]{markup(row.get('problem', 'beyond tolerance'))}[/red]"
        table.add_row(markup(row["name"]), shape, _number(row["max_abs_error"], 4),
                      _number(row["max_rel_error"], 4), _number(row["cosine_similarity"], 6), top1, status)
    out.print(table)
    out.print("[green]all outputs within tolerance[/green]" if within else
                  "[red]outputs differ beyond tolerance[/red]")
    out.print(f"[dim]{_reference()}[/dim]")


def _reference() -> str:
    from gtt_rules.per_layer import REFERENCE
    return REFERENCE[0].upper() + REFERENCE[1:]


# ---- compare --per-layer -------------------------------------------------------------------------

def _per_layer(args, graph_a, graph_b, feeds_a, feeds_b, given, html_path) -> int:
    """`compare --per-layer`: A float, B eight-bit; each shared layer's error, in execution order."""
    from gtt_rules import per_layer
    from gtt_rules.engine.output import write_output

    try:
        layers = per_layer.match_layers(graph_a, graph_b)
    except GttRulesError as error:
        raise error.located(args.graph_b) from None
    if not layers:
        raise UsageError(f"'{args.graph_a}' and '{args.graph_b}' share no layer: no float tensor of A "
                         f"is computed in B under its name or an eight-bit op named below it")
    rows = per_layer.measure(layers, lambda names: run_graph(graph_a, args.graph_a, names, feeds_a),
                             lambda names: run_graph(graph_b, args.graph_b, names, feeds_b))
    random_names = sorted(set(feeds_a) - set(given))
    inputs = ", ".join([f"{name} (file)" for name in sorted(given)] +
                       [f"{name} (random, seed {args.seed})" for name in random_names]) or "none"
    if html_path is not None:
        page = per_layer.html_page(rows, args.graph_a, args.graph_b, inputs).encode("utf-8")
        write_output(html_path, lambda file: file.write(page))
    worst = per_layer.worst(rows)
    if args.json:
        print(json.dumps({"float": args.graph_a, "eightbit": args.graph_b, "seed": args.seed,
                          "inputs": inputs, "layers": rows, "worst": worst and worst["layer"],
                          "html": html_path, "reference": _reference()}, indent=2),
              file=sys.stderr if html_path == "-" else sys.stdout)    # stdout holds the page
        return EXIT_OK
    _print_per_layer(args, rows, worst, inputs, html_path)
    return EXIT_OK


def _print_per_layer(args, rows, worst, inputs, html_path) -> None:
    from rich.table import Table

    from gtt_rules import per_layer

    out = console(stderr=html_path == "-")
    out.print(f"[bold]float[/bold] {markup(args.graph_a)}\n[bold]eight-bit[/bold] {markup(args.graph_b)}\n"
              f"inputs {markup(inputs)}")
    scope = per_layer.common_scope(rows)
    title = "Error per layer, in execution order" + (f" (names under {markup(scope)})" if scope else "")
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right", no_wrap=True, min_width=len(str(len(rows))))
    table.add_column("layer", overflow="fold", min_width=24)
    table.add_column("op", overflow="fold")
    for column in ("SQNR dB", "cosine", "max abs err", "range used"):
        table.add_column(column, justify="right", overflow="fold")
    for i, row in enumerate(rows, 1):
        style = "bold red" if row is worst else None
        table.add_row(str(i), markup(row["layer"][len(scope):]), markup(row["op"]),
                      per_layer.sqnr_text(row), per_layer.format_number(row["cosine"], 6),
                      per_layer.format_number(row["max_abs_error"], 4), per_layer.format_range(row),
                      style=style)
    out.print(table)
    if worst is not None:
        out.print(f"lowest SQNR: [bold]{markup(worst['layer'])}[/bold] ({per_layer.sqnr_text(worst)} dB)")
    if html_path is not None:
        out.print(f"wrote the report page to {markup(html_path)}")
    out.print(f"[dim]{_reference()}[/dim]")
