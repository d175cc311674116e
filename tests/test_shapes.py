"""Static shape inference (engine/shapes.py) against TensorFlow's own, on the committed fixtures and
on TF1 graphs built here; the cache under edits; Shape folding end to end."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES, fixture_names, fixture_path, tf_run
from gtt_rules import apply
from gtt_rules.engine.graph import Graph, TensorRef
from gtt_rules.engine.shapes import infer_shape, infer_value
from gtt_rules import load_rules

# Fixtures where TensorFlow knows every shape through ops we cover: we must know nearly all too.
CONV_FIXTURES = ("tf1_conv_bn", "tf1_mul_fold", "keras_bn_frozen", "keras_mobilenet_tiny", "quantized_ops",
                 "bn_global_norm")


def tf_static_shapes(graph_bytes: bytes) -> dict[TensorRef, tuple | None]:
    """TensorFlow's static shape of every tensor, after importing the GraphDef (None: unknown rank)."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(graph_bytes)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
    return {TensorRef(op.name, port): None if t.shape.rank is None else tuple(t.shape.as_list())
            for op in graph.get_operations() for port, t in enumerate(op.outputs)}


def compare_with_tensorflow(graph_bytes: bytes) -> tuple[int, list[str]]:
    """Check that every dim we infer is TensorFlow's; return how many tensors TensorFlow knows the
    full shape of, and those of them whose shape we do not know fully."""
    graph = Graph.from_bytes(graph_bytes)
    wrong, tf_known, missed = [], 0, []
    for ref, theirs in tf_static_shapes(graph_bytes).items():
        ours = infer_shape(graph, ref)
        if ours is not None and (theirs is None or len(ours) != len(theirs)
                                 or any(o is not None and o != t for o, t in zip(ours, theirs))):
            wrong.append(f"{ref} ({graph[ref.node].op}): ours {ours}, TensorFlow's {theirs}")
        if theirs is not None and None not in theirs:
            tf_known += 1
            if ours is None or None in ours:
                missed.append(f"{ref} ({graph[ref.node].op}): ours {ours}, TensorFlow's {theirs}")
    assert not wrong, "\n".join(wrong)
    return tf_known, missed


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_shapes_agree_with_tensorflow(name):
    tf_known, missed = compare_with_tensorflow(fixture_path(name).read_bytes())
    if name in CONV_FIXTURES:  # every shape TensorFlow knows, we know
        assert tf_known >= 5 and not missed, "\n".join(missed)


def test_fixtures_we_check_exist():
    assert set(CONV_FIXTURES) <= set(fixture_names()), sorted(FIXTURES.glob("*.pb"))


# ---- TF1 graphs built here, one per family of ops ----

def _weights(tf, shape, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.standard_normal(shape).astype(np.float32) * 0.1)


def convolutions(tf):
    x = tf.compat.v1.placeholder(tf.float32, [2, 11, 13, 3], name="x")
    a = tf.nn.conv2d(x, _weights(tf, [3, 3, 3, 4]), strides=2, padding="SAME")          # odd sizes
    b = tf.nn.conv2d(x, _weights(tf, [5, 2, 3, 4]), strides=[1, 3, 2, 1], padding="VALID")
    c = tf.nn.conv2d(x, _weights(tf, [3, 3, 3, 4]), strides=1, padding="VALID", dilations=2)
    d = tf.nn.conv2d(x, _weights(tf, [3, 3, 3, 4]), strides=2,
                     padding=[[0, 0], [1, 2], [0, 3], [0, 0]])                          # EXPLICIT
    e = tf.nn.depthwise_conv2d(x, _weights(tf, [3, 3, 3, 2]), [1, 2, 2, 1], "SAME")
    f = tf.nn.depthwise_conv2d(x, _weights(tf, [3, 3, 3, 2]), [1, 1, 1, 1], "VALID", dilations=[2, 2])
    g = tf.nn.bias_add(tf.nn.relu6(a), _weights(tf, [4]))
    h = tf.nn.max_pool2d(g, 3, 2, "VALID")
    i = tf.nn.avg_pool2d(e, 2, [2, 3], "SAME")
    j = tf.compat.v1.nn.fused_batch_norm(b, _weights(tf, [4]), _weights(tf, [4]), _weights(tf, [4]),
                                         tf.abs(_weights(tf, [4])) + 1.0, is_training=False)[0]
    k = tf.compat.v1.nn.fused_batch_norm(a, _weights(tf, [4]), _weights(tf, [4]), is_training=True)
    tf.identity(tf.reduce_sum(h) + tf.reduce_sum(i) + tf.reduce_sum(j) + tf.reduce_sum(c)
                + tf.reduce_sum(d) + tf.reduce_sum(f) + tf.reduce_sum(k[0]), name="out")


