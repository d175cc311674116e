"""TF2 functional control flow in our evaluator (engine/functions.py) against TensorFlow.

Each graph is a tf.function frozen with convert_variables_to_constants_v2(lower_control_flow=False),
so its While, If and Case nodes keep their functions in the library, as frozen TF2 models do."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tf_run
from gtt_rules.engine.evaluator import evaluate
from gtt_rules.engine.functions import CALL_OPS, CASE_OPS, IF_OPS, WHILE_OPS
from gtt_rules.engine.graph import Graph

F32 = np.float32
EXACT = 1e-6      # kernels that round as TensorFlow's do: products, sums, selections
TRANSCENDENTAL = 1e-5   # tanh and sigmoid: the float kernels' tolerance


def frozen(tf, fn, *specs, freeze: bool = True) -> tuple[Graph, list[str], list[str]]:
    """`fn` traced on `specs` and frozen: our Graph, its input and its output tensor names.
    Unfrozen (`freeze=False`, for functions without variables), calls of other tf.functions
    stay PartitionedCalls, which freezing inlines."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    result = tf.function(fn).get_concrete_function(*specs)
    if freeze:
        result = convert_variables_to_constants_v2(result, lower_control_flow=False)
    graph = Graph.from_bytes(result.graph.as_graph_def().SerializeToString())
    return graph, [t.name for t in result.inputs], [t.name for t in result.outputs]


def library_ops(graph: Graph) -> set[str]:
    """The ops of the graph and of every function in its library."""
    return {n.op for n in graph} | {n.op for f in graph.library.function for n in f.node_def}


def check(graph: Graph, feeds: dict, outputs: list[str], rtol: float) -> None:
    """Our outputs within `rtol` of TensorFlow's running the same GraphDef, relative to the
    largest magnitude of each output."""
    ours = evaluate(graph, feeds, outputs)
    theirs = tf_run(graph.to_bytes(), feeds, outputs)
    for mine, expected in zip(ours, theirs):
        expected = np.asarray(expected)
        assert mine.shape == expected.shape and mine.dtype == expected.dtype
        scale = float(np.max(np.abs(expected), initial=0.0))
        assert float(np.max(np.abs(mine.astype(np.float64) - expected), initial=0.0)) <= rtol * max(scale, 1e-30)


@pytest.fixture(scope="module")
def nested(tf):
    """A loop of `n` steps whose body runs an inner loop, a cond and a nested tf.function."""
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(3, 3)).astype(F32) * 0.5)
    shift = tf.constant(rng.normal(size=3).astype(F32))

    @tf.function
    def scaled(h):      # called from the body: a call inside a function
        return h * 0.5 + shift

    def model(x, n):
        def body(i, h):
            _, h = tf.while_loop(lambda j, g: j < i, lambda j, g: (j + 1, g * 0.75 + 0.125), [0, h])
            h = tf.cond(tf.reduce_sum(h) > 0, lambda: tf.matmul(h, w), lambda: scaled(h))
            return i + 1, h

        _, h = tf.while_loop(lambda i, h: i < n, body, [tf.constant(0), x])
        return h

    return frozen(tf, model, tf.TensorSpec([2, 3], tf.float32), tf.TensorSpec([], tf.int32),
                  freeze=False)


@pytest.mark.parametrize("steps", [0, 1, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_nested_loops_conds_and_calls(nested, steps, seed):
    graph, inputs, outputs = nested
    ops = library_ops(graph)
    assert ops & WHILE_OPS and ops & IF_OPS and ops & CALL_OPS
    x = np.random.default_rng(seed).normal(size=(2, 3)).astype(F32)
    check(graph, dict(zip(inputs, [x, np.int32(steps)])), outputs, EXACT)


@pytest.fixture(scope="module")
def case(tf):
    def model(x, index):
        return tf.switch_case(index, [lambda: x * 2.0, lambda: x - 1.0, lambda: -x])
    # Unfrozen: freezing lowers a Case to Switch and Merge.
    return frozen(tf, model, tf.TensorSpec([4], tf.float32), tf.TensorSpec([], tf.int32), freeze=False)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 17, -1])
def test_case_out_of_range_takes_the_last_branch(case, index):
    graph, inputs, outputs = case
    assert library_ops(graph) & CASE_OPS
    x = np.array([1.5, -2.0, 0.25, 3.0], F32)
    check(graph, dict(zip(inputs, [x, np.int32(index)])), outputs, EXACT)


