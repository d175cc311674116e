"""Memory-mapped packages (engine/memmapped.py) and zero-copy loading (engine/graph_io.py).

TensorFlow 2's Python package has no MemmappedEnv, so it cannot open a package whole. What it does
have is the directory's own message (`memmapped_file_system_pb2`) and the ImmutableConst kernel,
which under the default Env maps the file its `memory_region_name` names: each region, copied to
a file of its own, is then read by TensorFlow's kernel exactly as MemmappedEnv would hand it over.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from conftest import compile_rules, fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules.cli import main
from gtt_rules.engine import graph_io, memmapped, op_registry
from gtt_rules.engine.driver import apply_rules
from gtt_rules.engine.evaluator import evaluate
from gtt_rules.engine.graph import Graph
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.engine.proto import memmapped_pb2
from gtt_rules.engine.tensors import encode_tensor
from gtt_rules import load_rules

ROUND_TRIP = ["keras_mobilenet_tiny", "tf1_conv_bn", "quantized_ops", "all_dtypes_consts", "tf1_while_loop"]
# The smallest tensor given a region: every fixed-size one, except in MobileNet, where TensorFlow
# 2.21 crashes (segmentation fault) running its hundreds of tiny ImmutableConsts as region files;
# there, TensorFlow's tool's default.
MIN_BYTES = {"keras_mobilenet_tiny": memmapped.MIN_CONVERSION_BYTES}


def _package(tmp_path, name: str, min_bytes: int | None = None):
    min_bytes = MIN_BYTES.get(name, 0) if min_bytes is None else min_bytes
    path = tmp_path / f"{name}.mmpb"
    memmapped.save(Graph.load(fixture_path(name)), path, min_bytes=min_bytes)
    return path


def _directory(tf, data: bytes):
    """The directory and its offset, parsed with TensorFlow's own message."""
    from tensorflow.core.util import memmapped_file_system_pb2
    offset = int.from_bytes(data[-8:], "little")
    directory = memmapped_file_system_pb2.MemmappedFileSystemDirectory.FromString(data[offset:-8])
    return directory, offset


def _tf_run_package(tf, path, feeds, outputs, tmp_path):
    """Run a package in TensorFlow: each ImmutableConst reads its region through the kernel."""
    data = path.read_bytes()
    directory, _ = _directory(tf, data)
    regions = {e.name: data[e.offset:e.offset + e.length] for e in directory.element}
    graph_def = tf.compat.v1.GraphDef.FromString(regions[memmapped.GRAPH_REGION])
    for i, node in enumerate(graph_def.node):
        if node.op == "ImmutableConst":
            region = tmp_path / f"region{i}.bin"
            region.write_bytes(regions[node.attr["memory_region_name"].s.decode()])
            node.attr["memory_region_name"].s = str(region).encode()
    return tf_run(graph_def.SerializeToString(), feeds, outputs)


# ---- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ROUND_TRIP)
def test_package_runs_to_the_plain_graphs_outputs(tf, tmp_path, name):
    spec = fixture_spec(name)
    feeds, outputs = random_feeds(spec), spec["outputs"]
    package = _package(tmp_path, name)
    data = package.read_bytes()
    region = pb.GraphDef.FromString(data[slice(*_graph_region(tf, data))])
    assert any(n.op == "ImmutableConst" for n in region.node)
    expected = tf_run(fixture_path(name).read_bytes(), feeds, outputs)
    theirs = _tf_run_package(tf, package, feeds, outputs, tmp_path)
    plain = evaluate(Graph.load(fixture_path(name)), feeds, outputs)
    ours = evaluate(Graph.load(package), feeds, outputs)
    for want, got in zip(expected, theirs):     # TensorFlow's ImmutableConst reads our regions
        if np.asarray(want).dtype.kind in "fc":
            # Grappler folds Consts ahead of time but not ImmutableConsts: sums round apart.
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(got, want)
    for want, got in zip(plain, ours):
        np.testing.assert_array_equal(got, want)    # and so does our loader


