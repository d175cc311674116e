"""`compact_names`, the eightbit pipeline's last pass: the helper nodes the rewrites made get short
names, an eight-bit op takes its layer's name where the float node is gone, and nothing else
changes: TensorFlow computes the same bits, and `compare --per-layer` finds the same layers."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from conftest import tf_run
from test_gtt import build_tf_graph
from gtt_rules import standard_library
from gtt_rules.engine.graph import Graph
from gtt_rules.per_layer import match_layers

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "mobilenet_tiny.pb"
INPUT, OUTPUT = "input", "Identity"


def eightbit_before_and_after_compaction(graph: Graph, inputs, outputs) -> tuple[bytes, bytes]:
    """`graph` through the eightbit pipeline: the bytes before its last pass, compact_names, and after."""
    stages = standard_library().stages("eightbit")
    assert stages[-1].name == "compact_names"
    for stage in stages[:-1]:
        stage.run(graph, inputs=inputs, outputs=outputs)
    before = graph.to_bytes()
    stages[-1].run(graph, inputs=inputs, outputs=outputs)
    return before, graph.to_bytes()


@pytest.fixture(scope="module")
def example():
    float_graph = Graph.load(EXAMPLE)
    before, after = eightbit_before_and_after_compaction(Graph.load(EXAMPLE), [INPUT], [OUTPUT])
    return float_graph, Graph.from_bytes(before), Graph.from_bytes(after)


def test_helpers_get_short_names_and_every_float_name_stays(example):
    float_graph, before, after = example
    assert len(after) == len(before)
    assert sorted(n.op for n in after) == sorted(n.op for n in before)
    made = [n for n in after if n.name not in float_graph]
    assert made and all(len(n.name) <= 2 for n in made)
    # What kept a float node's name keeps it; eight-bit ops whose float node is gone took it.
    kept = {n.name for n in before if n.name in float_graph}
    took = {n.name for n in after if n.name in float_graph} - kept
    assert kept <= {n.name for n in after}
    assert took and all(after[name].op.startswith("Quantized") for name in took)
    assert len(after.to_bytes()) < 0.85 * len(before.to_bytes())


def test_tensorflow_computes_the_same_bits(example):
    _, before, after = example
    image = np.random.default_rng(5).standard_normal((1, 96, 96, 3)).astype(np.float32)
    want = tf_run(before.to_bytes(), {f"{INPUT}:0": image}, [f"{OUTPUT}:0"])
    got = tf_run(after.to_bytes(), {f"{INPUT}:0": image}, [f"{OUTPUT}:0"])
    np.testing.assert_array_equal(got[0], want[0])


def test_per_layer_finds_the_same_layers(example):
    float_graph, before, after = example
    layers = [layer.name for layer in match_layers(float_graph, before)]
    assert layers and [layer.name for layer in match_layers(float_graph, after)] == layers
    # Held as codes: found before under the derived name, now by the layer's own.
    codes = [layer for layer in match_layers(float_graph, after) if layer.codes is not None]
    assert codes and all(after[layer.name].op.startswith("Quantized") for layer in codes)


def test_a_short_name_the_graph_already_has_is_skipped(tf):
    def body():
        x = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 3], name="a")
        w = tf.constant(np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype(np.float32), name="b")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"), name="c")
        tf.identity(tf.nn.max_pool2d(y, 2, 2, "VALID"), name="out")
    original = build_tf_graph(tf, body)
    float_graph = Graph.from_bytes(original)
    _, after = eightbit_before_and_after_compaction(Graph.from_bytes(original), ["a"], ["out"])
    graph = Graph.from_bytes(after)
    assert graph["a"].op == "Placeholder" and graph["out"].op == "Identity"
    assert any(n.op == "QuantizedConv2D" for n in graph)
    assert all(n.name in float_graph or len(n.name) <= 2 for n in graph)
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 3)).astype(np.float32)
    got = tf_run(after, {"a:0": x}, ["out:0"])[0]
    want = tf_run(original, {"a:0": x}, ["out:0"])[0]
    assert np.max(np.abs(got - want)) < 0.05 * np.max(np.abs(want))


def test_a_graph_read_from_a_file_has_no_helpers_to_rename(example):
    _, _, after = example
    graph = Graph.from_bytes(after.to_bytes())
    standard_library().stages("compact_names")[0].run(graph, inputs=[INPUT], outputs=[OUTPUT])
    assert graph.to_bytes() == after.to_bytes()
