"""Expressions: compiling one to a function of the match context (with its kind, checked
statically), and the run-time helpers those functions call: three-valued logic, arithmetic,
indexing, slicing and comparison.

ExpressionCompiler is the base class of the rules Compiler rather than an object it holds: both
report into one error list against one source file, and rule and replacement code reads
expressions at every turn (`self.value`), which a delegate would only lengthen.
"""
from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from gtt_rules.engine.dtypes import parse_dtype
from gtt_rules.engine.graph import TensorRef
from gtt_rules.engine.pattern import MatchContext
from gtt_rules.errors import RewriteError, RulesCheckError
from gtt_rules.grammar import ast

from .functions import LANGUAGE, MAX_LIST_LENGTH, UNKNOWN, NotApplicable, OutputRef, is_unknown, tensor_value
from .registry import Registry


@dataclass
class Scope:
    """Names visible in a rule and what kind of thing each is."""

    statements: dict[str, ast.PatternStmt] = field(default_factory=dict)
    tensors: dict[str, ast.Pos] = field(default_factory=dict)
    lists: dict[str, ast.Pos] = field(default_factory=dict)
    attrs: dict[str, ast.Pos] = field(default_factory=dict)
    lets: dict[str, str] = field(default_factory=dict)       # name -> kind
    params: dict[str, str] = field(default_factory=dict)     # name -> kind
    built: dict[str, str] = field(default_factory=dict)      # replacement nodes: "node" | "nodes"
    kept: set[str] = field(default_factory=set)              # pattern names the replacement reads

    def kind_of(self, name: str) -> str | None:
        if name in self.built:
            return self.built[name]
        if name in self.statements or name in self.tensors:
            return "tensor"
        if name in self.lists:
            return "list"
        if name in self.attrs:
            return "any"
        if name in self.lets:
            return self.lets[name]
        if name in self.params:
            return self.params[name]
        return None

    def names(self) -> list[str]:
        return [*self.statements, *self.tensors, *self.lists, *self.attrs, *self.lets, *self.params,
                *self.built]


def dtype_constant(name: str) -> int | None:
    try:
        return parse_dtype(name)
    except ValueError:
        return None


