"""The evaluator: real TensorFlow graphs match TensorFlow, bad feeds and ops fail clearly, and
intermediate tensors are freed once their last consumer has run."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from conftest import fixture_names, fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules.engine import dtypes
from gtt_rules.engine.evaluator import CONTROL_FLOW_OPS, Evaluator, evaluate
from gtt_rules.engine.evaluator import random_feeds as graph_random_feeds
from gtt_rules.engine.graph import Graph, Node
from gtt_rules.engine.kernels import KERNELS, load_all
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.errors import EvaluationError

F32 = np.float32
EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "mobilenet_tiny.pb"


def float_kernel_ops() -> set[str]:
    load_all()
    return {op for op, fn in KERNELS.items() if fn.__module__.endswith("float_ops")}


def float_fixtures() -> list[str]:
    """Committed fixtures whose every op is a float kernel (or TF1 control flow)."""
    supported = float_kernel_ops() | CONTROL_FLOW_OPS | {"NoOp"}
    names = []
    for name in fixture_names():
        ops = {node.op for node in Graph.load(fixture_path(name))}
        if ops <= supported:
            names.append(name)
    return names


def as_numpy(value) -> np.ndarray:
    """TensorFlow's fetched value in our representation (bfloat16 as float32, quantized as codes)."""
    value = np.asarray(value)
    if value.dtype.name == "bfloat16":
        return value.astype(F32)
    if value.dtype.names is not None:
        return value[value.dtype.names[0]]
    if value.dtype.kind == "S":     # strings come back as fixed-width bytes; ours are objects
        return value.astype(object)
    return value


def assert_matches(ours: np.ndarray, theirs: np.ndarray, rtol=1e-4):
    theirs = as_numpy(theirs)
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype
    if theirs.dtype.kind in "fc":
        scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * 1e-2 * max(scale, 1e-3))
    else:
        np.testing.assert_array_equal(ours, theirs)


# ---- real graphs against TensorFlow --------------------------------------------------------------

def test_the_float_fixtures_are_the_expected_ones():
    # A guard, so the parametrized test below cannot silently shrink.
    assert {"tf1_conv_bn", "tf1_mul_fold", "keras_bn_frozen", "keras_mobilenet_tiny",
            "bn_global_norm", "tf1_while_loop", "all_dtypes_consts"} <= set(float_fixtures())


@pytest.mark.parametrize("name", float_fixtures())
@pytest.mark.parametrize("seed", [0, 1])
def test_fixture_matches_tensorflow(name, seed):
    spec = fixture_spec(name)
    feeds = random_feeds(spec, seed)
    graph = Graph.load(fixture_path(name))
    ours = evaluate(graph, feeds, spec["outputs"])
    theirs = tf_run(fixture_path(name).read_bytes(), feeds, spec["outputs"])
    assert len(ours) == len(spec["outputs"])
    for got, want in zip(ours, theirs):
        assert_matches(got, want)


def test_example_mobilenet_matches_tensorflow():
    graph = Graph.load(EXAMPLE)
    feeds = {"input": np.random.default_rng(3).standard_normal((1, 32, 32, 3)).astype(F32)} \
        if graph["input"].get_attr("shape") == (1, 32, 32, 3) else graph_random_feeds(graph, 3)
    outputs = [node.name for node in graph.sinks()]
    ours = evaluate(graph, feeds, outputs)
    theirs = tf_run(EXAMPLE.read_bytes(), feeds, outputs)
    for got, want in zip(ours, theirs):
        assert_matches(got, want)