def _graph_region(tf, data: bytes) -> tuple[int, int]:
    directory, _ = _directory(tf, data)
    (graph,) = [e for e in directory.element if e.name == memmapped.GRAPH_REGION]
    return graph.offset, graph.offset + graph.length


def test_package_reads_back_as_the_graph_it_was_written_from(tmp_path):
    original = Graph.load(fixture_path("keras_mobilenet_tiny"))
    package = _package(tmp_path, "keras_mobilenet_tiny", min_bytes=memmapped.MIN_CONVERSION_BYTES)
    assert Graph.load(package).to_graph_def() == original.to_graph_def()
    again = tmp_path / "again.mmpb"
    memmapped.save(Graph.load(package), again, min_bytes=memmapped.MIN_CONVERSION_BYTES)
    assert again.read_bytes() == package.read_bytes()   # deterministic, and nothing lost


def test_only_constants_of_the_minimum_size_get_regions(tf, tmp_path):
    package = _package(tmp_path, "keras_mobilenet_tiny", min_bytes=memmapped.MIN_CONVERSION_BYTES)
    data = package.read_bytes()
    graph_def = tf.compat.v1.GraphDef.FromString(data[slice(*_graph_region(tf, data))])
    plain_def = tf.compat.v1.GraphDef.FromString(fixture_path("keras_mobilenet_tiny").read_bytes())
    plain = {n.name: n for n in plain_def.node}
    for node in graph_def.node:
        if plain[node.name].op == "Const":
            size = len(plain[node.name].attr["value"].tensor.tensor_content)
            assert (node.op == "ImmutableConst") == (size >= memmapped.MIN_CONVERSION_BYTES), node.name


# ---- the layout, checked with TensorFlow's message -------------------------------------------------

@pytest.mark.parametrize("name", ROUND_TRIP)
def test_package_layout_follows_tensorflows_rules(tf, tmp_path, name):
    data = _package(tmp_path, name).read_bytes()
    directory, offset = _directory(tf, data)
    elements = list(directory.element)
    names = [e.name for e in elements]
    assert len(set(names)) == len(names)
    assert names[-1] == "memmapped_package://."     # the GraphDef, after the tensors
    ends = [e.offset + e.length for e in elements]
    assert all(end <= following.offset for end, following in zip(ends, elements[1:]))
    assert ends[-1] == offset   # the directory follows the last region
    graph_def = tf.compat.v1.GraphDef.FromString(data[elements[-1].offset:ends[-1]])
    by_name = {e.name: e for e in elements}
    immutable = [n for n in graph_def.node if n.op == "ImmutableConst"]
    assert len(immutable) == len(elements) - 1     # one region per ImmutableConst
    for node in immutable:
        region = by_name[node.attr["memory_region_name"].s.decode()]
        assert re.fullmatch(r"memmapped_package://[A-Za-z0-9_.]+", region.name)
        assert region.offset % 64 == 0
        dims = [d.size for d in node.attr["shape"].shape.dim]
        itemsize = tf.dtypes.as_dtype(node.attr["dtype"].type).size
        assert region.length == math.prod(dims) * itemsize
        assert sorted(node.attr) == ["dtype", "memory_region_name", "shape"]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_every_immutable_const_is_valid_against_the_op_registry(tf, tmp_path, name):
    data = _package(tmp_path, name).read_bytes()
    region = data[slice(*_graph_region(tf, data))]
    graph = Graph.from_bytes(region)    # validated against our registry, ImmutableConsts as written
    op_def = op_registry.get_op("ImmutableConst")
    nodes = [n for n in graph if n.op == "ImmutableConst"]
    assert nodes
    for node in nodes:
        assert set(node.header.attr) == set(op_def.attrs)
        assert graph.output_dtypes(node) == [node.get_attr("dtype")]
    with tf.Graph().as_default():      # and against TensorFlow's
        tf.graph_util.import_graph_def(tf.compat.v1.GraphDef.FromString(region), name="")