def convolutions_nchw(tf):
    # Graph construction only: TensorFlow's CPU kernels do not run NCHW, but its shape functions do.
    x = tf.compat.v1.placeholder(tf.float32, [2, 3, 11, 13], name="x")
    a = tf.nn.conv2d(x, _weights(tf, [3, 3, 3, 4]), strides=[1, 1, 2, 2], padding="SAME", data_format="NCHW")
    b = tf.nn.conv2d(x, _weights(tf, [2, 4, 3, 5]), strides=[1, 1, 3, 1], padding="VALID",
                     data_format="NCHW", dilations=[1, 1, 1, 2])
    c = tf.nn.depthwise_conv2d(x, _weights(tf, [3, 3, 3, 2]), [1, 1, 2, 2], "SAME", data_format="NCHW")
    d = tf.nn.bias_add(a, _weights(tf, [4]), data_format="NCHW")
    e = tf.nn.max_pool2d(d, [1, 1, 3, 3], [1, 1, 2, 2], "VALID", data_format="NCHW")
    f = tf.compat.v1.nn.fused_batch_norm(b, _weights(tf, [5]), _weights(tf, [5]), _weights(tf, [5]),
                                         tf.abs(_weights(tf, [5])) + 1.0, is_training=False,
                                         data_format="NCHW")[0]
    tf.identity(tf.reduce_sum(e) + tf.reduce_sum(f) + tf.reduce_sum(c), name="out")


def matrices(tf):
    x = tf.compat.v1.placeholder(tf.float32, [4, 6], name="x")
    a = tf.matmul(x, _weights(tf, [6, 5]))
    b = tf.matmul(x, _weights(tf, [7, 6]), transpose_b=True)
    c = tf.matmul(_weights(tf, [6, 3]), x, transpose_a=True, transpose_b=True)
    y = tf.compat.v1.placeholder(tf.float32, [2, 1, 4, 6], name="y")
    d = tf.matmul(y, _weights(tf, [3, 6, 2]))                    # BatchMatMulV2, broadcast batch
    e = tf.matmul(y, _weights(tf, [5, 6]), transpose_b=True)
    f = tf.linalg.matmul(tf.reshape(y, [2, 4, 6]), tf.reshape(y, [2, 4, 6]), adjoint_a=True)
    tf.identity(tf.reduce_sum(a) + tf.reduce_sum(b) + tf.reduce_sum(c) + tf.reduce_sum(d)
                + tf.reduce_sum(e) + tf.reduce_sum(f), name="out")


def reshapes(tf):
    x = tf.compat.v1.placeholder(tf.float32, [2, 3, 4, 5], name="x")
    a = tf.reshape(x, [6, -1])
    b = tf.reshape(x, [-1, 5, 4])
    c = tf.transpose(x, [3, 1, 0, 2])
    d = tf.squeeze(tf.reshape(x, [2, 1, 60, 1]))
    e = tf.squeeze(tf.reshape(x, [2, 1, 60, 1]), axis=[-1])
    f = tf.expand_dims(a, -1)
    g = tf.expand_dims(a, 0)
    h = tf.concat([x, x * 2.0], axis=-1)
    i = tf.concat([x, tf.zeros([2, 1, 4, 5])], axis=1)
    j = tf.stack([a, a, a], axis=1)
    k = tf.unstack(x, axis=2)
    m = tf.tile(x, [1, 2, 1, 3])
    n = tf.reshape(x, tf.shape(c))                          # a shape from a Shape, not a Const
    o = tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))       # tf.reshape(x, [batch, -1])
    p = tf.fill(tf.shape(a), 1.0)
    q = tf.raw_ops.Concat(concat_dim=1, values=[a, a])     # Concat (v1): the axis first
    tf.identity(tf.reduce_sum(b) + tf.reduce_sum(d) + tf.reduce_sum(e) + tf.reduce_sum(f)
                + tf.reduce_sum(g) + tf.reduce_sum(h) + tf.reduce_sum(i) + tf.reduce_sum(j)
                + tf.reduce_sum(k[3]) + tf.reduce_sum(m) + tf.reduce_sum(n) + tf.reduce_sum(o)
                + tf.reduce_sum(p) + tf.reduce_sum(q), name="out")


