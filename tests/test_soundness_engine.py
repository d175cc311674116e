"""Sound rewriting (issue 11): what the engine writes is valid, keeps its outputs' meaning, and
terminates. Each test failed before its fix; the numbers come from the evaluator on the graph as
it was, never from our own rewritten output.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gtt_rules
from conftest import compile_rules, fixture_graph
from gtt_rules.cli import main
from gtt_rules.engine import op_registry, validation
from gtt_rules.engine.driver import apply_rules
from gtt_rules.engine.evaluator import evaluate
from gtt_rules.engine.graph import Graph, TensorRef
from gtt_rules.errors import GraphError, RewriteError
from gtt_rules.rules.fixtures import run_file
from gtt_rules import load_rules, standard_library

FLOAT = 1


def run(graph: Graph, rules_text: str, protected):
    return apply_rules(graph, compile_rules(rules_text), protected=protected)


# ---- 1. the heir rule: an output name stays with what it computed ----

HEIR_RULE = """
    rule scale:
        n = AddV2(a, b)
        where is_output(n)
        => n -> Mul(n(a, b), Const(3.0))
"""


def test_output_name_goes_to_the_replacement_root_not_the_nested_copy():
    graph = fixture_graph("""
        a = Placeholder {dtype: float, shape: [2]}
        b = Placeholder {dtype: float, shape: [2]}
        n = AddV2(a, b)
    """)
    feeds = {"a": np.array([1, 0], np.float32), "b": np.array([1, 1], np.float32)}
    [before] = evaluate(graph, feeds, ["n"])
    run(graph, HEIR_RULE, protected=["a", "b", "n"])
    assert graph["n"].op == "Mul"
    [copy] = [node for node in graph if node.op == "AddV2"]
    assert copy.name != "n" and copy.name.startswith("n/scale/")
    [after] = evaluate(graph, feeds, ["n"])
    np.testing.assert_allclose(after, before * 3)


def test_a_graph_input_still_hands_its_name_to_its_copy():
    # The placeholder is what is fed: its retyped copy keeps the name.
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        out = Relu(x)
    """)
    run(graph, """
        rule retype:
            x = Placeholder {dtype: float}
            => x -> Cast(x() {dtype: half}) {SrcT: half, DstT: float}
    """, protected=["x", "out"])
    assert graph["x"].op == "Placeholder" and graph["x"].get_attr("dtype") == 19
    assert graph["out"].inputs[0].node != "x" and graph[graph["out"].inputs[0].node].op == "Cast"


_UNARY = ["Neg", "Relu", "Abs", "Square"]
_BINARY = ["AddV2", "Mul", "Sub", "Maximum"]


@st.composite
def heir_cases(draw):
    """A random small float graph and a rule of the heir family: a binary root replaced by an
    outer op around a copy of itself (`n -> Outer(n(a, b), ...)`)."""
    depth = draw(st.integers(1, 4))
    nodes = ["x = Placeholder {dtype: float, shape: [3]}", "y = Placeholder {dtype: float, shape: [3]}"]
    names = ["x", "y"]
    for i in range(depth):
        if draw(st.booleans()):
            op = draw(st.sampled_from(_UNARY))
            nodes.append(f"v{i} = {op}({draw(st.sampled_from(names))})")
        else:
            op = draw(st.sampled_from(_BINARY))
            nodes.append(f"v{i} = {op}({draw(st.sampled_from(names))}, {draw(st.sampled_from(names))})")
        names.append(f"v{i}")
    root = draw(st.sampled_from(_BINARY))
    nodes.append(f"out = {root}({draw(st.sampled_from(names))}, {draw(st.sampled_from(names))})")
    swap = draw(st.booleans())
    outer = draw(st.sampled_from(["unary", "binary-const", "binary-input"]))
    copy = "n(b, a)" if swap and root in ("AddV2", "Mul", "Maximum") else "n(a, b)"
    others = [op for op in _BINARY if op != root]  # an outer op like the root would fire again
    if outer == "unary":
        replacement = f"{draw(st.sampled_from(_UNARY))}({copy})"
    elif outer == "binary-const":
        replacement = f"{draw(st.sampled_from(others))}({copy}, Const({draw(st.sampled_from(['2.0', '-1.5']))}))"
    else:
        replacement = f"{draw(st.sampled_from(others))}({copy}, a)"
    rule = f"rule heir:\n    n = {root}(a, b)\n    where is_output(n)\n    => n -> {replacement}\n"
    return "\n".join(nodes), rule, replacement