class ExpressionCompiler:
    """Compiles the expressions of one module, calling the functions of `registry` (default: the
    language's own and those registered with register_function); collects every check error
    instead of stopping at the first."""

    def __init__(self, module: ast.Module, registry: Registry | None = None):
        self.module = module
        self.functions = (registry if registry is not None else LANGUAGE).functions
        self.errors: list[RulesCheckError] = []
        self.templates: dict[str, ast.TemplateDecl] = {}  # `define`s, templates and functions alike
        self.inlining: list[str] = []  # the functions whose bodies are being compiled, outermost first
        self.bodies: dict[tuple, tuple[Callable[[MatchContext], Any], str]] = {}  # (name, argument kinds)

    # -- errors --

    def error(self, pos: ast.Pos, message: str, hint: str | None = None) -> None:
        error = RulesCheckError(message, path=self.module.path, line=pos.line, column=pos.column,
                                source=self.module.source, hint=hint)
        # The branches of a conditional replacement are checked as rules of one pattern: once each.
        if str(error) not in (str(e) for e in self.errors):
            self.errors.append(error)

    def _suggest(self, name: str, choices) -> str | None:
        close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
        return f"did you mean '{close[0]}'?" if close else None

    # -- expressions --

    def constant(self, expr: ast.Expr) -> Any:
        """The value of an expression that needs no match (parameter defaults, stage arguments)."""
        fn, _ = self.value(expr, Scope())
        try:
            # numpy would print its overflow and divide-by-zero warnings; the inf or nan they
            # produce is reported (or used) like any other value instead.
            with np.errstate(all="ignore"):
                return fn(None)
        except Exception as error:
            self.error(expr.pos, f"cannot compute this value: {error}")
            return None

    def value(self, expr: ast.Expr, scope: Scope) -> tuple[Callable[[MatchContext], Any], str]:
        """Compile an expression to a function of the match context, and infer its kind."""
        if isinstance(expr, ast.Number):
            v = expr.value
            return (lambda ctx: v), "value"
        if isinstance(expr, ast.String):
            s = expr.value
            return (lambda ctx: s), "string"
        if isinstance(expr, ast.Bool):
            b = expr.value
            return (lambda ctx: b), "bool"
        if isinstance(expr, ast.NoneValue):
            self.error(expr.pos, "'none' deletes an attr: it is only the value of an attr of a copy or an edit")
            return (lambda ctx: None), "any"
        if isinstance(expr, ast.Var):
            return self._var(expr, scope)
        if isinstance(expr, ast.Port):
            name, port = expr.name, expr.port
            if scope.kind_of(name) != "tensor":
                self.error(expr.pos, f"'{name}' is not a node of the pattern")
            return (lambda ctx: OutputRef(ctx.bindings[name].node, port)), "tensor"
        if isinstance(expr, ast.ListExpr):
            fns = [self.value(item, scope)[0] for item in expr.items]
            return (lambda ctx: [f(ctx) for f in fns]), "list"
        if isinstance(expr, ast.Call):
            return self._call(expr, scope)
        if isinstance(expr, (ast.NewNodeExpr, ast.CopyNode)):
            self.error(expr.pos, "a node can only be built in a replacement (after '=>')")
            return (lambda ctx: None), "any"
        if isinstance(expr, ast.BoolOp):
            fns = [self.value(item, scope)[0] for item in expr.items]
            if expr.op == "and":
                return (lambda ctx: _kleene(fns, ctx, False)), "bool"
            return (lambda ctx: _kleene(fns, ctx, True)), "bool"
        if isinstance(expr, ast.Unary):
            fn, kind = self.value(expr.operand, scope)
            if expr.op == "not":
                return (lambda ctx: _kleene_not(_truth(fn, ctx))), "bool"
            self._want_value(expr.operand, kind, "-")
            return (lambda ctx: _arithmetic(operator.neg, _num(ctx, fn(ctx)))), "value"
        if isinstance(expr, ast.Index):
            target, kind = self.value(expr.target, scope)
            index, index_kind = self.value(expr.index, scope)
            if kind in ("dtype", "bool"):
                self.error(expr.target.pos, f"type error: a {kind} cannot be indexed")
            # An array indexed by an array (`value(p)[value(q)]`) is an array, as in numpy.
            return (lambda ctx: _index(ctx, target(ctx), index(ctx))), "any"
        if isinstance(expr, ast.Slice):
            return self._slice(expr, scope)
        if isinstance(expr, ast.Comprehension):
            return self._comprehension(expr, scope)
        if isinstance(expr, ast.MapExpr):
            return self._map(expr, scope)
        if isinstance(expr, ast.BinOp):
            return self._binop(expr, scope)
        if isinstance(expr, ast.Conditional):
            return self._conditional(expr, scope)
        if isinstance(expr, ast.Spread):
            self.error(expr.pos, f"'{expr.name}...' can only be an argument of a template call")
            return (lambda ctx: None), "any"
        raise AssertionError(f"unknown expression {expr!r}")

    def _slice(self, expr: ast.Slice, scope: Scope):
        target, kind = self.value(expr.target, scope)
        if kind in ("string", "dtype", "bool"):
            self.error(expr.target.pos, f"type error: a {kind} cannot be sliced")
        bounds = []
        for bound in (expr.start, expr.stop):
            if bound is None:
                bounds.append(lambda ctx: None)
                continue
            fn, bound_kind = self.value(bound, scope)
            self._want_value(bound, bound_kind, "[:]")
            bounds.append(fn)
        start, stop = bounds
        return (lambda ctx: _slice(ctx, target(ctx), start(ctx), stop(ctx))), \
            "list" if kind in ("list", "tensor", "value") else "any"

    def _comprehension(self, expr: ast.Comprehension, scope: Scope):
        return self.loop(expr.var, expr.items, expr.condition, expr.pos, scope,
                         lambda: self.value(expr.item, scope)[0]), "list"

    def loop(self, name: str, items_expr: ast.Expr, condition_expr: ast.Expr | None, pos: ast.Pos,
             scope: Scope, compile_item: Callable[[], Callable[[MatchContext], Any]], var_kind: str = "any"):
        """`for name in items if condition`: a function of the context giving the list of the
        item's values, one per element kept; compile_item compiles the item with `name` in scope
        (as a `var_kind`). Bounded by MAX_LIST_LENGTH; UNKNOWN if the list or a condition is."""
        items, kind = self.value(items_expr, scope)
        if kind in ("string", "dtype", "bool"):
            self.error(items_expr.pos, f"type error: 'for' needs a list to go over, not a {kind}")
        if scope.kind_of(name) is not None or dtype_constant(name) is not None:
            self.error(pos, f"'{name}' is already bound; the loop needs a name of its own")
            return lambda ctx: None
        scope.lets[name] = var_kind  # visible in the item and the condition only
        try:
            item = compile_item()
            condition = self.value(condition_expr, scope)[0] if condition_expr is not None else None
        finally:
            del scope.lets[name]

        def build(ctx):
            values = items(ctx)
            if values is UNKNOWN:
                return UNKNOWN
            values = _elements(ctx, values)
            out, outer = [], ctx.bindings.get(name, _ABSENT)  # a function's loop may reuse its caller's name
            try:
                for value in values:
                    ctx.bindings[name] = value
                    if condition is not None:
                        keep = _truth(condition, ctx)
                        if keep is UNKNOWN:
                            return UNKNOWN
                        if not keep:
                            continue
                    out.append(item(ctx))
            finally:
                _restore(ctx.bindings, name, outer)
            return out
        return build

    def _map(self, expr: ast.MapExpr, scope: Scope):
        table = {}
        for key, entry in expr.entries:
            if not isinstance(key, (ast.String, ast.Number)):
                self.error(key.pos, "a map's keys are strings or numbers")
                continue
            if key.value in table:
                self.error(key.pos, f"key {key.value!r} is given twice")
            table[key.value] = self.value(entry, scope)[0]
        return (lambda ctx: {key: fn(ctx) for key, fn in table.items()}), "any"

    def _var(self, expr: ast.Var, scope: Scope):
        name = expr.name
        if name in scope.built:
            self.error(expr.pos, f"'{name}' is a node the replacement builds: it can be an input of a "
                                 f"node, but has no value to compute with")
            return (lambda ctx: None), "any"
        kind = scope.kind_of(name)
        if kind is not None:
            if name in scope.params and name not in scope.lets:
                return (lambda ctx: ctx.params[name]), kind
            return (lambda ctx: ctx.bindings[name]), kind
        dtype = dtype_constant(name)
        if dtype is not None:
            return (lambda ctx: dtype), "dtype"
        self.error(expr.pos, f"unbound name '{name}'", self._suggest(name, scope.names()))
        return (lambda ctx: None), "any"

    def _call(self, expr: ast.Call, scope: Scope):
        if scope.kind_of(expr.func) == "tensor":
            self.error(expr.pos, f"'{expr.func}(...)' copies a node, which only a replacement can do")
            return (lambda ctx: None), "any"
        if expr.func in self.templates:
            return self._function(expr, scope)
        function = self.functions.get(expr.func)
        if function is None:
            self.error(expr.pos, f"unknown function '{expr.func}'", self._suggest(expr.func, self.functions))
            return (lambda ctx: None), "any"
        low, high = function.arity
        if not low <= len(expr.args) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            self.error(expr.pos, f"{expr.func}() takes {want} argument{'s' if high != 1 else ''}, "
                                 f"not {len(expr.args)}")
        compiled = []
        for arg, want in zip(expr.args, function.args):
            fn, kind = self.value(arg, scope)
            if not _compatible(kind, want):
                self.error(arg.pos, f"type error: {expr.func}() wants a {want} here, not a {kind}")
            if want == "value" and kind in ("tensor", "any"):
                fn = (lambda f: lambda ctx: tensor_value(ctx, f(ctx)))(fn)  # a Const's value, not its name
            compiled.append(fn)
        return (_caller(function.impl, compiled, function.needs_context, not function.accepts_unknown),
                function.returns)

    def _function(self, expr: ast.Call, scope: Scope):
        """A call of a `define`d function: its body, compiled for the kinds of these arguments,
        run with its parameters bound to their values (and nothing else of the caller's in sight)."""
        definition = self.templates[expr.func]
        if not definition.function:
            self.error(expr.pos, f"'{expr.func}' is a template: it builds nodes, which only a replacement can do",
                       f"a function is written 'define {expr.func}(...) = expression'")
            return (lambda ctx: None), "any"
        if len(expr.args) != len(definition.params):
            want = len(definition.params)
            self.error(expr.pos, f"{expr.func}() takes {want} argument{'s' if want != 1 else ''}, not {len(expr.args)}")
            return (lambda ctx: None), "any"
        if expr.func in self.inlining:
            chain = " -> ".join(self.inlining[self.inlining.index(expr.func):] + [expr.func])
            self.error(expr.pos, f"'{expr.func}' calls itself ({chain}): a function cannot be recursive")
            return (lambda ctx: None), "any"
        args = [self.value(arg, scope) for arg in expr.args]
        key = (expr.func, *(k for _, k in args))  # the body reads nothing but its parameters
        if key not in self.bodies:
            self.inlining.append(expr.func)
            try:
                self.bodies[key] = self.value(definition.result, Scope(lets=dict(zip(definition.params, key[1:]))))
            finally:
                self.inlining.pop()
        body, kind = self.bodies[key]
        params, fns = definition.params, [fn for fn, _ in args]

        def call(ctx):
            bindings = ctx.bindings
            values = [fn(ctx) for fn in fns]
            saved = [bindings.get(p, _ABSENT) for p in params]
            bindings.update(zip(params, values))
            try:
                return body(ctx)
            finally:
                for p, old in zip(params, saved):
                    _restore(bindings, p, old)
        return call, kind

    def _conditional(self, expr: ast.Conditional, scope: Scope, branch=None):
        """`a if c else b`; `branch` compiles a and b (default: as values)."""
        branch = branch or self.value
        then, then_kind = branch(expr.then, scope)
        condition = self.value(expr.condition, scope)[0]
        otherwise, otherwise_kind = branch(expr.otherwise, scope)

        def choose(ctx):
            holds = _truth(condition, ctx)
            return UNKNOWN if holds is UNKNOWN else then(ctx) if holds else otherwise(ctx)
        return choose, then_kind if then_kind == otherwise_kind else "any"

    def _want_value(self, expr: ast.Expr, kind: str, op: str) -> None:
        if kind in ("string", "dtype", "list"):
            self.error(expr.pos, f"type error: '{op}' needs numbers or tensors, not a {kind}")

    def _binop(self, expr: ast.BinOp, scope: Scope):
        left, lkind = self.value(expr.left, scope)
        right, rkind = self.value(expr.right, scope)
        op = expr.op
        if op == "+" and lkind == "list" and rkind == "list":  # lists concatenate
            return (lambda ctx: _concatenate(left(ctx), right(ctx))), "list"
        if op == "+" and "string" in (lkind, rkind) and {lkind, rkind} <= {"string", "any"}:  # and so do strings
            return (lambda ctx: _arithmetic(operator.add, left(ctx), right(ctx))), "string"
        if op in ("+", "-", "*", "/", "%", "**"):
            self._want_value(expr.left, lkind, op)
            self._want_value(expr.right, rkind, op)
            fn = _ARITHMETIC[op]
            return _binary_arithmetic(fn, left, right), "value"
        if op in ("in", "not in"):
            if rkind not in ("list", "any"):
                self.error(expr.right.pos, f"type error: '{op}' needs a list on its right, not a {rkind}")
            if op == "not in":
                return (lambda ctx: _kleene_not(_member(left(ctx), right(ctx)))), "bool"
            return (lambda ctx: _member(left(ctx), right(ctx))), "bool"
        if op in ("<", "<=", ">", ">="):
            self._want_value(expr.left, lkind, op)
            self._want_value(expr.right, rkind, op)
        fn = _COMPARISON[op]
        return (lambda ctx: _compare(ctx, fn, left(ctx), right(ctx))), "bool"