@pytest.fixture(scope="module")
def recurrent(tf):
    """A Keras LSTM that returns its whole sequence (a TensorList stacked) into a GRU."""
    import keras

    keras.utils.set_random_seed(3)
    sequence = keras.Input((5, 3), batch_size=2)
    hidden = keras.layers.LSTM(4, return_sequences=True)(sequence)
    model = keras.Model(sequence, keras.layers.GRU(2)(hidden))
    return frozen(tf, lambda x: model(x), tf.TensorSpec([2, 5, 3], tf.float32))


def test_recurrent_layers_over_tensor_lists(recurrent):
    graph, inputs, outputs = recurrent
    ops = library_ops(graph)
    assert ops & WHILE_OPS and {"TensorListFromTensor", "TensorListGetItem", "TensorListSetItem",
                                "TensorListStack"} <= ops
    x = np.random.default_rng(5).normal(size=(2, 5, 3)).astype(F32)
    check(graph, dict(zip(inputs, [x])), outputs, TRANSCENDENTAL)


def test_a_tf1_loop_calls_a_function_in_its_body(tf):
    """TF1 control flow (Enter, Merge, Switch, ...) around a PartitionedCall: the dataflow
    interpreter runs the call at each iteration."""
    from tensorflow.python.ops import control_flow_util

    enabled = control_flow_util.ENABLE_CONTROL_FLOW_V2
    control_flow_util.ENABLE_CONTROL_FLOW_V2 = False     # as tf.compat.v1 graphs were built
    try:
        with tf.Graph().as_default() as tf_graph:
            step = tf.function(lambda h: h * 0.5 + 0.25, autograph=False)
            x = tf.compat.v1.placeholder(tf.float32, [3], name="x")
            _, h = tf.compat.v1.while_loop(lambda i, h: i < 4, lambda i, h: (i + 1, step(h)),
                                           [tf.constant(0), x])
            tf.identity(h, name="out")
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = enabled
    graph = Graph.from_bytes(tf_graph.as_graph_def().SerializeToString())
    assert {"NextIteration", "Merge"} <= {n.op for n in graph} and {n.op for n in graph} & CALL_OPS
    check(graph, {"x": np.array([0.5, -1.0, 2.0], F32)}, ["out"], EXACT)


def test_tensor_list_kernels(tf):
    """Every TensorList kernel, in a loop as TF2 code writes them and outside one."""
    from tensorflow.python.ops import list_ops

    def model(x, n):
        pushed = list_ops.empty_tensor_list(element_shape=[2], element_dtype=tf.float32)
        _, pushed = tf.while_loop(lambda i, items: i < n, lambda i, items: (
            i + 1, list_ops.tensor_list_push_back(items, x[i] * 2.0)), [0, pushed])
        rest, last = list_ops.tensor_list_pop_back(pushed, element_dtype=tf.float32)
        reserved = list_ops.tensor_list_reserve([2], 4, tf.float32)
        reserved = list_ops.tensor_list_set_item(reserved, 2, last)
        array = tf.TensorArray(tf.float32, size=0, dynamic_size=True)     # resizes as it writes
        array = array.write(3, x[0]).write(1, x[1])
        return {"gathered": list_ops.tensor_list_gather(rest, [1, 0], element_dtype=tf.float32),
                "length": list_ops.tensor_list_length(rest),
                "shape": list_ops.tensor_list_element_shape(rest, tf.int32),
                "last": last,
                "reserved": list_ops.tensor_list_stack(reserved, tf.float32, element_shape=[2]),
                "item": list_ops.tensor_list_get_item(reserved, 0, tf.float32, element_shape=[2]),
                "array": array.stack()}

    graph, inputs, outputs = frozen(tf, model, tf.TensorSpec([5, 2], tf.float32),
                                    tf.TensorSpec([], tf.int32), freeze=False)
    assert {"EmptyTensorList", "TensorListPushBack", "TensorListPopBack", "TensorListGather",
            "TensorListLength", "TensorListElementShape", "TensorListReserve", "TensorListSetItem",
            "TensorListStack", "TensorListGetItem"} <= library_ops(graph)
    x = np.random.default_rng(2).normal(size=(5, 2)).astype(F32)
    check(graph, dict(zip(inputs, [x, np.int32(4)])), outputs, EXACT)
