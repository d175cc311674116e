"""The graph-edit core (issue 13, item 4): what a rewrite checks, reroutes, names and sweeps.

A rewrite's checks look only at what it changed (issue 12's speed): the attrs it computed, the
inputs it rerouted. These tests hold the checks to still catch each kind of change.
"""
from __future__ import annotations

import pytest

from conftest import compile_rules, fixture_graph
from gtt_rules.engine.driver import apply_rules
from gtt_rules.errors import RewriteError


def run(graph, rules_text: str, protected):
    return apply_rules(graph, compile_rules(rules_text), protected=protected)


def assert_refused(graph, rules_text: str, message: str) -> None:
    """The rewrite fails with `message`, and leaves the graph as it was."""
    before = graph.to_bytes()
    with pytest.raises(RewriteError, match=message):
        run(graph, rules_text, protected=["x", "out"])
    assert graph.to_bytes() == before


def test_a_copy_with_a_bad_computed_attr_fails():
    # The copy's other attrs come from the matched node and are not checked again; this one is.
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [1, 2, 2, 1]}
        w = Const([[[[2.0]]]])
        out = Conv2D(x, w) {strides: [1, 1, 1, 1], padding: "SAME"}
    """)
    assert_refused(graph, """
        rule bad:
            n = Conv2D(x, w)
            => n -> n(x, w) {padding: "NOWHERE"}
    """, "padding")


def test_a_rerouted_input_of_another_dtype_fails():
    # Only the rerouted input of `out` is checked, and it now reads an int32.
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        r = Relu(x)
        out = Neg(r)
    """)
    assert_refused(graph, """
        rule retype:
            n = Relu(x)
            => n -> Cast(x) {SrcT: float, DstT: int32}
    """, "input 'r' is int32, but Neg takes float")


def test_a_reroute_to_an_existing_tensor_of_another_dtype_fails():
    # Readers of a rerouted tensor go unchecked only when the new tensor has the old one's dtype.
    graph = fixture_graph("""
        x = Placeholder {dtype: int32, shape: [2]}
        c = Cast(x) {SrcT: int32, DstT: float}
        r = Relu(c)
        out = Neg(r)
    """)
    assert_refused(graph, """
        rule skip-cast:
            n = Relu(Cast(x))
            => n -> x
    """, "input 'x' is int32, but Neg takes float")