_ABSENT = object()  # a name the caller had not bound


def _restore(bindings: dict, name: str, old: Any) -> None:
    if old is _ABSENT:
        bindings.pop(name, None)
    else:
        bindings[name] = old


_ARITHMETIC = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide, "%": np.mod, "**": np.power,
}
_COMPARISON = {
    "==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater,
    ">=": np.greater_equal,
}
_PYTHON_COMPARISON = {
    np.equal: operator.eq, np.not_equal: operator.ne, np.less: operator.lt,
    np.less_equal: operator.le, np.greater: operator.gt, np.greater_equal: operator.ge,
}
_EQUALITY = (np.equal, np.not_equal)  # the comparisons strings take; they are not ordered
_SCALARS = frozenset((int, float, np.int32, np.int64, np.float32, np.float64))  # compared as Python does


def _compatible(kind: str, want: str) -> bool:
    if want == "any" or kind == "any" or kind == want:
        return True
    if want == "value":
        return kind in ("tensor", "bool", "list")
    if want == "bool":
        return kind == "value"
    return False


def _truthy(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return bool(value.all())
    return bool(value)


# Three-valued (Kleene) logic: an operand that is unknown, or that asks what does not hold for
# this match (NotApplicable: the value of a non-Const), decides nothing on its own.

def _truth(fn, ctx) -> Any:
    """True, False or UNKNOWN."""
    try:
        value = fn(ctx)
    except NotApplicable:
        return UNKNOWN
    if value is True or value is False or value is UNKNOWN:  # most guards: no conversion
        return value
    return _truthy(value)


def _kleene(fns, ctx, decisive: bool) -> Any:
    """`and` (decisive False) or `or` (decisive True) of the guards: the first decisive operand
    decides; otherwise an unknown one leaves the result unknown."""
    result = not decisive
    for fn in fns:
        value = _truth(fn, ctx)
        if value is decisive:
            return decisive
        if value is UNKNOWN:
            result = UNKNOWN
    return result


def _kleene_not(value: Any) -> Any:
    return UNKNOWN if value is UNKNOWN else not _truthy(value)


def _kleene_all(values) -> Any:
    result = True
    for value in values:
        if value is UNKNOWN:
            result = UNKNOWN
        elif not _truthy(value):
            return False
    return result


def _caller(impl: Callable[..., Any], args: list, needs_context: bool, strict: bool) -> Callable[[MatchContext], Any]:
    """`impl` called on the values of `args` (and the context first, if it needs it); if `strict`,
    an argument that is (or holds) UNKNOWN makes the result unknown without a call. Guards run
    on every node a rule is tried at, so the common arities get a closure of their own."""
    if len(args) == 1:
        (a,) = args

        def call_one(ctx):
            x = a(ctx)
            if strict and is_unknown(x):
                return UNKNOWN
            return impl(ctx, x) if needs_context else impl(x)
        return call_one
    if len(args) == 2:
        a, b = args

        def call_two(ctx):
            x, y = a(ctx), b(ctx)
            if strict and (is_unknown(x) or is_unknown(y)):
                return UNKNOWN
            return impl(ctx, x, y) if needs_context else impl(x, y)
        return call_two

    def call(ctx):
        values = [f(ctx) for f in args]
        if strict and any(is_unknown(v) for v in values):
            return UNKNOWN
        return impl(ctx, *values) if needs_context else impl(*values)
    return call


def _num(ctx, value: Any) -> Any:
    value = tensor_value(ctx, value)
    if is_unknown(value):
        return UNKNOWN
    return np.asarray(value) if isinstance(value, list) else value


def _arithmetic(fn, *operands) -> Any:
    return UNKNOWN if any(x is UNKNOWN for x in operands) else fn(*operands)


def _binary_arithmetic(fn, left, right):
    """`_arithmetic` of two operands, without the packing: it runs in every computed value."""
    def arithmetic(ctx):
        x, y = _num(ctx, left(ctx)), _num(ctx, right(ctx))
        return UNKNOWN if x is UNKNOWN or y is UNKNOWN else fn(x, y)
    return arithmetic


def _elements(ctx, items: Any) -> list:
    """The elements of a list, an array (along its first axis) or a Const-bound tensor."""
    if isinstance(items, TensorRef):
        items = tensor_value(ctx, items)
    if isinstance(items, np.ndarray):
        if items.ndim == 0:
            raise ValueError("cannot go over a scalar")
        items = list(items)
    elif not isinstance(items, (list, tuple)):
        raise ValueError(f"cannot go over {items!r}")
    if len(items) > MAX_LIST_LENGTH:
        raise ValueError(f"a loop over {len(items):,} elements (at most {MAX_LIST_LENGTH:,})")
    return list(items)


def _index(ctx, target: Any, index: Any) -> Any:
    if type(index) is int and type(target) in (list, tuple):  # the common `shape(x)[-1]`
        try:
            return target[index]
        except IndexError:
            raise NotApplicable(f"index {index} is out of range") from None
    if target is UNKNOWN or is_unknown(index):
        return UNKNOWN
    if isinstance(target, dict):
        key = index.decode("utf-8", "replace") if isinstance(index, bytes) else index
        key = key.item() if isinstance(key, np.generic) else key
        if isinstance(key, (list, np.ndarray)) or key not in target:
            raise NotApplicable(f"{index!r} is not a key of the map")
        return target[key]
    if isinstance(target, TensorRef):
        target = tensor_value(ctx, target)
    if isinstance(index, TensorRef):
        index = tensor_value(ctx, index)
    try:
        if np.ndim(index) > 0:  # an array indexed by an array: the elements at those positions
            positions = np.asarray(index)
            if positions.dtype.kind not in "iu":
                raise ValueError(f"indices must be whole numbers, not {positions.dtype}")
            if isinstance(target, (list, tuple)):
                return [target[int(i)] for i in positions.reshape(-1)]
            return np.asarray(target)[positions]
        return target[int(index)]
    except IndexError:
        raise NotApplicable(f"index {index} is out of range") from None


def _slice(ctx, target: Any, start: Any, stop: Any) -> Any:
    if target is UNKNOWN or start is UNKNOWN or stop is UNKNOWN:
        return UNKNOWN
    if isinstance(target, TensorRef):
        target = tensor_value(ctx, target)
    cut = slice(None if start is None else int(start), None if stop is None else int(stop))
    return list(target[cut]) if isinstance(target, tuple) else target[cut]


def _concatenate(a: Any, b: Any) -> Any:
    if a is UNKNOWN or b is UNKNOWN:
        return UNKNOWN
    return [*(a.tolist() if isinstance(a, np.ndarray) else a), *(b.tolist() if isinstance(b, np.ndarray) else b)]


def _member(item: Any, items: Any) -> Any:
    if item is UNKNOWN or items is UNKNOWN:
        return UNKNOWN
    if isinstance(item, bytes):
        item = item.decode("utf-8", "replace")
    known = [x for x in items if x is not UNKNOWN]
    if item in known:
        return True
    return UNKNOWN if len(known) < len(items) else False


def _compare(ctx, fn, a: Any, b: Any) -> Any:
    if type(a) in _SCALARS and type(b) in _SCALARS:  # `size(w) >= 1024`, a dim against a product of dims
        return _PYTHON_COMPARISON[fn](a, b)
    if type(a) is str and type(b) is str:  # `op(n) == "Relu"`; strings are not ordered
        return _PYTHON_COMPARISON[fn](a, b) if fn in _EQUALITY else False
    if a is UNKNOWN or b is UNKNOWN:
        return UNKNOWN
    if isinstance(a, TensorRef) and isinstance(b, TensorRef):
        return fn(0 if a == b else 1, 0) if fn in (np.equal, np.not_equal) else False
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)):
        a = a.decode() if isinstance(a, bytes) else a
        b = b.decode() if isinstance(b, bytes) else b
        return bool(fn(0 if a == b else 1, 0)) if fn in (np.equal, np.not_equal) else False
    a, b = tensor_value(ctx, a), tensor_value(ctx, b)
    if is_unknown(a) or is_unknown(b):
        return _compare_partial(fn, a, b)
    if fn in (np.equal, np.not_equal) and (isinstance(a, (list, tuple)) or isinstance(b, (list, tuple))):
        # A shape or list compares as a whole: equal shapes and equal elements.
        left, right = np.asarray(a), np.asarray(b)
        equal = left.shape == right.shape and bool(np.array_equal(left, right))
        return equal if fn is np.equal else not equal
    if a is None or b is None:
        return (a is b) == (fn is np.equal)
    return bool(np.all(fn(a, b)))