def _expected(graph: Graph, replacement: str, feeds) -> np.ndarray:
    """What `out` must compute after the rule: the replacement applied to the old `out`, worked
    out by the evaluator on a graph built by hand from the original (not by the engine)."""
    [old] = evaluate(graph, feeds, ["out"])
    [a, b] = evaluate(graph, feeds, [str(r) for r in graph["out"].inputs])
    op = replacement.split("(")[0]
    inner = old
    text = "o = Placeholder {dtype: float, shape: [3]}\n"
    if replacement.endswith(", a)"):
        text += f"a = Placeholder {{dtype: float, shape: [3]}}\nr = {op}(o, a)"
        extra = {"a": a}
    elif "Const(" in replacement:
        value = replacement.split("Const(")[1].split(")")[0]
        text += f"r = {op}(o, {value})"
        extra = {}
    else:
        text += f"r = {op}(o)"
        extra = {}
    [result] = evaluate(fixture_graph(text), {"o": inner, **extra}, ["r"])
    return result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heir_cases(), st.integers(0, 2**16))
def test_heir_rule_keeps_every_output_meaning(case, seed):
    graph_text, rule, replacement = case
    graph = fixture_graph(graph_text)
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.normal(size=3).astype(np.float32), "y": rng.normal(size=3).astype(np.float32)}
    expected = _expected(graph, replacement, feeds)
    apply_rules(graph, compile_rules(rule), protected=["x", "y", "out"])
    graph.check()
    [after] = evaluate(graph, feeds, ["out"])
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)


# ---- 2. validation: count attrs, and invalid nodes are the rule's error ----

def test_count_attrs_of_several_list_arguments():
    fused = op_registry.get_op("_FusedConv2D")
    # One spare input: host_args' count has a default (0), so the args list takes it.
    assert op_registry.infer_input_attrs(fused, [FLOAT] * 3, {}) == \
        {"T": FLOAT, "TArgs": [FLOAT], "num_host_args": 0}
    # Given one count, the other is what is left.
    assert op_registry.infer_input_attrs(fused, [FLOAT] * 4, {"num_host_args": 1}) == \
        {"T": FLOAT, "TArgs": [FLOAT]}
    # Lists that share one count split the spare inputs evenly.
    quantized_concat = op_registry.get_op("QuantizedConcat")
    assert op_registry.infer_input_attrs(quantized_concat, [3, 12, 12, 1, 1, 1, 1], {})["N"] == 2
    # Three counts open and no defaults: the rule must say.
    with pytest.raises(op_registry.AmbiguousInputs, match="all but one of the attrs N, sparse_types, dense_types"):
        op_registry.infer_input_attrs(op_registry.get_op("SparseCross"), [9] * 5, {})


def test_count_attrs_are_right_for_every_op_in_the_registry():
    """For every op: give each list argument a distinct length, build the inputs, leave out the
    count attrs that can be solved for, and infer them back."""
    for name in op_registry.all_op_names():
        op_def = op_registry.get_op(name)
        variables = list(dict.fromkeys(a.number_attr or a.type_list_attr for a in op_def.inputs
                                       if a.number_attr or a.type_list_attr))
        if not variables:
            continue
        lengths = {v: i + 2 for i, v in enumerate(variables)}
        count = sum(lengths.get(a.number_attr or a.type_list_attr, 1) for a in op_def.inputs)
        dtypes = [FLOAT] * count
        number = {v for v in variables if op_def.attrs[v].type == "int"}
        given_all = {v: (lengths[v] if v in number else [FLOAT] * lengths[v]) for v in variables}
        for open_variable in variables:  # all but one given: the last is solved for
            given_attrs = {v: x for v, x in given_all.items() if v != open_variable}
            found = op_registry.infer_input_attrs(op_def, dtypes, given_attrs)
            want = lengths[open_variable] if open_variable in number else [FLOAT] * lengths[open_variable]
            assert found[open_variable] == want, (name, open_variable, found)
            attrs = {**given_attrs, **found}
            assert op_registry.input_count(op_def, lambda a: attrs[a] if a in attrs else
                                           (_ for _ in ()).throw(KeyError(a))) in (count, None), name


