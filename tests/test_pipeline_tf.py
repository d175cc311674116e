"""optimize_for_inference and fold_constants on real TensorFlow graphs, TensorFlow as the oracle."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from conftest import fixture_path, fixture_spec, grappler_optimize, random_feeds, tf_run
from gtt_rules.engine.graph import Graph
from gtt_rules import load_rules

BATCH_NORM_OPS = {"FusedBatchNorm", "FusedBatchNormV3", "BatchNormWithGlobalNormalization"}
LAYERS = {"Conv2D", "DepthwiseConv2dNative", "MatMul"}


def run_pipeline(name: str, spec_text: str) -> tuple[Graph, bytes, dict]:
    spec = fixture_spec(name)
    original = fixture_path(name).read_bytes()
    graph = Graph.from_bytes(original)
    outputs = [o.split(":")[0] for o in spec["outputs"]]
    inputs = [i["name"] for i in spec["inputs"]]
    for stage in load_rules([spec_text]):
        stage.run(graph, inputs=inputs, outputs=outputs)
    return graph, original, spec


@pytest.mark.parametrize("name", ["keras_bn_frozen", "keras_mobilenet_tiny", "tf1_conv_bn", "bn_global_norm"])
def test_optimize_for_inference_folds_every_batch_norm(name):
    graph, original, spec = run_pipeline(name, "optimize_for_inference")
    ops = Counter(node.op for node in graph)
    assert not BATCH_NORM_OPS & set(ops), ops
    assert ops["Rsqrt"] == 0 and ops["CheckNumerics"] == 0
    outputs = {o.split(":")[0] for o in spec["outputs"]}
    assert all(node.name in outputs for node in graph if node.op == "Identity")
    # One bias add per layer: no Mul or Add by a constant is left right after a layer.
    for node in graph:
        if node.op in ("Mul", "Add", "AddV2", "Sub", "BiasAdd"):
            producer = graph[node.inputs[0].node]
            if producer.op == "BiasAdd" and graph[producer.inputs[0].node].op in LAYERS:
                assert node.op != "BiasAdd" or graph[node.inputs[1].node].op != "Const", node.name
    feeds = random_feeds(spec, seed=5)
    expected = tf_run(original, feeds, spec["outputs"])
    actual = tf_run(graph.to_bytes(), feeds, spec["outputs"])
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["keras_bn_frozen", "keras_mobilenet_tiny", "tf1_conv_bn"])
def test_optimize_for_inference_leaves_no_more_nodes_than_grappler(name):
    graph, original, spec = run_pipeline(name, "optimize_for_inference")
    grappler = grappler_optimize(original, spec["outputs"])
    assert len(graph) <= len(grappler.node), (len(graph), len(grappler.node))


def test_keras_batch_norm_ends_as_weights_and_one_bias_add_per_convolution():
    graph, _, _ = run_pipeline("keras_bn_frozen", "optimize_for_inference")
    for node in graph:
        if node.op in ("Conv2D", "DepthwiseConv2dNative"):
            (consumer,) = graph.consumers(node.name)
            assert consumer.op == "BiasAdd"
            assert graph[consumer.inputs[1].node].op == "Const"
            assert all(c.op != "BiasAdd" for c in graph.consumers(consumer.name))


def test_fold_constants_collapses_constant_subexpressions_of_a_keras_graph():
    graph, original, spec = run_pipeline("keras_bn_frozen", "fold_constants")
    ops = Counter(node.op for node in graph)
    assert ops["Rsqrt"] == 0 and ops["Sub"] == 0
    for node in graph:
        if node.op not in ("Const", "Placeholder", "NoOp"):
            assert not all(graph[r.node].op == "Const" for r in node.inputs) or not node.inputs, node.name
    feeds = random_feeds(spec, seed=6)
    for e, a in zip(tf_run(original, feeds, spec["outputs"]), tf_run(graph.to_bytes(), feeds, spec["outputs"])):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