def test_intermediate_and_multi_port_outputs_match_tensorflow():
    name = "tf1_conv_bn"
    graph = Graph.load(fixture_path(name))
    batch_norm = next(n for n in graph if n.op == "FusedBatchNormV3")
    conv = next(n.name for n in graph if n.op == "Conv2D")
    outputs = [f"{batch_norm.name}:0", conv, "output:0"]
    feeds = {"input:0": random_feeds(fixture_spec(name), 5)["input"]}
    ours = evaluate(graph, feeds, outputs + [f"{batch_norm.name}:1", f"{batch_norm.name}:2"])
    theirs = tf_run(fixture_path(name).read_bytes(), feeds, outputs)
    for got, want in zip(ours, theirs):
        assert_matches(got, want)
    # Grappler rewrites the batch norm, so TensorFlow cannot fetch ports 1 and 2; in inference
    # they pass the mean and variance through.
    mean, variance = (graph[ref.node].get_attr("value") for ref in batch_norm.inputs[3:5])
    np.testing.assert_array_equal(ours[3], mean)
    np.testing.assert_array_equal(ours[4], variance)


def _tf1_control_flow_graph(tf) -> bytes:
    """A cond whose true branch holds a while loop nested in another, built with control flow v1."""
    from tensorflow.python.ops import control_flow_util

    saved = control_flow_util.ENABLE_CONTROL_FLOW_V2
    control_flow_util.ENABLE_CONTROL_FLOW_V2 = False
    try:
        with tf.Graph().as_default() as graph:
            x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
            w = tf.constant(np.random.default_rng(0).standard_normal((3, 3)).astype(F32) * 0.5)

            def outer(i, h):
                def inner(j, g):
                    return j + 1, tf.tanh(tf.matmul(g, w) + tf.cast(j, tf.float32))
                _, h = tf.compat.v1.while_loop(lambda j, g: j < i + 1, inner, [tf.constant(0), h])
                return i + 1, h * 0.5

            def true_branch():
                _, h = tf.compat.v1.while_loop(lambda i, h: i < 3, outer, [tf.constant(0), x])
                return h

            y = tf.compat.v1.cond(tf.reduce_sum(x) > 0, true_branch, lambda: tf.sigmoid(x) * 2.0)
            tf.identity(y, name="y")
        return graph.as_graph_def().SerializeToString()
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = saved


def test_tf1_cond_and_nested_while_loops_match_tensorflow(tf):
    data = _tf1_control_flow_graph(tf)
    graph = Graph.from_bytes(data)
    assert {"Switch", "Merge", "Enter", "Exit", "NextIteration"} <= {n.op for n in graph}
    for sign in (1.0, -1.0):        # both branches of the cond
        x = (np.abs(np.random.default_rng(7).standard_normal((2, 3))) * sign).astype(F32)
        ours = evaluate(graph, {"x": x}, ["y"])
        theirs = tf_run(data, {"x": x}, ["y:0"])
        assert_matches(ours[0], theirs[0])


def test_an_op_without_kernel_in_a_dead_branch_is_not_refused(tf):
    """Unpruned dropout, as in trained TF1 models: the training branch's RandomUniform has no kernel
    here, and never runs at inference; running it for real is still refused."""
    from tensorflow.python.ops import control_flow_util

    saved = control_flow_util.ENABLE_CONTROL_FLOW_V2
    control_flow_util.ENABLE_CONTROL_FLOW_V2 = False
    try:
        with tf.Graph().as_default() as tf_graph:
            x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
            training = tf.compat.v1.placeholder_with_default(False, [], name="training")
            y = tf.compat.v1.cond(training, lambda: tf.nn.dropout(x, rate=0.5), lambda: x * 2.0)
            tf.identity(y, name="y")
        data = tf_graph.as_graph_def().SerializeToString()
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = saved
    graph = Graph.from_bytes(data)
    assert "RandomUniform" in {n.op for n in graph} and "RandomUniform" not in KERNELS
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(F32)
    assert_matches(evaluate(graph, {"x": x}, ["y"])[0], tf_run(data, {"x": x}, ["y:0"])[0])
    with pytest.raises(EvaluationError, match="no kernel for op 'RandomUniform'"):
        evaluate(graph, {"x": x, "training": np.array(True)}, ["y"])


