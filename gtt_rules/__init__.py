"""gtt-rules: rewrite TensorFlow GraphDef files with declarative rules.

The public Python API:

    import gtt_rules
    graph = gtt_rules.Graph.load("model.pb")          # or any GraphDef message, or its bytes
    rules = gtt_rules.load_rules(["optimize_for_inference", "my.rules"])
    graph, reports = gtt_rules.apply(graph, rules, inputs=["input"], outputs=["probs"])
    [probs] = gtt_rules.evaluate(graph, {"input": image}, ["probs"])
    graph.save("model.opt.pb")
"""
from __future__ import annotations

from typing import Any, Iterable

from gtt_rules.errors import (EvaluationError, GraphError, GttRulesError, RewriteError,
                              RulesCheckError, RulesSyntaxError)


def load_rules(specs: Iterable[str] | str):
    """Stages for rule specs: .rules paths, rule set / pass / pipeline names, or `name(key=value)`."""
    from gtt_rules.rules.library import load_rules as load
    return load(specs, standard_library())


def standard_registry():
    """What the rules the command line and this API load may call: the functions and passes
    registered with register_function / register_pass, then the standard library's, then the
    language's builtins (a name is looked up in that order)."""
    from gtt_rules import stdlib_rules
    from gtt_rules.rules.functions import BUILTINS
    from gtt_rules.rules.registry import REGISTERED, Registry
    return Registry(REGISTERED, stdlib_rules.REGISTRY, BUILTINS)


def standard_library():
    """A new rules Library with the standard library: its .rules files, functions and passes."""
    from gtt_rules import stdlib_rules
    from gtt_rules.rules.library import Library
    return Library(standard_registry(), stdlib_rules.DIRECTORY)


def apply(graph: Any, rules, *, inputs: Iterable[str] | None = None, outputs: Iterable[str] | None = None):
    """Run stages (from `load_rules`) on a graph, in place; returns (graph, [(stage name, report)]).

    `graph` may be a Graph, any GraphDef message or serialized bytes. Inputs and outputs default
    to the placeholders and the sinks; they are never removed or renamed. The result passes the
    checks loading makes (GraphError otherwise), as every graph that leaves gtt-rules does.
    """
    from gtt_rules.engine.graph import Graph
    from gtt_rules.engine.graph_io import from_graph_def
    if not isinstance(graph, Graph):
        graph = from_graph_def(graph)
    inputs = list(inputs) if inputs is not None else [n.name for n in graph.placeholders()]
    outputs = list(outputs) if outputs is not None else [n.name for n in graph.sinks()]
    reports = [(stage.name, stage.run(graph, inputs=inputs, outputs=outputs)) for stage in rules]
    graph.check()
    return graph, reports


def evaluate(graph: Any, feeds, outputs: list[str]):
    """Run a graph in the numpy evaluator: the values of `outputs` given `feeds`."""
    from gtt_rules.engine.evaluator import evaluate as run
    from gtt_rules.engine.graph import Graph
    from gtt_rules.engine.graph_io import from_graph_def
    if not isinstance(graph, Graph):
        graph = from_graph_def(graph)
    return run(graph, feeds, outputs)


def __getattr__(name: str):
    # Lazy, so `import gtt_rules` (and the CLI's start-up) stays cheap.
    if name in ("Graph", "TensorRef", "Node"):
        from gtt_rules.engine import graph
        return getattr(graph, name)
    raise AttributeError(f"module 'gtt_rules' has no attribute '{name}'")


__all__ = ["Graph", "Node", "TensorRef", "load_rules", "standard_library", "standard_registry", "apply",
           "evaluate", "GttRulesError", "GraphError", "RulesSyntaxError", "RulesCheckError", "RewriteError", "EvaluationError"]
