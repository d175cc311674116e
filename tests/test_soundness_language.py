"""Language semantics that rewriting soundly depends on (issue 11, items 4, 6 and 7).

- Names inside a variadic element pattern bind once for every element: a common factor.
- Guards are three-valued: what cannot be known is unknown, not false, and decides nothing alone.
- A literal in a pattern matches only a Const whose broadcast cannot change what the node computes.

TensorFlow runs the graphs before and after where a rewrite's meaning is at stake.
"""
from __future__ import annotations


import numpy as np
import pytest

from conftest import compile_rules, fixture_graph, tf_run
from gtt_rules.engine.driver import apply_rules
from gtt_rules.engine.pattern import MatchContext, match
from gtt_rules.engine.graph import Graph
from gtt_rules.errors import RewriteError


def fires(graph: Graph, rules_text: str, protected=("x", "out")) -> int:
    """How often the rules fired on `graph` (rewritten in place)."""
    report = apply_rules(graph, compile_rules(rules_text), protected=list(protected))
    return sum(report.fires.values())


def ops(graph: Graph) -> dict[str, str]:
    return {node.name: node.op for node in graph}


# =====================================================================================
# Variadic element patterns: a name is the same tensor in every element
# =====================================================================================

SAME_PRODUCTS = """
    rule sum-of-equal-products:
        n = AddN(ms...: Mul(x, c: Const))
        => n -> Mul(x, Const(value(c) * len(ms)))
"""


def test_a_name_in_a_variadic_element_is_bound_and_usable_in_the_replacement(tf):
    graph = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        k   = Const(3.0)
        a   = Mul(x, k)
        b   = Mul(k, x)
        out = AddN(a, b, a)
    """)
    original = graph.to_bytes()
    assert fires(graph, SAME_PRODUCTS) == 1
    out = graph["out"]
    assert out.op == "Mul" and str(out.inputs[0]) == "x"
    feeds = {"x": np.array([1.5, -2.0], np.float32)}
    expected, = tf_run(original, feeds, ["out"])
    actual, = tf_run(graph.to_bytes(), feeds, ["out"])
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    np.testing.assert_allclose(actual, [13.5, -18.0], rtol=1e-6)


def test_elements_without_the_common_tensor_do_not_match():
    graph = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        y   = Placeholder {dtype: float, shape: [2]}
        k   = Const(3.0)
        a   = Mul(x, k)
        b   = Mul(y, k)
        out = AddN(a, b)
    """)
    assert fires(graph, SAME_PRODUCTS, protected=("x", "y", "out")) == 0
    assert ops(graph)["out"] == "AddN"