@pytest.mark.parametrize("fill", [3.0, -3.0, None], ids=["then", "else", "random"])
def test_function_library_graph_runs_its_while_and_if(fill):
    """TF2 functional control flow: the While and If run their functions from the library (the
    If tests sum(h) > 0: the filled inputs take one branch each)."""
    name = "tf2_function_library"
    spec = fixture_spec(name)
    feeds = random_feeds(spec) if fill is None else {"input": np.full([2, 4], fill, F32)}
    ours = evaluate(Graph.load(fixture_path(name)), feeds, spec["outputs"])
    theirs = tf_run(fixture_path(name).read_bytes(), feeds, spec["outputs"])
    for mine, expected in zip(ours, theirs):
        assert_matches(mine, expected)


# ---- small hand-made graphs ----------------------------------------------------------------------

def make_graph(*specs) -> Graph:
    """Nodes from (name, op, inputs, attrs) tuples."""
    graph_def = pb.GraphDef()
    for name, op, inputs, attrs in specs:
        node = Node(graph_def.node.add(name=name, op=op, input=inputs))
        for key, value in attrs.items():
            node.set_attr(key, value)
    return Graph(graph_def)


def placeholder(name, shape=(2, 3), dtype=dtypes.DT_FLOAT):
    return (name, "Placeholder", [], {"dtype": dtype, "shape": shape})


def const(name, value):
    value = np.asarray(value)
    return (name, "Const", [], {"dtype": dtypes.dtype_for_array(value), "value": value})


def op(name, op_name, inputs, **attrs):
    return (name, op_name, inputs, {"T": dtypes.DT_FLOAT, **attrs})


def chain(length: int) -> Graph:
    specs = [placeholder("x")] + [op(f"n{i}", "Relu" if i % 2 else "Neg", [f"n{i - 1}" if i else "x"])
                                  for i in range(length)]
    return make_graph(*specs)


def test_feeds_by_name_or_port_zero():
    graph = make_graph(placeholder("x"), const("c", np.float32(2)), op("y", "Mul", ["x", "c"]))
    x = np.arange(6, dtype=F32).reshape(2, 3)
    for key in ("x", "x:0"):
        np.testing.assert_array_equal(evaluate(graph, {key: x}, ["y"])[0], x * 2)
    assert evaluate(graph, {"x": x}, ["y:0"])[0].dtype == F32


def test_only_the_needed_nodes_run():
    graph = make_graph(placeholder("x"), placeholder("unused"), op("y", "Neg", ["x"]),
                       ("weird", "NoKernelForThis", ["unused"], {}))
    x = np.ones((2, 3), F32)
    np.testing.assert_array_equal(evaluate(graph, {"x": x}, ["y"])[0], -x)


def test_feeding_an_intermediate_tensor_skips_what_computes_it():
    graph = make_graph(placeholder("x"), op("a", "Neg", ["x"]), op("b", "Exp", ["a"]))
    a = np.zeros((2, 3), F32)
    np.testing.assert_array_equal(evaluate(graph, {"a": a}, ["b"])[0], np.ones((2, 3), F32))


def test_missing_feed_names_the_placeholder():
    graph = make_graph(placeholder("images", (1, 4)), op("y", "Neg", ["images"]))
    with pytest.raises(EvaluationError, match=r"placeholder 'images' \(float, shape \[1, 4\]\) needs a feed"):
        evaluate(graph, {}, ["y"])


def test_unknown_feed_and_unknown_output_are_errors():
    graph = make_graph(placeholder("x"), op("y", "Neg", ["x"]))
    x = np.ones((2, 3), F32)
    with pytest.raises(EvaluationError, match="feed 'nope' names no node"):
        evaluate(graph, {"x": x, "nope": x}, ["y"])
    with pytest.raises(EvaluationError, match="output 'missing' names no node"):
        evaluate(graph, {"x": x}, ["missing"])
    with pytest.raises(EvaluationError, match="has 1 output"):
        evaluate(graph, {"x": x}, ["y:3"])