def test_derived_names_do_not_nest():
    # A Const one rule made, rewritten by the next: its helper is named after the node the Const
    # was made for, not after the Const (which gave `out/make/Const/retag/Const`).
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        out = Neg(x)
    """)
    run(graph, """
        rule make:
            n = Neg(x)
            => n -> Sub(Const(0.0), x)
    """, protected=["x", "out"])
    assert "out/make/Const" in graph
    run(graph, """
        rule retag:
            c = Const {dtype: float}
            where not only_read_by(c, ["Identity"])
            => c -> Identity(Const(value(c) + 1.0))
    """, protected=["x", "out"])
    assert graph["out/make/Const"].op == "Identity"
    assert graph["out/make/Const"].inputs[0].node == "out/retag/Const"


# ---- the graph-edit core: one reroute, one control-edge policy, one sweep, one walk ----

def _graph():
    from gtt_rules.engine.graph import Graph

    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": FLOAT})
    graph.add_node("effect", "Print", ["x"], attrs={"T": FLOAT, "U": []})  # a side effect to order
    return graph


FLOAT = 1


def test_reroute_returns_the_positions_it_changed():
    from gtt_rules.engine.graph import TensorRef

    graph = _graph()
    graph.add_node("a", "Relu", ["x"])
    graph.add_node("b", "AddV2", ["a", "a"])
    graph.add_node("c", "Neg", ["x"])
    assert graph.reroute(TensorRef("a"), TensorRef("x")) == {"b": [0, 1]}
    assert graph["b"].inputs == [TensorRef("x"), TensorRef("x")]


def test_hand_over_moves_waiting_nodes_and_ordering_control_inputs_only():
    graph = _graph()
    graph.add_node("w", "Const", attrs={"dtype": FLOAT, "value": 1.0})
    graph.add_node("old", "Relu", ["x"], ["effect", "w"])
    graph.add_node("new", "Relu", ["x"])
    graph.add_node("later", "Neg", ["x"], ["old"])
    assert graph.hand_over("old", "new") == ["later"]
    assert graph["later"].control_inputs == ["new"]
    assert graph["new"].control_inputs == ["effect"]  # a Const's edge orders nothing


def test_succeed_gives_the_heir_the_place_the_name_and_the_ordering_control_edges():
    from gtt_rules.engine.graph import TensorRef

    graph = _graph()
    graph.add_node("w", "Const", attrs={"dtype": FLOAT, "value": 1.0})
    graph.add_node("old", "Relu", ["x"], ["effect", "w"])
    graph.add_node("later", "Neg", ["old"], ["old"])
    graph.add_node("new", "Elu", ["x"])
    assert graph.succeed("old", "new", in_place=True) == ["later"]
    assert (graph["old"].op, graph["old"].control_inputs) == ("Elu", ["effect"])
    assert (graph["later"].inputs, graph["later"].control_inputs) == ([TensorRef("old")], ["old"])
    assert "new" not in graph
    graph.add_node("unread", "Relu", ["x"])
    graph.add_node("heir", "Neg", ["x"])
    graph.succeed("unread", "heir")  # nothing reads the old node: removed, its name taken over
    assert graph["unread"].op == "Neg" and "heir" not in graph


def test_edit_node_says_which_attrs_changed_and_keeps_those_asked():
    from gtt_rules.engine.proto import graph_def_pb2 as pb

    graph = _graph()
    node = graph.add_node("r", "LeakyRelu", ["x"], attrs={"alpha": 0.5})
    same = {key: node.attr_value(key) for key in ("T", "alpha")}
    assert graph.edit_node("r", "LeakyRelu", "", same) is None
    assert graph.edit_node("r", "LeakyRelu", "/cpu:0", same) == ()
    alpha = pb.AttrValue(f=0.25)
    assert graph.edit_node("r", "LeakyRelu", "/cpu:0", {"alpha": alpha}, keep=["T"]) == ("alpha",)
    assert graph.edit_node("r", "Relu", "/cpu:0", {}, keep=["T"], control_inputs=["effect"]) == ("alpha",)
    assert (node.op, node.get_attr("T"), node.attr_value("alpha"), node.control_inputs) == \
        ("Relu", FLOAT, None, ["effect"])


def test_a_transaction_undoes_on_request_and_stays_open():
    graph = _graph()
    before = graph.to_bytes()
    with graph.transaction() as outer:
        graph.add_node("a", "Relu", ["x"])
        with graph.transaction() as inner:
            graph.add_node("b", "Neg", ["a"])
            graph.remove_node("effect")
            inner.undo()  # only what the inner transaction did
        assert [node.name for node in graph] == ["x", "effect", "a"]  # back in its place
        graph.add_node("c", "Neg", ["a"])
        outer.undo()
        assert graph.to_bytes() == before
        graph.add_node("d", "Relu", ["x"])  # still open: this edit stays
    assert "d" in graph
    with pytest.raises(RuntimeError):
        with graph.transaction():
            graph.remove_node("d")
            raise RuntimeError
    assert [node.name for node in graph] == ["x", "effect", "d"]  # back, in its place


def test_get_sees_every_edit_after_an_undo_and_a_reorder():
    # `Graph.get` is the node dict's own method: the dict must only ever change in place, or
    # `get` would answer from a stale copy after the undo puts nodes back in order, or a reorder.
    graph = _graph()
    with graph.transaction() as edits:
        graph.remove_node("effect")
        edits.undo()
    graph.add_node("a", "Relu", ["x"])
    assert graph.get("effect") is graph["effect"] and graph.get("a") is graph["a"]
    graph.reorder(["a", "effect", "x"])
    graph.remove_node("a")
    graph.add_node("b", "Neg", ["x"])
    assert graph.get("a") is None and graph.get("b") is graph["b"]
    assert [node.name for node in graph] == ["effect", "x", "b"]


def test_implied_attrs_of_a_new_node():
    graph = _graph()
    graph.add_node("axis", "Const", attrs={"dtype": 3, "value": 0})
    concat = graph.add_node("c", "ConcatV2", ["x", "x", "x", "axis"])
    assert (concat.get_attr("N"), concat.get_attr("T"), concat.get_attr("Tidx")) == (3, FLOAT, 3)


def test_sweep_removes_what_only_pure_control_edges_read():
    graph = _graph()
    graph.add_node("w", "Const", attrs={"dtype": FLOAT, "value": 1.0})
    graph.add_node("dead", "Relu", ["w"])
    graph.add_node("out", "Neg", ["x"], ["w"])
    removed, touched = graph.sweep(["dead"], protected={"x", "out"})
    assert removed == {"dead": "Relu", "w": "Const"} and list(removed) == ["dead", "w"] and "w" not in graph
    assert graph["out"].control_inputs == [] and "out" in touched


def test_fresh_names_are_unique():
    graph = _graph()
    first = graph.fresh_name("x/pass")
    graph.add_node(first, "Identity", ["x"])
    assert (first, graph.fresh_name("x/pass")) == ("x/pass", "x/pass_1")


def test_frozen_ranges_keep_what_waited_on_the_range():
    # Calibration used to drop the control edges from a range it froze; it hands them to the
    # Const that takes its place, as a rewrite does.
    from gtt_rules import calibration

    graph = _graph()
    graph.add_node("axis", "Const", attrs={"dtype": 3, "value": 0})
    graph.add_node("low", "Min", ["x", "axis"])
    graph.add_node("out", "Neg", ["x"], ["low"])
    calibration.freeze_ranges(graph, {"low": (-1.0, 1.0)}, protected=["x", "out"])
    assert "low" not in graph and "axis" not in graph
    assert graph["out"].control_inputs == ["low/frozen"]
    assert float(graph["low/frozen"].get_attr("value")) == -1.0


def test_strip_unused_nodes_keeps_what_waited_on_an_input():
    # As in GTT, where the Placeholder takes the input's name, the edge stays (it was dropped).
    from gtt_rules.rules.passes import PassContext
    from gtt_rules.stdlib_rules.passes import strip_unused_nodes

    graph = _graph()
    graph.add_node("y", "Relu", ["x"])
    graph.add_node("out", "Neg", ["y"], ["effect"])
    graph.add_node("after", "Identity", ["out"], ["y"])
    params = {"type": FLOAT, "shape": "", "name": [], "type_for_name": [], "shape_for_name": []}
    strip_unused_nodes(graph, PassContext(params, ("y",), ("after",)))
    assert graph["y"].op == "Placeholder" and not graph["y"].inputs and not graph["y"].control_inputs
    assert graph["after"].control_inputs == ["y"]
    assert sorted(node.name for node in graph) == ["after", "effect", "out", "x", "y"]


def test_remove_nodes_takes_a_set_that_feeds_itself_and_nothing_else():
    graph = _graph()
    graph.add_node("a", "Relu", ["x"])
    graph.add_node("b", "Neg", ["a"], ["a"])
    graph.remove_nodes(["a", "b"])
    assert "a" not in graph and "b" not in graph and [c.name for c in graph.consumers("x")] == ["effect"]
    graph.add_node("c", "Relu", ["x"])
    graph.add_node("d", "Neg", ["c"])
    with pytest.raises(Exception, match="cannot remove 'c'"):
        graph.remove_nodes(["c"])


def test_renaming_nodes_renames_the_colocation_attrs_that_name_them():
    graph = _graph()
    graph.add_node("w", "Relu", ["x"])
    reader = graph.add_node("r", "Neg", ["w"])
    reader.attr["_class"].list.s.extend([b"loc:@w", b"loc:@x", b"other"])
    graph.rename_nodes({"w": "v"})
    assert list(graph["r"].attr["_class"].list.s) == [b"loc:@v", b"loc:@x", b"other"]
    assert graph["r"].inputs[0].node == "v"