def test_region_names_are_sanitized_and_unique(tmp_path):
    graph_def = pb.GraphDef()
    for name in ("a/b", "a_b", "."):
        node = graph_def.node.add(name=name, op="Const")
        node.attr["dtype"].type = pb.DT_FLOAT
        node.attr["value"].tensor.CopyFrom(encode_tensor(np.ones(4, np.float32)))
    path = tmp_path / "g.mmpb"
    memmapped.save(Graph(graph_def), path, min_bytes=0)
    data = path.read_bytes()
    offset = int.from_bytes(data[-8:], "little")
    names = [e.name for e in memmapped_pb2.MemmappedFileSystemDirectory.FromString(data[offset:-8]).element]
    assert names == ["memmapped_package://a_b", "memmapped_package://a_b_", "memmapped_package://._",
                     "memmapped_package://."]
    assert [n.name for n in Graph.load(path)] == ["a/b", "a_b", "."]


# ---- zero-copy loading ------------------------------------------------------------------------------

def _owner(array: np.ndarray):
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


@pytest.mark.parametrize("path", [lambda tmp: fixture_path("keras_mobilenet_tiny"),
                                  lambda tmp: _package(tmp, "keras_mobilenet_tiny")])
def test_big_weights_are_views_of_the_mapped_file(tmp_path, path):
    path = path(tmp_path)
    graph = Graph.load(path)
    whole = {n.name: n for n in Graph.from_bytes(fixture_path("keras_mobilenet_tiny").read_bytes())}
    big = [n for n in graph if n.op == "Const" and whole[n.name].proto.attr["value"].tensor.tensor_content
           and len(whole[n.name].proto.attr["value"].tensor.tensor_content) >= graph_io.MIN_MAPPED_BYTES]
    assert big
    for node in big:
        value = node.get_attr("value")
        assert node.mapped == ("value",)
        assert isinstance(_owner(value), memoryview) and not value.flags.writeable
        assert not node.header.attr["value"].tensor.tensor_content    # the bytes were not copied in
        np.testing.assert_array_equal(value, whole[node.name].get_attr("value"))
    spec = fixture_spec("keras_mobilenet_tiny")
    evaluate(graph, random_feeds(spec), spec["outputs"])
    assert all(node.mapped for node in big)     # running reads the views; it copies nothing in


def test_a_mapped_weight_edited_or_read_whole_holds_its_bytes():
    graph = Graph.load(fixture_path("tf1_conv_bn"))
    whole = Graph.from_bytes(fixture_path("tf1_conv_bn").read_bytes())
    (node,) = [n for n in graph if n.mapped]
    expected = whole[node.name].proto
    assert graph_io.serialize_node(node) == expected.SerializeToString(deterministic=True)
    assert node.mapped   # serializing did not copy the bytes in
    assert node.proto == expected
    assert not node.mapped
    assert graph.to_bytes() == whole.to_bytes()


def test_overwriting_the_mapped_input_keeps_its_weights(tmp_path, capsys):
    path = tmp_path / "g.pb"
    path.write_bytes(fixture_path("keras_mobilenet_tiny").read_bytes())
    expected = Graph.load(fixture_path("keras_mobilenet_tiny")).to_graph_def()
    assert main(["apply", str(path), "-o", str(path), "--overwrite", "--output-format", "memmapped",
                 "--transforms", "remove_nodes(op=CheckNumerics)"]) == 0
    assert Graph.load(path).to_graph_def() == expected
    assert main(["memmap", "--in_graph", str(path), "--out_graph", str(path), "--overwrite"]) == 0
    assert Graph.load(path).to_graph_def() == expected


