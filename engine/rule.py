"""A compiled rule: plain data the driver dispatches and the matcher and rewriter run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .pattern import MatchContext, Pattern
from .rewrite import Action


@dataclass(frozen=True)
class Rule:
    """`name: pattern, where guard => actions`, with its priority and where it was written.

    `guard` runs the rule's `where` and `let` clauses in order: it returns False to reject a match
    and stores each `let` value in the context's bindings. `params` are the values of the rule
    set's parameters that the guard and the replacement read. `op_filter` says which root ops the
    guard lets through at its very first test (`where op(n) in [...]`): the ops themselves, or the
    name of the list parameter that holds them.
    """

    name: str
    pattern: Pattern
    guard: Callable[[MatchContext], bool] | None
    actions: tuple[Action, ...]
    priority: int = 0
    location: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    op_filter: tuple[str, ...] | str | None = None

    @property
    def root_ops(self) -> frozenset[str] | None:
        """The ops the root node may have (None: any op), for dispatch: other nodes are not even
        matched, which `remove_nodes(op=[...])` over every node of a big graph makes worth it."""
        ops = self.pattern.root_ops
        if self.op_filter is None:
            return ops
        allowed = self.params[self.op_filter] if isinstance(self.op_filter, str) else self.op_filter
        allowed = frozenset([allowed] if isinstance(allowed, str) else allowed)  # a str parameter: one op
        return allowed if ops is None else ops & allowed

    def with_params(self, params: dict[str, Any]) -> "Rule":
        return Rule(self.name, self.pattern, self.guard, self.actions, self.priority, self.location, params,
                    self.op_filter)
