"""The syntax tree of a .rules file: plain dataclasses, each with its source position."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Pos:
    """Where a construct starts in its file (1-based line and column)."""

    line: int
    column: int


# ---- expressions ----

@dataclass(frozen=True)
class Number:
    value: int | float
    pos: Pos


@dataclass(frozen=True)
class String:
    value: str
    pos: Pos


@dataclass(frozen=True)
class Bool:
    value: bool
    pos: Pos


@dataclass(frozen=True)
class Var:
    name: str
    pos: Pos


@dataclass(frozen=True)
class Port:
    """`name:3`, one output of a bound node."""

    name: str
    port: int
    pos: Pos


@dataclass(frozen=True)
class Call:
    """`func(args...)`: a function of the expression language."""

    func: str
    args: tuple["Expr", ...]
    pos: Pos


@dataclass(frozen=True)
class NoneValue:
    """`none` as an attr value of a copy or an edit: the attr is deleted."""

    pos: Pos


@dataclass(frozen=True)
class AttrItem:
    """`key: value` in an attr block; `(EXPR): value` names the attr by a string expression
    (`key` is None, `key_expr` the expression), and `(EXPR): value for var in items if condition`
    gives one such attr per element (`each` holds the loop)."""

    key: str | None
    value: "Expr"
    pos: Pos
    key_expr: "Expr | None" = None
    each: "AttrLoop | None" = None


@dataclass(frozen=True)
class AttrLoop:
    """The `for var in items if condition` of an attr block entry that names several attrs."""

    var: str
    items: "Expr"
    condition: "Expr | None"
    pos: Pos


@dataclass(frozen=True)
class NewNodeExpr:
    """`Op(args) {attrs}`: a node to create (in replacements and fixtures)."""

    op: str
    args: tuple["Expr", ...] | None
    attrs: tuple[AttrItem, ...]
    pos: Pos


@dataclass(frozen=True)
class CopyNode:
    """`conv(args) {attrs}`: a copy of a matched node, with new inputs and/or attrs."""

    var: str
    args: tuple["Expr", ...] | None
    attrs: tuple[AttrItem, ...]
    pos: Pos


@dataclass(frozen=True)
class Spread:
    """`xs...` as a template argument: the template is applied to each tensor of the list xs."""

    name: str
    pos: Pos


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    pos: Pos


@dataclass(frozen=True)
class BinOp:
    """Arithmetic (`+ - * / % **`) or comparison (`== != < <= > >= in`, `not in`)."""

    op: str
    left: "Expr"
    right: "Expr"
    pos: Pos


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    items: tuple["Expr", ...]
    pos: Pos


@dataclass(frozen=True)
class Unary:
    op: str  # "not" | "-"
    operand: "Expr"
    pos: Pos


@dataclass(frozen=True)
class Index:
    """`a[i]`: an element of a list or array, an array indexed by an array, or a map's value."""

    target: "Expr"
    index: "Expr"
    pos: Pos


@dataclass(frozen=True)
class Slice:
    """`a[start:stop]`, either bound left out."""

    target: "Expr"
    start: "Expr | None"
    stop: "Expr | None"
    pos: Pos


@dataclass(frozen=True)
class Conditional:
    """`then if condition else otherwise`."""

    then: "Expr"
    condition: "Expr"
    otherwise: "Expr"
    pos: Pos


@dataclass(frozen=True)
class Comprehension:
    """`[item for var in items if condition]`: a list built over a finite list."""

    item: "Expr"
    var: str
    items: "Expr"
    condition: "Expr | None"
    pos: Pos


@dataclass(frozen=True)
class MapExpr:
    """`{"Less": "GreaterEqual", ...}`: a constant lookup table, read with `table[key]`."""

    entries: tuple[tuple["Expr", "Expr"], ...]
    pos: Pos


Expr = Union[Number, String, Bool, NoneValue, Var, Port, Call, NewNodeExpr, CopyNode, ListExpr, BinOp, BoolOp,
             Conditional, Unary, Index, Slice, Comprehension, MapExpr]


# ---- patterns ----

@dataclass(frozen=True)
class NodePatternExpr:
    """`Op1|Op2(args) {attrs}`; `ops` None means any op, `args` None means any inputs. `shared`
    (written `shared Op(...)`): an inner node that the rest of the graph may read too."""

    ops: tuple[str, ...] | None
    args: tuple["PatternArg", ...] | None
    attrs: tuple[AttrItem, ...]
    pos: Pos
    shared: bool = False
    alternatives: tuple["NodePatternExpr", ...] = ()  # `A(x) or B(x)`: ops, args and attrs unused
    repeat: str | None = None  # `Op*(x)`, `Op+(x)`: a chain of such nodes, each reading the next


