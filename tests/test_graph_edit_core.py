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


def _conv_graph():
    return fixture_graph("""
        x = Placeholder {dtype: float, shape: [1, 4, 4, 1]}
        w = Const([[[[1.0]]]])
        c = Conv2D(x, w) {strides: [1, 1, 1, 1], padding: "VALID"}
        bias = Const([0.5])
        out = BiasAdd(c, bias)
    """)


def test_a_copy_with_a_bad_computed_attr_fails():
    # The copy's other attrs come from the matched node and are not checked again; this one is.
    graph = _conv_graph()
    before = graph.to_bytes()
    with pytest.raises(RewriteError, match="padding"):
        run(graph, """
        rule bad:
            n = Conv2D(x, w)
            => n -> n(x, w) {padding: "NOWHERE"}
        """, protected=["x", "out"])
    assert graph.to_bytes() == before


def test_a_rerouted_input_of_another_dtype_fails():
    # Only the rerouted input of `out` is checked, and it now reads an int32.
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        r = Relu(x)
        out = Neg(r)
    """)
    before = graph.to_bytes()
    with pytest.raises(RewriteError, match="input 'r' is int32, but Neg takes float"):
        run(graph, """
        rule retype:
            n = Relu(x)
            => n -> Cast(x) {SrcT: float, DstT: int32}
        """, protected=["x", "out"])
    assert graph.to_bytes() == before


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
