"""The Graph Transform Tool's `--transforms` strings, read into stages of our rule sets and passes.

Syntax (as transform_graph takes it): transforms separated by spaces; each is a name, optionally
with `(key=value, ...)`; a value is bare or double-quoted (quotes allow commas and spaces); a
key given twice collects a list, as in `exclude_op=Const, exclude_op=Shape`. Every transform also
takes `ignore_errors`: when true, a failing transform leaves the graph as it was and the run goes on.
"""
from __future__ import annotations

from dataclasses import dataclass

from gtt_rules.errors import GttRulesError, UsageError, did_you_mean

from .params import StageCall
from .library import Library, Stage


@dataclass
class Transform:
    """One parsed transform: its name, its arguments (strings), and `ignore_errors`."""

    name: str
    args: dict[str, str | list[str]]
    ignore_errors: bool = False


def parse_transforms(text: str) -> list[Transform]:
    """Split a GTT transform string into transforms; raises UsageError naming the column."""
    transforms: list[Transform] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return transforms
        start = i
        while i < n and (text[i].isalnum() or text[i] in "_-"):
            i += 1
        name = text[start:i]
        if not name:
            raise UsageError(f"--transforms, column {i + 1}: expected a transform name, found {text[i]!r}")
        args: dict[str, str | list[str]] = {}
        if i < n and text[i] == "(":
            i = _parse_args(text, i + 1, args)
        elif i < n and not text[i].isspace():
            raise UsageError(f"--transforms, column {i + 1}: unexpected {text[i]!r} after '{name}'")
        ignore = args.pop("ignore_errors", "false")
        if isinstance(ignore, list) or ignore.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"--transforms: {name}: ignore_errors must be true or false")
        transforms.append(Transform(name, args, ignore.lower() in ("true", "1")))


def _parse_args(text: str, i: int, args: dict) -> int:
    n, open_column = len(text), i  # i is just past the '(', which is its 1-based column
    while True:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            raise UsageError(f"--transforms, column {open_column}: this '(' is never closed")
        if text[i] == ")":
            return i + 1
        start = i
        while i < n and (text[i].isalnum() or text[i] == "_"):
            i += 1
        key = text[start:i]
        if not key or i >= n or text[i] != "=":
            raise UsageError(f"--transforms, column {i + 1}: expected 'name=value'")
        i += 1
        if i < n and text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise UsageError(f"--transforms, column {i + 1}: unclosed quote")
            value, i = text[i + 1:end], end + 1
        else:
            start = i
            while i < n and text[i] not in ",)" and not text[i].isspace():
                i += 1
            value = text[start:i]
        if key in args:
            previous = args[key]
            args[key] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            args[key] = value


# The transforms of GTT's registry that cannot apply without TensorFlow's runtime, and why. Every
# other name in it (tensorflow/tools/graph_transforms/*.cc, REGISTER_GRAPH_TRANSFORM) is a rule
# set or pass of the standard library.
NEEDS_TENSORFLOW = {
    "fuse_quantized_conv_and_requantize":
        "its fused ops (QuantizedConv2D...AndRequantize) exist only in TensorFlow built with Intel MKL "
        "(oneDNN), which also registers this transform; no reference kernel runs them",
    "fuse_remote_graph":
        "it hands subgraphs to a remote fused-graph executor (the Hexagon DSP runtime), a part of "
        "TensorFlow's runtime that TensorFlow 2.21 no longer has",
    "place_remote_graph_arguments":
        "it places arguments for a remote fused-graph executor (the Hexagon DSP runtime), a part of "
        "TensorFlow's runtime that TensorFlow 2.21 no longer has",
    "rewrite_quantized_stripped_model_for_hexagon":
        "it runs the graph in a TensorFlow session to find each node's shape for the Hexagon DSP "
        "runtime, which TensorFlow 2.21 no longer has",
    "fake_quantize_training":
        "it rewrites a training graph (its variables and their updates) with TensorFlow's own "
        "quantize-training rewriter in its runtime; gtt-rules rewrites frozen inference graphs",
    "remove_ema":
        "it simplifies only the moving-average subgraphs that fake_quantize_training makes, and "
        "that transform needs TensorFlow's runtime",
}


def transform_stages(text: str, library: Library) -> list[tuple[Transform, list[Stage]]]:
    """Each transform with the stages it runs; unknown names and parameters are UsageErrors."""
    result = []
    for transform in parse_transforms(text):
        if transform.name in NEEDS_TENSORFLOW:
            raise UsageError(f"--transforms: {transform.name} cannot apply without TensorFlow's runtime: "
                             f"{NEEDS_TENSORFLOW[transform.name]}")
        target = library.find(transform.name)
        if target is None:
            names = library.names() + list(NEEDS_TENSORFLOW)
            raise UsageError(f"--transforms: unknown transform '{transform.name}'"
                             f"{did_you_mean(transform.name, names)} (`gtt-rules list` shows them all)")
        known = {p.name for p in getattr(target, "params", ())}
        for key in transform.args:
            if key not in known:
                valid = ", ".join(sorted(known)) or "none"
                raise UsageError(f"--transforms: {transform.name} has no parameter '{key}'"
                                 f"{did_you_mean(key, known | {'ignore_errors'})} "
                                 f"(its parameters: {valid}, and ignore_errors)")
        try:
            stages = library.call(StageCall(transform.name, dict(transform.args), "command line"))
        except GttRulesError as error:
            raise UsageError(f"--transforms: {transform.name}: {error.message}") from None
        result.append((transform, stages))
    return result