FUSED_RULES = """
    rule fuse:
        b = BiasAdd(c, bias)
        c = Conv2D(x, w) {strides: s, padding: p}
        => b -> _FusedConv2D(x, w, bias) {strides: s, padding: p, fused_ops: ["BiasAdd"], num_args: 1, T: float}
"""


def _conv_graph() -> Graph:
    return fixture_graph("""
        x = Placeholder {dtype: float, shape: [1, 4, 4, 1]}
        w = Const([[[[1.0]]]])
        c = Conv2D(x, w) {strides: [1, 1, 1, 1], padding: "VALID"}
        bias = Const([0.5])
        out = BiasAdd(c, bias)
    """)


def test_fused_conv_built_by_a_rule_gets_its_counts_and_loads():
    graph = _conv_graph()
    run(graph, FUSED_RULES, protected=["x", "out"])
    fused = graph["out"]
    assert fused.op == "_FusedConv2D"
    assert fused.get_attr("num_host_args") == 0 and fused.get_attr("TArgs") == [FLOAT]
    Graph.from_bytes(graph.to_bytes()).check()


def test_a_rule_that_would_write_an_invalid_node_fails_naming_the_rule(tmp_path):
    graph = _conv_graph()
    before = graph.to_bytes()
    rules = """
    rule bad:
        n = BiasAdd(c, bias)
        => n -> Conv2D(c, bias) {strides: [1, 1, 1, 1], padding: "NOWHERE"}
    """
    with pytest.raises(RewriteError) as caught:
        run(graph, rules, protected=["x", "out"])
    message = str(caught.value)
    assert message.startswith("t.rules:2:") and "'bad'" in message and "padding" in message
    assert "\n" not in message
    assert graph.to_bytes() == before  # atomic: the graph stays as it was


def test_a_rule_with_an_undecidable_split_says_so():
    graph = _conv_graph()
    rules = """
    rule cross:
        n = BiasAdd(c, bias)
        => n -> SparseCross(c, bias, c, bias, c)
    """
    with pytest.raises(RewriteError) as caught:
        run(graph, rules, protected=["x", "out"])
    assert str(caught.value).startswith("t.rules:2: rule 'cross' at 'out' builds a SparseCross node: cannot "
                                        "tell how 5 inputs split")
    assert "give all but one of the attrs N, sparse_types, dense_types" in str(caught.value)


