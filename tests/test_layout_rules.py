"""The layout rules (stdlib_rules/layout.rules) on graphs TensorFlow built: TensorFlow runs the
original and the rewritten graph, and the outputs must be equal, bit for bit (the rules only move
elements). Random permutations, paddings and ranks for the transpose, pad and squeeze rules."""
from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import tf_run
from gtt_rules.engine.graph import Graph
from gtt_rules import load_rules

FEW = settings(max_examples=12, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow], print_blob=False)


def rewrite(graph_def, inputs: list[str], outputs: list[str], pipeline: str = "layout") -> Graph:
    graph = Graph.from_bytes(graph_def.SerializeToString())
    for stage in load_rules([pipeline]):
        stage.run(graph, inputs=inputs, outputs=outputs)
    return graph


def assert_same_in_tensorflow(graph_def, graph: Graph, feeds: dict, outputs: list[str]) -> None:
    expected = tf_run(graph_def.SerializeToString(), feeds, outputs)
    actual = tf_run(graph.to_bytes(), feeds, outputs)
    for name, want, got in zip(outputs, expected, actual):
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def ops(graph: Graph) -> Counter:
    return Counter(node.op for node in graph)


def tf1_graph(tf, build):
    """The GraphDef that `build(tf)` makes in a TF1 graph."""
    graph = tf.Graph()
    with graph.as_default():
        build()
    return graph.as_graph_def()


def test_constant_q_octaves_lose_their_layout_plumbing(tf):
    """Basic Pitch's front end in small: per octave a 1-D convolution written as
    ExpandDims -> Conv2D -> Squeeze, its result transposed, padded (zero and reflected) and
    transposed back for the next octave; the two halves of each octave's output squeezed,
    transposed, one negated, packed and all octaves concatenated; an assert_equal on constants
    that every output waits on."""
    rng = np.random.default_rng(0)

    def build():
        audio = tf.compat.v1.placeholder(tf.float32, [None, 40, 1], name="audio")
        low = tf.constant(rng.standard_normal((1, 5, 1, 1)), tf.float32)
        real = tf.constant(rng.standard_normal((1, 5, 1, 3)), tf.float32)
        imaginary = tf.constant(rng.standard_normal((1, 5, 1, 3)), tf.float32)
        width = tf.debugging.assert_equal(tf.constant([3]), 3, message="bins")

        def conv(x, kernel):
            return tf.squeeze(tf.nn.conv2d(tf.expand_dims(x, -3), kernel, 1, "VALID"), -3)

        signal, stacks = audio, []
        for octave in range(3):
            channels_first = tf.transpose(signal, [0, 2, 1])
            padded = tf.transpose(tf.pad(channels_first, [[0, 0], [0, 0], [2, 2]]), [0, 2, 1])
            mode = "REFLECT" if octave % 2 else "SYMMETRIC"
            mirrored = tf.transpose(tf.pad(channels_first, [[0, 0], [0, 0], [2, 2]], mode=mode), [0, 2, 1])
            halves = [tf.transpose(conv(mirrored, kernel), [0, 2, 1]) for kernel in (real, imaginary)]
            stacks.append(tf.stack([halves[0], -halves[1]], axis=-1))
            signal = conv(padded, low)
        with tf.control_dependencies([width]):
            tf.identity(tf.concat(stacks, axis=1), name="spectrum")

    graph_def = tf1_graph(tf, build)
    graph = rewrite(graph_def, ["audio"], ["spectrum"], "optimize_for_inference")
    before, after = Counter(node.op for node in graph_def.node), ops(graph)
    assert (before["Transpose"], before["Squeeze"], before["ExpandDims"], before["Assert"]) == (15, 9, 9, 1)
    # One Transpose and one Squeeze after the concatenation are left of the output side; of the
    # input side the ExpandDims of the first octave (its input is no Squeeze).
    assert (after["Transpose"], after["Squeeze"], after["ExpandDims"]) == (1, 1, 2)
    assert after["Assert"] == after["NoOp"] == 0 and not graph["spectrum"].control_inputs
    feeds = {"audio": rng.standard_normal((2, 40, 1)).astype(np.float32)}
    assert_same_in_tensorflow(graph_def, graph, feeds, ["spectrum"])


