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

    def through(self, pipeline: str) -> Graph:
        """The model after a pipeline, computed once (a fresh copy: tests may change it)."""
        if pipeline not in self.cache:
            graph = Graph.load(self.path)
            gtt_rules.apply(graph, gtt_rules.load_rules([pipeline]),
                            inputs=[item["name"] for item in self.spec["inputs"]],
                            outputs=[o.split(":")[0] for o in self.outputs])
            self.cache[pipeline] = graph.to_bytes()
        return Graph.from_bytes(self.cache[pipeline])


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
    graph = model.through("optimize_for_inference")
    ops = Counter(node.op for node in graph)
    assert not BATCH_NORM_OPS & set(ops), ops
    assert ops["Rsqrt"] == 0, ops
    outputs = {o.split(":")[0] for o in model.outputs}
    assert [node.name for node in graph if node.op == "Identity" and node.name not in outputs] == []


@pytest.mark.parametrize("name", MODELS)
def test_optimize_for_inference_keeps_tensorflow_outputs(real_models, name):
    model = real_models(name)
    graph = model.through("optimize_for_inference")
    actual = tf_run(graph.to_bytes(), model.feeds, model.fetches(graph))
    assert_close(actual, model.expected())


@pytest.mark.parametrize("name", MODELS)
def test_optimize_for_inference_leaves_no_more_nodes_than_grappler(real_models, name):
    model = real_models(name)
    ours = len(model.through("optimize_for_inference"))
    grappler = len(grappler_optimize(model.path.read_bytes(), model.outputs).node)
    assert ours <= grappler, (ours, grappler)


# ---- issue #6: eight-bit versions of the same models ---------------------------------------------

EIGHT_BIT_MODELS = ["mobilenet_v2", "resnet50"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def logits_cosines(model: RealModel, graph: Graph, seeds=(0, 1, 2)) -> list[float]:
    """Cosine of the eight-bit graph's logits (run by TensorFlow) to the float model's, per input."""
    original = model.path.read_bytes()
    (float_logits,) = [model.fetches(Graph.from_bytes(original))[-1]]
    (eight_logits,) = [model.fetches(graph)[-1]]
    result = []
    for seed in seeds:
        feeds = random_feeds(model.spec, seed=seed)
        (want,) = tf_run(original, feeds, [float_logits])
        (got,) = tf_run(graph.to_bytes(), feeds, [eight_logits])
        result.append(cosine(got, want))
    return result


@pytest.mark.parametrize("name", EIGHT_BIT_MODELS)
def test_eightbit_leaves_no_float_compute_and_no_round_trip(real_models, name):
    from test_eightbit_tf import dequantize_feeding_quantize, float_compute_left

    graph = real_models(name).through("eightbit")
    ops = Counter(node.op for node in graph)
    assert not float_compute_left(graph), float_compute_left(graph)
    assert ops["QuantizedConv2D"] > 30 and ops["QuantizedAdd"] > 5
    assert not dequantize_feeding_quantize(graph)


@pytest.mark.parametrize("name", EIGHT_BIT_MODELS)
def test_eightbit_stays_close_to_the_float_model_in_tensorflow(real_models, name):
    # Logits, not probabilities: these random networks' softmax is near one-hot (ResNet50's logits
    # reach a few hundred), so a probability vector's cosine only says whether top-1 flipped.
    cosines = logits_cosines(real_models(name), real_models(name).through("eightbit"))
    assert min(cosines) >= 0.98, cosines


@pytest.mark.parametrize("name", EIGHT_BIT_MODELS)
def test_eightbit_is_bit_exact_node_by_node_and_the_evaluator_agrees(real_models, name):
    from test_eightbit_tf import assert_eight_bit_nodes_match_tensorflow

    model = real_models(name)
    graph = model.through("eightbit")
    assert assert_eight_bit_nodes_match_tensorflow(graph, model.feeds) > 100
    fetches = model.fetches(graph)
    theirs = tf_run(graph.to_bytes(), model.feeds, fetches)
    ours = gtt_rules.evaluate(graph, model.feeds, fetches)
    for got, want in zip(ours, theirs):      # only the float islands may differ, by float rounding
        assert cosine(got, want) >= 0.99999


@pytest.mark.parametrize("name", EIGHT_BIT_MODELS)
def test_calibrated_eightbit_has_no_range_scan_and_stays_close(real_models, name):
    from gtt_rules import calibration

    model = real_models(name)
    graph = model.through("eightbit")
    records = calibration.record_ranges(graph, (random_feeds(model.spec, seed=s) for s in (10, 11, 12)))
    assert records
    calibration.freeze_ranges(graph, {n: calibration.chosen_range(r, 0.0, 0.0) for n, r in records.items()})
    assert not [node for node in graph if node.op == "RequantizationRange"]
    cosines = logits_cosines(model, graph)
    assert min(cosines) >= 0.98, cosines


def test_quantize_weights_on_inception_is_a_quarter_and_keeps_the_outputs(real_models):
    model = real_models("inception_v3")
    graph = Graph.load(model.path)
    gtt_rules.apply(graph, gtt_rules.load_rules(["quantize_weights"]), inputs=["input"],
                    outputs=[o.split(":")[0] for o in model.outputs])
    data = graph.to_bytes()
    assert len(data) <= 0.27 * model.path.stat().st_size, len(data) / model.path.stat().st_size
    fetches = model.fetches(graph)
    for got, want in zip(tf_run(data, model.feeds, fetches), model.expected()):
        assert cosine(got, want) >= 0.999
