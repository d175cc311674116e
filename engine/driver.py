"""Apply rules to a fixed point with an incremental worklist.

Rules are dispatched by the root node's op. After a rewrite only the nodes it created, the nodes
whose inputs it changed and their neighbours are looked at again. The run stops when nothing
matches (saturated) or at a limit; a node rewritten over and over names the rules that cycle.
"""
from __future__ import annotations

import collections
import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from gtt_rules.errors import RewriteError

from .graph import Graph
from .pattern import MatchContext, MatchLimitError, match
from .rewrite import RewriteResult, rewrite
from .rule import Rule


class StopReason(enum.StrEnum):
    """Why a run stopped, as egg names it: a fixed point, or the limit that ended it."""

    SATURATED = "saturated"              # no rule matches any more
    REWRITE_LIMIT = "rewrite limit"      # the caller's max_rewrites (--max-rewrites) was reached
    NO_FIXED_POINT = "no fixed point"    # the default limit, scaled to the graph: the rules do not terminate
    NODE_CYCLE = "node cycle"            # one node rewritten over and over
    PASS_DONE = "pass done"              # a whole-graph pass ran once


@dataclass
class Limits:
    """When to give up. `max_rewrites` None scales with the graph (10 per node + 10,000)."""

    max_rewrites: int | None = None
    max_rewrites_per_node: int = 64


@dataclass
class Application:
    """One rewrite, for --trace. A node both created and removed was replaced (it kept its name);
    `rewired` are existing nodes that read other tensors now."""

    rule: str
    location: str
    root: str
    created: list[str]
    removed: list[str]
    rewired: list[str] = field(default_factory=list)
    created_ops: dict[str, str] = field(default_factory=dict)  # op of each created node
    removed_ops: dict[str, str] = field(default_factory=dict)  # op each removed node had


@dataclass
class Report:
    """What a run did: fires and time per rule, node counts, why it stopped."""

    nodes_before: int = 0
    nodes_after: int = 0
    fires: collections.Counter = field(default_factory=collections.Counter)
    seconds: collections.Counter = field(default_factory=collections.Counter)
    visits: int = 0
    # Nodes the rewrites added, removed and replaced (kept the name, changed the node).
    added: int = 0
    removed: int = 0
    replaced: int = 0
    stop_reason: StopReason = StopReason.SATURATED
    applications: list[Application] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left as it was, and why

    @property
    def rewrites(self) -> int:
        return sum(self.fires.values())

    def to_json(self) -> dict:
        return {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "rewrites": self.rewrites,
            "visits": self.visits,
            "nodes_added": self.added,
            "nodes_removed": self.removed,
            "nodes_replaced": self.replaced,
            "stop_reason": self.stop_reason,
            "notes": self.notes,
            "rules": {name: {"fires": self.fires[name], "seconds": round(self.seconds[name], 6)}
                      for name in sorted(set(self.fires) | set(self.seconds))},
        }


