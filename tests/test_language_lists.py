"""Issue 13, items 1 to 3: lists in expressions, a replacement's op from the match, private inner
nodes. TensorFlow runs the graphs before and after each rewrite and must agree."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_rules, fixture_graph, tf_run
from gtt_rules.engine.driver import apply_rules
from gtt_rules.engine.graph import Graph
from gtt_rules.errors import RewriteError, RulesCheckError

LISTS = """
    rule compose-transposes:
        inner = Transpose(x, p: Const)
        outer = Transpose(inner, q: Const)
        => outer -> Transpose(x, Const(value(p)[value(q)], dtype(q)))

    rule addn-of-one-tensor:
        n = AddN(xs...)
        where all_equal(xs)
        => n -> Mul(xs[0], Const(len(xs), dtype(xs[0])))

    rule negate-comparison:
        c = Less|Greater|LessEqual|GreaterEqual(a, b)
        n = LogicalNot(c)
        => n -> c {op: {"Less": "GreaterEqual", "Greater": "LessEqual",
                        "LessEqual": "Greater", "GreaterEqual": "Less"}[op(c)]}
"""


def _tf_graph(tf, body) -> bytes:
    with tf.Graph().as_default() as graph:
        body()
    return graph.as_graph_def().SerializeToString()


def _rewrite_and_compare(original: bytes, rules_text: str, feeds: dict, outputs: list[str],
                         rtol: float = 0.0) -> Graph:
    graph = Graph.from_bytes(original)
    apply_rules(graph, compile_rules(rules_text), protected=[*feeds, *outputs])
    for before, after in zip(tf_run(original, feeds, outputs), tf_run(graph.to_bytes(), feeds, outputs)):
        np.testing.assert_allclose(after, before, rtol=rtol, atol=0)
    return graph


@pytest.mark.parametrize("p, q", [([0, 2, 3, 1], [0, 3, 1, 2]), ([3, 1, 0, 2], [1, 0, 2, 3]),
                                  ([1, 0, 2], [2, 0, 1])])
def test_two_transposes_of_any_rank_compose_into_one(tf, p, q):
    rank = len(p)
    x = np.random.default_rng(rank).standard_normal((2, 3, 4, 5)[:rank]).astype(np.float32)

    def body():
        t = tf.transpose(tf.transpose(tf.compat.v1.placeholder(tf.float32, x.shape, name="x"), p), q)
        tf.negative(t, name="out")
    graph = _rewrite_and_compare(_tf_graph(tf, body), LISTS, {"x": x}, ["out"])
    assert sum(n.op == "Transpose" for n in graph) == 1


@pytest.mark.parametrize("count", [2, 3, 7])
def test_addn_of_one_tensor_is_one_mul_for_any_count(tf, count):
    x = np.random.default_rng(count).standard_normal((3, 2)).astype(np.float32)

    def body():
        t = tf.compat.v1.placeholder(tf.float32, x.shape, name="x")
        tf.math.add_n([t] * count, name="out")
    # A sum of seven rounds six times, a product once.
    graph = _rewrite_and_compare(_tf_graph(tf, body), LISTS, {"x": x}, ["out"], rtol=1e-6)
    assert graph["out"].op == "Mul"


def test_addn_of_different_tensors_is_left_alone():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        y = Placeholder {dtype: float, shape: [2]}
        out = AddN(x, y, x) {N: 3}
    """)
    report = apply_rules(graph, compile_rules(LISTS), protected=["x", "y", "out"])
    assert report.rewrites == 0 and graph["out"].op == "AddN"


@pytest.mark.parametrize("compare", ["less", "greater", "less_equal", "greater_equal"])
def test_a_negated_comparison_becomes_the_opposite_comparison(tf, compare):
    x = np.array([1.0, 2.0, 3.0], np.float32)
    y = np.array([2.0, 2.0, 2.0], np.float32)

    def body():
        a = tf.compat.v1.placeholder(tf.float32, [3], name="x")
        b = tf.compat.v1.placeholder(tf.float32, [3], name="y")
        tf.logical_not(getattr(tf.math, compare)(a, b), name="out")
    graph = _rewrite_and_compare(_tf_graph(tf, body), LISTS, {"x": x, "y": y}, ["out"])
    assert graph["out"].op in {"Less", "Greater", "LessEqual", "GreaterEqual"}