def test_feed_shape_mismatch_is_an_error():
    graph = make_graph(placeholder("x", (-1, 3)), op("y", "Neg", ["x"]))
    assert evaluate(graph, {"x": np.ones((5, 3), F32)}, ["y"])[0].shape == (5, 3)
    with pytest.raises(EvaluationError, match=r"feed 'x' has shape \[5, 4\], but placeholder 'x' takes \[\?, 3\]"):
        evaluate(graph, {"x": np.ones((5, 4), F32)}, ["y"])
    with pytest.raises(EvaluationError, match="shape"):
        evaluate(graph, {"x": np.ones(3, F32)}, ["y"])


def test_feed_dtypes_cast_when_safe_and_refuse_otherwise():
    graph = make_graph(placeholder("x"), op("y", "Neg", ["x"]),
                       placeholder("i", (2,), dtypes.DT_INT32),
                       ("j", "Neg", ["i"], {"T": dtypes.DT_INT32}))
    y = evaluate(graph, {"x": np.ones((2, 3), np.float64)}, ["y"])[0]
    assert y.dtype == F32
    assert evaluate(graph, {"i": np.array([1, 2], np.int64)}, ["j"])[0].dtype == np.int32
    with pytest.raises(EvaluationError, match="feed 'i' has dtype float32, but 'i' is int32"):
        evaluate(graph, {"i": np.array([1.5, 2], F32)}, ["j"])


def test_unknown_op_names_op_and_node():
    graph = make_graph(placeholder("x"), ("bar", "Foo", ["x"], {}))
    with pytest.raises(EvaluationError) as error:
        evaluate(graph, {"x": np.ones((2, 3), F32)}, ["bar"])
    assert str(error.value) == "node 'bar': no kernel for op 'Foo'"


def test_kernel_failure_names_node_op_and_cause():
    graph = make_graph(placeholder("x"), const("shape", np.array([4, 4], np.int32)),
                       op("r", "Reshape", ["x", "shape"], Tshape=dtypes.DT_INT32))
    with pytest.raises(EvaluationError) as error:
        evaluate(graph, {"x": np.ones((2, 3), F32)}, ["r"])
    message = str(error.value)
    assert message.startswith("node 'r': Reshape failed: ") and "size 6" in message
    assert error.value.node == "r"


# ---- memory: intermediates are freed -------------------------------------------------------------

def test_a_chain_keeps_at_most_two_tensors_alive():
    graph = chain(50)
    live_counts = []
    result = evaluate(graph, {"x": np.ones((2, 3), F32)}, ["n49"],
                      on_node=lambda node, live: live_counts.append(len(live)))
    assert len(live_counts) == 50
    assert max(live_counts) == 1            # each node's input is freed as soon as it has run
    np.testing.assert_array_equal(result[0], np.zeros((2, 3), F32))


def test_a_tensor_lives_until_its_last_consumer_has_run():
    # x feeds a, b and c; c is last, so x must survive until c has run, and then go.
    graph = make_graph(placeholder("x"), op("a", "Neg", ["x"]), op("b", "Exp", ["a"]),
                       op("c", "Add", ["x", "b"]), op("d", "Mul", ["c", "c"]))
    seen = {}
    evaluator = Evaluator(graph, ["d", "b"], fed=["x"])
    x = np.full((2, 3), 2.0, F32)
    d, b = evaluator.run({"x": x}, on_node=lambda node, live: seen.__setitem__(node.name, set(map(str, live))))
    assert seen["a"] == {"x", "a"}
    assert seen["b"] == {"x", "b"}          # a freed once b ran; b kept: it is an output
    assert seen["c"] == {"b", "c"}          # x freed after its last consumer
    assert seen["d"] == {"b", "d"}
    np.testing.assert_allclose(d, (x + np.exp(-x)) ** 2, rtol=1e-6)
    np.testing.assert_allclose(b, np.exp(-x), rtol=1e-6)