def test_a_rule_that_closes_a_cycle_fails():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        a = Relu(x)
        out = Neg(a)
    """)
    before = graph.to_bytes()
    with pytest.raises(RewriteError, match="cycle"):
        run(graph, """
        rule loop:
            n = Neg(a)
            a = Relu(x)
            => x -> Abs(n)
        """, protected=["out"])
    assert graph.to_bytes() == before


def test_apply_writes_nothing_invalid_and_exits_2(tmp_path, capsys):
    source = tmp_path / "in.pb"
    _conv_graph().save(source)
    rules = tmp_path / "bad.rules"
    rules.write_text(textwrap.dedent("""
    rule bad:
        n = BiasAdd(c, bias)
        => n -> Conv2D(c, bias) {strides: [1, 1, 1, 1], padding: "NOWHERE"}
    """))
    out = tmp_path / "out.pb"
    assert main(["apply", str(source), "-o", str(out), "--rules", str(rules)]) == 2
    err = capsys.readouterr().err
    assert f"{rules}:2:" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_save_refuses_an_invalid_graph(tmp_path):
    graph = _conv_graph()
    graph["c"].set_attr("padding", "NOWHERE")
    with pytest.raises(GraphError, match="padding"):
        graph.save(tmp_path / "out.pb")
    assert not (tmp_path / "out.pb").exists()


def test_a_loaded_graph_edited_after_loading_is_checked_again_before_saving(tmp_path, monkeypatch):
    _conv_graph().save(tmp_path / "in.pb")
    graph = Graph.load(tmp_path / "in.pb")
    checks = []
    real_validate = validation.validate
    monkeypatch.setattr(validation, "validate", lambda graph: checks.append(1) or real_validate(graph))
    graph.save(tmp_path / "same.pb")        # unchanged since it was loaded and checked
    assert checks == []
    graph["c"].set_attr("padding", "NOWHERE")
    with pytest.raises(GraphError, match="padding"):
        graph.save(tmp_path / "out.pb")
    assert checks == [1] and not (tmp_path / "out.pb").exists()


def test_the_api_returns_only_valid_graphs():
    graph = _conv_graph()
    graph.add_node("odd", "Relu", [TensorRef("c")], attrs={"T": 3})  # reads a float as int32
    with pytest.raises(GraphError, match="odd"):
        gtt_rules.apply(graph, load_rules(["remove_device"]), inputs=["x"], outputs=["out", "odd"])


# ---- 3. exact change detection ----

def test_rerouting_one_port_of_a_surviving_node_terminates():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        s = Split(0, x) {num_split: 2}
        out = Neg(s:0)
        out2 = Relu(s:1)
    """)
    report = run(graph, """
        rule first:
            s = Split(axis, x)
            => s:0 -> Abs(x)
    """, protected=["x", "out", "out2"])
    assert report.fires["first"] == 1
    assert graph[graph["out"].inputs[0].node].op == "Abs"
    assert graph["out2"].inputs == [TensorRef("s", 1)]


def test_fold_fused_batch_norm_with_its_mean_read_terminates_and_folds():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [1, 2, 2, 1]}
        w = Const([[[[2.0]]]])
        conv = Conv2D(x, w) {strides: [1, 1, 1, 1], padding: "VALID"}
        bn = FusedBatchNormV3(conv, Const([1.5]), Const([0.25]), Const([0.5]), Const([4.0])) {epsilon: 0.0, is_training: false}
        out = Relu(bn)
        mean = Identity(bn:1)
    """)
    feeds = {"x": np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)}
    before = evaluate(graph, feeds, ["out", "mean"])
    stages = load_rules(["fold_batch_norms"])
    gtt_rules.apply(graph, stages, inputs=["x"], outputs=["out", "mean"])
    assert graph[graph["out"].inputs[0].node].op == "BiasAdd"
    after = evaluate(graph, feeds, ["out", "mean"])
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_node_replaced_by_its_likeness_is_no_change():
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        out = AddV2(x, x)
    """)
    for replacement in ("n(b, a)", "AddV2(b, a)"):
        report = run(graph, f"""
            rule swap:
                n = AddV2(a, b)
                => n -> {replacement}
        """, protected=["x", "out"])
        assert report.rewrites == 0


# ---- 5. fixtures: a rule that never fired says so ----

def test_a_test_whose_rule_never_fired_says_so(tmp_path):
    path = tmp_path / "t.rules"
    path.write_text(textwrap.dedent("""
    rule neg-neg:
        n = Neg(m)
        m = Neg(x)
        => n -> x

    test neg-neg:
        given:
            x = Placeholder {dtype: float, shape: [2]}
            m = Relu(x)
            out = Neg(m)
        expect:
            out = Identity(x)
    """))
    [result] = run_file(path, standard_library())
    assert not result.passed
    assert "rule neg-neg never fired" in result.message
    assert "out = Neg(m)" in result.message  # the graph it got


# ---- 4. liveness through control edges ----

def _with_controls(graph: Graph, edges: dict[str, list[str]]) -> Graph:
    for name, controls in edges.items():
        graph.set_inputs(graph[name], graph[name].inputs, controls)
    return graph


