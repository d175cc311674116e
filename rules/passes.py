"""Whole-graph passes: the few transforms that no pattern can express, as named Python functions.

A pass is registered under a name with typed parameters, in a Registry (rules/registry.py), and
then works wherever a rule set does: in `--rules`, in pipelines and in GTT transform strings.

    from gtt_rules.rules.passes import register_pass
    from gtt_rules.rules.params import Param

    @register_pass("drop_devices")
    def drop_devices(graph, ctx):
        for node in graph:
            node.device = ""
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .params import Param
from .registry import REGISTERED


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


def register_pass(name: str, *params: Param):
    """Register `fn(graph, ctx)` as the whole-graph pass `name` with the given parameters, for the
    rules the command line and the API load (it goes into `REGISTERED`)."""
    return REGISTERED.pass_(name, *params)