def test_comprehensions_slices_and_concatenation():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        y = Placeholder {dtype: float, shape: [2]}
        r = Relu(x)
        out = ConcatV2(r, y, x, Const(0)) {N: 3}
    """)
    apply_rules(graph, compile_rules("""
        rule reorder:
            n = ConcatV2(xs..., axis: Const)
            let plain = [t for t in xs if op(t) != "Relu"]
            where op(xs[0]) == "Relu" and not all([op(t) == "Relu" for t in xs])
            where any([op(t) == "Relu" for t in xs]) and not any([op(t) == "Tanh" for t in xs])
            where range(1, 4)[1:] == [2, 3] and [1, 2] + [3] == range(1, 4)
            => n -> ConcatV2(plain + xs[:1], axis)
    """), protected=["x", "y", "out"])
    assert [str(r) for r in graph["out"].inputs][:3] == ["y", "x", "r"]


def test_a_loop_name_may_not_hide_another_name():
    with pytest.raises(RulesCheckError, match="'x' is already bound"):
        compile_rules("""
            rule r:
                n = AddN(x, xs...)
                where all([x == x for x in xs])
                => n -> Identity(x)
        """)


def test_a_range_past_the_limit_is_an_error_not_a_hang():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        out = Neg(x)
    """)
    rules = compile_rules("""
        rule r:
            n = Neg(x)
            where len(range(100000000)) > 0
            => n -> x
    """)
    with pytest.raises(RewriteError, match="at most"):
        apply_rules(graph, rules, protected=["x", "out"])


# ---- a copy as another op ----

def test_rename_op_renames_an_unknown_multi_output_op_in_place():
    # The registry does not know the op, so the copy takes every output its readers read.
    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": 1})
    graph.add_node("c", "MyOp", ["x"], attrs={"T": 1})
    graph.add_node("out", "AddV2", ["c:0", "c:1"], attrs={"T": 1})
    rules = compile_rules("""
        ruleset t(old: str = "MyOp", new: str = "YourOp"):
            rule rename:
                n = *
                where op(n) == old
                => n:* -> n {op: new}
    """)
    apply_rules(graph, rules, protected=["x", "out"])
    assert graph["c"].op == "YourOp" and graph["c"].get_attr("T") == 1
    assert [str(r) for r in graph["out"].inputs] == ["c", "c:1"]


def test_an_op_from_a_parameter_dispatches_on_that_op_only():
    (rule,) = compile_rules("""
        ruleset t(old: str = "Relu"):
            rule rename:
                n = *
                where op(n) == old
                => n:* -> n {op: "Relu6"}
    """)
    assert rule.root_ops == frozenset({"Relu"})


def test_a_copy_keeps_only_the_attrs_its_new_op_declares(tf):
    x = np.array([[-1.0, 2.0, 8.0]], np.float32)

    def body():
        t = tf.compat.v1.placeholder(tf.float32, [1, 3], name="x")
        tf.nn.leaky_relu(t, alpha=0.0, name="out")
    graph = _rewrite_and_compare(_tf_graph(tf, body), """
        rule to-relu:
            n = LeakyRelu(x) {alpha: 0.0}
            => n -> n {op: "Relu"}
    """, {"x": x}, ["out"])
    assert graph["out"].op == "Relu" and "alpha" not in graph["out"].proto.attr
    assert graph["out"].get_attr("T") == 1


# ---- private inner nodes ----

PRIVATE = """
    rule fuse:
        a = Neg(x)
        n = Neg(a)
        => n -> Identity(x)
"""


def _negations(extra: str = ""):
    return fixture_graph(f"""
        x = Placeholder {{dtype: float, shape: [2]}}
        a = Neg(x)
        n = Neg(a)
        {extra}
    """)


def test_an_inner_node_read_elsewhere_blocks_a_rule_that_builds():
    graph = _negations("c = Abs(a)")
    assert apply_rules(graph, compile_rules(PRIVATE), protected=["x", "n", "c"]).rewrites == 0
    graph = _negations()
    assert apply_rules(graph, compile_rules(PRIVATE), protected=["x", "n"]).rewrites == 1