def _keras_like_graph() -> Graph:
    """A frozen Keras graph in miniature: the weight hangs on a NoOp the output waits on."""
    return _with_controls(fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        w = Const([2.0, 3.0])
        deps = NoOp()
        m = Mul(x, w)
        out = Identity(m)
    """), {"deps": ["w"], "out": ["deps"]})


def test_strip_unused_nodes_drops_what_only_pure_control_edges_reach():
    graph = _keras_like_graph()
    graph.add_node("c", "Const", attrs={"dtype": FLOAT, "value": np.float32(1.0)})
    graph.add_node("unused", "NoOp", control_inputs=["c"])
    graph.set_inputs(graph["m"], graph["m"].inputs, ["unused"])
    gtt_rules.apply(graph, load_rules(["strip_unused_nodes"]), inputs=["x"], outputs=["out"])
    assert "deps" not in graph and "unused" not in graph and "c" not in graph and "w" in graph
    assert graph["out"].control_inputs == [] and graph["m"].control_inputs == []


def test_control_edges_from_side_effects_stay():
    graph = _with_controls(fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        ok = Const(true)
        check = Assert(ok, x) {T: [float]}
        deps = NoOp()
        out = Neg(x)
    """), {"deps": ["check"], "out": ["deps"]})
    gtt_rules.apply(graph, load_rules(["strip_unused_nodes", "remove_trivial_control_dependencies"]),
                    inputs=["x"], outputs=["out"])
    assert graph["out"].control_inputs == ["deps"] and graph["deps"].control_inputs == ["check"]


def test_a_rewrite_sweeps_a_weight_only_a_pure_control_edge_reads():
    graph = _keras_like_graph()
    report = run(graph, """
        rule scale:
            m = Mul(x, w: Const)
            where min(value(w)) == 2.0
            => m -> Mul(x, Const(value(w) * 2.0))
    """, protected=["x", "out"])
    assert report.fires["scale"] == 1
    assert "w" not in graph and graph["deps"].control_inputs == []
    feeds = {"x": np.array([1.0, 1.0], np.float32)}
    np.testing.assert_allclose(evaluate(graph, feeds, ["out"])[0], [4.0, 6.0])


def test_a_copy_does_not_carry_pure_control_edges():
    graph = _with_controls(fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        c = Const(1.0)
        n = Relu(x)
        out = Neg(n)
    """), {"n": ["c"]})
    run(graph, """
        rule relu6:
            n = Relu(x)
            => n -> Relu6(x)
    """, protected=["x", "out"])
    assert graph[graph["out"].inputs[0].node].control_inputs == [] and "c" not in graph


def test_purity_walk_is_bounded_and_keeps_the_edge_past_its_bound(monkeypatch):
    from gtt_rules.engine import graph as graph_module

    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        a = Relu(x)
        b = Relu(a)
        c = Relu(b)
        d = Relu(c)
    """)
    assert graph.orders_nothing("d")
    monkeypatch.setattr(graph_module, "_PURITY_WALK", 2)
    assert not graph.orders_nothing("d")  # not known within the bound: the edge is kept


def test_a_new_node_over_a_copy_gets_its_type_attrs():
    # Found by the differential fuzzer: the outer Neg read a copy of the matched Tanh and got no T,
    # which TensorFlow refuses ("NodeDef missing attr 'T'"), and dtype() guards on it were false.
    graph = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2]}
        t = Tanh(x)
        out = Square(t)
    """)
    run(graph, """
        rule t:
            n = Tanh(x)
            where not only_read_by(n, ["Neg"])
            => n -> Neg(n(Neg(x)))
    """, protected=["x", "out"])
    assert graph["t"].op == "Neg" and graph["t"].get_attr("T") == FLOAT


def test_a_rule_leaving_out_an_attr_without_default_fails_naming_it():
    graph = _conv_graph()
    with pytest.raises(RewriteError, match="needs attr 'num_args', which has no default"):
        run(graph, FUSED_RULES.replace("num_args: 1, ", ""), protected=["x", "out"])
    assert graph["out"].op == "BiasAdd"
