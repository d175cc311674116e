"""Rule fixtures: `test` blocks that give a small graph, apply rules, and expect another graph.

The graphs are written in the node notation of the language (`x = Op(inputs) {attrs}`). The result
is compared with the expected graph from the outputs up: same ops, same input structure, the
attrs the expected graph lists (Const values numerically), and no extra nodes. Nodes the rules
create may have any names; a node named in both `given` and `expect` must keep its name.
"""
from __future__ import annotations

import collections
import pathlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from gtt_rules.engine.attrs import decode_attr
from gtt_rules.engine.dtypes import dtype_name
from gtt_rules.engine.graph import Graph, Node, TensorRef
from gtt_rules.engine.limits import LimitWarning
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.engine.tensors import encode_tensor
from gtt_rules.errors import GttRulesError, RulesCheckError
from gtt_rules.grammar import ast

from .compiler import Compiler
from .params import StageCall
from .library import Library
from .registry import Registry


@dataclass
class FixtureResult:
    """The outcome of one test block."""

    name: str
    path: str
    line: int
    passed: bool
    message: str = ""

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}"


def run_file(path: str | pathlib.Path, library: Library) -> list[FixtureResult]:
    """Run every test block of a .rules file, loaded into `library` (checked and compiled first)."""
    compiled = library.load_file(path)
    module_source = pathlib.Path(path).read_text(encoding="utf-8")
    results = []
    for test, owner in compiled.tests:
        results.append(run_test(test, owner, str(path), module_source, library))
    return results