def test_an_inner_node_that_is_a_graph_output_blocks_a_rule_that_builds():
    graph = _negations()
    assert apply_rules(graph, compile_rules(PRIVATE), protected=["x", "n", "a"]).rewrites == 0


def test_shared_opts_out_and_the_inner_node_stays_for_its_other_reader():
    graph = _negations("c = Abs(a)")
    report = apply_rules(graph, compile_rules(PRIVATE.replace("a = Neg(x)", "a = shared Neg(x)")),
                         protected=["x", "n", "c"])
    assert report.rewrites == 1 and graph["n"].op == "Identity" and graph["c"].inputs[0].node == "a"


def test_shared_works_on_a_nested_pattern_too():
    rules = """
        rule fuse:
            n = Neg(Neg(x))
            => n -> Identity(x)
    """
    graph = _negations("c = Abs(a)")
    assert apply_rules(graph, compile_rules(rules), protected=["x", "n", "c"]).rewrites == 0
    graph = _negations("c = Abs(a)")
    shared = rules.replace("Neg(Neg(x))", "Neg(shared Neg(x))")
    assert apply_rules(graph, compile_rules(shared), protected=["x", "n", "c"]).rewrites == 1


def test_a_rule_that_only_reroutes_or_reads_the_inner_node_needs_no_opt_out():
    graph = _negations("c = Abs(a)\n        out = Relu(n)")
    bypass = PRIVATE.replace("=> n -> Identity(x)", "=> n -> x")
    assert apply_rules(graph, compile_rules(bypass), protected=["x", "out", "c"]).rewrites == 1
    assert graph["out"].inputs[0].node == "x" and graph["c"].inputs[0].node == "a"
    graph = _negations("c = Abs(a)")
    reads = PRIVATE.replace("=> n -> Identity(x)", "=> n -> Relu(a)")
    assert apply_rules(graph, compile_rules(reads), protected=["x", "n", "c"]).rewrites == 1


# ---- alternatives, use counts per output, device and control-edge predicates ----

def test_a_weight_that_is_a_const_or_a_cast_of_a_const(tf):
    x = np.array([[1.0, -2.0]], np.float32)

    def body():
        t = tf.compat.v1.placeholder(tf.float32, [1, 2], name="x")
        w = tf.cast(tf.constant([[1, 2], [3, 4]]), tf.float32)
        a = tf.linalg.matmul(t, tf.constant([[5.0, 6.0], [7.0, 8.0]])) * 2.0
        b = tf.linalg.matmul(t, w) * 3.0
        tf.add(a, b, name="out")
    graph = _rewrite_and_compare(_tf_graph(tf, body), """
        rule fold-scale:
            m   = MatMul(x, w: Const or Cast(Const))
            out = Mul(m, s: Const)
            where rank(s) == 0
            => out -> MatMul(x, Mul(w, s))
    """, {"x": x}, ["out"])
    assert sum(n.op == "MatMul" and graph[n.inputs[1].node].op == "Mul" for n in graph) == 2


def test_alternatives_must_name_the_same_names():
    with pytest.raises(RulesCheckError, match="each alternative must name the same names"):
        compile_rules("""
            rule r:
                n = Relu(x) or Relu6(y)
                => n -> Identity(x)
        """)


def test_an_alternative_root_dispatches_on_its_ops():
    (rule,) = compile_rules("""
        rule r:
            n = Relu(x) or Relu6(x)
            => n -> Identity(x)
    """)
    assert rule.root_ops == frozenset({"Relu", "Relu6"})


def test_uses_counts_the_readers_of_one_output():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [4]}
        s = Split(0, x) {num_split: 2}
        a = Neg(s)
        b = Abs(s)
        out = AddN(a, b, s:1) {N: 3}
    """)
    rules = compile_rules("""
        rule r:
            n = Split(axis, x)
            where uses(n:0) == 2 and uses(n:1) == 1 and uses(n) == 3
            => n:1 -> Const([0.0, 0.0])
    """)
    assert apply_rules(graph, rules, protected=["x", "out"]).rewrites == 1


def test_device_and_control_edge_predicates():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        a = Neg(x)
        b = Neg(x)
        out = AddV2(a, b)
    """)
    graph["a"].device = "/cpu:0"
    graph.set_inputs(graph["b"], graph["b"].inputs, ["a"])
    rules = compile_rules("""
        rule r:
            n = Neg(x)
            where device(n) == "" and control_inputs(n) == ["a"] and control_uses(x) == 0
            => n -> Abs(x)
        rule s:
            n = Neg(x)
            where device(n) == "/cpu:0" and control_uses(n) == 1
            => n -> Relu(x)
    """)
    apply_rules(graph, rules, protected=["x", "out"])
    assert (graph["a"].op, graph["b"].op) == ("Relu", "Abs")