def test_memmap_command_takes_tensorflows_flags(tf, tmp_path, capsys):
    out = tmp_path / "out.mmpb"
    assert main(["memmap", "--in_graph", str(fixture_path("tf1_mul_fold")), "--out_graph", str(out),
                 "--min_conversion_tensor_size", "1000"]) == 0
    assert "1 constant in regions" in capsys.readouterr().out
    assert main(["memmap", str(fixture_path("tf1_mul_fold")), "-o", str(tmp_path / "none.mmpb")]) == 0
    assert "no constant of 10,000 bytes or more" in capsys.readouterr().out
    directory, _ = _directory(tf, out.read_bytes())
    assert len(directory.element) == 2


# ---- bad packages -------------------------------------------------------------------------------------

def _rewritten(tmp_path, edit_directory=None, edit_graph=None, name="tf1_conv_bn"):
    """A package of `name` with its directory or graph edited, laid out again."""
    data = _package(tmp_path, name).read_bytes()
    offset = int.from_bytes(data[-8:], "little")
    directory = memmapped_pb2.MemmappedFileSystemDirectory.FromString(data[offset:-8])
    if edit_graph is not None:
        graph = directory.element[-1]
        graph_def = pb.GraphDef.FromString(data[graph.offset:graph.offset + graph.length])
        edit_graph(graph_def)
        body = graph_def.SerializeToString()
        data = data[:graph.offset] + body
        graph.length = len(body)
        offset = len(data)
    if edit_directory is not None:
        edit_directory(directory)
    path = tmp_path / "bad.mmpb"
    path.write_bytes(data[:offset] + directory.SerializeToString() + offset.to_bytes(8, "little"))
    return path


def _immutable(graph_def):
    return next(n for n in graph_def.node if n.op == "ImmutableConst")


def _misalign(directory):
    directory.element[0].offset += 4
    directory.element[0].length -= 4


def _swap(directory):
    first, second = directory.element[0], directory.element[1]
    first.offset, second.offset = second.offset, first.offset