def test_elements_with_different_constants_do_not_match():
    graph = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        a   = Mul(x, Const(3.0))
        b   = Mul(x, Const(4.0))
        out = AddN(a, b)
    """)
    assert fires(graph, SAME_PRODUCTS) == 0


def test_no_common_factor_no_match_and_no_unbound_name_at_rewrite_time():
    # The rule: before, it matched these two products and failed with "'x' not bound".
    graph = fixture_graph("""
        p   = Placeholder {dtype: float, shape: [2]}
        q   = Placeholder {dtype: float, shape: [2]}
        r   = Placeholder {dtype: float, shape: [2]}
        s   = Placeholder {dtype: float, shape: [2]}
        a   = Mul(p, q)
        b   = Mul(r, s)
        out = AddN(a, b)
    """)
    assert fires(graph, """
        rule common:
            n = AddN(ms...: Mul(x, y))
            => n -> Mul(x, y)
    """, protected=("p", "q", "r", "s", "out")) == 0


def test_a_common_factor_is_found_through_commutative_swaps():
    # x must be p: the first element alone allows p or q, the second decides.
    graph = fixture_graph("""
        p   = Placeholder {dtype: float, shape: [2]}
        q   = Placeholder {dtype: float, shape: [2]}
        r   = Placeholder {dtype: float, shape: [2]}
        a   = Mul(p, q)
        b   = Mul(r, p)
        c   = Mul(p, r)
        out = AddN(a, b, c)
    """)
    assert fires(graph, """
        rule common-factor:
            n = AddN(ms...: Mul(x, *))
            where name(x) == "p"
            => n -> Neg(x)
    """, protected=("p", "q", "r", "out")) == 1
    assert ops(graph)["out"] == "Neg"
    assert str(graph["out"].inputs[0]) == "p"


def test_a_name_shared_with_a_fixed_input_is_the_same_tensor():
    rules = """
        rule relus-of-the-first:
            n = Pack(x, rest...: Relu(x))
            => n -> Neg(x)
    """
    same = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        out = Pack(x, Relu(x), Relu(x))
    """)
    assert fires(same, rules) == 1
    other = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        y   = Placeholder {dtype: float, shape: [2]}
        out = Pack(x, Relu(x), Relu(y))
    """)
    assert fires(other, rules, protected=("x", "y", "out")) == 0


def test_a_name_in_elements_before_a_fixed_input_is_one_tensor(tf):
    rules = """
        rule concat-of-one-relu:
            n = ConcatV2(xs...: Relu(x), axis: Const)
            => n -> Relu(ConcatV2(x, x, axis))
    """
    same = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        r   = Relu(x)
        out = ConcatV2(r, Relu(x), Const(0))
    """)
    original = same.to_bytes()
    assert fires(same, rules) == 1
    feeds = {"x": np.array([-1.0, 2.0], np.float32)}
    np.testing.assert_array_equal(tf_run(same.to_bytes(), feeds, ["out"])[0],
                                  tf_run(original, feeds, ["out"])[0])
    other = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        y   = Placeholder {dtype: float, shape: [2]}
        out = ConcatV2(Relu(x), Relu(y), Const(0))
    """)
    assert fires(other, rules, protected=("x", "y", "out")) == 0


def test_a_pattern_line_used_in_every_element_is_one_node():
    rules = """
        rule shared-conv:
            conv = Relu(x)
            n    = AddN(ms...: Mul(conv, *))
            => n -> Neg(conv)
    """
    same = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        y   = Placeholder {dtype: float, shape: [2]}
        r   = Relu(x)
        out = AddN(Mul(r, y), Mul(y, r))
    """)
    assert fires(same, rules, protected=("x", "y", "out")) == 1
    other = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        y   = Placeholder {dtype: float, shape: [2]}
        out = AddN(Mul(Relu(x), y), Mul(Relu(y), x))
    """)
    assert fires(other, rules, protected=("x", "y", "out")) == 0


def test_an_empty_list_does_not_match_an_element_pattern_that_binds_a_name():
    # With no element, y would be unbound: the match fails instead of the rewrite.
    graph = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        out = Pack(x)
    """)
    assert fires(graph, """
        rule first-and-negations:
            n = Pack(first, rest...: Neg(y))
            => n -> Neg(y)
    """) == 0


def test_an_attr_compared_in_a_variadic_element_is_checked():
    rules = """
        rule all-casts-to-float:
            n = IdentityN(xs...: Cast {DstT: float})
            let second = xs[1]
            => n:1 -> second
    """
    for first_type, expected in (("half", 0), ("float", 1)):
        graph = fixture_graph(f"""
            x   = Placeholder {{dtype: float, shape: [2]}}
            a   = Cast(x) {{SrcT: float, DstT: {first_type}}}
            b   = Cast(x) {{SrcT: float, DstT: float}}
            n   = IdentityN(a, b)
            out = Neg(n:1)
        """)
        assert fires(graph, rules) == expected, first_type


# =====================================================================================
# Three-valued guards
# =====================================================================================

BATCH_UNKNOWN = """
    x   = Placeholder {dtype: float, shape: [-1, 16, 16, 3]}
    out = Relu(x)
"""


def guard_fires(guard: str, graph_text: str = BATCH_UNKNOWN) -> bool:
    graph = fixture_graph(graph_text)
    return fires(graph, f"""
        rule g:
            n = Relu(x)
            where {guard}
            => n -> Relu6(x)
    """) == 1


@pytest.mark.parametrize("guard, expected", [
    ("rank(x) == 4", True),
    ("rank(x) <= 4 and rank(x) > 3", True),
    ("dim(x, 3) == 3", True),
    ("dim(x, -1) == 3 and dim(x, 1) == 16", True),
    ("dim(x, 0) == 1", False),
    ("not dim(x, 0) == 1", False),
    ("dim(x, 0) != 1", False),
    ("dim(x, 0) == 1 or rank(x) == 4", True),
    ("rank(x) == 4 or dim(x, 0) == 1", True),
    ("dim(x, 0) == 1 and rank(x) == 4", False),
    ("not (dim(x, 0) == 1 and rank(x) == 3)", True),
    ("not (dim(x, 0) == 1 or rank(x) == 4)", False),
    ("dim(x, 0) * 2 == 4", False),
    ("dim(x, 0) in [1, 2]", False),
    ("dim(x, 0) not in [1, 2]", False),
    ("dim(x, 1) in [16, 32]", True),
    ("shape(x) == [1, 16, 16, 3]", False),
    ("not shape(x) == [1, 16, 16, 3]", False),
    ("shape(x) != [1, 16, 16, 3]", False),
    ("shape(x) != [1, 16, 16, 4]", True),
    ("shape(x) == [1, 16, 16]", False),
    ("not shape(x) == [1, 16, 16]", True),
    ("shape(x)[1] == 16 and shape(x)[3] == 3", True),
    ("shape(x)[0] == 1", False),
    ("len(shape(x)) == 4", True),
    ("size(x) > 0", False),
    ("not size(x) > 0", False),
    ("size(x) > 0 or true", True),
])
def test_guards_know_what_is_known(guard, expected):
    assert guard_fires(guard) is expected