def reductions_and_padding(tf):
    x = tf.compat.v1.placeholder(tf.float32, [2, 7, 5, 3], name="x")
    a = tf.reduce_mean(x, [1, 2], keepdims=True)
    b = tf.reduce_mean(x, [1, 2])
    c = tf.reduce_sum(x, -1, keepdims=True)
    d = tf.reduce_max(x, [0, -1])
    e = tf.reduce_min(x, 3, keepdims=False)
    f = tf.reduce_prod(x, [], keepdims=True)
    g = tf.math.argmax(x, axis=2)
    h = tf.pad(x, [[0, 0], [1, 2], [3, 0], [0, 0]])
    i = tf.pad(x, [[0, 0], [1, 1], [2, 2], [0, 0]], mode="REFLECT")
    j = tf.pad(x, [[1, 0], [0, 0], [0, 0], [0, 2]], constant_values=3.0)
    tf.identity(tf.reduce_sum(a) + tf.reduce_sum(b) + tf.reduce_sum(c) + tf.reduce_sum(d)
                + tf.reduce_sum(e) + tf.reduce_sum(f) + tf.cast(tf.reduce_sum(g), tf.float32)
                + tf.reduce_sum(h) + tf.reduce_sum(i) + tf.reduce_sum(j), name="out")


def slices_and_splits(tf):
    x = tf.compat.v1.placeholder(tf.float32, [4, 9, 6, 3], name="x")
    a = x[1:3, ::2, -4:, 0]
    b = x[..., 1]
    c = x[:, tf.newaxis, 2:-1, ..., ::-1]
    d = x[::-1, 8:2:-3]
    e = x[3]
    f = tf.slice(x, [1, 2, 0, 0], [2, -1, 3, -1])
    g = tf.split(x, 3, axis=1)
    h = tf.split(x, [2, -1, 1], axis=2)
    i = tf.compat.v1.image.resize_bilinear(x, [5, 7])
    j = tf.compat.v1.image.resize_nearest_neighbor(x, [12, 2])
    k = tf.gather(x, [0, 2, 2, 1, 0], axis=2)
    tf.identity(tf.reduce_sum(a) + tf.reduce_sum(b) + tf.reduce_sum(c) + tf.reduce_sum(d)
                + tf.reduce_sum(e) + tf.reduce_sum(f) + tf.reduce_sum(g[2]) + tf.reduce_sum(h[1])
                + tf.reduce_sum(i) + tf.reduce_sum(j) + tf.reduce_sum(k), name="out")


def elementwise(tf):
    x = tf.compat.v1.placeholder(tf.float32, [3, 1, 5], name="x")
    y = tf.compat.v1.placeholder(tf.float32, [4, 1], name="y")
    unary = [tf.nn.relu, tf.nn.relu6, tf.sigmoid, tf.tanh, tf.math.rsqrt, tf.sqrt, tf.square,
             tf.negative, tf.exp, tf.math.log, tf.stop_gradient, tf.nn.softmax, tf.nn.elu,
             lambda t: tf.nn.leaky_relu(t, 0.1), lambda t: tf.debugging.check_numerics(t, "bad"),
             lambda t: tf.cast(tf.cast(t, tf.int32), tf.float32), tf.abs, tf.zeros_like]
    binary = [tf.add, tf.subtract, tf.multiply, tf.math.truediv, tf.maximum, tf.minimum,
              tf.math.squared_difference, tf.pow, lambda a, b: tf.raw_ops.Add(x=a, y=b)]
    total = tf.add_n([tf.reduce_sum(f(x)) for f in unary] + [tf.reduce_sum(f(x, y)) for f in binary])
    s = tf.shape(x)
    n = tf.size(x) + tf.rank(y)
    w = tf.where(tf.greater(x, 0.0), x, tf.zeros_like(x))
    tf.identity(total + tf.cast(tf.reduce_sum(s) + n, tf.float32) + tf.reduce_sum(w), name="out")


