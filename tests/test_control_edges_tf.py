"""Liveness through control edges, on graphs TensorFlow built (issue 11, DESIGN.md "Control edges").

A Keras model frozen with convert_variables_to_constants_v2 hangs every weight Const on a NoOp
that the output waits on. Those edges order nothing, so the Graph Transform Tool recipe must drop
the original weights beside their folded copies, and come out as small as the pipeline.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules.cli import main
from gtt_rules.engine.graph import Graph

RECIPE = ("strip_unused_nodes remove_nodes(op=Identity, op=CheckNumerics) fold_constants(ignore_errors=true) "
          "fold_batch_norms fold_old_batch_norms quantize_weights")


def _small_resnet(tf):
    """A small ResNet-like Keras model: conv, batch norm, two residual blocks, a dense head; with
    random batch-norm statistics and dense bias, frozen as Keras users freeze."""
    import keras
    from keras_models import freeze, randomize_batch_norms

    keras.backend.clear_session()
    keras.utils.set_random_seed(7)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for _ in range(2):
        y = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
        y = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(y))
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(10)
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(7)
    randomize_batch_norms(model, rng, (1, 16, 16, 3))
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, rng.normal(size=bias.shape).astype(np.float32)])
    graph_def, outputs = freeze(model, [1, 16, 16, 3])
    keras.backend.clear_session()
    return graph_def.SerializeToString(deterministic=True), outputs


def _apply(tmp_path, source, name, *steps, outputs):
    out = tmp_path / name
    args = ["apply", str(source), "-o", str(out), "--inputs", "input", "--outputs", ",".join(outputs)]
    for option, value in steps:
        args += [f"--{option}", value]
    assert main(args) == 0
    return out


def test_gtt_recipe_on_a_frozen_keras_model_matches_the_pipeline(tf, tmp_path):
    graph_bytes, outputs = _small_resnet(tf)
    source = tmp_path / "model.pb"
    source.write_bytes(graph_bytes)
    names = [o.split(":")[0] for o in outputs]
    recipe = _apply(tmp_path, source, "recipe.pb", ("transforms", RECIPE), outputs=names)
    pipeline = _apply(tmp_path, source, "pipeline.pb", ("pipeline", "optimize_for_inference"),
                      ("transforms", "quantize_weights"), outputs=names)
    recipe_graph, pipeline_graph = Graph.load(recipe), Graph.load(pipeline)
    # The frozen model hangs its weights on a NoOp: the original floats must not survive.
    assert any(node.control_inputs for node in Graph.load(source))
    assert not any(node.control_inputs for node in recipe_graph)
    assert len(recipe_graph) == len(pipeline_graph)
    size, reference = recipe.stat().st_size, pipeline.stat().st_size
    assert abs(size - reference) <= 0.01 * reference
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 16, 16, 3)).astype(np.float32)}
    [expected] = tf_run(graph_bytes, feeds, outputs)
    [got] = tf_run(recipe.read_bytes(), feeds, outputs)
    [reference] = tf_run(pipeline.read_bytes(), feeds, outputs)
    # quantize_weights rounds every weight to eight bits: the answer moves from the float model's,
    # and both ways must move it alike.
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99


def test_recipe_without_quantization_keeps_the_keras_model_exact(tf, tmp_path):
    graph_bytes, outputs = _small_resnet(tf)
    source = tmp_path / "model.pb"
    source.write_bytes(graph_bytes)
    names = [o.split(":")[0] for o in outputs]
    recipe = _apply(tmp_path, source, "recipe.pb",
                    ("transforms", RECIPE.replace(" quantize_weights", "")), outputs=names)
    ranks = [n.get_attr("value").ndim for n in Graph.load(recipe) if n.op == "Const"]
    # Five folded convolution kernels and the dense kernel, no original weight beside them.
    assert ranks.count(4) == 5 and ranks.count(2) == 1
    feeds = {"input": np.random.default_rng(1).standard_normal((1, 16, 16, 3)).astype(np.float32)}
    [expected] = tf_run(graph_bytes, feeds, outputs)
    [got] = tf_run(recipe.read_bytes(), feeds, outputs)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [(("transforms", RECIPE),),
                                   (("pipeline", "optimize_for_inference"),),
                                   (("transforms", "strip_unused_nodes remove_trivial_control_dependencies"),),
                                   (("transforms", "remove_control_dependencies"),)])
def test_tf1_loop_frames_survive(tf, tmp_path, steps):
    """Inside a TF1 while loop a Const joins the loop's frame by a control edge: it must stay."""
    spec = fixture_spec("tf1_while_loop")
    names = [o.split(":")[0] for o in spec["outputs"]]
    out = _apply(tmp_path, fixture_path("tf1_while_loop"), "out.pb", *steps, outputs=names)
    feeds = random_feeds(spec)
    expected = tf_run(fixture_path("tf1_while_loop").read_bytes(), feeds, spec["outputs"])
    got = tf_run(out.read_bytes(), feeds, spec["outputs"])
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=2e-2 if "quantize_weights" in str(steps) else 1e-5, atol=1e-3)