@pytest.mark.parametrize("guard, vector, expected", [
    ("shape(x) == value(s) or not shape(x) == value(s)", "[1, 16, 16, 3]", 0),
    ("not shape(x) == value(s) and shape(x) != value(s)", "[1, 16, 16, 4]", 1),
    ("not shape(x) == value(s)", "[1, 16, 16]", 1),
])
def test_a_shape_with_unknown_dims_compares_with_a_constant_shape_vector(guard, vector, expected):
    graph = fixture_graph(f"""
        x   = Placeholder {{dtype: float, shape: [-1, 16, 16, 3]}}
        s   = Const({vector})
        out = Reshape(x, s)
    """)
    assert fires(graph, f"""
        rule reshape-to-own-shape:
            n = Reshape(x, s: Const)
            where {guard}
            => n -> Identity(x)
    """) == expected


def test_a_known_zero_dim_makes_the_size_known():
    assert guard_fires("size(x) == 0", """
        x   = Placeholder {dtype: float, shape: [-1, 0, 3]}
        out = Relu(x)
    """)


def test_unknown_rank_is_unknown():
    graph_text = """
        x   = Placeholder {dtype: float}
        out = Relu(x)
    """
    assert not guard_fires("rank(x) == 4", graph_text)
    assert not guard_fires("not rank(x) == 4", graph_text)
    assert guard_fires("rank(x) == 4 or dtype(x) == float", graph_text)


def test_known_shapes_still_compare_as_before():
    graph_text = """
        x   = Placeholder {dtype: float, shape: [1, 16, 16, 3]}
        out = Relu(x)
    """
    assert guard_fires("shape(x) == [1, 16, 16, 3] and dim(x, 0) == 1 and size(x) == 768", graph_text)
    assert guard_fires("not shape(x) == [1, 16, 16, 4]", graph_text)


def test_a_question_about_a_non_constant_is_unknown_not_false():
    # value(x) asks for a Const; x is a Placeholder: that operand decides nothing on its own.
    assert guard_fires("value(x) == 0 or rank(x) == 4")
    assert not guard_fires("value(x) == 0 and rank(x) == 4")
    assert not guard_fires("not value(x) == 0")


def test_a_let_that_is_unknown_rejects_the_match():
    rules = """
        rule fold-shape:
            n = Shape(x)
            let dims = shape(x)
            => n -> Const(dims, int32)
    """
    unknown = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [-1, 3]}
        out = Shape(x)
    """)
    assert fires(unknown, rules) == 0
    known = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2, 3]}
        out = Shape(x)
    """)
    assert fires(known, rules) == 1
    assert known["out"].get_attr("value").tolist() == [2, 3]


def test_an_unknown_value_in_a_replacement_is_an_error_naming_the_rule():
    graph = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [-1, 3]}
        out = Shape(x)
    """)
    with pytest.raises(RewriteError, match=r"rule 'fold-shape'.*not known"):
        fires(graph, """
            rule fold-shape:
                n = Shape(x)
                => n -> Const(shape(x), int32)
        """)


def test_dim_out_of_range_does_not_fire():
    assert not guard_fires("dim(x, 4) == 3")
    assert not guard_fires("dim(x, -5) == 3")


# =====================================================================================
# Literals: a scalar, or a Const whose broadcast cannot change the node's output
# =====================================================================================

SQUARE = """
    rule pow-two-is-square:
        n = Pow(x, 2.0)
        => n -> Square(x)