# Rule bodies the checker refuses before any graph is read, with (part of) the message: the new
# expressions here, the edit form's below.
CHECKED_EXPRESSIONS = [
    ("n = Relu(x)\n    where {\"a\": 1, \"a\": 2}[\"a\"] == 1\n    => n -> x", "key 'a' is given twice"),
    ("n = Relu(x)\n    where float[1:] == 1\n    => n -> x", "a dtype cannot be sliced"),
    ("n = Relu(x)\n    where all([t for t in dtype(x)])\n    => n -> x", "'for' needs a list to go over, not a dtype"),
    ("n = Relu(x)\n    => n -> n {op: 3}", "a node's op is a string, not a value"),
    ("n = shared Relu(x)\n    => n -> Identity(x)", "a root is what the rule replaces"),
]


def test_a_commutative_node_that_reads_a_shared_statement_is_not_remembered_as_failed():
    # Mul(s, c) failed under y = a (s = Relu(y) is Relu(b)); under the swapped y = b it matches.
    # The memo of failed commutative tries did not see that s's own names were bound differently.
    graph = fixture_graph("""
        a = Placeholder {dtype: float, shape: [2]}
        b = Placeholder {dtype: float, shape: [2]}
        k = Placeholder {dtype: float, shape: [2]}
        m0 = Mul(a, b)
        r = Relu(b)
        m1 = Mul(r, k)
        n = AddV2(m0, m1)
    """)
    rules = compile_rules("""
        rule r:
            s = Relu(y)
            n = AddV2(Mul(y, y2), Mul(s, c))
            => n -> Identity(y2)
    """)
    assert apply_rules(graph, rules, protected=["a", "b", "k", "n"]).rewrites == 1
    assert graph["n"].op == "Identity" and [str(r) for r in graph["n"].inputs] == ["a"]


# ---- edits in place: `=> n {changes}` ----

def _guarded_relu() -> Graph:
    """x -> n = Relu(x) -> out, n waiting on a Const (a control edge that orders nothing)."""
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        c = Const([1.0, 2.0])
        n = Relu(x) {_note: "kept"}
        out = Neg(n)
    """)
    graph.set_inputs(graph["n"], graph["n"].inputs, ["c"])
    return graph


def controls(graph: Graph) -> dict[str, list[str]]:
    return {n.name: list(n.control_inputs) for n in graph if n.control_inputs}


def _layout(graph: Graph) -> list:
    return [(n.name, n.op, [str(r) for r in n.inputs], list(n.control_inputs)) for n in graph]


def test_an_edit_changes_the_node_where_it_stands():
    graph = _guarded_relu()
    before = _layout(graph)
    report = apply_rules(graph, compile_rules("""
        rule place:
            n = Relu(x)
            => n {device: "/cpu:0", _note: none}
    """), protected=["x", "out"])
    assert report.rewrites == 1 and report.replaced == 1 and report.added == report.removed == 0
    assert _layout(graph) == before     # name, place, inputs and the Const's control edge stay
    assert graph["n"].device == "/cpu:0" and "_note" not in graph["n"].proto.attr


def test_a_copy_in_the_nodes_place_drops_what_an_edit_keeps():
    # The contrast that makes the edit a form of its own: a copy is a new node, and the control
    # edge from a Const, which orders nothing, does not carry over (nor the Const it kept alive).
    graph = _guarded_relu()
    apply_rules(graph, compile_rules("""
        rule place:
            n = Relu(x)
            where device(n) == ""
            => n -> n {device: "/cpu:0"}
    """), protected=["x", "out"])
    assert graph["n"].device == "/cpu:0" and graph["n"].control_inputs == [] and "c" not in graph


def test_an_edit_sweeps_nothing():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        dangling = Relu(x)
        out = Neg(x)
    """)
    apply_rules(graph, compile_rules("""
        rule place:
            n = Relu(x)
            => n {device: "/cpu:0"}
    """), protected=["x", "out"])
    assert graph["dangling"].device == "/cpu:0"


