"""`gtt-rules memmap`: write a graph as TensorFlow's memory-mapped package, as
`convert_graphdef_memmapped_format` did (gone from TensorFlow 2's pip package); its flags work too."""
from __future__ import annotations

import argparse
import sys

from gtt_rules.errors import UsageError

EXIT_OK = 0


def register(commands) -> None:
    """Add the `memmap` subcommand to an argparse subparsers object."""
    from gtt_rules.cli import add_graph_input
    from gtt_rules.engine.memmapped import MIN_CONVERSION_BYTES

    memmap = commands.add_parser(
        "memmap", help="write a graph as a memory-mapped package (ImmutableConst regions)",
        description="Write GRAPH as TensorFlow's memory-mapped package: each Const of at least "
                    "--min_conversion_tensor_size bytes goes to its own aligned region of OUT, "
                    "read by an ImmutableConst node. Every command reads such a file as a graph, "
                    "mapping its weights instead of copying them.")
    add_graph_input(memmap)
    memmap.add_argument("-o", "--output", "--out_graph", dest="output", required=True, metavar="OUT",
                        help="where to write the package ('-': stdout)")
    memmap.add_argument("--min_conversion_tensor_size", "--min-conversion-tensor-size", type=int,
                        dest="min_bytes", default=MIN_CONVERSION_BYTES, metavar="BYTES",
                        help=f"smallest tensor, in bytes, given a region (default {MIN_CONVERSION_BYTES}, "
                             f"as in TensorFlow's tool)")
    memmap.add_argument("--overwrite", action="store_true",
                        help="allow OUT to be the input graph, or any other file this command reads")
    memmap.set_defaults(run=memmap_command, output_as_text=False)     # a package is binary


def memmap_command(args: argparse.Namespace) -> int:
    from gtt_rules.cli import input_path, output_path
    from gtt_rules import progress
    from gtt_rules.engine import memmapped
    from gtt_rules.engine.output import STDOUT

    if args.min_bytes < 0:
        raise UsageError(f"--min_conversion_tensor_size must be 0 or more, not {args.min_bytes}")
    source = input_path(args)
    output = output_path(args, source)
    graph = progress.load_graph(source)
    regions = memmapped.save(graph, output, min_bytes=args.min_bytes)
    # With none mapped, the package is the graph in a wrapper: say why, and what would change it.
    mapped = (f"{regions:,} constant{'' if regions == 1 else 's'} in regions of their own" if regions else
              f"no constant of {args.min_bytes:,} bytes or more, so none in a region of its own "
              f"(--min_conversion_tensor_size sets the size)")
    print(f"wrote {output}: {mapped}", file=sys.stderr if output == STDOUT else sys.stdout)
    return EXIT_OK
