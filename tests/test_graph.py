"""The graph model: faithful round trips of real TensorFlow graphs, validation, queries, edits."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import fixture_names, fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules.engine.graph import Graph, TensorRef
from gtt_rules.engine.graph_io import from_graph_def
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.errors import GraphError


def test_fixtures_exist():
    # The round-trip tests below are only as good as the set of real graphs they see.
    assert {"tf1_conv_bn", "keras_bn_frozen", "tf1_while_loop", "tf2_function_library",
            "bn_global_norm", "all_dtypes_consts", "quantized_ops"} <= set(fixture_names())


@pytest.mark.parametrize("name", fixture_names())
def test_round_trip_is_message_equal(name, tf):
    original = fixture_path(name).read_bytes()
    saved = Graph.from_bytes(original).to_bytes()
    assert tf.compat.v1.GraphDef.FromString(saved) == tf.compat.v1.GraphDef.FromString(original)


@pytest.mark.parametrize("name", fixture_names())
def test_round_trip_through_text_is_message_equal(name, tf, tmp_path):
    original = fixture_path(name).read_bytes()
    Graph.from_bytes(original).save(tmp_path / "g.pbtxt")
    assert (tmp_path / "g.pbtxt").read_text().lstrip().startswith("node")
    reloaded = Graph.load(tmp_path / "g.pbtxt").to_bytes()
    assert tf.compat.v1.GraphDef.FromString(reloaded) == tf.compat.v1.GraphDef.FromString(original)


@pytest.mark.parametrize("name", [n for n in fixture_names() if fixture_spec(n).get("outputs")])
def test_tensorflow_runs_saved_graph_with_identical_outputs(name, tmp_path):
    spec = fixture_spec(name)
    feeds = random_feeds(spec)
    original = fixture_path(name).read_bytes()
    graph = Graph.load(fixture_path(name))
    graph.save(tmp_path / "saved.pb")
    expected = tf_run(original, feeds, spec["outputs"])
    actual = tf_run((tmp_path / "saved.pb").read_bytes(), feeds, spec["outputs"])
    for e, a in zip(expected, actual):
        np.testing.assert_array_equal(a, e)


def test_save_is_deterministic():
    graph = Graph.load(fixture_path("keras_bn_frozen"))
    assert graph.to_bytes() == graph.to_bytes()
    assert Graph.load(fixture_path("keras_bn_frozen")).to_bytes() == graph.to_bytes()


def test_accepts_tensorflow_graph_def_message(tf):
    original = tf.compat.v1.GraphDef.FromString(fixture_path("tf1_conv_bn").read_bytes())
    graph = from_graph_def(original)
    assert len(graph) == len(original.node)
    assert tf.compat.v1.GraphDef.FromString(graph.to_bytes()) == original


# ---- queries ----

def _graph(text: str, *, validate: bool = True) -> Graph:
    return Graph(text_format.Parse(text, pb.GraphDef()), validate=validate)


SMALL = """
node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }
node { name: "w" op: "Const" attr { key: "dtype" value { type: DT_FLOAT } }
       attr { key: "value" value { tensor { dtype: DT_FLOAT tensor_shape { dim { size: 2 } } float_val: 1 float_val: 2 } } } }
node { name: "m" op: "Mul" input: "x" input: "w" attr { key: "T" value { type: DT_FLOAT } } }
node { name: "s" op: "Split" input: "c" input: "m" attr { key: "T" value { type: DT_FLOAT } }
       attr { key: "num_split" value { i: 2 } } }
node { name: "c" op: "Const" attr { key: "dtype" value { type: DT_INT32 } }
       attr { key: "value" value { tensor { dtype: DT_INT32 tensor_shape { } int_val: 0 } } } }