def test_an_edit_that_changes_nothing_is_no_rewrite():
    graph = _guarded_relu()
    rules = compile_rules("""
        rule unplace:
            n = *
            => n {device: "", _absent: none}
    """)
    assert apply_rules(graph, rules, protected=["x", "out"]).rewrites == 0


def test_an_edit_to_another_op_keeps_the_control_edges():
    graph = _guarded_relu()
    apply_rules(graph, compile_rules("""
        rule six:
            n = Relu(x)
            => n {op: "Relu6"}
    """), protected=["x", "out"])
    assert [(name, op, controls) for name, op, _, controls in _layout(graph)] == [
        ("x", "Placeholder", []), ("c", "Const", []), ("n", "Relu6", ["c"]), ("out", "Neg", [])]
    assert graph["n"].get_attr("T") == 1 and graph["n"].get_attr("_note") == "kept"


def test_attr_names_from_parameters_and_values_copied_as_stored():
    graph = _guarded_relu()
    rules = compile_rules("""
        ruleset t(old: str = "_note", new: str = "_moved"):
            rule rename:
                n = Relu(x)
                where old in attrs(n)
                => n {(new): attr(n, old), (old): none, _type: attr(n, "T")}
    """)
    apply_rules(graph, rules, protected=["x", "out"])
    stored = graph["n"].proto.attr
    assert "_note" not in stored and stored["_moved"].s == b"kept"
    # A dtype stays a dtype: decoded and encoded again under a name Relu does not declare, it
    # would be the int 1.
    assert stored["_type"].WhichOneof("value") == "type" and stored["_type"].type == 1


def test_an_attr_comprehension_edits_as_many_attrs_as_its_list_has_kept_elements():
    graph = _guarded_relu()
    report = apply_rules(graph, compile_rules("""
        ruleset t(names: [str] = ["_a", "_bb", "_skipped", "_ccc"]):
            rule mark:
                n = Relu(x)
                where "_a" not in attrs(n)
                => n {(k): len(k) for k in names if k != "_skipped", _type: attr(n, "T")}
    """), protected=["x", "out"])
    assert report.rewrites == 1     # one edit sets every attr of the list
    node = graph["n"]
    assert {k: node.get_attr(k) for k in ("_a", "_bb", "_ccc")} == {"_a": 2, "_bb": 3, "_ccc": 4}
    assert "_skipped" not in node.proto.attr and node.get_attr("_note") == "kept"
    assert node.proto.attr["_type"].WhichOneof("value") == "type"


def test_an_attr_comprehension_copies_attrs_as_stored_into_a_copy():
    graph = _guarded_relu()
    apply_rules(graph, compile_rules("""
        rule moved:
            n = Relu(x)
            where "_note" in attrs(n)
            => n -> n {({"T": "_copyT", "_note": "_copy_note"}[k]): attr(n, k) for k in attrs(n), _note: none}
    """), protected=["x", "out"])
    stored = graph[graph["out"].inputs[0].node].proto.attr
    assert "_note" not in stored and stored["_copy_note"].s == b"kept"
    # A dtype attr copied under a name Relu does not declare stays a dtype.
    assert stored["_copyT"].WhichOneof("value") == "type" and stored["_copyT"].type == 1


