"""Corrupt, truncated and unsupported SavedModels: one line naming what and where, exit 2, no
traceback, no output written."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import fixture_path
from gtt_rules.cli import main


@pytest.fixture(scope="module")
def saved(tf, tmp_path_factory):
    """A small good SavedModel, and three that freezing cannot express."""
    root = tmp_path_factory.mktemp("bad_saved_models")

    class Module(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"y": tf.matmul(x, self.w)}

    module = Module()
    tf.saved_model.save(module, str(root / "good"), signatures={"serving_default": module.serve})

    class Table(tf.Module):
        def __init__(self):
            init = tf.lookup.KeyValueTensorInitializer(tf.constant([1, 2], tf.int64), tf.constant([1.0, 2.0]))
            self.table = tf.lookup.StaticHashTable(init, -1.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
        def serve(self, x):
            return {"y": self.table.lookup(x)}

    table = Table()
    tf.saved_model.save(table, str(root / "table"), signatures={"serving_default": table.serve})

    vocabulary = root / "vocabulary.txt"
    vocabulary.write_text("a\nb\n")

    class Asset(tf.Module):
        def __init__(self):
            init = tf.lookup.TextFileInitializer(str(vocabulary), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                                 tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
            self.table = tf.lookup.StaticHashTable(init, -1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, x):
            return {"y": self.table.lookup(x)}

    asset = Asset()
    tf.saved_model.save(asset, str(root / "asset"), signatures={"serving_default": asset.serve})

    class Counter(tf.Module):
        def __init__(self):
            self.total = tf.Variable(0.0)

        @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
        def serve(self, x):
            self.total.assign_add(x)
            return {"y": self.total * 2.0}

    counter = Counter()
    tf.saved_model.save(counter, str(root / "counter"), signatures={"serving_default": counter.serve})

    class Noise(tf.Module):
        """A random generator: its state is a variable that each draw writes."""

        def __init__(self):
            self.generator = tf.random.Generator.from_seed(1)

        @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
        def in_loop(self, x):
            _, y = tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y + self.generator.normal([2])),
                                 [0, x])
            return {"y": y}

        @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
        def direct(self, x):
            return {"y": x + self.generator.normal([2])}

    noise = Noise()
    tf.saved_model.save(noise, str(root / "noise"),
                        signatures={"serving_default": noise.direct, "in_loop": noise.in_loop})
    return root


@pytest.fixture
def good(saved, tmp_path):
    """A copy of the good SavedModel, to break."""
    return shutil.copytree(saved / "good", tmp_path / "model")


def _refused(capsys, tmp_path, argv: list[str], *fragments: str) -> None:
    out = tmp_path / "frozen.pb"
    capsys.readouterr()
    assert main(argv + ["-o", str(out)] if argv[0] == "freeze" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gtt-rules: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("frozen")] == []


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def test_truncated_saved_model_pb(good, tmp_path, capsys):
    model_file = good / "saved_model.pb"
    model_file.write_bytes(model_file.read_bytes()[:-100])
    _refused(capsys, tmp_path, ["freeze", str(good)], "saved_model.pb", "truncated or is not a protobuf")


def test_saved_model_pb_that_is_not_a_protobuf(good, tmp_path, capsys):
    (good / "saved_model.pb").write_bytes(b"\xff\xff\xff\xff not a SavedModel")
    _refused(capsys, tmp_path, ["freeze", str(good)], "saved_model.pb", "not a SavedModel")


def test_folder_without_saved_model_pb(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _refused(capsys, tmp_path, ["freeze", str(tmp_path / "empty")], "saved_model.pb", "not a SavedModel folder")


def test_missing_checkpoint_index(good, tmp_path, capsys):
    (good / "variables" / "variables.index").unlink()
    _refused(capsys, tmp_path, ["freeze", str(good)], "variables.index", "no such file")


def test_truncated_checkpoint_index(good, tmp_path, capsys):
    index = good / "variables" / "variables.index"
    index.write_bytes(index.read_bytes()[:-20])
    _refused(capsys, tmp_path, ["freeze", str(good)], "variables.index", "no table magic number")


def test_corrupt_checkpoint_index_block(good, tmp_path, capsys):
    _flip(good / "variables" / "variables.index", 12)      # inside the first data block
    _refused(capsys, tmp_path, ["freeze", str(good)], "variables.index", "fails its CRC32C check")


def test_corrupt_tensor_data(good, tmp_path, capsys):
    shard = good / "variables" / "variables.data-00000-of-00001"
    weights = shard.read_bytes().find(np.arange(12, dtype=np.float32).tobytes())
    assert weights >= 0
    _flip(shard, weights + 17)
    _refused(capsys, tmp_path, ["freeze", str(good)], "variables.data-00000-of-00001",
             "tensor 'w/.ATTRIBUTES/VARIABLE_VALUE'", "fails its CRC32C check")


def test_corrupt_checkpoint_object_graph(good, tmp_path, capsys):
    shard = good / "variables" / "variables.data-00000-of-00001"
    graph_at = shard.read_bytes().find(b"VARIABLE_VALUE")   # inside the serialized object graph
    assert graph_at >= 0
    _flip(shard, graph_at)
    _refused(capsys, tmp_path, ["freeze", str(good)], "tensor '_CHECKPOINTABLE_OBJECT_GRAPH'",
             "fails its CRC32C check")


def test_truncated_tensor_data(good, tmp_path, capsys):
    shard = good / "variables" / "variables.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:-8])
    _refused(capsys, tmp_path, ["freeze", str(good)], "variables.data-00000-of-00001",
             "lies past the end of the file")


def _edit_saved_model(folder, edit) -> None:
    from gtt_rules.engine.proto import saved_model_pb2

    model_file = folder / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(model_file.read_bytes())
    edit(saved_model.meta_graphs[0])
    model_file.write_bytes(saved_model.SerializeToString())


def test_a_function_that_calls_itself(good, tmp_path, capsys):
    def recurse(meta_graph):
        for function in meta_graph.graph_def.library.function:
            for node in function.node_def:
                if node.op == "StatefulPartitionedCall":
                    node.attr["f"].func.name = function.signature.name
    _edit_saved_model(good, recurse)
    _refused(capsys, tmp_path, ["freeze", str(good)], "saved_model.pb", "calls itself")


def test_calls_that_multiply_past_the_node_bound(good, tmp_path, capsys):
    """Each level calls the next 40 times: 40**4 nodes from a file of a few kilobytes."""
    def multiply(meta_graph):
        library = meta_graph.graph_def.library.function
        wrapper = next(f for f in library if any(n.op == "StatefulPartitionedCall" for n in f.node_def))
        call = next(n for n in wrapper.node_def if n.op == "StatefulPartitionedCall")
        for level in range(4):
            function = library.add()
            function.CopyFrom(wrapper)
            function.signature.name = f"level_{level}"
            template = next(n for n in function.node_def if n.op == "StatefulPartitionedCall")
            template.attr["f"].func.name = call.attr["f"].func.name if level == 0 else f"level_{level - 1}"
            waits = next(n for n in function.node_def if n.op == "NoOp")   # the output waits on it
            for copy in range(39):
                extra = function.node_def.add()
                extra.CopyFrom(template)
                extra.name = f"{template.name}_{copy}"
                waits.input.append("^" + extra.name)
        call.attr["f"].func.name = "level_3"
    _edit_saved_model(good, multiply)
    _refused(capsys, tmp_path, ["freeze", str(good)], "saved_model.pb", "would make", "more than 2,000,000")


def test_unknown_signature(good, tmp_path, capsys):
    _refused(capsys, tmp_path, ["freeze", str(good), "--signature", "predict"],
             "no signature 'predict'", "serving_default")
    _refused(capsys, tmp_path, ["freeze", str(good), "--signature", "serving_defualt"],
             "no signature 'serving_defualt'; did you mean 'serving_default'?")


def test_a_graph_file_is_not_a_saved_model(tmp_path, capsys):
    graph = fixture_path("tf1_conv_bn")
    _refused(capsys, tmp_path, ["freeze", str(graph)], f"{graph}: is a file, not a SavedModel folder")


def test_unknown_tag(good, tmp_path, capsys):
    _refused(capsys, tmp_path, ["freeze", str(good), "--tag", "train"], "no MetaGraph tagged 'train'", "serve")


def test_lookup_table_is_unsupported(saved, tmp_path, capsys):
    _refused(capsys, tmp_path, ["freeze", str(saved / "table")], "unsupported resource", "HashTableV2")


def test_assets_are_unsupported(saved, tmp_path, capsys):
    _refused(capsys, tmp_path, ["freeze", str(saved / "asset")], "unsupported", "asset file")


def test_a_signature_that_writes_a_variable_is_unsupported(saved, tmp_path, capsys):
    _refused(capsys, tmp_path, ["freeze", str(saved / "counter")], "unsupported", "AssignAddVariableOp")


def test_a_random_generator_is_unsupported(saved, tmp_path, capsys):
    _refused(capsys, tmp_path, ["freeze", str(saved / "noise")], "unsupported", "RngReadAndSkip",
             "takes the handle of variable")


def test_a_random_generator_inside_a_loop_is_unsupported(saved, tmp_path, capsys):
    _refused(capsys, tmp_path, ["freeze", str(saved / "noise"), "--signature", "in_loop"],
             "unsupported", "while_body", "applies 'RngReadAndSkip' to a variable")


def test_a_broken_saved_model_where_a_graph_is_read(good, tmp_path, capsys):
    _flip(good / "variables" / "variables.index", 12)
    _refused(capsys, tmp_path, ["summarize", str(good)], "variables.index", "fails its CRC32C check")


def test_freeze_does_not_write_a_binary_graph_to_a_terminal(saved, tmp_path):
    from test_security_outputs import on_a_terminal, one_error_line

    result, shown = on_a_terminal(["freeze", str(saved / "good"), "-o", "-"], tmp_path)
    assert result.returncode == 2 and shown == b""
    one_error_line(result.stderr, "refusing to write a binary graph to a terminal")
