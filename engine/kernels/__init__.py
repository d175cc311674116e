"""Numpy kernels, one per TensorFlow op, registered by op name.

A kernel is `fn(node, inputs) -> outputs`: `node` is the graph Node (read attrs with
`node.get_attr`), `inputs` the numpy values of its data inputs in order, and the result one array
(for a single-output op) or a tuple of arrays, one per output port. Kernels are vectorized: no
Python loop over elements.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Kernel = Callable[..., "np.ndarray | tuple[np.ndarray, ...]"]

KERNELS: dict[str, Kernel] = {}


def kernel(*ops: str) -> Callable[[Kernel], Kernel]:
    """Register the decorated function as the kernel of each op in `ops`."""
    def register(fn: Kernel) -> Kernel:
        for op in ops:
            KERNELS[op] = fn
        return fn
    return register


def load_all() -> dict[str, Kernel]:
    """Import every kernel module, so that KERNELS is complete."""
    from . import float_ops, quantized, tensor_lists  # noqa: F401  (registration happens on import)
    return KERNELS
