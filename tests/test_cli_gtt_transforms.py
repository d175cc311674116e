"""Every transform of the Graph Transform Tool's registry runs by its GTT name (or says why it cannot
without TensorFlow's runtime), and the ones added last do what TensorFlow's runtime agrees with."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import fixture_path, tf_run
from gtt_rules.cli import main
from gtt_rules.engine.graph import Graph

# Every REGISTER_GRAPH_TRANSFORM name in tensorflow/tensorflow, each under the file that registers it.
GTT_REGISTRY = [
    "add_default_attributes",                           # tools/graph_transforms/add_default_attributes.cc
    "backport_concatv2", "backport_tensor_array_v3",    # tools/graph_transforms/backports.cc
    "flatten_atrous_conv",                              # tools/graph_transforms/flatten_atrous.cc
    "fold_batch_norms",                                 # tools/graph_transforms/fold_batch_norms.cc
    "fold_constants",                                   # tools/graph_transforms/fold_constants_lib.cc
    "fold_old_batch_norms",                             # tools/graph_transforms/fold_old_batch_norms.cc
    "freeze_requantization_ranges",                     # tools/graph_transforms/freeze_requantization_ranges.cc
    "fuse_pad_and_conv", "fuse_resize_and_conv",        # tools/graph_transforms/fuse_convolutions.cc
    "fuse_resize_pad_and_conv",
    "fuse_quantized_conv_and_requantize",               # tools/graph_transforms/fuse_quantized_convolution.cc
    "inline_partitionedcall",                           # tools/graph_transforms/inline_partitionedcall.cc
    "insert_logging",                                   # tools/graph_transforms/insert_logging.cc
    "obfuscate_names",                                  # tools/graph_transforms/obfuscate_names.cc
    "quantize_nodes", "merge_duplicate_nodes",          # tools/graph_transforms/quantize_nodes.cc
    "quantize_weights",                                 # tools/graph_transforms/quantize_weights.cc
    "remove_attribute",                                 # tools/graph_transforms/remove_attribute.cc
    "remove_control_dependencies",                      # tools/graph_transforms/remove_control_dependencies.cc
    "remove_device",                                    # tools/graph_transforms/remove_device.cc
    "remove_nodes",                                     # tools/graph_transforms/remove_nodes.cc
    "rename_attribute",                                 # tools/graph_transforms/rename_attribute.cc
    "rename_node",                                      # tools/graph_transforms/rename_node.cc
    "rename_op",                                        # tools/graph_transforms/rename_op.cc
    "round_weights",                                    # tools/graph_transforms/round_weights.cc
    "set_device",                                       # tools/graph_transforms/set_device.cc
    "sort_by_execution_order",                          # tools/graph_transforms/sort_by_execution_order.cc
    "sparsify_gather",                                  # tools/graph_transforms/sparsify_gather.cc
    "strip_unused_nodes",                               # tools/graph_transforms/strip_unused_nodes.cc
    "fake_quantize_training",                           # tools/graph_transforms/fake_quantize_training.cc (TF 1.x)
    "remove_ema",                                       # tools/graph_transforms/remove_ema.cc (TF 1.x)
    "fuse_remote_graph", "place_remote_graph_arguments",  # core/kernels/remote_fused_graph_rewriter_transform.cc
    "rewrite_quantized_stripped_model_for_hexagon",     # core/kernels/hexagon/hexagon_rewriter_transform.cc
]

# Arguments the transforms need to do anything (as in GTT, where they are required too).
ARGUMENTS = {
    "rename_op": "(old_op_name=Relu, new_op_name=Relu6)",
    "rename_node": "(old_node_name=input, new_node_name=image)",
    "rename_attribute": "(old_attribute_name=T, new_attribute_name=T)",
    "remove_attribute": "(attribute_name=_output_shapes)",
    "set_device": "(device=/cpu:0)",
    "insert_logging": "(op=Conv2D)",
}


@pytest.mark.parametrize("name", GTT_REGISTRY)
def test_every_gtt_transform_runs_by_its_gtt_name_or_says_why_not(name, tmp_path, capsys):
    out = tmp_path / "out.pb"
    arguments, graph = ARGUMENTS.get(name, ""), "tf1_conv_bn"
    if name == "freeze_requantization_ranges":     # a range logged by an eight-bit graph's Print
        log = tmp_path / "ranges.log"
        log.write_text("conv/requant_range__print__;__requant_min_max:[-1.0][1.0]\n")
        arguments, graph = f"(min_max_log_file={log})", "quantized_ops"
    code = main(["apply", f"--in_graph={fixture_path(graph)}", f"--out_graph={out}",
                 f"--transforms={name}{arguments}"])
    err = capsys.readouterr().err
    assert "unknown transform" not in err
    if code == 0:
        assert Graph.load(out)
    else:
        assert code == 2 and not out.exists()
        assert err.startswith(f"gtt-rules: error: --transforms: {name} cannot apply without TensorFlow's runtime: ")
        assert len(err.splitlines()) == 1


# ---- backport_tensor_array_v3 ----

def test_backport_tensor_array_v3_makes_the_v2_ops_with_a_float_flow(tf, tmp_path):
    with tf.Graph().as_default() as graph:
        array = tf.raw_ops.TensorArrayV3(size=3, dtype=tf.float32, name="array")
        written = tf.raw_ops.TensorArrayWriteV3(handle=array[0], index=1, value=tf.constant([2.0, 3.0]),
                                                flow_in=array[1], name="write")
        tf.raw_ops.TensorArrayReadV3(handle=array[0], index=1, flow_in=written, dtype=tf.float32, name="read")
    source, out = tmp_path / "v3.pb", tmp_path / "v2.pb"
    source.write_bytes(graph.as_graph_def().SerializeToString())
    assert main(["apply", str(source), "-o", str(out), "--outputs", "read",
                 "--transforms", "backport_tensor_array_v3"]) == 0
    graph_def = tf.compat.v1.GraphDef.FromString(out.read_bytes())
    ops = {node.name: node.op for node in graph_def.node}
    assert (ops["array"], ops["write"], ops["read"]) == ("TensorArrayV2", "TensorArrayWriteV2", "TensorArrayReadV2")
    write = next(node for node in graph_def.node if node.name == "write")
    assert write.input[3] == "array/replacement_flow_node"
    flow = next(node for node in graph_def.node if node.name == "array/replacement_flow_node")
    assert tf.make_ndarray(flow.attr["value"].tensor) == np.float32(1.0)
    assert not any(op.endswith("V3") for op in ops.values())


# ---- insert_logging ----

def _logged(tf, tmp_path, transform: str) -> tuple[bytes, bytes]:
    source, out = fixture_path("tf1_conv_bn"), tmp_path / "logged.pb"
    assert main(["apply", str(source), "-o", str(out), "--transforms", transform]) == 0
    return source.read_bytes(), out.read_bytes()


def test_insert_logging_prints_the_chosen_ops_and_keeps_the_answer(tf, tmp_path, capfd):
    original, logged = _logged(tf, tmp_path, 'insert_logging(op=Conv2D, op=Relu, message="seen:", show_op=true)')
    graph_def = tf.compat.v1.GraphDef.FromString(logged)
    prints = {node.name: node for node in graph_def.node if node.op == "Print"}
    relus = [n.name for n in graph_def.node if n.op in ("Conv2D", "Relu")]
    assert sorted(prints) == sorted(f"{name}__print__" for name in relus)
    for name in relus:
        printer = prints[f"{name}__print__"]
        assert list(printer.input[:1]) == [name]
        op = next(n.op for n in graph_def.node if n.name == name)
        assert printer.attr["message"].s == f";{op};seen:".encode()
        readers = [n for n in graph_def.node if n.name != printer.name and name in n.input]
        assert not readers, f"{name} is still read directly, so its Print would never run"
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 8, 8, 3)).astype(np.float32)}
    expected, = tf_run(original, feeds, ["output"])
    actual, = tf_run(logged, feeds, ["output"])
    np.testing.assert_allclose(actual, expected, rtol=1e-6)  # a Print between them stops TF fusing Conv2D and Relu
    assert "seen:" in capfd.readouterr().err     # TensorFlow's Print ran, and logged


def test_insert_logging_by_prefix_only_logs_those_nodes(tf, tmp_path):
    _, logged = _logged(tf, tmp_path, "insert_logging(prefix=output)")
    graph_def = tf.compat.v1.GraphDef.FromString(logged)
    prints = [node for node in graph_def.node if node.op == "Print"]
    names = {node.name for node in graph_def.node}
    # Nothing reads the graph's output node itself: only what starts with 'output' and is read.
    assert all(p.input[0].split(":")[0].startswith("output") for p in prints)
    assert all(p.name[:-len("__print__")] in names for p in prints)


def test_insert_logging_logs_a_reference_by_value(tf, tmp_path):
    # A VariableV2's output is a float_ref: its Print takes T and U as float, as TensorFlow reads it.
    with tf.Graph().as_default() as graph:
        v = tf.compat.v1.Variable(tf.constant([1.0, 2.0]), name="v", use_resource=False)
        tf.identity(v * 2.0, name="out")
    source, out = tmp_path / "ref.pb", tmp_path / "logged.pb"
    source.write_bytes(graph.as_graph_def().SerializeToString())
    assert main(["apply", str(source), "-o", str(out), "--transforms", "insert_logging(op=VariableV2)"]) == 0
    graph_def = tf.compat.v1.GraphDef.FromString(out.read_bytes())
    printer, = [node for node in graph_def.node if node.op == "Print"]
    assert printer.name == "v__print__" and printer.attr["T"].type == tf.float32.as_datatype_enum
    assert list(printer.attr["U"].list.type) == [tf.float32.as_datatype_enum]
    with tf.Graph().as_default() as logged, tf.compat.v1.Session(graph=logged) as session:
        tf.graph_util.import_graph_def(graph_def, name="")
        np.testing.assert_array_equal(session.run("out:0", {"v:0": [1.0, 2.0]}), [2.0, 4.0])


# ---- sparsify_gather ----

def _embedding_graph(tf, weights: np.ndarray, gather_v2: bool):
    with tf.Graph().as_default() as graph:
        ids = tf.compat.v1.placeholder(tf.int64, [None], name="ids")
        table = tf.identity(tf.constant(weights, name="weights"), name="read")
        if gather_v2:
            looked = tf.raw_ops.GatherV2(params=table, indices=ids, axis=tf.constant(0, name="axis"), name="gather")
        else:
            looked = tf.raw_ops.Gather(params=table, indices=ids, name="gather")
        tf.identity(looked * 2.0, name="out")
    return graph.as_graph_def().SerializeToString()


def _run_with_tables(tf, graph_bytes: bytes, init: str | None, feeds: dict, output: str) -> np.ndarray:
    graph_def = tf.compat.v1.GraphDef.FromString(graph_bytes)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            if init:
                session.run(init)
            return session.run(f"{output}:0", {f"{k}:0": v for k, v in feeds.items()})


@pytest.mark.parametrize("gather_v2", [False, True])
def test_sparsify_gather_looks_up_the_nonzero_entries_as_tensorflow_gathers(tf, tmp_path, gather_v2):
    weights = np.zeros((10, 1), np.float32)
    weights[[1, 4, 7]] = [[0.5], [-2.0], [3.25]]
    weights[8] = 1e-7                                   # under 1e-5: counts as zero, as in GTT
    source, out = tmp_path / "embedding.pb", tmp_path / "sparse.pb"
    source.write_bytes(_embedding_graph(tf, weights, gather_v2))
    assert main(["apply", str(source), "-o", str(out), "--inputs", "ids", "--outputs", "out",
                 "--transforms", "sparsify_gather"]) == 0
    graph_def = tf.compat.v1.GraphDef.FromString(out.read_bytes())
    ops = [node.op for node in graph_def.node]
    assert "Gather" not in ops and "GatherV2" not in ops and "LookupTableFind" in ops
    assert "weights" not in {node.name for node in graph_def.node}   # the dense table is gone
    keys = next(n for n in graph_def.node if n.name == "weights/indices")
    assert tf.make_ndarray(keys.attr["value"].tensor).tolist() == [1, 4, 7]
    ids = {"ids": np.array([4, 0, 7, 1, 8, 9], np.int64)}
    expected = _run_with_tables(tf, source.read_bytes(), None, ids, "out")
    actual = _run_with_tables(tf, out.read_bytes(), "group_deps", ids, "out")
    expected[4] = 0.0                                   # the entry GTT drops as zero
    np.testing.assert_array_equal(actual, expected)


def test_sparsify_gather_leaves_a_gather_it_cannot_take_and_says_why(tf, tmp_path, capsys):
    source, out = tmp_path / "embedding.pb", tmp_path / "sparse.pb"
    source.write_bytes(_embedding_graph(tf, np.ones((4, 3), np.float32), gather_v2=False))
    assert main(["apply", str(source), "-o", str(out), "--inputs", "ids", "--outputs", "out",
                 "--transforms", "sparsify_gather"]) == 0
    assert "Gather" in [node.op for node in Graph.load(out)]
    assert "only float weights of shape [N, 1] become a table (found [4, 3])" in capsys.readouterr().err


# ---- inline_partitionedcall ----

def test_inline_partitionedcall_puts_the_function_body_in_the_graph(tf, tmp_path):
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")

        @tf.function
        def scaled_top(a):
            values, indices = tf.math.top_k(tf.nn.relu(a) * 2.0, k=2)    # a two-output op: port 1 read
            return values + tf.cast(indices, tf.float32), tf.reduce_sum(a)

        top, total = scaled_top(x)
        tf.identity(top, name="top")
        tf.identity(total, name="total")
    source, out = tmp_path / "call.pb", tmp_path / "inlined.pb"
    source.write_bytes(graph.as_graph_def().SerializeToString())
    call = next(n for n in graph.as_graph_def().node if "PartitionedCall" in n.op)
    assert call.op == "PartitionedCall"
    assert main(["apply", str(source), "-o", str(out), "--inputs", "x", "--outputs", "top,total",
                 "--transforms", "inline_partitionedcall"]) == 0
    graph_def = tf.compat.v1.GraphDef.FromString(out.read_bytes())
    assert "PartitionedCall" not in [n.op for n in graph_def.node]
    assert any(n.name.startswith(f"{call.name}/") and n.op == "TopKV2" for n in graph_def.node)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)}
    for expected, actual in zip(tf_run(source.read_bytes(), feeds, ["top", "total"]),
                                tf_run(out.read_bytes(), feeds, ["top", "total"])):
        np.testing.assert_array_equal(actual, expected)


def test_sparsify_gather_of_a_variable_says_it_needs_the_checkpoint_reader(tf, tmp_path, capsys):
    with tf.Graph().as_default() as graph:
        ids = tf.compat.v1.placeholder(tf.int64, [None], name="ids")
        weights = tf.raw_ops.VariableV2(shape=[4, 1], dtype=tf.float32, name="weights")
        tf.identity(tf.raw_ops.Gather(params=tf.identity(weights, name="read"), indices=ids), name="out")
    source, out = tmp_path / "variable.pb", tmp_path / "sparse.pb"
    source.write_bytes(graph.as_graph_def().SerializeToString())
    assert main(["apply", str(source), "-o", str(out), "--inputs", "ids", "--outputs", "out",
                 "--transforms", "sparsify_gather(input_checkpoint=model.ckpt)"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "'weights' is a VariableV2: its values are in a checkpoint, which only TensorFlow's runtime reads" in line
    assert not out.exists()


def test_inline_partitionedcall_refuses_a_body_op_it_cannot_count(tf, tmp_path, capsys):
    """A body node of an op the registry does not know: its output ports cannot be told, so the
    call is refused with a one-line error rather than read at a guessed port."""
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")

        @tf.function
        def relu(a):
            return tf.nn.relu(a)

        tf.identity(relu(x), name="out")
    graph_def = graph.as_graph_def()
    body = next(n for f in graph_def.library.function for n in f.node_def if n.op == "Relu")
    body.op = "NoSuchOp"
    source, out = tmp_path / "call.pb", tmp_path / "inlined.pb"
    source.write_bytes(graph_def.SerializeToString())
    before = source.read_bytes()
    assert main(["apply", str(source), "-o", str(out), "--inputs", "x", "--outputs", "out",
                 "--transforms", "inline_partitionedcall"]) == 2
    err = capsys.readouterr().err
    assert "unknown op 'NoSuchOp' in function" in err and "Traceback" not in err
    assert not out.exists() and source.read_bytes() == before
