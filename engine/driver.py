"""Apply rules to a fixed point with an incremental worklist.

Rules are dispatched by the root node's op; after a rewrite only what it made or rewired, and
their neighbours, are looked at again. Each priority has its own worklist, served only while every
higher one is empty. The run stops when nothing matches (saturated) or at a limit; a node rewritten
over and over names the rules that cycle.
"""
from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from gtt_rules.errors import RewriteError

from .graph import Graph
from .pattern import MatchContext, MatchLimitError, match
from .report import Application, Report, StopReason
from .rewrite import RewriteResult, rewrite
from .rule import Rule


@dataclass
class Limits:
    """When to give up. `max_rewrites` None scales with the graph (10 per node + 10,000)."""

    max_rewrites: int | None = None
    max_rewrites_per_node: int = 64


class _Level:
    """The rules of one priority by root op, in the order written, and the nodes waiting for them."""

    def __init__(self, rules: list[Rule], graph: Graph):
        self.rules = rules
        # The ops some rule can root at (None: any op): a set lookup per node, not a call. Only
        # nodes some rule could root at are queued: the rest cost nothing per rule set.
        roots = self.root_ops = None if any(r.root_ops is None for r in rules) \
            else frozenset().union(*(r.root_ops for r in rules))
        # File order, not topological order: frozen graphs are mostly sorted already, and a node
        # visited too early is visited again when a rewrite changes its neighbourhood, so the fixed
        # point is the same without an O(n) sort per rule set.
        self.worklist = collections.deque([node.name for node in graph if roots is None or node.op in roots])
        self.queued = set(self.worklist)
        self._cache: dict[str, list[Rule]] = {}

    def rules_for(self, op: str) -> list[Rule]:
        rules = self._cache.get(op)
        if rules is None:
            rules = self._cache[op] = [r for r in self.rules if r.root_ops is None or op in r.root_ops]
        return rules

    def queue(self, graph: Graph, names: Iterable[str]) -> None:
        """Queue those of `names` that are in the graph, not queued yet, and that a rule could root at."""
        queued, roots = self.queued, self.root_ops
        for name in names:
            node = None if name in queued else graph.get(name)
            if node is not None and (roots is None or node.op in roots):
                queued.add(name)
                self.worklist.append(name)


def apply_rules(graph: Graph, rules: Iterable[Rule], *, protected: Iterable[str] | None = None,
                limits: Limits | None = None, trace: bool = False,
                on_apply: Callable[[Application], None] | None = None) -> Report:
    """Rewrite `graph` in place until no rule matches; returns the report.

    `protected` names the graph's inputs and outputs (default: its placeholders and sinks).
    Raises RewriteError when a rule fails or the rules do not terminate.
    """
    limits = limits or Limits()
    if protected is None:
        protected = [n.name for n in graph.placeholders()] + [n.name for n in graph.sinks()]
    protected = frozenset(protected)
    rules = sorted(rules, key=lambda rule: -rule.priority)  # stable: in the order written within a priority
    levels = [_Level(list(same), graph) for _, same in itertools.groupby(rules, key=lambda rule: rule.priority)]
    report = Report(nodes_before=len(graph))
    max_rewrites = limits.max_rewrites if limits.max_rewrites is not None else 10 * len(graph) + 10_000
    limit_reason = StopReason.NO_FIXED_POINT if limits.max_rewrites is None else StopReason.REWRITE_LIMIT
    history: dict[str, list[str]] = collections.defaultdict(list)  # the rules fired at each node
    notes: dict[str, str] = {}
    clock = time.perf_counter
    seconds = report.seconds
    rewrites = 0  # report.rewrites, kept here: it is read before every try
    # The highest priority with nodes waiting is served; a rewrite queues its neighbourhood at every
    # priority, so a higher one may have work again.
    while level := next((each for each in levels if each.worklist), None):
        worklist, queued = level.worklist, level.queued
        while worklist:
            name = worklist.popleft()
            queued.discard(name)
            node = graph.get(name)
            if node is None:
                continue
            report.visits += 1
            for rule in level.rules_for(node.op):
                started = clock()
                at_limit = rewrites >= max_rewrites
                result = _try(graph, rule, node, protected, at_limit, notes)
                seconds[rule.name] += clock() - started
                if result is None:
                    continue
                if at_limit:  # one rewrite too many: it was undone, the graph holds exactly the limit
                    raise report.stopped(limit_reason, graph, rules, set(report.fires) | {rule.name}, max_rewrites)
                report.count(rule.name, result)
                rewrites += 1
                if trace or on_apply is not None:
                    application = Application.of(rule, name, result, graph)
                    if trace:
                        report.applications.append(application)
                    if on_apply is not None:
                        on_apply(application)
                fired, most = history[name], limits.max_rewrites_per_node
                fired.append(rule.name)
                if len(fired) > most:
                    raise report.stopped(StopReason.NODE_CYCLE, graph, rules, set(fired[-most:]), len(fired), name)
                around = _neighbourhood(graph, name, result)
                for each in levels:
                    each.queue(graph, around)
                break
            else:
                continue  # no rule rewrote the node
            if level is not levels[0]:
                break  # the higher priorities may have work again: they go first
    report.nodes_after = len(graph)
    report.notes = [f"'{name}': {reason}" for name, reason in notes.items() if name in graph]
    return report


def _try(graph: Graph, rule: Rule, node, protected, undo: bool, notes: dict[str, str]) -> RewriteResult | None:
    """Match and rewrite; with `undo`, only say whether a rewrite would happen (graph unchanged)."""
    if undo:
        with graph.transaction() as edits:
            result = _try(graph, rule, node, protected, False, notes)
            edits.undo()
        return result
    ctx = MatchContext(graph, rule.params, protected, notes)
    try:
        for bindings in match(rule.pattern, graph, node, ctx):
            ctx.bindings = dict(bindings)
            if rule.guard is None or rule.guard(ctx):
                result = rewrite(graph, rule.name, rule.actions, ctx, node)
                if result is not None:
                    return result
    except RewriteError as error:  # say where the rule is, unless the error does (a guard's does)
        if error.path is None:  # a search at its limit does not know the rule either
            named = f"rule '{rule.name}': {error.message}" if isinstance(error, MatchLimitError) else error.message
            error.message = f"{rule.location}: {named}" if rule.location else named
        raise
    return None


def _neighbourhood(graph: Graph, root: str, result: RewriteResult) -> dict[str, None]:
    """What the rewrite made or rewired, and the root, with their consumers and producers, in that
    order, once each (producers may name missing nodes in a graph loaded without validation)."""
    around = []
    for name in [*result.created, *sorted(result.touched), root]:
        node = graph.get(name)
        if node is not None:
            around += [name] + [c.name for c in graph.consumers(name)] + [ref.node for ref in node.inputs]
    return dict.fromkeys(around)