@dataclass(frozen=True)
class ArgVar:
    """A tensor variable: binds on first use, must be the same tensor after."""

    name: str
    pos: Pos


@dataclass(frozen=True)
class ArgPort:
    """`n:1`: output 1 of the node bound to n."""

    name: str
    port: int
    pos: Pos


@dataclass(frozen=True)
class ArgBound:
    """`w: Const`: bind w and require its producer to match a pattern."""

    name: str
    node: NodePatternExpr
    pos: Pos


@dataclass(frozen=True)
class ArgVariadic:
    """`xs...` or `xs...: Const`: all remaining inputs, each optionally matching a pattern."""

    name: str
    node: NodePatternExpr | None
    pos: Pos


@dataclass(frozen=True)
class ArgNested:
    """An anonymous nested pattern: `Relu(Conv2D(x, w))`."""

    node: NodePatternExpr
    pos: Pos


@dataclass(frozen=True)
class ArgLiteral:
    """A number: a Const whose every element equals it."""

    value: int | float
    pos: Pos


PatternArg = Union[ArgVar, ArgPort, ArgBound, ArgVariadic, ArgNested, ArgLiteral]


@dataclass(frozen=True)
class PatternStmt:
    var: str
    node: NodePatternExpr
    pos: Pos


@dataclass(frozen=True)
class Where:
    expr: Expr
    pos: Pos


@dataclass(frozen=True)
class Let:
    name: str
    expr: Expr
    pos: Pos


# ---- replacements ----

@dataclass(frozen=True)
class Target:
    """What a reroute replaces: a node (`n`), one output (`n:1`) or all outputs (`n:*`)."""

    name: str
    port: int | None  # None: the node as a whole
    all_ports: bool
    pos: Pos


@dataclass(frozen=True)
class RerouteStmt:
    target: Target
    expr: Expr
    pos: Pos


@dataclass(frozen=True)
class RemoveStmt:
    name: str
    pos: Pos


@dataclass(frozen=True)
class BindStmt:
    """`name = EXPR` after '=>': a node the replacement builds once and may read at several ports."""

    name: str
    expr: Expr
    pos: Pos


@dataclass(frozen=True)
class EditStmt:
    """`n {attrs}` after '=>': node n changed where it stands (its op, device and attrs)."""

    name: str
    attrs: tuple[AttrItem, ...]
    pos: Pos


Action = Union[RerouteStmt, RemoveStmt, BindStmt, EditStmt]


@dataclass(frozen=True)
class TemplateDecl:
    """`define name(params):` nodes a replacement builds by calling `name(...)`, or with
    `function`, `define name(params) = expr`: a value any expression can call for."""

    name: str
    params: tuple[str, ...]
    bindings: tuple["NodeStmt", ...]
    result: Expr
    pos: Pos
    function: bool = False


@dataclass(frozen=True)
class RuleDecl:
    name: str
    priority: int
    patterns: tuple[PatternStmt, ...]
    clauses: tuple[Union[Where, Let], ...]  # in source order: a guard may use an earlier let
    actions: tuple[Action, ...]
    pos: Pos


# ---- files ----

@dataclass(frozen=True)
class ParamDecl:
    name: str
    type: str
    is_list: bool
    default: Expr | None
    pos: Pos


@dataclass(frozen=True)
class StageRef:
    """`name` or `name(key=value, ...)`: a rule set called with arguments."""

    name: str
    kwargs: tuple[tuple[str, Expr], ...]
    pos: Pos


@dataclass(frozen=True)
class NodeStmt:
    var: str
    expr: Expr
    pos: Pos


@dataclass(frozen=True)
class Test:
    name: str
    using: StageRef | None
    given: tuple[NodeStmt, ...]
    expect: tuple[NodeStmt, ...]
    outputs: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True)
class Include:
    """`include name` in a rule set: the rules of an earlier rule set of the same file."""

    name: str
    pos: Pos


@dataclass(frozen=True)
class Ruleset:
    name: str
    params: tuple[ParamDecl, ...]
    rules: tuple[RuleDecl, ...]
    tests: tuple[Test, ...]
    pos: Pos
    includes: tuple[Include, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[StageRef, ...]
    pos: Pos


@dataclass(frozen=True)
class Import:
    target: str
    is_path: bool
    pos: Pos


@dataclass
class Module:
    """One parsed .rules file."""

    path: str
    source: str
    imports: list[Import] = field(default_factory=list)
    rules: list[RuleDecl] = field(default_factory=list)
    rulesets: list[Ruleset] = field(default_factory=list)
    pipelines: list[Pipeline] = field(default_factory=list)
    templates: list[TemplateDecl] = field(default_factory=list)
    tests: list[Test] = field(default_factory=list)