node { name: "a" op: "AddV2" input: "s" input: "s:1" input: "^w" attr { key: "T" value { type: DT_FLOAT } } }
"""


def test_edges_consumers_and_uses():
    graph = _graph(SMALL)
    assert graph["a"].inputs == [TensorRef("s", 0), TensorRef("s", 1)]
    assert graph["a"].control_inputs == ["w"]
    assert [n.name for n in graph.consumers("w")] == ["m", "a"]
    assert graph.uses("s") == 2 and graph.uses(TensorRef("s", 1)) == 1
    assert graph.has_control_consumers("w") and not graph.has_control_consumers("m")


def test_topological_order_puts_inputs_first_and_keeps_file_order_for_ties():
    graph = _graph(SMALL)
    order = [n.name for n in graph.topological_order()]
    assert order == ["x", "w", "c", "m", "s", "a"]


def test_output_dtypes_and_counts_from_the_op_registry():
    graph = _graph(SMALL)
    assert graph.num_outputs(graph["s"]) == 2
    assert graph.output_dtypes(graph["s"]) == [pb.DT_FLOAT, pb.DT_FLOAT]
    assert graph.output_dtypes(graph["c"]) == [pb.DT_INT32]


def test_attrs_decode_with_registry_defaults():
    graph = _graph(SMALL)
    assert graph["s"].get_attr("num_split") == 2
    assert graph["m"].get_attr("T") == pb.DT_FLOAT
    np.testing.assert_array_equal(graph["w"].get_attr("value"), np.array([1, 2], np.float32))
    conv = Graph.load(fixture_path("tf1_conv_bn"))
    conv2d = next(n for n in conv if n.op == "Conv2D")
    assert conv2d.get_attr("padding") in ("SAME", "VALID")
    assert conv2d.get_attr("data_format") == "NHWC"
    with pytest.raises(KeyError):
        graph["m"].get_attr("no_such_attr")


def test_likely_inputs_and_outputs():
    graph = _graph(SMALL)
    assert [n.name for n in graph.placeholders()] == ["x"]
    assert [n.name for n in graph.sinks()] == ["a"]


def test_while_loop_cycles_are_legal_and_ordered():
    graph = Graph.load(fixture_path("tf1_while_loop"))
    assert any(n.op == "NextIteration" for n in graph)
    order = graph.topological_order()
    position = {n.name: i for i, n in enumerate(order)}
    assert len(order) == len(graph)
    for node in order:
        for ref in node.inputs:
            if graph[ref.node].op != "NextIteration":
                assert position[ref.node] < position[node.name]


def test_function_library_survives_and_counts_outputs(tf):
    original = fixture_path("tf2_function_library").read_bytes()
    graph = Graph.from_bytes(original)
    assert len(graph.library.function) > 0
    assert tf.compat.v1.GraphDef.FromString(graph.to_bytes()).library == \
        tf.compat.v1.GraphDef.FromString(original).library


# ---- validation ----

@pytest.mark.parametrize("text, message", [
    ('node { name: "a" op: "NoOp" } node { name: "a" op: "NoOp" }', "duplicate node name 'a'"),
    ('node { name: "a" op: "Identity" input: "missing" }', "node 'a': input 'missing' names a missing node"),
    ('node { name: "a" op: "NoOp" input: "^gone" }', "node 'a': control input '^gone' names a missing node"),
    ('node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }'
     'node { name: "a" op: "Identity" input: "x:1" }',
     "node 'a': input 'x:1' asks for output 1, but 'x' (Placeholder) has 1 output"),
    ('node { name: "a" op: "Identity" input: "b" } node { name: "b" op: "Identity" input: "a" }',
     "the graph has a cycle: a -> b -> a"),
    ('node { name: "a" op: "" }', "node 'a': node has no op"),
    ('node { name: "c" op: "Const" attr { key: "value" value { tensor { dtype: DT_FLOAT '
     'tensor_shape { dim { size: 2 } dim { size: 3 } } tensor_content: "abc" } } } }',
     "node 'c': attr 'value': tensor_content has 3 bytes"),
    ('node { name: "c" op: "Const" attr { key: "dtype" value { type: 77 } } }',
     "node 'c': attr 'dtype' has unknown dtype 77"),
])
def test_invalid_graphs_are_rejected_with_a_clear_message(text, message):
    with pytest.raises(GraphError) as caught:
        _graph(text)
    assert message in str(caught.value)


def test_tiny_file_claiming_a_huge_tensor_is_rejected_before_allocating():
    graph_def = pb.GraphDef()
    node = graph_def.node.add(name="c", op="Const")
    tensor = node.attr["value"].tensor
    tensor.dtype = pb.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1 << 40)
    tensor.float_val.append(1.0)
    data = graph_def.SerializeToString()
    assert len(data) < 100
    with pytest.raises(GraphError) as caught:
        Graph.from_bytes(data)
    assert "node 'c'" in str(caught.value)


# ---- edits ----

def test_edits_keep_the_consumer_index_and_the_node_defs_in_step(tf):
    graph = _graph(SMALL)
    graph.add_node("n", "Neg", [TensorRef("m")], attrs={"T": pb.DT_FLOAT})
    graph.reroute(TensorRef("m"), TensorRef("n"), exclude=["n"])
    assert [n.name for n in graph.consumers("m")] == ["n"]
    assert list(graph["s"].proto.input) == ["c", "n"]
    graph.set_inputs(graph["a"], [TensorRef("s", 1), TensorRef("s", 0)], control_inputs=[])
    assert list(graph["a"].proto.input) == ["s:1", "s"]
    assert not graph.has_control_consumers("w")
    with pytest.raises(GraphError, match="still used"):
        graph.remove_node("n")
    graph.add_node("tmp", "Identity", ["x"])
    graph.remove_node("tmp")
    saved = tf.compat.v1.GraphDef.FromString(graph.to_bytes())
    assert [n.name for n in saved.node] == ["x", "w", "m", "s", "c", "a", "n"]
    assert saved.node[6].attr["T"].type == pb.DT_FLOAT
    # An edit after a save lands in the saved message too.
    graph.set_inputs(graph["n"], [TensorRef("x")])
    assert list(tf.compat.v1.GraphDef.FromString(graph.to_bytes()).node[6].input) == ["x"]
    Graph(graph.to_graph_def())  # still valid


def test_save_leaves_no_temp_file_and_replaces_atomically(tmp_path):
    graph = _graph(SMALL)
    out = tmp_path / "out.pb"
    graph.save(out)
    graph.save(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.pb"]
    assert Graph.load(out).to_bytes() == graph.to_bytes()


@pytest.mark.parametrize("name", fixture_names())
def test_streamed_save_writes_the_same_bytes_as_serializing_the_message(name, tmp_path):
    graph = Graph.load(fixture_path(name))
    graph.save(tmp_path / "g.pb")
    assert (tmp_path / "g.pb").read_bytes() == graph.to_graph_def().SerializeToString(deterministic=True)