def test_an_assert_that_can_fail_stays_and_its_output_waits_on_it(tf):
    def build():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        holds = tf.debugging.assert_equal(tf.constant([4]), 4, message="holds")
        checks = tf.debugging.assert_equal(tf.shape(x)[1:], [4], message="checked at run time")
        with tf.control_dependencies([holds, checks]):
            tf.identity(tf.nn.relu(x), name="y")

    graph_def = tf1_graph(tf, build)
    graph = rewrite(graph_def, ["x"], ["y"], "optimize_for_inference")
    (kept,) = [node.name for node in graph if node.op == "Assert"]
    assert b"checked at run time" in graph.to_bytes() and b"holds" not in graph.to_bytes()
    assert any(kept in node.control_inputs for node in graph)   # what y computes still waits on it
    assert_same_in_tensorflow(graph_def, graph, {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}, ["y"])


def test_a_reshape_keeping_the_batch_size_needs_no_shape_at_run_time(tf):
    """Keras' Reshape layer: Reshape(x, Pack(Shape(x)[0], dims...)). Where x's known dims, ones
    aside, are those dims, the shape is a Const with -1 for the batch; where they only hold as
    many elements, it stays (no product of dims is checked, so none is assumed)."""
    def build():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4, 5, 1], name="x")
        batch = tf.shape(x)[0]
        tf.reshape(x, tf.stack([batch, 4, 5]), name="same_dims")
        tf.reshape(x, tf.stack([batch, 1, 4, 1, 5]), name="more_ones")
        tf.reshape(x, tf.stack([batch, 20]), name="merged")

    outputs = ["same_dims", "more_ones", "merged"]
    graph_def = tf1_graph(tf, build)
    graph = rewrite(graph_def, ["x"], outputs)
    constant = [name for name in outputs if graph[graph[name].inputs[1].node].op == "Const"]
    assert constant == ["same_dims", "more_ones"]
    for batch in (1, 3):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 4, 5, 1)).astype(np.float32)}
        assert_same_in_tensorflow(graph_def, graph, feeds, outputs)


# ---- random permutations, paddings and ranks ----

@st.composite
def transposed_pads(draw):
    rank = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(2, 4), min_size=rank, max_size=rank))
    # From rank 3 on, a permutation that is not its own inverse: there, paddings that followed p
    # instead of q would show.
    p = draw(st.permutations(range(rank)).filter(lambda p: rank < 3 or list(np.argsort(p)) != p))
    undo = draw(st.booleans())
    q = list(np.argsort(p)) if undo else draw(st.permutations(range(rank)))
    kind = draw(st.sampled_from(["CONSTANT", "REFLECT", "SYMMETRIC", "PadV2"]))
    paddings = draw(st.lists(st.lists(st.integers(0, 1), min_size=2, max_size=2), min_size=rank, max_size=rank))
    return shape, p, [int(i) for i in q], kind, paddings


@FEW
@given(case=transposed_pads())
def test_pad_inside_transposes_on_random_permutations(tf, case):
    shape, p, q, kind, paddings = case

    def build():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        inner = tf.transpose(x, p)
        if kind == "PadV2":
            padded = tf.raw_ops.PadV2(input=inner, paddings=paddings, constant_values=2.5)
        else:
            padded = tf.pad(inner, paddings, mode=kind)
        tf.identity(tf.transpose(padded, q), name="out")

    graph_def = tf1_graph(tf, build)
    graph = rewrite(graph_def, ["x"], ["out"])
    composed = [p[i] for i in q]
    # Transposes that undo each other go (p is the identity: the inner one is also a no-op,
    # which these rules do not remove); any others stay, with the pad between them.
    gone = composed == list(range(len(q)))
    assert ops(graph)["Transpose"] == (0 if gone else 2), ops(graph)
    feeds = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    assert_same_in_tensorflow(graph_def, graph, feeds, ["out"])


