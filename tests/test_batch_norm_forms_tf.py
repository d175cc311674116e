"""Batch-norm forms beyond the fixtures: after a bias add, around an atrous convolution, Keras-style
bias and subtract chains; TensorFlow builds the graphs and runs both."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from conftest import tf_run
from gtt_rules.engine.graph import Graph
from gtt_rules import load_rules

RNG = np.random.default_rng(11)


def _weights(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _fused_batch_norm(tf, x, channels):
    y, *_ = tf.compat.v1.nn.fused_batch_norm(
        x, tf.constant(RNG.uniform(0.5, 2, channels).astype(np.float32)), tf.constant(_weights(channels)),
        mean=tf.constant(_weights(channels)), variance=tf.constant(RNG.uniform(0.5, 2, channels).astype(np.float32)),
        epsilon=0.001, is_training=False)
    return y


def _bias_then_batch_norm(tf, x):
    conv = tf.nn.conv2d(x, tf.constant(_weights(3, 3, 3, 4)), 1, "SAME")
    return _fused_batch_norm(tf, tf.nn.bias_add(conv, tf.constant(_weights(4))), 4)


def _atrous_then_batch_norm(tf, x):
    conv = tf.nn.atrous_conv2d(x, tf.constant(_weights(3, 3, 3, 4)), rate=2, padding="SAME")
    return _fused_batch_norm(tf, conv, 4)


def _bias_then_scale(tf, x):
    conv = tf.nn.conv2d(x, tf.constant(_weights(3, 3, 3, 4)), 1, "SAME")
    return tf.multiply(tf.nn.bias_add(conv, tf.constant(_weights(4))), tf.constant(_weights(4)))


def _subtract_then_add(tf, x):
    conv = tf.nn.conv2d(x, tf.constant(_weights(3, 3, 3, 4)), 1, "SAME")
    return tf.add(tf.subtract(conv, tf.constant(_weights(4))), tf.constant(_weights(4)))


@pytest.mark.parametrize("build, leftover_ops", [
    (_bias_then_batch_norm, {"FusedBatchNormV3", "FusedBatchNorm"}),
    (_atrous_then_batch_norm, {"FusedBatchNormV3", "FusedBatchNorm"}),
    (_bias_then_scale, {"Mul"}),
    (_subtract_then_add, {"Sub", "Add", "AddV2"}),
])
def test_batch_norm_form_folds_to_one_bias_add(tf, build, leftover_ops):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 3], name="input")
        tf.nn.relu(build(tf, x), name="output")
    original = graph.as_graph_def().SerializeToString()
    rewritten = Graph.from_bytes(original)
    for stage in load_rules(["batch_norm"]):
        stage.run(rewritten, inputs=["input"], outputs=["output"])
    ops = Counter(node.op for node in rewritten)
    assert not leftover_ops & set(ops), ops
    assert ops["BiasAdd"] == 1
    feeds = {"input": RNG.standard_normal((1, 8, 8, 3)).astype(np.float32)}
    expected, = tf_run(original, feeds, ["output"])
    actual, = tf_run(rewritten.to_bytes(), feeds, ["output"])
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