def unknown_batch(tf):
    # A batch TensorFlow does not know either: partial shapes must agree dim by dim.
    x = tf.compat.v1.placeholder(tf.float32, [None, 9, 9, 3], name="x")
    a = tf.nn.relu(tf.nn.conv2d(x, _weights(tf, [3, 3, 3, 4]), strides=2, padding="SAME"))
    b = tf.reduce_mean(a, [1, 2])
    c = tf.reshape(a, [-1, 4 * 5 * 5])
    d = tf.matmul(c, _weights(tf, [100, 3]))
    e = tf.concat([b, tf.reduce_max(a, [1, 2])], axis=1)
    tf.identity(tf.reduce_sum(d) + tf.reduce_sum(e) + tf.cast(tf.reduce_sum(tf.shape(a)), tf.float32),
                name="out")


BUILDERS = {f.__name__: f for f in (convolutions, convolutions_nchw, matrices, reshapes,
                                    reductions_and_padding, slices_and_splits, elementwise, unknown_batch)}


def build(builder) -> bytes:
    import tensorflow as tf

    with tf.Graph().as_default() as graph:
        builder(tf)
    return graph.as_graph_def().SerializeToString()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_built_graph_shapes_agree_with_tensorflow(name):
    tf_known, missed = compare_with_tensorflow(build(BUILDERS[name]))
    # Every shape TensorFlow knows through these ops, we know.
    assert tf_known >= 10 and not missed, "\n".join(missed)


def test_unknown_batch_stays_unknown():
    graph = Graph.from_bytes(build(unknown_batch))
    conv = next(n for n in graph if n.op == "Conv2D")
    assert infer_shape(graph, conv.name) == (None, 5, 5, 4)
    shape_of = next(n for n in graph if n.op == "Shape")
    assert infer_shape(graph, shape_of.name) == (4,)
    assert infer_value(graph, shape_of.name) is None


# ---- the cache under edits ----

def _chain(depth: int) -> Graph:
    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": 1, "shape": [1, 8, 8, 3]})
    previous = "x"
    for i in range(depth):
        graph.add_node(f"r{i}", "Relu", [previous], attrs={"T": 1})
        previous = f"r{i}"
    return graph


def test_long_chains_need_no_recursion():
    graph = _chain(20_000)
    assert infer_shape(graph, "r19999") == (1, 8, 8, 3)


def test_a_placeholder_shape_change_reaches_every_consumer():
    graph = _chain(50)
    assert infer_shape(graph, "r49") == (1, 8, 8, 3)
    graph["x"].set_attr("shape", [None, 8, 8, 3])      # as strip_unused_nodes does, in place
    assert infer_shape(graph, "r49") == (None, 8, 8, 3)
    graph["x"].set_attr("shape", [2, 4, 4, 3])
    assert infer_shape(graph, "r10") == (2, 4, 4, 3)
    assert infer_shape(graph, "r49") == (2, 4, 4, 3)


def test_rerouting_replacing_and_renaming_are_seen():
    graph = _chain(5)
    graph.add_node("y", "Placeholder", attrs={"dtype": 1, "shape": [7]})
    assert infer_shape(graph, "r4") == (1, 8, 8, 3)
    graph.set_inputs(graph["r2"], [TensorRef("y")])     # reroute mid-chain
    assert infer_shape(graph, "r4") == (7,)
    graph.set_inputs(graph["r3"], [])                     # r3 now reads nothing: replace it ...
    graph.set_inputs(graph["r4"], [])
    graph.remove_node("r3")
    graph.add_node("r3", "Shape", ["r1"], attrs={"T": 1})  # ... by a node of another op
    graph.set_inputs(graph["r4"], [TensorRef("r3")])
    assert infer_shape(graph, "r3") == (4,)
    assert infer_shape(graph, "r4") == (4,)
    assert infer_value(graph, "r3").tolist() == [1, 8, 8, 3]
    graph.rename_node("r1", "renamed")                    # renaming keeps the answers right
    assert infer_shape(graph, "r4") == (4,)
    graph["r4"].op = "Size"                               # and an op changed in place is seen
    assert infer_shape(graph, "r4") == ()


