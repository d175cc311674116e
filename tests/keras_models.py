"""Large frozen keras.applications models with random weights and random batch-norm statistics.

The one builder of these models: tests/test_real_models.py builds them once per test session into
pytest's tmp dir, and benchmarks/make_models.py (a thin CLI over `write`) builds them into the
git-ignored benchmarks/models/. None is committed: they are 14 to 103 MB each.

Each model is frozen with tf.function + convert_variables_to_constants_v2 and no Grappler, so
every batch norm stays as Rsqrt/Mul/Sub/AddV2 over Consts, as Keras leaves it. The batch-norm
statistics come from one TensorFlow forward pass (see randomize_batch_norms), so the bytes are
the same for any build order and process on one machine and TensorFlow build; another CPU may
differ in the last bits. Needs tensorflow (the test extra).
"""
from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's reference kernels for the statistics pass, as the tests' oracle uses (conftest):
# with oneDNN's, the benchmarks' and the tests' models would differ in the last bits.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

SEED = 1234


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model: a keras.applications constructor and its input shape (batch 1)."""

    constructor: Callable[[], object]
    input_shape: tuple[int, int, int, int]


def _applications():
    import keras
    return keras.applications


# The sizes: each network at its default input size, with the ImageNet classifier head.
MODELS: dict[str, ModelSpec] = {
    "inception_v3": ModelSpec(lambda: _applications().InceptionV3(weights=None), (1, 299, 299, 3)),
    "mobilenet_v2": ModelSpec(lambda: _applications().MobileNetV2(weights=None), (1, 224, 224, 3)),
    "resnet50": ModelSpec(lambda: _applications().ResNet50(weights=None), (1, 224, 224, 3)),
}


@dataclass(frozen=True)
class FrozenModel:
    """A built model: its serialized GraphDef and its spec in the fixtures' sidecar format."""

    name: str
    graph_bytes: bytes
    spec: dict


def randomize_batch_norms(model, generator: np.random.Generator, input_shape) -> None:
    """Give every BatchNormalization layer random gamma and beta and random, non-trivial
    statistics that still fit the activations it sees.

    Statistics drawn without regard to the activations shrink the signal layer after layer until
    the batch norms' offsets are all that reaches the output: MobileNetV2's logits then move by
    2e-7 relative between two random inputs, so a comparison within 1e-4 checks next to nothing
    before the classifier. So the statistics are measured, by one training-mode pass over random
    images with momentum 0 (each layer normalizes its own batch, so every layer sees activations
    of the scale it will see in inference), and then moved at random: the mean by 0.1 standard
    deviation, the variance by a factor in [0.5, 1.5].
    """
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        channels = layer.get_weights()[0].shape[0]
        # Keras orders the weights gamma, beta, mean, variance, and leaves out gamma or beta
        # when the layer has no scale or center (InceptionV3's have scale=False).
        weights = []
        if layer.scale:
            weights.append(generator.uniform(0.5, 1.5, channels).astype(np.float32))
        if layer.center:
            weights.append((generator.standard_normal(channels) * 0.1).astype(np.float32))
        layer.set_weights([*weights, np.zeros(channels, np.float32), np.ones(channels, np.float32)])
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0        # the moving statistics become this batch's statistics
    images = generator.standard_normal((2, *input_shape[1:])).astype(np.float32)
    model(images, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
        *weights, mean, variance = layer.get_weights()
        mean = mean + generator.standard_normal(mean.shape) * 0.1 * np.sqrt(variance)
        variance = variance * generator.uniform(0.5, 1.5, variance.shape)
        layer.set_weights([*weights, mean.astype(np.float32), variance.astype(np.float32)])


def freeze(model, input_shape) -> tuple[object, list[str]]:
    """(GraphDef, output tensor names) of `model` in inference mode, input named "input"."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec(input_shape, tf.float32, name="input"))
    frozen = convert_variables_to_constants_v2(concrete)
    return frozen.graph.as_graph_def(), [t.name for t in frozen.outputs]


def build(name: str) -> FrozenModel:
    """Build, randomize and freeze model `name` (a key of MODELS)."""
    import keras

    spec = MODELS[name]
    # A fresh Keras session first: layer names (and so node names) do not depend on what this
    # process built before.
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    model = spec.constructor()
    randomize_batch_norms(model, np.random.default_rng(SEED), spec.input_shape)
    graph_def, outputs = freeze(model, list(spec.input_shape))
    del model
    keras.backend.clear_session()     # the Keras model's variables are not needed any more
    sidecar = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": list(spec.input_shape)}],
        "outputs": outputs,
        "description": f"keras.applications {name} (weights=None) with random batch-norm "
                       "statistics, frozen with convert_variables_to_constants_v2.",
    }
    return FrozenModel(name, graph_def.SerializeToString(deterministic=True), sidecar)


def write(model: FrozenModel, directory: pathlib.Path) -> pathlib.Path:
    """Write NAME.pb and its NAME.json sidecar into `directory`; the .pb path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model.name}.pb"
    # A temporary name first, so an interrupted run never leaves a truncated model behind.
    partial = path.with_suffix(".pb.partial")
    partial.write_bytes(model.graph_bytes)
    partial.replace(path)
    path.with_suffix(".json").write_text(json.dumps(model.spec, indent=2) + "\n")
    return path
