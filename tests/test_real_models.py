"""Real frozen Keras models, built at test time, with TensorFlow as the oracle.

- Issue #4: the numpy evaluator runs each model within 1e-4 relative of TensorFlow.
- Issue #5: optimize_for_inference folds every batch norm, leaves no Rsqrt and no Identity except
  at the outputs, keeps TensorFlow's outputs within 1e-4 relative, and leaves no more nodes than
  Grappler does.

The models are keras.applications MobileNetV2 (224x224), InceptionV3 (299x299) and ResNet50
(224x224), each at its default input size with the 1000-class head, random weights and random
batch-norm statistics (tests/keras_models.py, the builder the benchmarks use too). Each is built
once per session into pytest's tmp dir; nothing large is committed.

How outputs are compared: the logits (the Softmax's input) and the probabilities, each entry
within 1e-4 of its own size plus 1e-4 of the output's largest entry. The logits are the check that
counts: the softmax of these random networks is near one-hot (InceptionV3, ResNet50), so its
entries are 0, 1 or tiny. The absolute part follows from how float32 sums round: reordering a sum
of thousands of products moves it by a fraction of the sum's scale, not of each entry, so logits
that land near zero have large but meaningless elementwise relative errors (3e-3 seen). And
test_outputs_depend_on_the_input makes sure the comparison sees the whole network, not just the
classifier's biases.
"""
from __future__ import annotations

import pathlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

import gtt_rules
import keras_models
from conftest import grappler_optimize, random_feeds, tf_run
from gtt_rules.engine.graph import Graph

MODELS = ["mobilenet_v2", "inception_v3", "resnet50"]
BATCH_NORM_OPS = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3",
                  "BatchNormWithGlobalNormalization"}
RTOL = 1e-4


@dataclass
class RealModel:
    """One built model, with what several tests need of it computed once."""

    name: str
    path: pathlib.Path
    spec: dict
    feeds: dict[str, np.ndarray]
    cache: dict = field(default_factory=dict)

    @property
    def outputs(self) -> list[str]:
        return self.spec["outputs"]

    def fetches(self, graph: Graph) -> list[str]:
        """The model's outputs and its logits, the input of its one Softmax."""
        (softmax,) = [node for node in graph if node.op == "Softmax"]
        return [*self.outputs, str(softmax.inputs[0])]

    def expected(self) -> list[np.ndarray]:
        """TensorFlow's values of `fetches` on the original model."""
        if "expected" not in self.cache:
            original = self.path.read_bytes()
            self.cache["expected"] = tf_run(original, self.feeds, self.fetches(Graph.from_bytes(original)))
        return self.cache["expected"]

    def optimized(self) -> Graph:
        """The model after optimize_for_inference (a fresh copy: tests may not change it)."""
        if "optimized" not in self.cache:
            graph = Graph.load(self.path)
            gtt_rules.apply(graph, gtt_rules.load_rules(["optimize_for_inference"]),
                            inputs=[item["name"] for item in self.spec["inputs"]],
                            outputs=[o.split(":")[0] for o in self.outputs])
            self.cache["optimized"] = graph.to_bytes()
        return Graph.from_bytes(self.cache["optimized"])


@pytest.fixture(scope="session")
def real_models(tmp_path_factory, tf):
    """`get(name)`: the RealModel `name`, built on first use and kept for the session."""
    directory = tmp_path_factory.mktemp("keras_models")
    built: dict[str, RealModel] = {}

    def get(name: str) -> RealModel:
        if name not in built:
            model = keras_models.build(name)
            path = keras_models.write(model, directory)
            built[name] = RealModel(name, path, model.spec, random_feeds(model.spec, seed=4))
        return built[name]
    return get


def assert_close(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
        scale = float(np.max(np.abs(want)))
        assert scale > 0 and np.all(np.isfinite(want))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_depend_on_the_input(real_models, name):
    """Two random inputs give logits 100 times further apart than the tests' tolerance."""
    model = real_models(name)
    graph = Graph.load(model.path)
    (logits,) = [graph[ref.node] for node in graph if node.op == "Softmax" for ref in node.inputs]
    first, second = (gtt_rules.evaluate(graph, random_feeds(model.spec, seed=seed), [logits.name])[0]
                     for seed in (4, 5))
    assert np.max(np.abs(first - second)) > 100 * RTOL * np.max(np.abs(first))


@pytest.mark.parametrize("name", MODELS)
def test_evaluator_matches_tensorflow(real_models, name):
    model = real_models(name)
    graph = Graph.load(model.path)
    actual = gtt_rules.evaluate(graph, model.feeds, model.fetches(graph))
    assert_close(actual, model.expected())


@pytest.mark.parametrize("name", MODELS)
def test_optimize_for_inference_folds_every_batch_norm(real_models, name):
    model = real_models(name)
    before = Counter(node.op for node in Graph.load(model.path))
    assert before["Rsqrt"] > 0, before      # Keras froze each batch norm with an Rsqrt
    graph = model.optimized()
    ops = Counter(node.op for node in graph)
    assert not BATCH_NORM_OPS & set(ops), ops
    assert ops["Rsqrt"] == 0, ops
    outputs = {o.split(":")[0] for o in model.outputs}
    assert [node.name for node in graph if node.op == "Identity" and node.name not in outputs] == []


@pytest.mark.parametrize("name", MODELS)
def test_optimize_for_inference_keeps_tensorflow_outputs(real_models, name):
    model = real_models(name)
    graph = model.optimized()
    actual = tf_run(graph.to_bytes(), model.feeds, model.fetches(graph))
    assert_close(actual, model.expected())


@pytest.mark.parametrize("name", MODELS)
def test_optimize_for_inference_leaves_no_more_nodes_than_grappler(real_models, name):
    model = real_models(name)
    ours = len(model.optimized())
    grappler = len(grappler_optimize(model.path.read_bytes(), model.outputs).node)
    assert ours <= grappler, (ours, grappler)