"""


def test_a_literal_does_not_match_a_const_that_broadcasts_the_output_bigger(tf):
    graph = fixture_graph("""
        x   = Placeholder {dtype: float, shape: [2]}
        two = Const([[2.0, 2.0], [2.0, 2.0]])
        out = Pow(x, two)
    """)
    original = graph.to_bytes()
    feeds = {"x": np.array([3.0, 4.0], np.float32)}
    before, = tf_run(original, feeds, ["out"])
    assert before.shape == (2, 2)  # why it must not become Square(x), of shape [2]
    assert fires(graph, SQUARE) == 0
    assert ops(graph)["out"] == "Pow"


@pytest.mark.parametrize("x_shape, const", [
    ("[2]", "2.0"),
    ("[2]", "[2.0, 2.0]"),
    ("[-1]", "[2.0]"),
    ("[-1, 3]", "[[2.0]]"),
    ("[-1, 3]", "[2.0, 2.0, 2.0]"),
])
def test_a_literal_matches_a_const_that_broadcasts_into_the_other_operand(tf, x_shape, const):
    graph = fixture_graph(f"""
        x   = Placeholder {{dtype: float, shape: {x_shape}}}
        two = Const({const})
        out = Pow(x, two)
    """)
    original = graph.to_bytes()
    assert fires(graph, SQUARE) == 1
    assert ops(graph)["out"] == "Square"
    shape = [3 if d == -1 else d for d in eval(x_shape)]
    feeds = {"x": np.arange(1, 1 + np.prod(shape), dtype=np.float32).reshape(shape)}
    expected, = tf_run(original, feeds, ["out"])
    actual, = tf_run(graph.to_bytes(), feeds, ["out"])
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


@pytest.mark.parametrize("x_shape, const", [
    ("[-1]", "[2.0, 2.0]"),        # x may have one element: the output would have two
    ("[2]", "[[2.0]]"),            # rank 2 against rank 1
    ("[3, 2]", "[2.0, 2.0, 2.0]"), # does not even broadcast
])
def test_a_literal_does_not_match_when_the_broadcast_may_change_the_shape(x_shape, const):
    graph = fixture_graph(f"""
        x   = Placeholder {{dtype: float, shape: {x_shape}}}
        two = Const({const})
        out = Pow(x, two)
    """)
    assert fires(graph, SQUARE) == 0


def test_a_literal_against_an_operand_of_unknown_rank_matches_only_a_scalar():
    for const, expected in (("2.0", 1), ("[2.0]", 0)):
        graph = fixture_graph(f"""
            x   = Placeholder {{dtype: float}}
            two = Const({const})
            out = Pow(x, two)
        """)
        assert fires(graph, SQUARE) == expected, const


def test_a_literal_as_a_sole_input_matches_only_a_scalar():
    rules = """
        rule neg-of-one:
            n = Neg(1.0)
            => n -> Const(-1.0)
    """
    for const, expected in (("1.0", 1), ("[1.0]", 0)):
        graph = fixture_graph(f"""
            x   = Placeholder {{dtype: float, shape: [1]}}
            one = Const({const})
            n   = Neg(one)
            out = AddV2(x, n)
        """)
        assert fires(graph, rules) == expected, const


def test_element_matches_stay_few_when_anonymous_nodes_check_attrs():
    # Each Mul matches `Mul(Cast {DstT: float}, *)` both ways round. Kept apart, the ways would
    # double at every element: 2^10 matches of one node here, 2^40 with 40 elements.
    count = 10
    lines = ["x = Placeholder {dtype: half, shape: [2]}"]
    for i in range(count):
        lines += [f"a{i} = Cast(x) {{SrcT: half, DstT: float}}", f"b{i} = Cast(x) {{SrcT: half, DstT: float}}",
                  f"m{i} = Mul(a{i}, b{i})"]
    lines.append("out = AddN(" + ", ".join(f"m{i}" for i in range(count)) + ")")
    graph = fixture_graph("\n".join(lines))
    rule, = compile_rules("""
        rule sum-of-products-of-casts:
            n = AddN(ms...: Mul(Cast {DstT: float}, *))
            => n -> Neg(x)
    """.replace("Neg(x)", "n {}"))
    matches = list(match(rule.pattern, graph, graph["out"], MatchContext(graph, {}, frozenset())))
    assert len(matches) == 1


def test_standard_shape_predicates_are_unknown_not_false_on_unknown_shapes():
    # `not all(... shape(c) ...)` must not fire when c's shape cannot be known.
    rules = """
        rule t:
            n = Mul(x, c)
            where not all([d == 1 for d in shape(c)[:-1]])
            => n -> Identity(x)
    """
    unknown = fixture_graph("""
        x = Placeholder {dtype: float, shape: [1, 4]}
        c = Placeholder {dtype: float}
        m = Mul(x, c)
        out = Identity(m)
    """)
    assert fires(unknown, rules, protected=("x", "c", "out")) == 0
    known = fixture_graph("""
        x = Placeholder {dtype: float, shape: [2, 4]}
        c = Placeholder {dtype: float, shape: [2, 4]}
        m = Mul(x, c)
        out = Identity(m)
    """)
    assert fires(known, rules, protected=("x", "c", "out")) == 1