def run_test(test: ast.Test, owner: str, path: str, source: str, library: Library) -> FixtureResult:
    """Apply the test's rules to its `given` graph and compare with `expect`.

    A malformed test block (a graph that cannot be built, an unknown `using`) is bad input and
    raises; only what the rules do to the graph makes a failing result."""
    def fail(message: str) -> FixtureResult:
        return FixtureResult(test.name, path, test.pos.line, False, message + limits_hit)

    module = ast.Module(path, source)
    given = build_graph(test.given, module, registry=library.registry)
    expected = build_graph(test.expect, module, base=test.given, registry=library.registry)
    stages = library.call(_stage_call(test, owner, module, library.registry))
    outputs = list(test.outputs) or [n.name for n in given.sinks()]
    inputs = [n.name for n in given.placeholders()]
    fires: collections.Counter = collections.Counter()
    # A limit a test sets on purpose is what it tests, not news for the run's summary: the
    # warnings it raises are kept, and shown only if the test fails.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LimitWarning)
        try:
            actual = Graph.from_bytes(given.to_bytes())
            for stage in stages:
                fires.update(stage.run(actual, inputs=inputs, outputs=outputs).fires)
            actual.check()  # what a test block makes passes the loader's checks, as every output does
        except GttRulesError as error:
            error_text = str(error)
        else:
            error_text = None
    limits_hit = "".join(f"\n    ({w.message})" for w in caught if issubclass(w.category, LimitWarning))
    for w in caught:
        if not issubclass(w.category, LimitWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if error_text is not None:
        return fail(error_text)
    problem = compare_graphs(actual, expected, outputs, fixed_names={s.var for s in test.given})
    if problem:
        # A rule that never fired explains any difference: say so, and show what it was given.
        rules = {rule.name for stage in stages for rule in stage.rules or ()}
        if test.name in rules and not fires[test.name]:
            return fail(f"rule {test.name} never fired; the graph it got:\n{render_graph(actual)}")
        if not fires and all(stage.rules is not None for stage in stages):
            what = test.using.name if test.using is not None else owner
            return fail(f"no rule of {what} fired; the graph it got:\n{render_graph(actual)}")
        return fail(problem)
    return FixtureResult(test.name, path, test.pos.line, True)


def render_graph(graph: Graph, indent: str = "    ") -> str:
    """The graph in fixture notation, one node a line (attrs other than a Const's value left out)."""
    lines = []
    for node in graph.topological_order():
        args = [str(ref) for ref in node.inputs] + ["^" + c for c in node.control_inputs]
        if node.op == "Const":
            value = node.get_attr("value", None)
            args = [np.array2string(np.asarray(value), threshold=6, separator=", ")] + args \
                if value is not None else args
        lines.append(f"{indent}{node.name} = {node.op}({', '.join(args)})")
    return "\n".join(lines)


def _stage_call(test: ast.Test, owner: str, module: ast.Module, registry: Registry | None = None) -> StageCall:
    if test.using is None:
        return StageCall(owner, {}, f"{module.path}:{test.pos.line}:{test.pos.column}")
    compiler = Compiler(module, registry)
    call = compiler._stage(test.using)
    if compiler.errors:
        raise compiler.errors[0]
    return call


def build_graph(statements, module: ast.Module, base=(), registry: Registry | None = None) -> Graph:
    """A Graph from node statements, their values computed with `registry`'s functions (default:
    the language's); `base` statements are added where the others refer to them."""
    compiler = Compiler(module, registry)
    defined = {s.var: s for s in statements}
    referenced_base = {s.var: s for s in base if s.var not in defined}
    graph_def = pb.GraphDef()
    pending = list(statements)
    added: set[str] = set()
    while pending:
        stmt = pending.pop(0)
        if stmt.var in added:
            continue
        added.add(stmt.var)
        for name in _references(stmt.expr):
            if name not in defined and name in referenced_base and name not in added:
                pending.append(referenced_base[name])
        _add_statement(graph_def, stmt, compiler)
    if compiler.errors:
        raise compiler.errors[0]
    try:
        return Graph(graph_def)
    except GttRulesError as error:
        pos = statements[0].pos if statements else ast.Pos(0, 0)
        raise RulesCheckError(f"bad fixture graph: {error}", path=module.path, line=pos.line, column=pos.column,
                              source=module.source) from None


def _references(expr) -> list[str]:
    if isinstance(expr, (ast.Var, ast.Port)):
        return [expr.name]
    if isinstance(expr, ast.NewNodeExpr):
        return [n for a in expr.args or () for n in _references(a)]
    return []


def _add_statement(graph_def: pb.GraphDef, stmt: ast.NodeStmt, compiler: Compiler) -> None:
    expr = stmt.expr
    if not isinstance(expr, ast.NewNodeExpr):
        compiler.error(stmt.pos, "a fixture line builds a node: 'name = Op(inputs) {attrs}'")
        return
    _add_node(graph_def, stmt.var, expr, compiler)


def _add_node(graph_def: pb.GraphDef, name: str, expr: ast.NewNodeExpr, compiler: Compiler) -> None:
    proto = graph_def.node.add(name=name, op=expr.op)
    node = Node(proto)
    for item in expr.attrs:
        if item.key is None:
            compiler.error(item.pos, "a fixture node names its attrs: '(EXPR): value' is for a copy or an edit")
    attrs = {item.key: item for item in expr.attrs if item.key is not None}
    if expr.op == "Const":
        value = compiler.constant(expr.args[0]) if expr.args else None
        dtype = compiler.constant(expr.args[1]) if expr.args and len(expr.args) > 1 else (
            compiler.constant(attrs["dtype"].value) if "dtype" in attrs else None)
        if value is None:
            compiler.error(expr.pos, "a fixture Const needs its value: Const(value[, dtype])")
            return
        from gtt_rules.engine.dtypes import dtype_for_array
        from gtt_rules.engine.graph import const_array
        try:  # strings, ragged lists, out-of-range numbers, unknown dtypes
            array = const_array(value, dtype)
            dt = dtype if dtype is not None else dtype_for_array(array)
            node.set_attr("dtype", dt)
            node.set_attr("value", encode_tensor(array, dt))
        except (TypeError, ValueError, OverflowError) as error:
            compiler.error(expr.pos, f"bad fixture Const: {error}")
        return
    for index, arg in enumerate(expr.args or ()):
        if isinstance(arg, ast.Var):
            proto.input.append(arg.name)
        elif isinstance(arg, ast.Port):
            proto.input.append(str(TensorRef(arg.name, arg.port)))
        elif isinstance(arg, ast.NewNodeExpr):
            helper = f"{name}/{arg.op}_{index}"
            _add_node(graph_def, helper, arg, compiler)
            proto.input.append(helper)
        elif isinstance(arg, (ast.Number, ast.Unary)):
            helper = f"{name}/const_{index}"
            _add_node(graph_def, helper, ast.NewNodeExpr("Const", (arg,), (), arg.pos), compiler)
            proto.input.append(helper)
        else:
            compiler.error(arg.pos, "a fixture input is a node name, name:port, a number or a node")
    for key, item in attrs.items():
        try:
            node.set_attr(key, compiler.constant(item.value))
        except (TypeError, ValueError, OverflowError) as error:
            compiler.error(item.pos, f"bad value for attr '{key}': {error}")
    try:
        _infer_types(Node(proto), graph_def)  # a fresh Node: `node` was made before the inputs
    except ValueError as error:  # the inputs do not say how they split among list arguments
        compiler.error(expr.pos, f"bad fixture node: {error}")


def _infer_types(node: Node, graph_def: pb.GraphDef) -> None:
    """Fill the attrs a fixture leaves out (`T`, `N`, ...) from the inputs, as replacements do."""
    from gtt_rules.engine import op_registry

    op_def = op_registry.get_op(node.op)
    if op_def is None:
        return
    by_name = {n.name: n for n in graph_def.node}
    dtypes = [_output_dtype(by_name, ref) for ref in node.inputs]
    given = {key: node.get_attr(key) for key in node.attr}
    for key, value in op_registry.infer_input_attrs(op_def, dtypes, given).items():
        node.set_attr(key, value)


def _output_dtype(by_name: dict, ref: TensorRef) -> int | None:
    from gtt_rules.engine import op_registry

    producer = by_name.get(ref.node)
    producer_def = op_registry.get_op(producer.op) if producer is not None else None
    if producer_def is None:
        return None
    producer_node = Node(producer)
    dtypes = op_registry.output_dtypes(producer_def, lambda a: producer_node.get_attr(a))
    return dtypes[ref.port] if dtypes and ref.port < len(dtypes) else None


def compare_graphs(actual: Graph, expected: Graph, outputs: list[str], fixed_names: set[str]) -> str | None:
    """None if `actual` matches `expected` from `outputs` up; else what differs."""
    mapping: dict[str, str] = {}
    used: dict[str, str] = {}
    stack = [(name, name) for name in reversed(outputs)]
    while stack:
        e_name, a_name = stack.pop()
        if e_name in mapping:
            if mapping[e_name] != a_name:
                return f"expected '{e_name}' to be one node, found both '{mapping[e_name]}' and '{a_name}'"
            continue
        if a_name in used:
            return f"expected separate nodes '{used[a_name]}' and '{e_name}', found one: '{a_name}'"
        e, a = expected.get(e_name), actual.get(a_name)
        if e is None:
            return f"expected graph has no node '{e_name}'"
        if a is None:
            return f"the result has no node '{a_name}' (expected {e.op} '{e_name}')"
        if e_name in fixed_names and e_name != a_name:
            return f"expected node '{e_name}' to keep its name, found '{a_name}'"
        mapping[e_name] = a_name
        used[a_name] = e_name
        problem = _compare_node(e, a)
        if problem:
            return f"node '{a_name}' (expected '{e_name}'): {problem}"
        for e_ref, a_ref in zip(e.inputs, a.inputs):
            if e_ref.port != a_ref.port:
                return f"node '{a_name}': input '{a_ref}' should be output {e_ref.port} of its producer"
            stack.append((e_ref.node, a_ref.node))
        for e_ctl, a_ctl in zip(sorted(e.control_inputs), sorted(a.control_inputs)):
            stack.append((e_ctl, a_ctl))
    reachable = actual.live_nodes([o for o in outputs if o in actual])
    extra = sorted(reachable - set(used))
    if extra:
        return f"the result has nodes the expected graph does not: {', '.join(extra)}"
    return None


def _compare_node(expected: Node, actual: Node) -> str | None:
    if expected.op != actual.op:
        return f"op is {actual.op}, expected {expected.op}"
    if len(expected.inputs) != len(actual.inputs):
        return f"has {len(actual.inputs)} inputs, expected {len(expected.inputs)}"
    if len(expected.control_inputs) != len(actual.control_inputs):
        return f"has {len(actual.control_inputs)} control inputs, expected {len(expected.control_inputs)}"
    for key, value in expected.attr.items():
        if key not in actual.attr:
            found = actual.get_attr(key, None)
            if found is None:
                return f"has no attr '{key}'"
            want = decode_attr(value)
        else:
            found, want = decode_attr(actual.attr[key]), decode_attr(value)
        if not _attr_equal(found, want):
            kind = value.WhichOneof("value")
            if kind == "list" and value.list.type:
                kind = "type"
            return f"attr '{key}' is {_show(found, kind)}, expected {_show(want, kind)}"
    return None


def _attr_equal(found: Any, want: Any) -> bool:
    if isinstance(want, np.ndarray) or isinstance(found, np.ndarray):
        found, want = np.asarray(found), np.asarray(want)
        if found.shape != want.shape or found.dtype != want.dtype:
            return False
        if found.dtype.kind in "fc":
            return bool(np.allclose(found, want, rtol=1e-6, atol=1e-6, equal_nan=True))
        return bool(np.array_equal(found, want))
    if isinstance(found, (list, tuple)) and isinstance(want, (list, tuple)):
        return len(found) == len(want) and all(_attr_equal(f, w) for f, w in zip(found, want))
    return found == want


def _show(value: Any, kind: str | None = None) -> str:
    if kind == "type":      # a dtype by its name, not its enum number
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(dtype_name(v) for v in value) + "]"
        return dtype_name(value) if isinstance(value, int) else repr(value)
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)} {np.array2string(value, threshold=8)}"
    return repr(value)
