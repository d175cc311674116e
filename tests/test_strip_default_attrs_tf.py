"""strip_default_attrs, and the eight-bit file's size on a real trained model (issue #16).

An attr whose value is its op's registered default takes room and says nothing: TensorFlow's
importer writes the default back in, and our rules and kernels read it through the registry.
TensorFlow is the oracle for both halves of that claim: what its importer makes of a stripped
graph is what it makes of the original, and it runs both to the same bits.
"""
from __future__ import annotations

import numpy as np
import pytest

import real_models
from conftest import fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules.cli import main
from gtt_rules.engine import op_registry
from gtt_rules.engine.attrs import encode_attr
from gtt_rules.engine.evaluator import evaluate
from gtt_rules.engine.graph import Graph
from gtt_rules import load_rules


def run_stages(graph: Graph, spec: str, inputs: list[str], outputs: list[str]) -> Graph:
    for stage in load_rules([spec]):
        stage.run(graph, inputs=inputs, outputs=outputs)
    return graph


def io_names(name: str) -> tuple[list[str], list[str]]:
    spec = fixture_spec(name)
    return [i["name"] for i in spec["inputs"]], [o.split(":")[0] for o in spec["outputs"]]


def default_valued(graph: Graph) -> list[str]:
    """`node.attr` for every attr set to its op's registered default."""
    found = []
    for node in graph:
        op_def = op_registry.get_op(node.op)
        for name, attr in (op_def.attrs.items() if op_def else ()):
            value = node.attr_value(name)
            if value is not None and attr.has_default and attr.default is not None \
                    and value == encode_attr(attr.default, attr.type):
                found.append(f"{node.name}.{name}")
    return found


def imported_attrs(tf, data: bytes) -> dict[str, dict[str, bytes]]:
    """Every node's attrs as TensorFlow's importer has them (defaults written in)."""
    with tf.Graph().as_default() as imported:
        tf.graph_util.import_graph_def(tf.compat.v1.GraphDef.FromString(data), name="")
    return {n.name: {k: v.SerializeToString(deterministic=True) for k, v in n.attr.items()}
            for n in imported.as_graph_def().node}


def attr_count(graph: Graph) -> int:
    return sum(len(node.proto.attr) for node in graph)


@pytest.mark.parametrize("name", ["keras_mobilenet_tiny", "quantized_ops", "tf1_while_loop"])
def test_strip_default_attrs_drops_only_what_tensorflow_writes_back(tf, name):
    original = fixture_path(name).read_bytes()
    graph = Graph.load(fixture_path(name))
    before = attr_count(graph)
    assert default_valued(graph)
    run_stages(graph, "strip_default_attrs", *io_names(name))
    assert not default_valued(graph)
    assert attr_count(graph) < before
    stripped = graph.to_bytes()
    assert len(stripped) < len(original)
    assert imported_attrs(tf, stripped) == imported_attrs(tf, original)
    spec = fixture_spec(name)
    feeds = random_feeds(spec, 7)
    for theirs, ours in zip(tf_run(original, feeds, spec["outputs"]), tf_run(stripped, feeds, spec["outputs"])):
        assert ours.tobytes() == theirs.tobytes()
    # Our kernels read the defaults from the registry: the same numbers, bit for bit.
    for theirs, ours in zip(evaluate(Graph.load(fixture_path(name)), feeds, spec["outputs"]),
                            evaluate(graph, feeds, spec["outputs"])):
        assert np.asarray(ours).tobytes() == np.asarray(theirs).tobytes()


def test_strip_default_attrs_leaves_the_function_library_alone():
    name = "tf2_function_library"
    graph = Graph.load(fixture_path(name))
    library = graph.library.SerializeToString(deterministic=True)
    calls = {n.name: n.proto.SerializeToString(deterministic=True) for n in graph
             if n.op in {f.signature.name for f in graph.library.function}}
    run_stages(graph, "strip_default_attrs", *io_names(name))
    assert graph.library.SerializeToString(deterministic=True) == library
    assert {n: graph[n].proto.SerializeToString(deterministic=True) for n in calls} == calls