def _compare_partial(fn, a: Any, b: Any) -> Any:
    """A comparison with a list that has unknown elements (a shape with unknown dims), element by
    element: a known difference decides, otherwise an unknown element leaves it unknown."""
    a, b = (x.tolist() if isinstance(x, np.ndarray) else list(x) if isinstance(x, tuple) else x for x in (a, b))
    if fn in (np.equal, np.not_equal):
        if not (isinstance(a, list) and isinstance(b, list)) or len(a) != len(b):
            return fn is np.not_equal  # a list of another length, or not a list: known to differ
        equal = _kleene_all(UNKNOWN if x is UNKNOWN or y is UNKNOWN else _compare(None, np.equal, x, y)
                            for x, y in zip(a, b))
        return equal if fn is np.equal else _kleene_not(equal)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise ValueError(f"cannot compare lists of {len(a)} and {len(b)} elements")
        pairs = zip(a, b)
    else:
        pairs = ((x, b) for x in a) if isinstance(a, list) else ((a, y) for y in b)
    return _kleene_all(_compare(None, fn, x, y) for x, y in pairs)


def must_be_known(fn: Callable[[MatchContext], Any]) -> Callable[[MatchContext], Any]:
    """A value a replacement builds from: an unknown one fails the rewrite (a `let` would have
    rejected the match instead)."""
    def known(ctx):
        value = fn(ctx)
        if is_unknown(value):
            raise ValueError("a value the replacement needs is not known statically; compute it in "
                             "a 'let', which rejects the match when it is unknown")
        return value
    return known


def make_guard(rule_name: str, location: str, root_var: str, steps):
    def guard(ctx: MatchContext) -> bool:
        for kind, name, fn, pos in steps:
            try:
                result = fn(ctx)
            except NotApplicable:
                return False
            except Exception as error:
                root = ctx.bindings.get(root_var)
                what = f"let '{name}'" if kind == "let" else "where"
                raise RewriteError(f"rule '{rule_name}' at node '{root.node if root else '?'}': {what} "
                                   f"failed: {type(error).__name__}: {error}",
                                   path=location.rsplit(":", 1)[0], line=pos.line, column=pos.column) from error
            if is_unknown(result):
                return False  # a guard that ends unknown does not fire; nor does a let that is unknown
            if kind == "let":
                ctx.bindings[name] = result
            elif not _truthy(result):
                return False
        return True
    return guard