class _Dispatch:
    """Rules by root op, highest priority first, then in the order they were written."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = [rule for _, rule in sorted(enumerate(rules), key=lambda item: (-item[1].priority, item[0]))]
        # The ops some rule can root at (None: any op): a set lookup per node, not a call.
        self.root_ops: frozenset[str] | None = None if any(r.root_ops is None for r in self.rules) \
            else frozenset().union(*(r.root_ops for r in self.rules))
        self._cache: dict[str, list[Rule]] = {}

    def rules_for(self, op: str) -> list[Rule]:
        rules = self._cache.get(op)
        if rules is None:
            rules = self._cache[op] = [r for r in self.rules if r.root_ops is None or op in r.root_ops]
        return rules


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
    dispatch = _Dispatch(rules)
    report = Report(nodes_before=len(graph))
    max_rewrites = limits.max_rewrites if limits.max_rewrites is not None else 10 * len(graph) + 10_000
    history: dict[str, list[str]] = collections.defaultdict(list)  # the rules fired at each node
    notes: dict[str, str] = {}

    # Only nodes some rule could root at are visited: the rest cost nothing per rule set. File
    # order, not topological order: frozen graphs are mostly sorted already, and a node visited
    # too early is visited again when a rewrite changes its neighbourhood, so the fixed point is
    # the same without an O(n) sort per rule set.
    roots = dispatch.root_ops
    worklist = collections.deque(node.name for node in graph if roots is None or node.op in roots)
    queued = set(worklist)
    clock = time.perf_counter
    seconds = report.seconds
    rewrites = 0  # report.rewrites, kept here: it is read before every try
    while worklist:
        name = worklist.popleft()
        queued.discard(name)
        node = graph.get(name)
        if node is None:
            continue
        report.visits += 1
        for rule in dispatch.rules_for(node.op):
            started = clock()
            at_limit = rewrites >= max_rewrites
            result = _try(graph, rule, node, protected, at_limit, notes)
            seconds[rule.name] += clock() - started
            if result is None:
                continue
            if at_limit:  # one rewrite too many: it was undone, the graph holds exactly the limit
                involved = set(report.fires) | {rule.name}
                if limits.max_rewrites is not None:
                    raise _stopped(report, StopReason.REWRITE_LIMIT, graph, dispatch, involved, f"stopped at the "
                                   f"rewrite limit of {max_rewrites:,} (max_rewrites) with rules still matching")
                raise _stopped(report, StopReason.NO_FIXED_POINT, graph, dispatch, involved,
                               f"the rules do not terminate ({report.rewrites} rewrites)")
            report.fires[rule.name] += 1
            rewrites += 1
            replaced = len(set(result.created).intersection(result.removed)) if result.created and result.removed else 0
            report.added += len(result.created) - replaced
            report.removed += len(result.removed) - replaced
            report.replaced += replaced
            if trace or on_apply is not None:
                application = Application(rule.name, rule.location, name, result.created, result.removed, sorted(
                    n for n in result.changed if n in graph and n not in result.created),
                    {n: graph[n].op for n in result.created}, result.removed_ops)
            if trace:
                report.applications.append(application)
            if on_apply is not None:
                on_apply(application)
            fired, most = history[name], limits.max_rewrites_per_node
            fired.append(rule.name)
            if len(fired) > most:
                raise _stopped(report, StopReason.NODE_CYCLE, graph, dispatch, set(fired[-most:]),
                               f"the rules do not terminate (node '{name}' was rewritten {len(fired)} times)")
            for again in _neighbourhood(graph, name, result):
                near = None if again in queued else graph.get(again)
                if near is not None and (roots is None or near.op in roots):
                    queued.add(again)
                    worklist.append(again)
            break
    report.nodes_after = len(graph)
    report.notes = [f"'{name}': {reason}" for name, reason in notes.items() if name in graph]
    return report


def _try(graph: Graph, rule: Rule, node, protected, undo: bool = False,
         notes: dict[str, str] | None = None) -> RewriteResult | None:
    """Match and rewrite; with `undo`, only say whether a rewrite would happen (graph unchanged)."""
    if undo:
        with graph.transaction() as edits:
            result = _try(graph, rule, node, protected, notes=notes)
            edits.undo()
        return result
    ctx = MatchContext(graph, rule.params, protected, notes)
    try:
        for bindings in match(rule.pattern, graph, node, ctx):
            ctx.bindings = dict(bindings)
            if rule.guard is not None and not rule.guard(ctx):
                continue
            try:
                result = rewrite(graph, rule.name, rule.actions, ctx, node)
            except RewriteError as error:
                error.message = f"{rule.location}: {error.message}" if rule.location else error.message
                raise
            if result is not None:
                return result
    except MatchLimitError as error:  # the search hit its limit: name the rule
        error.message = f"{rule.location}: rule '{rule.name}': {error.message}" if rule.location \
            else f"rule '{rule.name}': {error.message}"
        raise
    return None


def _neighbourhood(graph: Graph, root: str, result: RewriteResult) -> dict[str, None]:
    """What the rewrite made or rewired, and the root, with their consumers and producers, in that
    order (producers may name missing nodes in a graph loaded without validation)."""
    around = []
    for name in [*result.created, *sorted(result.touched), root]:
        node = graph.get(name)
        if node is not None:
            around.append(name)
            around += [c.name for c in graph.consumers(name)]
            around += [ref.node for ref in node.inputs]
    return dict.fromkeys(around)


def _stopped(report: Report, reason: StopReason, graph: Graph, dispatch: _Dispatch, rules: set[str],
             what: str) -> RewriteError:
    """The error that ends a run at a limit, carrying the report; it names each rule involved with
    the file and line it was written at, so that a loop can be found."""
    report.stop_reason, report.nodes_after = reason, len(graph)
    located = {rule.name: rule.location for rule in dispatch.rules if rule.name in rules}
    names = ", ".join(f"{name} ({located[name]})" if located.get(name) else name for name in sorted(rules))
    return RewriteError(f"{what}; rules involved: {names}", report=report)