def test_none_in_an_attr_comprehension_deletes_each_attr():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        n = Relu(x) {_a: 1, _b: "two", _c: 3.0}
        out = Neg(n)
    """)
    report = apply_rules(graph, compile_rules("""
        rule clean:
            n = Relu(x)
            => n {(k): none for k in attrs(n) if k != "_c" and k != "T"}
    """), protected=["x", "out"])
    assert report.rewrites == 1 and sorted(graph["n"].proto.attr) == ["T", "_c"]


def test_an_attr_comprehension_over_an_empty_list_is_no_rewrite():
    graph = _guarded_relu()
    before = graph.to_bytes()
    report = apply_rules(graph, compile_rules("""
        rule nothing:
            n = *
            => n {(k): none for k in attrs(n) if k == "_absent", (k): 1 for k in []}
    """), protected=["x", "out"])
    assert report.rewrites == 0 and graph.to_bytes() == before


def test_an_attr_comprehension_over_too_long_a_list_is_an_error_not_a_hang():
    graph = _guarded_relu()
    with pytest.raises(RewriteError, match="at most"):
        apply_rules(graph, compile_rules("""
            ruleset t(name: str = "_many"):
                rule many:
                    n = Relu(x)
                    => n {(name): k for k in range(100000000)}
        """), protected=["x", "out"])
    assert sorted(graph["n"].proto.attr) == ["T", "_note"]


def test_an_edit_that_would_write_an_invalid_node_leaves_the_node_as_it_was():
    graph = _guarded_relu()
    with pytest.raises(RewriteError, match="Relu needs attr 'T'"):
        apply_rules(graph, compile_rules("""
            rule strip:
                n = Relu(x)
                => n {device: "/cpu:0", T: none, _note: none}
        """), protected=["x", "out"])
    node = graph["n"]
    assert (node.device, node.get_attr("T"), node.get_attr("_note")) == ("", 1, "kept")


CHECKED_EDITS = [
    ("n = Relu(x)\n    where none\n    => n -> x", "'none' deletes an attr"),
    ("n = Relu(x) {T: none}\n    => n -> x", "'none' deletes an attr"),
    ("n = Relu(x) {(\"T\"): float}\n    => n -> x", "a pattern names its attrs"),
    ("n = Relu(x)\n    => n -> Relu6(x) {(\"T\"): float}", "a new Relu6 names its attrs"),
    ("n = Relu(x)\n    => n {device: none}", "'none' deletes an attr; a node's device is not one"),
    ("n = Relu(x)\n    => n -> Const(1.0) {(\"dtype\"): float}", "a new Const names its attrs"),
    ("n = Relu(x)\n    => n {(3): 1}", "an attr's name is a string, not a value"),
    ("n = Relu(x)\n    => m {T: float}", "'m' is not a node of the pattern"),
    ("n = Relu(x)\n    => n -> n {control_inputs: []}", "a copy takes over the control edges"),
    ("n = Relu(x)\n    => n {control_inputs: \"x\"}", "control_inputs are a list of names, not a string"),
    ("n = Relu(x)\n    => n {device: \"\"}, n {T: float}", "'n' is edited twice"),
    ("n = Relu(x)\n    => n {(k + 1): 1 for k in [1, 2]}", "an attr's name is a string, not a value"),
    ("n = Relu(x)\n    => n {(k): 1 for k in \"ab\"}", "'for' needs a list to go over, not a string"),
    ("n = Relu(x)\n    => n {(x): none for x in attrs(n)}", "'x' is already bound"),
    ("n = Relu(x)\n    => n {(k): v for k in attrs(n)}", "unbound name 'v'"),
    ("n = Relu(x)\n    => n -> Relu6(x) {(k): 1 for k in [\"_a\"]}", "a new Relu6 names its attrs"),
    ("n = Relu(x) {(k): 1 for k in [\"_a\"]}\n    => n -> x", "a pattern names its attrs"),
]


@pytest.mark.parametrize("body, message", CHECKED_EXPRESSIONS + CHECKED_EDITS)
def test_new_expressions_and_edits_are_checked_before_any_graph_is_read(body, message):
    with pytest.raises(RulesCheckError, match=message) as caught:
        compile_rules(f"rule r:\n    {body}\n")
    assert caught.value.line is not None and caught.value.column is not None


def test_an_edit_sets_what_its_node_waits_on():
    graph = _guarded_relu()
    graph.set_inputs(graph["out"], graph["out"].inputs, ["x", "c"])
    apply_rules(graph, compile_rules("""
        rule keep-placeholders:
            n = *
            where control_inputs(n) != []
            => n {control_inputs: [c for c in control_inputs(n) if op(inputs(n)[0]) == "Placeholder"]}
    """), protected=["x", "out"])
    # n reads x, a Placeholder: its edges stay; out reads n: they go, and the Const stays (no sweep).
    assert controls(graph) == {"n": ["c"]} and "c" in graph


def test_an_edit_that_would_close_a_cycle_fails_and_leaves_the_graph_as_it_was():
    graph = _guarded_relu()
    with pytest.raises(RewriteError, match="cycle"):
        apply_rules(graph, compile_rules("""
            rule wait-on-reader:
                n = Relu(x)
                => n {control_inputs: ["out"], device: "/cpu:0"}
        """), protected=["x", "out"])
    assert controls(graph) == {"n": ["c"]} and graph["n"].device == ""


def test_an_edit_to_a_node_that_does_not_exist_fails():
    graph = _guarded_relu()
    with pytest.raises(RewriteError, match="not a list of names of nodes"):
        apply_rules(graph, compile_rules("""
            rule wait-on-nothing-there:
                n = Relu(x)
                => n {control_inputs: ["nowhere"]}
        """), protected=["x", "out"])


@pytest.mark.parametrize("replacement", ['n {device: attr(n, "T")}', 'n -> n(x) {device: attr(n, "T")}'])
def test_a_device_that_is_not_a_string_fails_in_one_line(replacement):
    graph = _guarded_relu()
    with pytest.raises(RewriteError, match="is not a device name"):
        apply_rules(graph, compile_rules(f"""
            rule device-from-a-dtype:
                n = Relu(x)
                => {replacement}
        """), protected=["x", "out"])
    assert graph["n"].device == ""


@pytest.mark.parametrize("line, message", [
    ("n = Relu(x) {T: none}", "'none' deletes an attr"),
    ("n = Relu(x) {(\"T\"): float}", "a fixture node names its attrs"),
    ("n = Relu(x) {(k): 1 for k in [\"_a\"]}", "a fixture node names its attrs"),
])
def test_a_fixture_node_neither_deletes_nor_computes_attr_names(line, message):
    with pytest.raises(RulesCheckError, match=message) as caught:
        fixture_graph(f"""
            x = Placeholder {{dtype: float, shape: [2]}}
            {line}
        """)
    assert caught.value.line is not None and caught.value.column is not None


def test_an_edit_to_an_op_with_fewer_outputs_than_are_read_fails():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [1, 2, 2, 2]}
        c = Const([1.0, 2.0])
        bn = FusedBatchNormV3(x, c, c, c, c) {is_training: false}
        out = AddV2(bn, bn:5)
    """)
    with pytest.raises(RewriteError, match="node 'out'"):
        apply_rules(graph, compile_rules("""
            rule to-v1:
                n = FusedBatchNormV3(x, *, *, *, *)
                => n {op: "FusedBatchNorm"}
        """), protected=["x", "out"])
    assert graph["bn"].op == "FusedBatchNormV3"


