"""Functions defined in rules (`define f(x) = expr`), conditional expressions, `note`, and the
generic builtins the standard library's functions are written with. (Checker errors for misuse
are cases of tests/test_checks.py.)"""
from __future__ import annotations

import textwrap

import pytest

from conftest import compile_rules, fixture_graph
from gtt_rules.engine.driver import apply_rules
from gtt_rules.rules.library import Library

GRAPH = """
    x = Placeholder {dtype: float, shape: [-1, 3]}
    w = Const([[1.0, 0.0], [0.0, -2.0], [3.0, 0.0]])
    i = Identity(w)
    m = MatMul(x, i)
    n = Relu(m)
    o = Neg(n)
"""


def fires(guard: str, lets: str = "") -> bool:
    """True if a rule at n = Relu(MatMul(x, Identity(w))) with this guard fires."""
    rules = compile_rules(f"""
        rule r:
            n = Relu(m: MatMul(x, i: Identity(w: Const)))
            {lets}
            where {guard}
            => n -> m
        """, "t")
    graph = fixture_graph(GRAPH)
    apply_rules(graph, rules)
    return "n" not in graph


@pytest.mark.parametrize("guard", [
    # readers: [reader, input port], past the `through` ops (which are listed too), in the order
    # of the names of the nodes read (i before w)
    '[name(r[0]) + ":" + format(r[1]) for r in readers(w, ["Identity"])] == ["m:1", "i:0"]',
    '[name(r[0]) for r in readers(w, [])] == ["i"]',
    # producers: where a tensor comes from, past the `through` ops, at most `depth` nodes up
    '[name(t) for t in producers(m, ["MatMul", "Identity"], 4)] == ["x", "w"]',
    '[name(t) for t in producers(m, ["MatMul", "Identity"], 1)] == ["x", "i"]',
    '[name(t) for t in producers(m, ["Relu"], 4)] == ["m"]',
    'matches(name(m), "m*") and matches(op(m), "Mat?ul") and not matches(op(m), "mat*")',
    'format(value(w)[0]) == "[1.0, 0.0]" and format(2.0 / 3.0, ".3g") == "0.667"',
    'format(attr(m, "transpose_a")) == "False" and format(rank(x)) == "2"',
    'known(rank(x)) and not known(shape(x)) and known(shape(w)) and not known(dim(x, 0))',
    'count_nonzero(w) == 3 and round(2.5) == 2.0 and round(-0.7) == -1.0 and log10(1000.0) == 3.0',
    'attr(m, "no_such_attr", 7) == 7 and attr(m, "transpose_b", true) == false',
    '"a" + op(m) + "b" == "aMatMulb" and "rank " + format(rank(x)) == "rank 2"',
    '(1 if rank(x) == 2 else 2) == 1 and ("known" if known(shape(x)) else "not known") == "not known"',
    'not note(n, "a note is false")',
    # dtype facts: sizes, and which type holds every value of another (exactly: int64 not in double)
    'dtype_size(dtype(x)) == 4 and dtype_size(quint8) == 1 and dtype_size(complex128) == 16',
    'can_hold(float, int16) and can_hold(float, bfloat16) and can_hold(int16, uint8) and can_hold(half, bool)',
    'not can_hold(float, int32) and not can_hold(int8, uint8) and not can_hold(uint32, int8)',
    'not can_hold(double, int64) and not can_hold(bfloat16, half) and not can_hold(int64, float)',
])
def test_builtin(guard):
    assert fires(guard)


def test_a_false_builtin_guard_does_not_fire():
    assert not fires('matches(op(m), "Relu")')
    assert not fires('count_nonzero(w) == 4')
    # unknown, not false: neither the fact nor its negation fires
    assert not fires('can_hold(float, quint8)') and not fires('not can_hold(float, quint8)')
    assert not fires('dtype_size(string) > 0') and not fires('not dtype_size(string) > 0')


FUNCTIONS = """
define wide(t, least) = rank(t) >= least
define scaled(v, by) = v * by
define kind(t) = "matrix" if rank(t) == 2 else "other"
define nonzero(v) = count_nonzero(v)
"""