def test_a_const_value_change_is_seen():
    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": 1, "shape": [2, 6]})
    graph.add_node("s", "Const", attrs={"dtype": 3, "value": np.array([3, 4], np.int32)})
    graph.add_node("r", "Reshape", ["x", "s"], attrs={"T": 1})
    assert infer_shape(graph, "r") == (3, 4)
    graph["s"].set_attr("value", np.array([-1, 2, 2], np.int32))
    assert infer_shape(graph, "r") == (3, 2, 2)


def test_unknown_ops_and_inputs_give_unknown_shapes():
    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": 1})                     # no shape attr
    graph.add_node("c", "Const", attrs={"dtype": 1, "value": np.ones([2, 3], np.float32)})
    graph.add_node("a", "Relu", ["x"], attrs={"T": 1})
    graph.add_node("m", "MatMul", ["c", "a"], attrs={"T": 1})
    graph.add_node("u", "Erf", ["c"], attrs={"T": 1})                         # no shape function
    graph.add_node("b", "AddV2", ["c", "c"], attrs={"T": 1})
    assert infer_shape(graph, "a") is None
    assert infer_shape(graph, "m") == (2, None)
    assert infer_shape(graph, "u") is None
    assert infer_shape(graph, "b") == (2, 3)
    assert infer_value(graph, "b") is None                  # float tensors have no inferred value
    graph.add_node("p", "Placeholder", attrs={"dtype": 3, "shape": [3, 2]})   # paddings, not known
    graph.add_node("padded", "Pad", ["x", "p"], attrs={"T": 1})
    assert infer_shape(graph, "padded") == (None, None, None)


# ---- Shape folding, end to end ----

def shape_feeds_reshape(tf, batch):
    x = tf.compat.v1.placeholder(tf.float32, [batch, 10, 10, 3], name="x")
    conv = tf.nn.relu(tf.nn.conv2d(x, _weights(tf, [3, 3, 3, 8]), strides=2, padding="SAME"))
    flat = tf.reshape(conv, [-1])
    back = tf.reshape(tf.sqrt(tf.abs(flat)), tf.shape(conv))  # tf.shape(conv) feeds the Reshape
    tf.identity(back + conv, name="out")


@pytest.mark.parametrize("batch", [2, None])
def test_fold_constants_folds_shape_of_a_conv_output(batch):
    import tensorflow as tf

    with tf.Graph().as_default() as built:
        shape_feeds_reshape(tf, batch)
    data = built.as_graph_def().SerializeToString()
    graph, _ = apply(data, load_rules(["fold_constants"]), inputs=["x"], outputs=["out"])
    ops = [n.op for n in graph]
    if batch is None:  # the batch is not known until the graph runs: nothing to fold
        assert "Shape" in ops
        return
    assert "Shape" not in ops
    back = next(n for n in graph if n.op == "Reshape" and graph[n.inputs[0].node].op == "Sqrt")
    assert graph[back.inputs[1].node].get_attr("value").tolist() == [2, 5, 5, 8]
    feeds = {"x": np.random.default_rng(3).standard_normal([2, 10, 10, 3]).astype(np.float32)}
    expected, = tf_run(data, feeds, ["out"])
    actual, = tf_run(graph.to_bytes(), feeds, ["out"])
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_gtt_command_line_folds_shape(tmp_path):
    import tensorflow as tf

    from gtt_rules.cli import main

    with tf.Graph().as_default() as built:
        shape_feeds_reshape(tf, 1)
    source, target = tmp_path / "in.pb", tmp_path / "out.pb"
    source.write_bytes(built.as_graph_def().SerializeToString())
    assert main(["apply", f"--in_graph={source}", f"--out_graph={target}", "--inputs=x", "--outputs=out",
                 "--transforms=fold_constants(ignore_errors=true)"]) == 0
    assert "Shape" not in {n.op for n in Graph.load(target)}
    feeds = {"x": np.ones([1, 10, 10, 3], np.float32)}
    np.testing.assert_allclose(tf_run(target.read_bytes(), feeds, ["out"])[0],
                               tf_run(source.read_bytes(), feeds, ["out"])[0], rtol=1e-6)
