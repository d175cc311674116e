"""Generate the large frozen Keras models the benchmarks run (git-ignored, built on demand).

    python benchmarks/make_models.py [--only inception_v3] [--out DIR] [--force]

Each model is a `keras.applications` network with random weights (weights=None) and random, non-trivial
batch-norm statistics, frozen with tf.function + convert_variables_to_constants_v2 (no Grappler, so
every batch norm stays as Rsqrt/Mul/Sub/AddV2 over Consts). Writes NAME.pb and a NAME.json sidecar
in the fixtures' format. Existing files are kept unless --force. Needs tensorflow (test extra).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import (  # noqa: E402
    convert_variables_to_constants_v2,
)

import keras  # noqa: E402

MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"
SEED = 1234

# name -> (constructor, input shape with batch 1); resnet50 is built only when asked for.
MODELS = {
    "inception_v3": (lambda: keras.applications.InceptionV3(weights=None), [1, 299, 299, 3]),
    "mobilenet_v2": (lambda: keras.applications.MobileNetV2(weights=None), [1, 224, 224, 3]),
    "resnet50": (lambda: keras.applications.ResNet50(weights=None), [1, 224, 224, 3]),
}
DEFAULT = ["inception_v3", "mobilenet_v2"]


def randomize_batch_norms(model, generator) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            weights = layer.get_weights()
            channels = weights[0].shape[0]
            mean = (generator.standard_normal(channels) * 0.1).astype(np.float32)
            variance = generator.uniform(0.5, 1.5, channels).astype(np.float32)
            if layer.scale and layer.center:
                gamma = generator.uniform(0.5, 1.5, channels).astype(np.float32)
                beta = (generator.standard_normal(channels) * 0.1).astype(np.float32)
                layer.set_weights([gamma, beta, mean, variance])
            elif layer.center:  # InceptionV3 uses scale=False
                beta = (generator.standard_normal(channels) * 0.1).astype(np.float32)
                layer.set_weights([beta, mean, variance])
            elif layer.scale:
                gamma = generator.uniform(0.5, 1.5, channels).astype(np.float32)
                layer.set_weights([gamma, mean, variance])
            else:
                layer.set_weights([mean, variance])


def freeze(model, input_shape):
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec(input_shape, tf.float32, name="input"))
    frozen = convert_variables_to_constants_v2(concrete)
    return frozen.graph.as_graph_def(), [t.name for t in frozen.outputs]


def make(name: str, out: pathlib.Path, force: bool) -> None:
    path = out / f"{name}.pb"
    if path.exists() and not force:
        graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
        print(f"{name:14s} {path.stat().st_size / 1e6:8.1f} MB {len(graph_def.node):6d} nodes  "
              f"(exists, kept; --force rebuilds)")
        return
    start = time.perf_counter()
    keras.utils.set_random_seed(SEED)
    constructor, input_shape = MODELS[name]
    model = constructor()
    randomize_batch_norms(model, np.random.default_rng(SEED))
    graph_def, outputs = freeze(model, input_shape)
    out.mkdir(parents=True, exist_ok=True)
    # Write to a temporary name first, so an interrupted run never leaves a truncated model.
    partial = path.with_suffix(".pb.partial")
    partial.write_bytes(graph_def.SerializeToString(deterministic=True))
    partial.replace(path)
    spec = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": input_shape}],
        "outputs": outputs,
        "description": f"keras.applications {name} (weights=None) with random batch-norm "
                       "statistics, frozen with convert_variables_to_constants_v2.",
    }
    path.with_suffix(".json").write_text(json.dumps(spec, indent=2) + "\n")
    elapsed = time.perf_counter() - start
    print(f"{name:14s} {path.stat().st_size / 1e6:8.1f} MB {len(graph_def.node):6d} nodes  "
          f"built in {elapsed:.1f} s -> {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(MODELS),
                        help=f"build only this model (repeatable; default: {', '.join(DEFAULT)})")
    parser.add_argument("--out", type=pathlib.Path, default=MODELS_DIR,
                        help=f"output directory (default: {MODELS_DIR})")
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    args = parser.parse_args(argv)
    for name in args.only or DEFAULT:
        make(name, args.out, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