def test_a_function_serves_in_guards_lets_attrs_and_constants():
    rules = compile_rules(FUNCTIONS + textwrap.dedent("""
        rule r:
            n = Relu(m: MatMul(x, i: Identity(w: Const)))
            where wide(w, 2) and kind(w) == "matrix" and not wide(w, 3)
            let k = nonzero(w)
            => n -> Neg(MatMul(x, Const(scaled(w, k))) {transpose_a: wide(x, 3)})
        """), "t")
    graph = fixture_graph(GRAPH)
    apply_rules(graph, rules)
    neg = graph["o"].inputs[0].node
    new = graph[graph[neg].inputs[0].node]
    assert graph[neg].op == "Neg" and new.op == "MatMul" and new.get_attr("transpose_a") is False
    assert graph[new.inputs[1].node].get_attr("value").tolist() == [[3.0, 0.0], [0.0, -6.0], [9.0, 0.0]]


def test_a_function_leaves_the_callers_names_as_they_were():
    # The function's parameter and loop names are the rule's pattern names: the rule still
    # reads its own after the call (a loop once dropped the caller's `p` on leaving).
    rules = compile_rules(textwrap.dedent("""
        define ones(p) = all([s == 1 for s in p])
        define some(n, names) = any([p == n for p in names])
        rule r:
            n = MaxPool(x) {ksize: s, strides: p, padding: v}
            where ones(s) and some(op(n), ["MaxPool"])
            => n -> MaxPool(x) {ksize: s, strides: p, padding: "SAME" if v == "VALID" else v}
        """), "t")
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [1, 4, 4, 1]}
        n = MaxPool(x) {ksize: [1, 1, 1, 1], strides: [1, 2, 2, 1], padding: "VALID"}
        o = Neg(n)
    """)
    apply_rules(graph, rules)
    pool = graph[graph["o"].inputs[0].node]
    assert pool.get_attr("strides") == [1, 2, 2, 1] and pool.get_attr("padding") == "SAME"


def test_a_conditional_computes_only_the_branch_it_takes():
    # xs[5] is out of range, which would make the guard unknown: it is never computed.
    assert fires("(value(w)[5] if rank(w) > 2 else 1.0) == 1.0")
    assert not fires("(value(w)[5] if rank(w) == 2 else 1.0) == 1.0")


def test_note_gives_the_reason_in_the_report():
    rules = compile_rules(textwrap.dedent("""
        define refusal(t) = "rank " + format(rank(t)) if rank(t) != 1 else ""
        rule r:
            n = Relu(x)
            where refusal(x) == "" or note(n, "stays: " + refusal(x))
            => n -> x
        """), "t")
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2, 3]}
        n = Relu(x)
        o = Neg(n)
    """)
    report = apply_rules(graph, rules)
    assert "n" in graph and report.notes == ["'n': stays: rank 2"]


def test_defines_come_with_the_files_that_import_them(tmp_path):
    (tmp_path / "shapes.rules").write_text(
        'import "more.rules"\ndefine matrix(t) = rank(t) == 2 and square_ish(t)\n')
    # more.rules imports shapes.rules back: a cycle loads, each file once.
    (tmp_path / "more.rules").write_text(
        'import "shapes.rules"\ndefine square_ish(t) = dim(t, 0) <= 2 * dim(t, 1)\n')
    (tmp_path / "user.rules").write_text(
        'import "shapes.rules"\nrule r:\n    n = Relu(x)\n    where matrix(x)\n    => n -> x\n')
    (rule,) = Library().load_file(tmp_path / "user.rules").rulesets["user"].rules
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2, 3]}
        n = Relu(x)
        o = Neg(n)
    """)
    apply_rules(graph, [rule])
    assert "n" not in graph


def test_a_conditional_attr_of_a_copy_may_be_none():
    rules = compile_rules(textwrap.dedent("""
        rule r:
            n = Relu|Elu(x) {T: float}
            => n -> n(x) {op: "LeakyRelu", alpha: 0.5 if op(n) == "Elu" else none}
        """), "t")
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        a = Relu(x)
        b = Elu(x)
        o = AddV2(a, b)
    """)
    apply_rules(graph, rules)
    made = [graph[ref.node] for ref in graph["o"].inputs]
    assert [node.op for node in made] == ["LeakyRelu", "LeakyRelu"]
    assert "alpha" not in made[0].proto.attr and made[1].get_attr("alpha") == pytest.approx(0.5)