def test_an_edit_that_changes_an_output_type_has_its_readers_checked():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        n = Cast(x) {SrcT: float, DstT: float}
        out = Neg(n)
    """)
    with pytest.raises(RewriteError, match="node 'out'"):
        apply_rules(graph, compile_rules("""
            rule to-int:
                n = Cast(x)
                => n {DstT: int32}
        """), protected=["x", "out"])
    assert graph["n"].get_attr("DstT") == 1


def test_a_name_bound_to_a_slice_of_tensors_keeps_every_tensor(tf):
    """`=> ys = xs[1:]` names two tensors; the AddN reading ys must get both (it got the first)."""
    rules = """
        rule drop-first:
            n = AddN(xs...)
            where len(xs) == 3
            => ys = xs[1:]
            => n -> AddN(ys)
    """
    feeds = {name: np.full(2, value, np.float32) for name, value in (("a", 1.0), ("b", 2.0), ("c", 4.0))}

    def body():
        a, b, c = (tf.compat.v1.placeholder(tf.float32, [2], name=name) for name in "abc")
        tf.negative(tf.math.add_n([a, b, c]), name="out")
    graph = Graph.from_bytes(_tf_graph(tf, body))
    apply_rules(graph, compile_rules(rules), protected=[*feeds, "out"])
    addn = graph[graph["out"].inputs[0].node]
    assert addn.op == "AddN" and [ref.node for ref in addn.inputs] == ["b", "c"]
    [got] = tf_run(graph.to_bytes(), feeds, ["out"])
    np.testing.assert_array_equal(got, np.full(2, -6.0, np.float32))
