"""Rewrites that differential fuzzing against TensorFlow caught changing the numbers or breaking the
graph; TensorFlow builds each graph and runs it before and after the rewrite."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import tf_run
from gtt_rules.engine.graph import Graph
from gtt_rules import load_rules

RNG = np.random.default_rng(23)


def _weights(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _tf_run_with_onednn(graphs: list[bytes], feeds: dict, tmp_path: pathlib.Path) -> list[np.ndarray]:
    """tf_run of "output" of each graph in a TensorFlow with oneDNN kernels (its default on x86),
    which run the channels-first Conv2D that the reference CPU kernels refuse."""
    for i, graph_bytes in enumerate(graphs):
        (tmp_path / f"{i}.pb").write_bytes(graph_bytes)
    np.savez(tmp_path / "feeds.npz", **feeds)
    script = ("import sys, pathlib, numpy as np; from conftest import tf_run; d = pathlib.Path(sys.argv[1]); "
              "f = dict(np.load(d / 'feeds.npz')); "
              "[np.save(d / f'{i}.npy', tf_run((d / f'{i}.pb').read_bytes(), f, ['output'])[0]) "
              "for i in range(int(sys.argv[2]))]")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "PYTHONPATH": str(pathlib.Path(__file__).parent)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(len(graphs))], check=True, env=env)
    return [np.load(tmp_path / f"{i}.npy") for i in range(len(graphs))]


def _build(tf, build, shape) -> bytes:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="input")
        tf.identity(build(x), name="output")
    return graph.as_graph_def().SerializeToString()


def _rewrite(original: bytes, spec: str) -> Graph:
    rewritten = Graph.from_bytes(original)
    for stage in load_rules([spec]):
        stage.run(rewritten, inputs=["input"], outputs=["output"])
    return rewritten


def _rewrite_and_run(tf, build, shape, spec):
    """(original outputs, rewritten outputs, rewritten graph) of `build(x)` named "output"."""
    original = _build(tf, build, shape)
    rewritten = _rewrite(original, spec)
    feeds = {"input": RNG.standard_normal(shape).astype(np.float32)}
    expected, = tf_run(original, feeds, ["output"])
    actual, = tf_run(rewritten.to_bytes(), feeds, ["output"])
    return expected, actual, rewritten


# A [1] constant broadcasts over every channel, but as a BiasAdd's bias it must have one value per
# channel, and a depthwise filter cannot take it as [in, multiplier].
@pytest.mark.parametrize("build", [
    lambda tf, x: tf.nn.conv2d(x, _weights(1, 1, 3, 4), 1, "SAME") + _weights(1),
    lambda tf, x: tf.nn.conv2d(x, _weights(1, 1, 3, 4), 1, "SAME") - _weights(1),
    lambda tf, x: tf.nn.depthwise_conv2d(x, _weights(1, 1, 3, 2), [1, 1, 1, 1], "SAME") * _weights(1),
], ids=["add", "sub", "depthwise-mul"])
def test_batch_norm_keeps_size_one_constants_after_a_layer(tf, build):
    expected, actual, _ = _rewrite_and_run(tf, lambda x: build(tf, x), [1, 5, 5, 3], "batch_norm")
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# Channels first, a [C] constant broadcasts along the width (here as wide as the channels are
# many), so it is no per-channel scale or bias.
@pytest.mark.parametrize("build", [
    lambda tf, x: tf.nn.conv2d(x, _weights(1, 1, 3, 4), 1, "SAME", data_format="NCHW") * _weights(4),
    lambda tf, x: tf.nn.conv2d(x, _weights(1, 1, 3, 4), 1, "SAME", data_format="NCHW") + _weights(4),
    lambda tf, x: tf.nn.bias_add(tf.nn.conv2d(x, _weights(1, 1, 3, 4), 1, "SAME", data_format="NCHW"),
                                 _weights(4), data_format="NCHW") + _weights(4),
], ids=["mul", "add", "bias-add-then-add"])
def test_batch_norm_leaves_channels_first_broadcasts_alone(tf, build, tmp_path):
    original = _build(tf, lambda x: build(tf, x), [1, 3, 4, 4])
    rewritten = _rewrite(original, "batch_norm")
    feeds = {"input": RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)}
    expected, actual = _tf_run_with_onednn([original, rewritten.to_bytes()], feeds, tmp_path)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# Keras' Concatenate counts its axis from the back (-1); QuantizedConcat takes only an int32 axis
# counted from the front.
@pytest.mark.parametrize("axis_dtype", ["int32", "int64"])
def test_quantize_nodes_concat_along_a_negative_axis(tf, axis_dtype):
    def build(x):
        axis = tf.constant(-1, getattr(tf, axis_dtype))
        return tf.raw_ops.ConcatV2(values=[tf.nn.relu(x), tf.nn.relu6(-x)], axis=axis)

    expected, actual, rewritten = _rewrite_and_run(tf, build, [1, 4, 4, 3], "quantize_nodes")
    assert any(node.op == "QuantizedConcat" for node in rewritten)
    np.testing.assert_allclose(actual, expected, atol=0.05)


# A one-unit Dense on one example gives a 32-bit result of one value: its measured range is empty,
# and the eight-bit Add that reads it refused to run ("max_x must be larger than min_x") until the
# range was widened. (Whether the check trips depends on the value; the bias sets its sign.)
@pytest.mark.parametrize("bias", [-3.0, 3.0])
def test_quantize_nodes_one_unit_dense_with_bias(tf, bias):
    def build(x):
        layer = tf.matmul(x, tf.constant(_weights(8, 1) * 0.1))
        return tf.add(layer, tf.constant(np.full([1], bias, np.float32) + _weights(1) * 0.1))

    expected, actual, rewritten = _rewrite_and_run(tf, build, [1, 8], "quantize_nodes")
    assert any(node.op == "QuantizedAdd" for node in rewritten)
    np.testing.assert_allclose(actual, expected, rtol=0.05, atol=0.05)


# A second run renamed every node again: the first avoided all old names, so its own short names
# were taken the next time. Nodes already named like short names need the clash-free renaming.
def test_obfuscate_names_twice_changes_nothing(tf):
    def build(x):
        scaled = tf.nn.relu(x, name="b") * tf.constant([1.0, 2.0, 3.0], name="a")
        return tf.tanh(scaled + tf.constant(1.0, name="c"))

    expected, actual, rewritten = _rewrite_and_run(tf, build, [3], "obfuscate_names")
    np.testing.assert_array_equal(actual, expected)
    once = rewritten.to_bytes()
    for stage in load_rules(["obfuscate_names"]):
        stage.run(rewritten, inputs=["input"], outputs=["output"])
    assert rewritten.to_bytes() == once


# Given numpy values, TensorFlow makes the batch norm's inputs itself and names them after it
# (`FusedBatchNorm/offset`), the name the fold after a concat gave its new bias.
def test_fold_old_batch_norms_after_concat_with_inputs_tensorflow_named(tf):
    def build(x):
        layers = [tf.nn.conv2d(x, tf.constant(_weights(3, 3, 3, c)), 1, "SAME") for c in (2, 3)]
        gamma, variance = (RNG.uniform(0.5, 2, 5).astype(np.float32) for _ in range(2))
        return tf.raw_ops.FusedBatchNorm(x=tf.concat(layers, 3), scale=gamma, offset=_weights(5), mean=_weights(5),
                                         variance=variance, epsilon=0.001, is_training=False)[0]

    expected, actual, rewritten = _rewrite_and_run(tf, build, [1, 6, 6, 3], "fold_old_batch_norms")
    assert not any(node.op == "FusedBatchNorm" for node in rewritten)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# A 32-bit result with no value above zero measures a range whose top is below zero; narrowed over
# it, zero has no eight-bit code, and a Relu after the concat returned the top of that range for
# every value until the range was widened to take zero in.
def test_quantize_nodes_relu_of_results_below_zero(tf):
    def build(x):
        layers = [tf.nn.conv2d(tf.nn.relu(x), tf.constant(-np.abs(_weights(3, 3, 3, 4))), 1, "SAME")
                  for _ in range(2)]
        return tf.nn.relu(tf.concat(layers, 3))

    expected, actual, rewritten = _rewrite_and_run(tf, build, [1, 6, 6, 3], "quantize_nodes")
    assert any(node.op == "QuantizedConcat" for node in rewritten)
    np.testing.assert_allclose(actual, expected, atol=1e-3)