def test_peak_live_tensors_on_mobilenet_is_a_small_fraction_of_the_graph():
    name = "keras_mobilenet_tiny"
    graph = Graph.load(fixture_path(name))
    peak, ran = [0], []

    def watch(node, live):
        ran.append(node.name)
        peak[0] = max(peak[0], len(live))

    evaluate(graph, random_feeds(fixture_spec(name)), fixture_spec(name)["outputs"], on_node=watch)
    assert 0 < peak[0] <= 10 < len(graph) // 50
    assert len(ran) == len(set(ran))        # each node once
    assert set(ran) == {n.name for n in graph if n.op not in ("Placeholder", "NoOp")}


def test_a_prepared_evaluator_runs_again_with_new_feeds():
    graph = chain(4)
    evaluator = Evaluator(graph, ["n3"], fed=["x"])
    for value in (1.0, -2.0):
        x = np.full((2, 3), value, F32)
        np.testing.assert_array_equal(evaluator.run({"x": x})[0], np.maximum(-np.maximum(-x, 0), 0))


# ---- random feeds --------------------------------------------------------------------------------

def test_random_feeds_follow_dtype_and_shape_and_seed():
    graph = make_graph(placeholder("f", (-1, 3)), placeholder("i", (4,), dtypes.DT_INT32),
                       placeholder("b", (2, 2), dtypes.DT_BOOL), placeholder("q", (5,), dtypes.DT_QUINT8),
                       placeholder("s", (1,), dtypes.DT_STRING))
    feeds = graph_random_feeds(graph, seed=4)
    assert set(feeds) == {"f", "i", "b", "q"}
    assert feeds["f"].shape == (1, 3) and feeds["f"].dtype == F32
    assert feeds["i"].dtype == np.int32 and feeds["b"].dtype == bool and feeds["q"].dtype == np.uint8
    again = graph_random_feeds(graph, seed=4)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert not np.array_equal(graph_random_feeds(graph, seed=5)["f"], feeds["f"])
    given = np.zeros((7, 3), F32)
    overridden = graph_random_feeds(graph, seed=4, overrides={"f:0": given})
    assert "f" not in overridden and overridden["f:0"] is given


def test_random_feeds_leave_string_placeholders_for_the_evaluator_to_name():
    graph = make_graph(placeholder("s", (1,), dtypes.DT_STRING), ("y", "Identity", ["s"],
                                                                   {"T": dtypes.DT_STRING}))
    with pytest.raises(EvaluationError, match="placeholder 's' \\(string"):
        evaluate(graph, graph_random_feeds(graph), ["y"])


def test_cached_constants_are_computed_once_and_give_the_same_answers():
    name = "keras_bn_frozen"
    graph = Graph.load(fixture_path(name))
    spec = fixture_spec(name)
    plain = Evaluator(graph, spec["outputs"], fed=["input"])
    cached = Evaluator(graph, spec["outputs"], fed=["input"], cache_constants=True)
    ran: list[list[str]] = []
    for seed in (0, 1, 2):
        feeds = random_feeds(spec, seed)
        names: list[str] = []
        got = cached.run(feeds, on_node=lambda node, live: names.append(node.op))
        ran.append(names)
        np.testing.assert_array_equal(got[0], plain.run(feeds)[0])
    assert "Const" in ran[0] and "Rsqrt" in ran[0]
    # Later runs skip everything that depends only on Consts: the Keras batch-norm arithmetic too.
    assert "Const" not in ran[1] and "Rsqrt" not in ran[1] and ran[1] == ran[2]
    assert {"Conv2D", "DepthwiseConv2dNative", "MatMul", "Softmax"} <= set(ran[1])
    assert all(not value.flags.writeable for value in cached._constants.values())
