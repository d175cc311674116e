"""Whole-graph passes: the few transforms that no pattern can express, as named Python functions.

A pass is registered under a name with typed parameters, and then works wherever a rule set
does: in `--rules`, in pipelines and in GTT transform strings.

    from gtt_rules.rules.passes import register_pass
    from gtt_rules.rules.params import Param

    @register_pass("drop_devices")
    def drop_devices(graph, ctx):
        for node in graph:
            node.device = ""
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from gtt_rules.engine.graph import Graph

from .params import Param, bind_params


@dataclass(frozen=True)
class PassContext:
    """What a pass gets besides the graph: its parameter values and the protected node names."""

    params: dict[str, Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    notes: list[str] = field(default_factory=list)  # what the pass left as it was, and why

    @property
    def protected(self) -> frozenset[str]:
        return frozenset(self.inputs + self.outputs)


@dataclass(frozen=True)
class GraphPass:
    name: str
    fn: Callable[[Graph, PassContext], None]
    params: tuple[Param, ...]
    doc: str
    path: str = "<python>"

    def bind(self, args: dict[str, Any], *, where: str = "") -> dict[str, Any]:
        return bind_params(self, args, where=where)  # type: ignore[arg-type]


PASSES: dict[str, GraphPass] = {}


def register_pass(name: str, *params: Param):
    """Register `fn(graph, ctx)` as the whole-graph pass `name` with the given parameters."""
    def decorate(fn: Callable[[Graph, PassContext], None]):
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        PASSES[name] = GraphPass(name, fn, tuple(params), doc)
        return fn
    return decorate


def load_standard_passes() -> dict[str, GraphPass]:
    """Import the standard library's passes, so PASSES is complete."""
    from gtt_rules.stdlib_rules import passes  # noqa: F401  (registration happens on import)
    return PASSES
