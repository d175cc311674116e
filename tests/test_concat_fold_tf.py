"""fold_old_batch_norms after a ConcatV2 of convolutions, on a graph TensorFlow built."""
from __future__ import annotations

from collections import Counter

import numpy as np

from conftest import tf_run
from gtt_rules.engine.graph import Graph
from gtt_rules import load_rules


def build_concat_batch_norm_graph(tf) -> bytes:
    rng = np.random.default_rng(7)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 6, 3], name="input")
        conv = tf.nn.conv2d(x, tf.constant(rng.standard_normal((3, 3, 3, 4), np.float32)), 1, "SAME")
        depthwise = tf.nn.depthwise_conv2d(x, tf.constant(rng.standard_normal((3, 3, 3, 2), np.float32)),
                                           [1, 1, 1, 1], "SAME")
        joined = tf.concat([conv, depthwise], axis=3)
        channels = 4 + 6
        y, *_ = tf.compat.v1.nn.fused_batch_norm(
            joined, tf.constant(rng.uniform(0.5, 2, channels).astype(np.float32)),
            tf.constant(rng.standard_normal(channels).astype(np.float32)),
            mean=tf.constant(rng.standard_normal(channels).astype(np.float32)),
            variance=tf.constant(rng.uniform(0.5, 2, channels).astype(np.float32)),
            epsilon=0.001, is_training=False)
        tf.nn.relu(y, name="output")
    return graph.as_graph_def().SerializeToString()


def test_batch_norm_after_concat_folds_into_each_layer(tf):
    original = build_concat_batch_norm_graph(tf)
    graph = Graph.from_bytes(original)
    for stage in load_rules(["fold_old_batch_norms"]):
        stage.run(graph, inputs=["input"], outputs=["output"])
    ops = Counter(node.op for node in graph)
    assert ops["FusedBatchNorm"] + ops["FusedBatchNormV3"] == 0
    assert ops["BiasAdd"] == 1 and ops["ConcatV2"] == 1 and ops["Conv2D"] == 1 and ops["DepthwiseConv2dNative"] == 1
    # The folded layers keep their names; the old weights and the batch-norm parameters are gone.
    assert {"Conv2D", "depthwise", "concat", "FusedBatchNormV3"} <= {node.name for node in graph}
    assert not {"Const", "Const_1", "Const_2", "Const_3", "Const_4", "Const_5"} & {node.name for node in graph}
    feeds = {"input": np.random.default_rng(1).standard_normal((1, 6, 6, 3)).astype(np.float32)}
    expected, = tf_run(original, feeds, ["output"])
    actual, = tf_run(graph.to_bytes(), feeds, ["output"])
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
