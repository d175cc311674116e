"""Shared test helpers: the committed real-TensorFlow fixtures and TensorFlow as the oracle."""
from __future__ import annotations

import atexit
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The oracle is TensorFlow's reference kernels, as on ARM phones and boards; x86 builds would
# otherwise reroute some eight-bit ops to oneDNN kernels that round differently.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# The suite (and every command it starts) keeps out of the user's rules cache: a fresh one per run.
os.environ["GTT_RULES_CACHE_DIR"] = tempfile.mkdtemp(prefix="gtt-rules-cache-")
atexit.register(shutil.rmtree, os.environ["GTT_RULES_CACHE_DIR"], ignore_errors=True)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "graphs"


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.pb"))


def fixture_path(name: str) -> pathlib.Path:
    return FIXTURES / f"{name}.pb"


def fixture_spec(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def random_feeds(spec: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random values for every input a fixture declares."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for item in spec.get("inputs", []):
        shape = [1 if d is None or d < 0 else d for d in item["shape"]]
        dtype = np.dtype(item["dtype"])
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            value = rng.integers(0, 100, size=shape).astype(dtype)
        else:
            value = rng.integers(0, 2, size=shape).astype(dtype)
        feeds[item["name"]] = value
    return feeds


def tf_run(graph_bytes: bytes, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """Run a serialized GraphDef in TensorFlow and fetch `outputs` (tensor names like 'out:0')."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(graph_bytes)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            fetches = [_tensor_name(o) for o in outputs]
            feed_dict = {_tensor_name(k): v for k, v in feeds.items()}
            return session.run(fetches, feed_dict=feed_dict)


def _tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, the test oracle (a test extra; CI installs it, so it never skips)."""
    import tensorflow
    return tensorflow


def grappler_optimize(graph_bytes: bytes, outputs: list[str]):
    """TensorFlow's Grappler (constant folding, arithmetic, remapping) on a frozen graph."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    graph_def = tf.compat.v1.GraphDef.FromString(graph_bytes)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        meta_graph = tf.compat.v1.train.export_meta_graph(graph=graph)
    fetch = meta_graph.collection_def["train_op"]
    for output in outputs:
        fetch.node_list.value.append(_tensor_name(output))
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.constant_folding = rewriter_config_pb2.RewriterConfig.ON
    rewrite.arithmetic_optimization = rewriter_config_pb2.RewriterConfig.ON
    rewrite.remapping = rewriter_config_pb2.RewriterConfig.ON
    rewrite.min_graph_nodes = -1
    return tf_optimizer.OptimizeGraph(config, meta_graph)


# ---- rules and graphs from source text ----

def compile_rules(text: str, ruleset: str = "t", args: dict | None = None):
    """Parse and compile rules source text (as file t.rules); the instantiated rules of `ruleset`."""
    import textwrap

    from gtt_rules.grammar.parser import parse
    from gtt_rules.rules.compiler import compile_module

    module = parse(textwrap.dedent(text), "t.rules")
    return compile_module(module).rulesets[ruleset].instantiate(args)


def fixture_graph(text: str):
    """A Graph from node lines in fixture notation: `name = Op(inputs) {attrs}`."""
    import textwrap

    from gtt_rules.grammar.parser import parse
    from gtt_rules.rules.fixtures import build_graph

    lines = textwrap.dedent(text).strip().splitlines()
    source = ("test g:\n    given:\n" + "".join(f"        {line}\n" for line in lines)
              + "    expect:\n        unused = NoOp()\n")
    module = parse(source, "fixture.rules")
    return build_graph(module.tests[0].given, module)