@pytest.mark.parametrize("edit_directory, edit_graph, message", [
    (_misalign, None, "not a multiple of 64"),
    (_swap, None, "does not come before the next one"),
    (lambda d: setattr(d.element[0], "length", 10**6), None, "runs into the next one"),
    (lambda d: setattr(d.element[0], "name", "memmapped_package://."), None, "two regions are named"),
    (lambda d: setattr(d.element[-1], "name", "memmapped_package://graph"), None, "it has no graph"),
    (lambda d: setattr(d.element[0], "name", "memmapped_package://a b"), None, "has characters other"),
    (lambda d: setattr(d.element[-1], "length", d.element[-1].length - 3), None, "is not a GraphDef"),
    (None, lambda g: setattr(_immutable(g).attr["memory_region_name"], "s", b"memmapped_package://x"),
     "which the package does not have"),
    (None, lambda g: _immutable(g).attr["shape"].shape.dim.add(size=1000), "needs"),
    (None, lambda g: setattr(_immutable(g).attr["dtype"], "type", pb.DT_STRING), "is not supported"),
    (None, lambda g: _immutable(g).attr["shape"].shape.dim.add(size=-1), "fully known shape"),
    (None, lambda g: _immutable(g).attr.pop("shape"), "needs attr 'shape'"),
])
def test_corrupt_package_is_a_one_line_error(tmp_path, capsys, edit_directory, edit_graph, message):
    path = _rewritten(tmp_path, edit_directory, edit_graph)
    for command in (["summarize", str(path)], ["run", str(path)],
                    ["apply", str(path), "-o", str(tmp_path / "out.pb"), "--transforms", "fold_constants"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and message in err, err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mmpb", "tf1_conv_bn.mmpb"]


def test_truncated_package_is_a_one_line_error(tmp_path, capsys):
    data = _package(tmp_path, "tf1_conv_bn").read_bytes()
    for cut in (3, 12, len(data) // 2):
        path = tmp_path / "cut.mmpb"
        path.write_bytes(data[:-cut])
        assert main(["summarize", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err, err


def test_memmapped_output_refuses_text(tmp_path, capsys):
    out = tmp_path / "out.mmpb"
    assert main(["apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--output-format", "memmapped",
                 "--output_as_text", "--transforms", "fold_constants"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not out.exists()


def _resident_bytes(path) -> int:
    """How much of `path`'s mappings is resident in this process (Linux's /proc/self/smaps)."""
    resident, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", fields[0]):
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
    return resident


def _dense_chain(sizes) -> pb.GraphDef:
    """x -> MatMul -> MatMul ..., each weight a float Const of `sizes[i] x sizes[i + 1]`."""
    rng = np.random.default_rng(0)
    graph_def = pb.GraphDef()
    x = graph_def.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = pb.DT_FLOAT
    x.attr["shape"].shape.dim.add(size=1)
    x.attr["shape"].shape.dim.add(size=sizes[0])
    previous = "x"
    for i, (rows, columns) in enumerate(zip(sizes, sizes[1:])):
        weight = graph_def.node.add(name=f"w{i}", op="Const")
        weight.attr["dtype"].type = pb.DT_FLOAT
        values = rng.standard_normal((rows, columns)).astype(np.float32)
        weight.attr["value"].tensor.CopyFrom(encode_tensor(values))
        layer = graph_def.node.add(name=f"dense{i}", op="MatMul", input=[previous, f"w{i}"])
        layer.attr["T"].type = pb.DT_FLOAT
        previous = layer.name
    return graph_def


@pytest.mark.parametrize("packaged", [False, True])
def test_a_run_gives_back_the_pages_of_the_weights_it_has_read(tf, tmp_path, packaged):
    path = tmp_path / "model.pb"
    graph_def = _dense_chain([256, 1024, 512, 1024, 256])
    if packaged:
        memmapped.save(Graph(graph_def), path)
    else:
        path.write_bytes(graph_def.SerializeToString())
    graph = Graph.load(path)
    weights = sum(n.get_attr("value").nbytes for n in graph if n.mapped)
    assert weights == (256 * 1024 + 1024 * 512 + 512 * 1024 + 1024 * 256) * 4
    assert _resident_bytes(path) < weights / 10     # parsing read the nodes, not the weights
    feeds = {"x": np.ones((1, 256), np.float32)}
    (ours,) = evaluate(graph, feeds, ["dense3"])
    np.testing.assert_allclose(ours, tf_run(graph_def.SerializeToString(), feeds, ["dense3"])[0], rtol=1e-4)
    # Every weight was read; each one's pages left the process once its last reader ran.
    assert _resident_bytes(path) < weights / 4


def test_a_mapped_value_is_written_where_deterministic_serialization_puts_it(tmp_path):
    graph_def = _dense_chain([64, 64])
    weight = graph_def.node[1]
    weight.attr["_class"].list.s.append(b"loc:@w0")
    weight.attr["zz_after_value"].i = 7      # sorts after "value": written after it
    weight.experimental_debug_info.original_node_names.append("w0_original")
    weight.device = "/cpu:0"
    path = tmp_path / "g.pb"
    path.write_bytes(graph_def.SerializeToString())
    graph = Graph.load(path)
    assert graph["w0"].mapped == ("value",)
    assert graph_io.serialize_node(graph["w0"]) == weight.SerializeToString(deterministic=True)
    graph.save(tmp_path / "out.pb")
    assert (tmp_path / "out.pb").read_bytes() == Graph(graph_def).to_bytes()


def test_every_command_reads_a_package_as_the_graph_it_holds(tmp_path, capsys):
    eight, package = tmp_path / "eight.pb", tmp_path / "eight.mmpb"
    assert main(["apply", str(fixture_path("tf1_conv_bn")), "-o", str(eight),
                 "--transforms", "quantize_nodes"]) == 0
    assert main(["memmap", str(eight), "-o", str(package), "--min_conversion_tensor_size", "1000"]) == 0
    assert re.search(r": [1-9]\d* constants? in regions", capsys.readouterr().out)   # eight-bit weights too
    assert Graph.load(package).to_graph_def() == Graph.load(eight).to_graph_def()
    summaries = []
    for path in (eight, package):
        assert main(["summarize", str(path), "--json"]) == 0
        summaries.append(json.loads(capsys.readouterr().out))
    # The same graph; summarize says which one is the package.
    assert [summary.pop("format") for summary in summaries] == ["binary", "memmapped"]
    assert summaries[0] == summaries[1] and summaries[0]["parameters"]["count"] > 0
    assert main(["summarize", str(package)]) == 0
    assert capsys.readouterr().out.startswith(f"{package} (memory-mapped package): ")
    for path in (eight, package):
        assert main(["run", str(path), "--save", str(path) + ".npz"]) == 0
    plain, mapped = np.load(str(eight) + ".npz"), np.load(str(package) + ".npz")
    assert plain.files == mapped.files
    for key in plain.files:
        np.testing.assert_array_equal(mapped[key], plain[key])
    assert main(["compare", str(eight), str(package)]) == 0
    for path in (eight, package):
        assert main(["calibrate", str(path), "-o", str(path) + ".calibrated.pb", "--random", "2"]) == 0
    assert Graph.load(str(package) + ".calibrated.pb").to_graph_def() == \
        Graph.load(str(eight) + ".calibrated.pb").to_graph_def()


def test_immutable_const_outside_its_package_is_a_one_line_error(tf, tmp_path, capsys):
    data = _package(tmp_path, "tf1_conv_bn").read_bytes()
    graph_only = tmp_path / "graph_only.pb"
    graph_only.write_bytes(data[slice(*_graph_region(tf, data))])
    assert main(["run", str(graph_only)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run the package file itself" in err, err


def test_an_unaligned_mapped_weight_runs_from_an_aligned_copy(tmp_path):
    from gtt_rules.engine.kernels import KERNELS, load_all
    load_all()
    path = tmp_path / "g.pb"
    for padding in range(4):    # a name one byte longer moves the weight's bytes by one
        graph_def = _dense_chain([64, 64])
        graph_def.node[0].name = "x" + "_" * padding
        graph_def.node[2].input[0] = graph_def.node[0].name
        path.write_bytes(graph_def.SerializeToString())
        weight = Graph.load(path)["w0"]
        if not weight.get_attr("value").flags.aligned:
            break
    else:
        raise AssertionError("no padding put the weight at an unaligned offset")
    value = KERNELS["Const"](weight, [])
    assert value.flags.aligned
    np.testing.assert_array_equal(value, weight.get_attr("value"))


def test_setting_a_mapped_value_replaces_it(tmp_path):
    graph = Graph.load(fixture_path("tf1_conv_bn"))
    (node,) = [n for n in graph if n.mapped]
    new = np.full(node.get_attr("value").shape, 0.5, np.float32)
    node.set_attr("value", new)
    assert node.mapped == ()
    np.testing.assert_array_equal(node.get_attr("value"), new)
    np.testing.assert_array_equal(Graph.from_bytes(graph.to_bytes())[node.name].get_attr("value"), new)


def test_editing_other_attrs_of_a_mapped_weight_leaves_its_bytes_in_the_file():
    graph = Graph.load(fixture_path("tf1_conv_bn"))
    whole = Graph.from_bytes(fixture_path("tf1_conv_bn").read_bytes())
    (node,) = [n for n in graph if n.mapped]
    apply_rules(graph, compile_rules("rule mark:\n    n = Const\n    => n {_kept: true}\n"), protected=[])
    assert node.get_attr("_kept") is True and node.mapped == ("value",)
    (stage,) = load_rules(['remove_attribute(attribute_name="_kept")'])
    stage.run(graph, inputs=[], outputs=[])
    assert "_kept" not in node.header.attr and node.mapped == ("value",)
    assert graph.to_bytes() == whole.to_bytes()