@st.composite
def squeezed_pads(draw):
    rank = draw(st.integers(2, 4))
    shape = draw(st.lists(st.integers(2, 4), min_size=rank, max_size=rank))
    axis = draw(st.integers(0, rank - 1))
    shape[axis] = 1
    squeeze_axis = draw(st.sampled_from([axis, axis - rank]))
    back = draw(st.sampled_from([axis, axis - rank, (axis + 1) % rank]))
    kind = draw(st.sampled_from(["CONSTANT", "REFLECT", "SYMMETRIC"]))
    paddings = draw(st.lists(st.lists(st.integers(0, 1), min_size=2, max_size=2),
                             min_size=rank - 1, max_size=rank - 1))
    return shape, squeeze_axis, back, kind, paddings


@FEW
@given(case=squeezed_pads())
def test_pad_between_squeeze_and_expand_dims_on_random_axes(tf, case):
    shape, squeeze_axis, back, kind, paddings = case

    def build():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        padded = tf.pad(tf.squeeze(x, [squeeze_axis]), paddings, mode=kind)
        tf.identity(tf.expand_dims(padded, back), name="out")

    graph_def = tf1_graph(tf, build)
    graph = rewrite(graph_def, ["x"], ["out"])
    rank = len(shape)
    same_place = squeeze_axis % rank == back % rank
    assert ops(graph)["Squeeze"] == ops(graph)["ExpandDims"] == (0 if same_place else 1)
    feeds = {"x": np.random.default_rng(2).standard_normal(shape).astype(np.float32)}
    assert_same_in_tensorflow(graph_def, graph, feeds, ["out"])


@FEW
@given(rank=st.integers(1, 4), data=st.data())
def test_transposes_compose_on_random_permutations(tf, rank, data):
    perms = data.draw(st.lists(st.permutations(range(rank)), min_size=2, max_size=3))
    shape = data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))

    def build():
        y = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        for perm in perms:
            y = tf.transpose(y, perm)
        tf.identity(y, name="out")

    graph_def = tf1_graph(tf, build)
    graph = rewrite(graph_def, ["x"], ["out"])
    assert ops(graph)["Transpose"] <= 1
    feeds = {"x": np.random.default_rng(3).standard_normal(shape).astype(np.float32)}
    assert_same_in_tensorflow(graph_def, graph, feeds, ["out"])


@FEW
@given(data=st.data())
def test_pack_and_concat_of_squeezes_and_transposes_on_random_axes(tf, data):
    rank = data.draw(st.integers(2, 4))
    shape = data.draw(st.lists(st.integers(2, 3), min_size=rank, max_size=rank))
    axis = data.draw(st.integers(0, rank - 1))
    shape[axis] = 1
    squeeze_axis = data.draw(st.sampled_from([axis, axis - rank]))
    perm = data.draw(st.permutations(range(rank - 1)))
    pack_axis = data.draw(st.integers(-rank, rank - 1))
    concat_axis = data.draw(st.integers(-rank, rank - 1))

    def build():
        xs = [tf.compat.v1.placeholder(tf.float32, shape, name=f"x{i}") for i in range(4)]
        branches = [tf.transpose(tf.squeeze(x, [squeeze_axis]), perm) for x in xs]
        branches[1] = tf.abs(branches[1])
        stacks = [tf.stack(branches[:2], axis=pack_axis), tf.stack(branches[2:], axis=pack_axis)]
        tf.identity(tf.concat(stacks, axis=concat_axis), name="out")

    graph_def = tf1_graph(tf, build)
    graph = rewrite(graph_def, [f"x{i}" for i in range(4)], ["out"])
    assert ops(graph)["Transpose"] <= 1 and ops(graph)["Squeeze"] == 1, ops(graph)
    rng = np.random.default_rng(4)
    feeds = {f"x{i}": rng.standard_normal(shape).astype(np.float32) for i in range(4)}
    assert_same_in_tensorflow(graph_def, graph, feeds, ["out"])