def test_rules_read_a_stripped_attr_as_its_default(tf):
    """The eightbit pipeline makes the same graph of a float model with or without its
    default-valued attrs written out: patterns and guards see the registry's default."""
    name = "keras_mobilenet_tiny"
    inputs, outputs = io_names(name)
    full = run_stages(Graph.load(fixture_path(name)), "eightbit", inputs, outputs)
    bare = run_stages(Graph.load(fixture_path(name)), "strip_default_attrs", inputs, outputs)
    assert "Conv2D" in {n.op for n in bare} and not default_valued(bare)
    bare = run_stages(bare, "eightbit", inputs, outputs)
    assert bare.to_bytes() == full.to_bytes()
    assert "QuantizedConv2D" in {n.op for n in bare}


# ---- a real trained model ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory, tf):
    """The digits CNN (trained in seconds on scikit-learn's digits) through `apply --pipeline
    eightbit` then `calibrate`, as a user runs them: (float path, eight-bit path)."""
    directory = tmp_path_factory.mktemp("digits")
    path = real_models.write("digits_cnn", directory)
    feeds = directory / "feeds"
    real_models.write_feed_dir("digits_cnn", feeds)
    converted, calibrated = directory / "eightbit.pb", directory / "calibrated.pb"
    assert main(["apply", str(path), "-o", str(converted), "--pipeline", "eightbit"]) == 0
    assert main(["calibrate", str(converted), "-o", str(calibrated), "--feed-dir", str(feeds)]) == 0
    return path, calibrated


def test_real_model_eight_bit_file_is_at_most_30_percent_of_float(digits):
    path, eightbit = digits
    assert eightbit.stat().st_size <= 0.30 * path.stat().st_size


def test_real_model_eight_bit_graph_keeps_no_default_and_runs_the_same_with_them(tf, digits, tmp_path):
    """The stripped eight-bit graph and the same graph with every default written back in run to
    the same bits, in TensorFlow and in our evaluator (which reads the defaults from the registry)."""
    _, eightbit = digits
    graph = Graph.load(eightbit)
    assert not default_valued(graph)
    spec = real_models.SPECS["digits_cnn"]
    full = run_stages(Graph.load(eightbit), "add_default_attributes", [spec.input], [spec.outputs[0].split(":")[0]])
    assert default_valued(full)
    assert imported_attrs(tf, eightbit.read_bytes()) == imported_attrs(tf, full.to_bytes())
    inputs = real_models.samples("digits_cnn").inputs[:50]
    feeds, fetches = {spec.input: inputs}, list(spec.outputs)
    codes = [f"{n.name}:0" for n in graph if n.op.startswith("Quantized")]
    assert codes
    ours_stripped = evaluate(graph, feeds, fetches + codes)
    ours_full = evaluate(full, feeds, fetches + codes)
    theirs_stripped = tf_run(eightbit.read_bytes(), feeds, fetches + codes)
    theirs_full = tf_run(full.to_bytes(), feeds, fetches + codes)
    for a, b, c, d in zip(ours_stripped, ours_full, theirs_stripped, theirs_full, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        assert np.asarray(c).tobytes() == np.asarray(d).tobytes()
    # The eight-bit codes are TensorFlow's, bit for bit (the float Softmax after them may round
    # a last bit differently).
    for a, c in zip(ours_stripped[len(fetches):], theirs_stripped[len(fetches):]):
        assert np.asarray(a).tobytes() == np.asarray(c).tobytes()


def test_diff_reads_an_unset_attr_as_its_default():
    """`gtt-rules diff` (and apply's report) sees no change where only defaults were dropped, and
    still sees a value changed from an unset default."""
    from gtt_rules.diff import diff_graphs

    name = "keras_mobilenet_tiny"
    original = Graph.load(fixture_path(name))
    stripped = run_stages(Graph.load(fixture_path(name)), "strip_default_attrs", *io_names(name))
    diff = diff_graphs(original, stripped)
    assert diff["changed"] == [] and diff["added"] == diff["removed"] == []
    conv = next(n for n in stripped if n.op == "Conv2D")
    assert conv.attr_value("data_format") is None
    conv.set_attr("data_format", "NCHW")
    (changed,) = diff_graphs(original, stripped)["changed"]
    assert changed["name"] == conv.name
    assert changed["changes"] == {"attrs": {"data_format": ["'NHWC'", "'NCHW'"]}}
