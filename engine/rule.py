"""A compiled rule: the plain data the compiler builds, the driver dispatches and the matcher
(engine/pattern.py) and the rewriter (engine/rewrite.py) run.

A rule is a pattern (its left-hand side: node patterns with their inputs and attrs), a guard,
and actions (its right-hand side: reroutes, removals, named nodes and edits, built from
producers). Expressions are compiled to callables over the match context.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Union

if TYPE_CHECKING:
    from .pattern import MatchContext

# A check or value computed from the match so far (compiled from a rule's expression).
Expression = Callable[["MatchContext"], Any]


# ---- the left-hand side ----

@dataclass(frozen=True)
class AttrPattern:
    """`{key: value}` on a node pattern: bind `var` to the attr, or require it to equal `expected`."""

    key: str
    var: str | None = None
    expected: Expression | None = None


@dataclass(frozen=True)
class NodePattern:
    """A node: which ops, what inputs, which attrs. `ops` None matches any op; `inputs` None, any inputs."""

    ops: frozenset[str] | None
    inputs: tuple["InputPattern", ...] | None = None
    attrs: tuple[AttrPattern, ...] = ()
    commutative: frozenset[str] = frozenset()  # ops whose two inputs may match swapped
    variadic: int | None = None  # index of the input pattern that takes a run of inputs (`xs...`)
    shared: bool = False  # an inner node the rest of the graph may read too (`shared Op(...)`)
    alternatives: tuple["NodePattern", ...] = ()  # `A(x) or B(x)`: matches what one of them matches
    # `Op*(x)` ("*" or "+"): zero or more (one or more) such nodes, each reading the next through
    # its first input, the last reading what `inputs[0]` matches; `chain_var` binds them as a list.
    repeat: str | None = None
    chain_var: str | None = None

    def walk(self):
        """This node pattern and every node pattern inside it (alternatives, inputs' patterns)."""
        yield self
        for nested in (*self.alternatives, *(i.node for i in self.inputs or () if i.node is not None)):
            yield from nested.walk()

    @cached_property
    def checks_attrs(self) -> bool:
        """Some attr of this node (nested ones aside) is compared with an expression: checked once
        the whole pattern has matched, as it may read names bound anywhere in it."""
        return any(a.expected is not None for a in self.attrs)

    @cached_property
    def bound_names(self) -> frozenset[str]:
        """Every name this node pattern binds, nested ones included (tensors, lists, attrs, shared
        statements)."""
        return frozenset(name for n in self.walk() for name in (
            *(a.var for a in n.attrs), *(v for want in n.inputs or () for v in (want.var, want.node_var)),
            n.chain_var) if name)

    @cached_property
    def memo_names(self) -> tuple[str, ...] | None:
        """The names all its match depends on besides the graph, for the matcher's memo of failed
        tries; None if it reads a shared statement, whose names are elsewhere."""
        if any(want.node_var is not None for n in self.walk() for want in n.inputs or ()):
            return None
        return tuple(sorted(self.bound_names))

    @cached_property
    def link(self) -> "NodePattern":
        """One node of a chain (`repeat`): its ops and attrs, any inputs."""
        return NodePattern(self.ops, attrs=self.attrs)

    def matched_ops(self) -> frozenset[str] | None:
        """The ops this node pattern can match (None: any)."""
        if not self.alternatives:
            return self.ops
        each = [a.matched_ops() for a in self.alternatives]
        return None if None in each else frozenset().union(*each)


@dataclass(frozen=True)
class InputPattern:
    """One input of a node pattern.

    - `var`: the name the input tensor binds to (or must equal, once bound).
    - `port`: the input must be this output of its producer.
    - `node`: a pattern the producer must match; `node_var` names a shared pattern statement
      (a DAG pattern): it is matched once, then every later use must be the same node.
    - `literal`: the producer is a Const whose elements all equal this number, and whose broadcast
      cannot change what the node computes (see `engine.pattern._literal_matches`).
    """

    var: str | None = None
    port: int | None = None
    node: NodePattern | None = None
    node_var: str | None = None
    literal: float | None = None


@dataclass(frozen=True)
class Pattern:
    """A rule's whole left-hand side: the root statement and the named statements it uses.

    `further` are the other roots (lines nothing in the pattern reads), in the order written, each
    with the names it reads that the lines before it bind: it is looked for among their readers."""

    root_var: str
    statements: dict[str, NodePattern]
    private: bool = True  # inner nodes are private (the rule builds nodes that would duplicate them)
    further: tuple[tuple[str, tuple[str, ...]], ...] = ()
    root_ops: frozenset[str] | None = field(init=False)
    checks_attrs: bool = field(init=False)  # some attr is compared with an expression
    searches: bool = field(init=False)  # a commutative node may be tried again: memo and bound it
    checks_privacy: bool = field(init=False)  # some node is matched through its inputs (inner)

    def __post_init__(self):
        root = self.statements[self.root_var]
        walked = [(var, n) for var, s in self.statements.items() for n in s.walk()]
        object.__setattr__(self, "root_ops", root.matched_ops())
        object.__setattr__(self, "checks_attrs", any(n.checks_attrs for _, n in walked))
        # One commutative node, and no alternative or variadic run before it to try it again, is
        # tried once per root: the memo would only cost.
        commutative = sum(1 for _, n in walked if n.commutative)
        object.__setattr__(self, "searches", commutative > 1 or commutative == 1 and any(
            n.alternatives or n.variadic is not None for _, n in walked))
        object.__setattr__(self, "checks_privacy", self.private and any(
            n.inputs is not None and (var != self.root_var or n is not root) for var, n in walked))


# ---- the right-hand side ----

@dataclass(frozen=True)
class TensorOf:
    """An existing tensor: what `var` is bound to, or output `port` of the node bound to `var`."""

    var: str
    port: int | None = None


# What a copy may change besides attrs and inputs: `n {op: "Relu6"}`, `n {device: "/cpu:0"}`; an
# edit also what its node waits on (`n {control_inputs: []}`); a new node or a copy its name
# (`{name: name(n) + "/x"}`).
NODE_FIELDS = ("op", "device", "control_inputs", "name")


class _Delete:
    def __repr__(self) -> str:
        return "none"


# The value of an attr that a copy or an edit deletes (`n {key: none}`).
DELETE = _Delete()

# In place of an attr's name: the expression gives a list of (name, value) pairs, one per element
# of `(EXPR): value for x in xs`.
EACH = object()


@dataclass(frozen=True)
class NewNode:
    """A node to create. With `copy_of`, a copy of that matched node: same op, attrs and inputs
    unless given here; `fields` compute its op or device (NODE_FIELDS). A copy as another op
    keeps only the attrs that op declares (all of them if the registry does not know the op).
    An attr's name may be computed too (an Expression, not a str), and a value DELETE drops it;
    with the name EACH, the expression gives a list of (name, value) pairs."""

    op: str | None
    inputs: tuple["Producer", ...] | None
    attrs: tuple[tuple[str | Expression, Expression], ...] = ()
    copy_of: str | None = None
    fields: tuple[tuple[str, Expression], ...] = ()


@dataclass(frozen=True)
class ConstNode:
    """A Const computed from the match; a list value makes one Const per output (`n:* -> ...`)."""

    value: Expression
    dtype: Expression | None = None
    name: Expression | None = None


@dataclass(frozen=True)
class Bound:
    """A node the replacement binds by name (`q = QuantizeV2(...)`), or one of its outputs (`q:1`).

    Built once however often it is read; a binding to a list (`qs = eight_bit(xs...)`) reads as the
    list of its nodes' outputs."""

    name: str
    port: int | None = None


@dataclass(frozen=True)
class Template:
    """A compiled `define`: parameters, named nodes built when first read, and the result."""

    name: str
    params: tuple[str, ...]
    bindings: tuple[tuple[str, "Producer"], ...]
    result: "Producer"


@dataclass(frozen=True)
class Expand:
    """A template call. With `spread`, that argument is a list and the template is applied to each
    of its tensors, giving a list."""

    template: Template
    args: tuple["Producer", ...]
    spread: int | None = None


@dataclass(frozen=True)
class Each:
    """`[SOURCE for var in xs if c]`: SOURCE built once per element `items` keeps, with `var`
    bound to it; a list."""

    var: str
    items: Expression
    element: "Producer"


Producer = Union[TensorOf, NewNode, ConstNode, Bound, Expand, Each]


@dataclass(frozen=True)
class Reroute:
    """`var -> source`, `var:port -> source` or `var:* -> source`."""

    var: str
    port: int | None
    all_ports: bool
    source: Producer


@dataclass(frozen=True)
class Remove:
    """`remove var`: delete a node whose consumers the rule rerouted."""

    var: str


@dataclass(frozen=True)
class Bind:
    """`name = SOURCE` after '=>': names a node for the other actions to read."""

    name: str
    source: Producer


@dataclass(frozen=True)
class Edit:
    """`n {attrs}` after '=>': node n becomes what `change` (a copy of n, without new inputs)
    describes, where it stands: its name, inputs and control edges stay."""

    var: str
    change: NewNode


Action = Union[Reroute, Remove, Bind, Edit]


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
        """This rule reading the rule set's parameters `params`."""
        return replace(self, params=params)
