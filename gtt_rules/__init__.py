"""gtt-rules: rewrite TensorFlow GraphDef files with declarative rules.

The public Python API:

    from gtt_rules import Graph
    graph = Graph.load("model.pb")      # or Graph.from_graph_def(any_graph_def_message)
    graph.save("out.pb")
"""
from gtt_rules.errors import (EvaluationError, GraphError, GttRulesError, RewriteError,
                              RulesCheckError, RulesSyntaxError)


def __getattr__(name: str):
    # Lazy, so `import gtt_rules` (and the CLI's start-up) stays cheap.
    if name in ("Graph", "TensorRef", "Node"):
        from gtt_rules.engine import graph
        return getattr(graph, name)
    raise AttributeError(f"module 'gtt_rules' has no attribute '{name}'")


__all__ = ["Graph", "Node", "TensorRef", "GttRulesError", "GraphError", "RulesSyntaxError",
           "RulesCheckError", "RewriteError", "EvaluationError"]
