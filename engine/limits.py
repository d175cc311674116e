"""Resource limits: how much memory an evaluation or a fold may take, and how much work a fold may do.

A small file can describe a huge computation (a `Fill` of a billion floats, a Const filled from one
value, a 16384x16384 MatMul), so sizes and costs are worked out from static shapes before anything
is allocated. The memory budget covers every tensor live at once during an evaluation, and the
inputs and outputs of a fold; the command line raises it with `--max-memory`:

    with memory_budget(parse_size("8GB")):
        evaluate(graph, feeds, outputs)
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import re
from typing import Iterator, Sequence

# Enough for inference on the models people ship to phones and boards, small enough that a hostile
# file cannot take the machine: peaks stay near 1 GB. --max-memory raises it.
DEFAULT_MAX_MEMORY = 2**30
# Multiply-adds and element operations a fold may cost: about a second of numpy on one core.
MAX_FOLD_OPERATIONS = 10**10

_BUDGET: contextvars.ContextVar[int] = contextvars.ContextVar("memory_budget", default=DEFAULT_MAX_MEMORY)


class LimitWarning(UserWarning):
    """Work that was skipped because it would pass a limit (a fold left undone)."""


def max_memory() -> int:
    """The memory budget in force, in bytes."""
    return _BUDGET.get()


@contextlib.contextmanager
def memory_budget(limit: int) -> Iterator[None]:
    """Evaluations and folds inside the block may hold up to `limit` bytes of tensors at once."""
    token = _BUDGET.set(limit)
    try:
        yield
    finally:
        _BUDGET.reset(token)


_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 10**3, "KIB": 2**10, "M": 2**20, "MB": 10**6,
          "MIB": 2**20, "G": 2**30, "GB": 10**9, "GIB": 2**30, "T": 2**40, "TB": 10**12, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes from "4GB", "512MiB", "1.5G" or "1000000"; ValueError if it is not a size."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", text)
    unit = found and _UNITS.get(found.group(2).upper())
    if not unit:
        raise ValueError(f"expected a size such as 4GB or 512MiB, not '{text}'")
    size = float(found.group(1)) * unit
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"expected a size of at least one byte, not '{text}'")
    return int(size)


def format_size(size: int) -> str:
    """`size` bytes in the largest binary unit that keeps it at least 1 ("4 GiB", "1.1 MiB")."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def operations(op: str, inputs: Sequence[tuple[int, ...]], outputs: Sequence[tuple[int, ...]]) -> int:
    """A rough count of the arithmetic a kernel does, from its input and output shapes: the
    multiply-adds of products, otherwise one operation per element read or written."""
    elements = sum(math.prod(shape) for shape in (*inputs, *outputs))
    if op in ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3") and outputs and inputs:
        a = inputs[0]
        # Every output element sums over the shared dimension, which is one of a's last two.
        shared = max(a[-2:]) if len(a) >= 2 else 1
        return elements + math.prod(outputs[0]) * shared
    if op in ("Conv2D", "Conv3D", "DepthwiseConv2dNative") and len(inputs) >= 2 and outputs:
        window = math.prod(inputs[1][:-1])   # filter: spatial dims x input channels
        if op == "DepthwiseConv2dNative":
            window = math.prod(inputs[1][:-2])
        return elements + math.prod(outputs[0]) * window
    return elements
