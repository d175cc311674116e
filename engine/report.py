"""What a run of the driver did: each rewrite (for --trace), the counts per rule, why it stopped."""
from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gtt_rules.errors import RewriteError

if TYPE_CHECKING:
    from .graph import Graph
    from .rewrite import RewriteResult
    from .rule import Rule


class StopReason(enum.StrEnum):
    """Why a run stopped, as egg names it: a fixed point, or the limit that ended it."""

    SATURATED = "saturated"              # no rule matches any more
    REWRITE_LIMIT = "rewrite limit"      # the caller's max_rewrites (--max-rewrites) was reached
    NO_FIXED_POINT = "no fixed point"    # the default limit, scaled to the graph: the rules do not terminate
    NODE_CYCLE = "node cycle"            # one node rewritten over and over
    PASS_DONE = "pass done"              # a whole-graph pass ran once


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

    @classmethod
    def of(cls, rule: Rule, root: str, result: RewriteResult, graph: Graph) -> Application:
        """The rewrite `rule` just made at `root`, as `graph` now holds it."""
        rewired = sorted(n for n in result.changed if n in graph and n not in result.created)
        return cls(rule.name, rule.location, root, result.created, result.removed, rewired,
                   {n: graph[n].op for n in result.created}, result.removed_ops)


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

    def count(self, rule: str, result: RewriteResult) -> None:
        """Add one rewrite by `rule` to the counts."""
        self.fires[rule] += 1
        replaced = len(set(result.created).intersection(result.removed)) if result.created and result.removed else 0
        self.added += len(result.created) - replaced
        self.removed += len(result.removed) - replaced
        self.replaced += replaced

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

    def stopped(self, reason: StopReason, graph: Graph, rules: list[Rule], involved: set[str], count: int,
                node: str = "") -> RewriteError:
        """The error that ends a run at a limit (`count` rewrites in all, or at `node`), carrying this
        report; it names each rule involved with the file and line it was written at, so that a
        loop can be found."""
        self.stop_reason, self.nodes_after = reason, len(graph)
        located = {rule.name: rule.location for rule in rules if rule.name in involved}
        names = ", ".join(f"{name} ({located[name]})" if located.get(name) else name for name in sorted(involved))
        return RewriteError(f"{_WHY[reason].format(count=count, node=node)}; rules involved: {names}", report=self)


_WHY = {
    StopReason.REWRITE_LIMIT: "stopped at the rewrite limit of {count:,} (max_rewrites) with rules still matching",
    StopReason.NO_FIXED_POINT: "the rules do not terminate ({count} rewrites)",
    StopReason.NODE_CYCLE: "the rules do not terminate (node '{node}' was rewritten {count} times)",
}
