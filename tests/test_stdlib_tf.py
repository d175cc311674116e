"""The standard rules on graphs real TensorFlow built; TensorFlow runs both graphs to compare."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from conftest import fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules.engine.driver import apply_rules
from gtt_rules.engine.graph import Graph
from gtt_rules import load_rules


def rewrite_fixture(name: str, specs: list[str]) -> tuple[Graph, bytes, dict]:
    spec = fixture_spec(name)
    original = fixture_path(name).read_bytes()
    graph = Graph.from_bytes(original)
    protected = [o.split(":")[0] for o in spec["outputs"]] + [i["name"] for i in spec["inputs"]]
    for stage in load_rules(specs):
        apply_rules(graph, stage.rules, protected=protected)
    return graph, original, spec


def assert_same_outputs(original: bytes, graph: Graph, spec: dict, *, atol: float, rtol: float = 0.0):
    feeds = random_feeds(spec, seed=3)
    expected = tf_run(original, feeds, spec["outputs"])
    actual = tf_run(graph.to_bytes(), feeds, spec["outputs"])
    for name, e, a in zip(spec["outputs"], expected, actual):
        assert a.shape == e.shape, name
        np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=name)


def test_cleanup_removes_identity_and_check_numerics_from_a_tf1_graph():
    graph, original, spec = rewrite_fixture("tf1_conv_bn", ["cleanup"])
    before = Counter(n.op for n in Graph.from_bytes(original))
    after = Counter(n.op for n in graph)
    assert before["Identity"] >= 2 and before["CheckNumerics"] == 1
    assert after["CheckNumerics"] == 0
    # Only an Identity that is itself a graph output may stay.
    outputs = {o.split(":")[0] for o in spec["outputs"]}
    assert all(n.name in outputs for n in graph if n.op == "Identity")
    assert len(graph) == len(Graph.from_bytes(original)) - before["Identity"] - 1 + after["Identity"]
    assert_same_outputs(original, graph, spec, atol=0)


def test_mul_folds_into_conv_depthwise_and_matmul():
    graph, original, spec = rewrite_fixture("tf1_mul_fold", ["batch_norm"])
    layers = {"Conv2D", "DepthwiseConv2dNative", "MatMul"}
    for node in graph:
        if node.op == "Mul":
            assert not any(graph[r.node].op in layers for r in node.inputs), node.name
    assert sum(1 for n in graph if n.op == "Mul") < sum(1 for n in Graph.from_bytes(original) if n.op == "Mul")
    # Each output name still exists: the folded layer took the Mul's name.
    for output in spec["outputs"]:
        assert graph[output.split(":")[0]].op in layers | {"Add", "AddV2", "BiasAdd", "Relu"}
    assert_same_outputs(original, graph, spec, atol=1e-5, rtol=1e-5)


def test_dequantize_quantize_pair_cancels_in_a_real_eight_bit_graph():
    graph, original, spec = rewrite_fixture("quantized_ops", ["quantization"])
    before = Counter(n.op for n in Graph.from_bytes(original))
    after = Counter(n.op for n in graph)
    assert (before["Dequantize"], before["QuantizeV2"]) == (2, 2)
    # The pair between QuantizedRelu and QuantizedMaxPool is gone; relu_float is an output, so its
    # Dequantize stays, but nothing quantizes it again.
    assert after["QuantizeV2"] == 1
    for node in graph:
        if node.op == "QuantizeV2":
            assert graph[node.inputs[0].node].op != "Dequantize"
    assert_same_outputs(original, graph, spec, atol=0)


@pytest.mark.parametrize("name", ["keras_bn_frozen", "keras_mobilenet_tiny", "tf2_function_library", "tf1_while_loop"])
def test_standard_rules_keep_keras_and_control_flow_graphs_running(name):
    graph, original, spec = rewrite_fixture(name, ["cleanup", "batch_norm", "quantization"])
    if name == "tf2_function_library":
        import tensorflow as tf
        assert tf.compat.v1.GraphDef.FromString(graph.to_bytes()).library == \
            tf.compat.v1.GraphDef.FromString(original).library
    assert_same_outputs(original, graph, spec, atol=1e-5, rtol=1e-5)
