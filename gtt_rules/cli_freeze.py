"""`gtt-rules freeze`: a TensorFlow 2 SavedModel to a frozen GraphDef, without TensorFlow."""
from __future__ import annotations

import argparse

from gtt_rules.console import plain


def register(commands) -> None:
    """Add the `freeze` subcommand to an argparse subparsers object."""
    from gtt_rules.cli import add_graph_output
    from gtt_rules.engine.savedmodel import DEFAULT_SIGNATURE, DEFAULT_TAG

    parser = commands.add_parser(
        "freeze", help="freeze a SavedModel's signature into a GraphDef",
        description="Read SAVED_MODEL_DIR (saved_model.pb and its variables checkpoint) and write "
                    "the signature as a frozen GraphDef: Placeholders and output Identities named "
                    "after the signature's keys, function calls inlined, variables turned into "
                    "Consts. Nothing in the SavedModel is executed. Every command that reads a "
                    "graph also accepts a SavedModel folder and freezes its default signature.")
    parser.add_argument("saved_model", metavar="SAVED_MODEL_DIR", help="a SavedModel folder")
    add_graph_output(parser)
    parser.add_argument("--signature", default=DEFAULT_SIGNATURE,
                        help=f"the signature to freeze (default {DEFAULT_SIGNATURE})")
    parser.add_argument("--tag", default=DEFAULT_TAG,
                        help=f"the MetaGraph's tags, comma-separated (default {DEFAULT_TAG})")
    parser.set_defaults(run=freeze_command)


def freeze_command(args: argparse.Namespace) -> int:
    from gtt_rules import progress
    from gtt_rules.cli import output_path
    from gtt_rules.engine.output import STDOUT
    from gtt_rules.engine.savedmodel import freeze

    output = output_path(args, args.saved_model,
                          refusal="refusing to write over the SavedModel; pass --overwrite to allow it")
    with progress.step(f"freezing {plain(args.saved_model)}"):
        graph = freeze(args.saved_model, signature=args.signature, tag=args.tag)
    with progress.step(f"writing {plain(output)}"):
        graph.save(output, text=args.output_as_text)    # None: the suffix decides
    if output != STDOUT:
        print(plain(f"wrote {output}: signature '{args.signature}' frozen, {len(graph.nodes):,} nodes, "
                    f"{len(graph.library.function):,} library functions"))
    return 0
