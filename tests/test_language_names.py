"""Issue 13: a replacement names the nodes it builds (`{name: EXPR}`), and builds one copy per
element of a list (`[l(...) for l in layers]`). TensorFlow runs the graphs before and after."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_rules, fixture_graph, tf_run
from gtt_rules.engine.driver import apply_rules
from gtt_rules.engine.graph import Graph
from gtt_rules.errors import RewriteError, RulesCheckError


def _apply(rules_text: str, graph_text: str, protected=("x", "out")) -> Graph:
    graph = fixture_graph(graph_text)
    apply_rules(graph, compile_rules(rules_text), protected=list(protected))
    return graph


RELU = """
    x   = Placeholder {dtype: float, shape: [2]}
    r   = Relu6(x)
    out = Neg(r)
"""


def test_a_new_node_takes_a_free_name():
    graph = _apply("""
        rule clip:
            r = Relu6(x)
            => r -> Minimum(Relu(x), Const(6.0) {name: name(r) + "/six"})
    """, RELU)
    assert graph["r/six"].op == "Const" and graph["r"].op == "Minimum"
    assert graph["r"].inputs[1].node == "r/six"


def test_a_name_a_kept_node_has_gets_a_fresh_variant():
    graph = _apply("""
        rule clip:
            r = Relu6(x)
            => r -> Minimum(Relu(x), Const(6.0) {name: name(x)})
    """, RELU)
    assert graph["x"].op == "Placeholder" and graph["x_1"].op == "Const"


def test_a_copy_takes_the_name_of_the_matched_node_the_rewrite_removes():
    # The inner Relu6 goes; its copy (with another input) takes its name, not `out/rule/Relu6`.
    graph = _apply("""
        rule move-neg-up:
            r   = Relu6(x)
            out = Neg(r)
            => out -> Abs(r(Neg(x)) {name: name(r)})
    """, RELU)
    assert sorted(n.name for n in graph) == ["out", "out/move-neg-up/Neg", "r", "x"]
    assert graph["r"].op == "Relu6" and graph["r"].inputs[0].node == "out/move-neg-up/Neg"
    assert graph["out"].op == "Abs" and graph["out"].inputs[0].node == "r"


def test_the_roots_heir_keeps_the_roots_name_whatever_name_it_is_given():
    graph = _apply("""
        rule relu:
            r = Relu6(x)
            => r -> Relu(x) {name: "elsewhere"}
    """, RELU)
    assert graph["r"].op == "Relu" and "elsewhere" not in graph


@pytest.mark.parametrize("name", ['""', 'attr(r, "T")'])
def test_a_name_that_is_not_a_string_fails_the_rewrite_and_leaves_the_graph(name):
    graph = fixture_graph(RELU)
    with pytest.raises(RewriteError, match="is not a node name"):
        apply_rules(graph, compile_rules(f"""
            rule bad-name:
                r = Relu6(x)
                => r -> Minimum(Relu(x), Const(6.0) {{name: {name}}})
        """), protected=["x", "out"])
    assert [n.op for n in graph] == ["Placeholder", "Relu6", "Neg"]


@pytest.mark.parametrize("body, message", [
    ("n = Relu(x)\n    => n -> Relu6(x) {name: 3}", "a node's name is a string, not a value"),
    ("n = Relu(x)\n    => n -> n {name: none}", "'none' deletes an attr; a node's name is not one"),
    ("n = Relu(x)\n    => n {name: \"m\"}", "an edit keeps its node's name"),
    ("n = Relu(x)\n    => n -> Const(1.0) {name: 1.0}", "a node's name is a string, not a value"),
    ("n = Relu(x)\n    => n -> Relu6(x) {name: name(x) + 1}", "'\\+' needs numbers or tensors, not a string"),
    ("n = ConcatV2(xs..., a)\n    => n -> ConcatV2([l(x) for l in xs], a)", "unbound name 'x'"),
])
def test_names_and_per_element_copies_are_checked_before_any_graph_is_read(body, message):
    with pytest.raises(RulesCheckError, match=message) as caught:
        compile_rules(f"rule r:\n    {body}\n")
    assert caught.value.line is not None and caught.value.column is not None


def _tf_graph(tf, body) -> bytes:
    with tf.Graph().as_default() as graph:
        body(tf)
    return graph.as_graph_def().SerializeToString()


def _concat_of_scaled(tf):
    x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
    parts = [tf.multiply(x, tf.constant(float(k + 2)), name=f"scaled{k}") for k in range(3)]
    tf.identity(tf.concat(parts, axis=1), name="out")


def test_one_copy_per_element_each_with_its_own_computed_const_and_name(tf):
    original = _tf_graph(tf, _concat_of_scaled)
    graph = Graph.from_bytes(original)
    apply_rules(graph, compile_rules("""
        rule double-each-part:
            n = ConcatV2(ms...: Mul(*, Const), axis: Const)
            where all([value(inputs(m)[1]) < 10.0 for m in ms])
            => n -> ConcatV2([m(inputs(m)[0], Const(value(inputs(m)[1]) * 10.0)) {name: name(m)} for m in ms], axis)
    """), protected=["x", "out"])
    # Each copy took its Mul's name, and its own Const (computed for its element, not the first).
    factors = [float(graph[graph[f"scaled{k}"].inputs[1].node].get_attr("value")) for k in range(3)]
    assert factors == [20.0, 30.0, 40.0] and graph["concat"].op == "ConcatV2"
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    before, = tf_run(original, feeds, ["out"])
    after, = tf_run(graph.to_bytes(), feeds, ["out"])
    np.testing.assert_allclose(after, before * 10.0, rtol=1e-6)


def test_a_new_node_per_kept_element(tf):
    original = _tf_graph(tf, _concat_of_scaled)
    graph = Graph.from_bytes(original)
    apply_rules(graph, compile_rules("""
        rule relu-after-each-part:
            n   = ConcatV2(ms..., axis: Const)
            out = Identity(n)
            => out -> ConcatV2([Relu(m) {name: name(m) + "/relu"} for m in ms if op(m) == "Mul"], axis)
    """), protected=["x", "out"])
    assert {f"scaled{k}/relu" for k in range(3)} <= {n.name for n in graph}
    feeds = {"x": np.arange(-3, 3, dtype=np.float32).reshape(2, 3)}
    before = tf_run(original, feeds, ["out"])[0]
    after = tf_run(graph.to_bytes(), feeds, ["out"])[0]
    np.testing.assert_array_equal(after, np.maximum(before, 0.0))


def test_a_list_of_nodes_cannot_replace_one_node():
    with pytest.raises(RewriteError, match="replaces one node with a list of nodes"):
        _apply("""
            rule many:
                n = ConcatV2(ms..., axis: Const)
                => n -> [Relu(m) for m in ms]
        """, """
            x   = Placeholder {dtype: float, shape: [2]}
            n   = ConcatV2(x, x, Const(0))
            out = Neg(n)
        """)


def test_every_output_rerouted_to_an_existing_tensor():
    # `n:* -> x` with x a tensor of the match, not a node built: output 0 of n is x.
    graph = _apply("""
        rule skip-identity:
            n = Identity(x)
            => n:* -> x
    """, """
        x   = Placeholder {dtype: float, shape: [2]}
        n   = Identity(x)
        out = Neg(n)
    """)
    assert [node.name for node in graph] == ["x", "out"] and graph["out"].inputs[0].node == "x"
