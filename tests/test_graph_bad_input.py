"""Bad graphs, feeds and options: one line naming the file and position, exit 2, no traceback,
nothing written, and the inputs left as they were."""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from conftest import fixture_path
from gtt_rules.cli import main
from gtt_rules.engine.graph import Graph
from gtt_rules.engine.proto import graph_def_pb2 as pb


def error_line(capsys, *needles: str) -> str:
    """The one error line the last command printed; it must hold every needle."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gtt-rules: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def fixture_copy(tmp_path, name: str, edit=None, suffix: str = ".pb"):
    """A fixture graph saved into tmp_path, after `edit(graph_def)` changed its GraphDef."""
    graph_def = pb.GraphDef.FromString(fixture_path(name).read_bytes())
    if edit is not None:
        edit(graph_def)
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(graph_def.SerializeToString())
    return path


def node(graph_def: pb.GraphDef, name: str) -> pb.NodeDef:
    return next(n for n in graph_def.node if n.name == name)


def assert_only(tmp_path, *names: str) -> None:
    """Nothing but `names` in tmp_path: no output and no temp file left behind."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# ---- graphs TensorFlow would refuse to import ----------------------------------------------------

def _shape_as_int(graph_def):
    node(graph_def, "input").attr["shape"].CopyFrom(pb.AttrValue(i=3))


def _shape_as_list(graph_def):
    node(graph_def, "input").attr["shape"].list.shape.add().dim.add(size=1)


def _value_as_list(graph_def):
    node(graph_def, "conv/weights").attr["value"].CopyFrom(pb.AttrValue(list=pb.AttrValue.ListValue(i=[1])))


def _dtype_as_empty_list(graph_def):
    node(graph_def, "conv/weights").attr["dtype"].list.SetInParent()


def _identity_without_input(graph_def):
    target = node(graph_def, "output")
    target.op = "Identity"
    del target.input[:]


def _shape_below_minus_one(graph_def):
    node(graph_def, "input").attr["shape"].shape.dim[0].size = -7


def _dtype_mismatch(graph_def):
    node(graph_def, "output").attr["T"].type = pb.DT_INT32   # Relu reading a float


@pytest.mark.parametrize("edit, message", [
    (_shape_as_int, "node 'input': attr 'shape' is int, but Placeholder takes shape"),
    (_shape_as_list, "node 'input': attr 'shape' is list(shape), but Placeholder takes shape"),
    (_value_as_list, "node 'conv/weights': attr 'value' is list(int), but Const takes tensor"),
    (_dtype_as_empty_list, "node 'conv/weights': attr 'dtype' is an empty list, but Const takes type"),
    (_identity_without_input, "node 'output': Identity takes 1 input, but the node has 0"),
    (_shape_below_minus_one, "node 'input': attr 'shape': shape [-7, 8, 8, 3] has a dimension below -1"),
    (_dtype_mismatch, "node 'output': input 'bn/BatchNormWithGlobalNormalization' is float, but Relu "
                      "takes int32 there"),
])
@pytest.mark.parametrize("command", ["summarize", "run", "apply"])
def test_graph_tensorflow_would_not_import_is_rejected_at_load(tmp_path, capsys, edit, message, command):
    source = fixture_copy(tmp_path, "bn_global_norm", edit)
    before = source.read_bytes()
    out = tmp_path / "out.pb"
    args = {"summarize": [], "run": ["--save", str(out)],
            "apply": ["-o", str(out), "--pipeline", "optimize_for_inference"]}[command]
    assert main([command, str(source), *args]) == 2
    error_line(capsys, f"{source}: {message}")
    assert source.read_bytes() == before
    assert_only(tmp_path, source.name)


def test_graph_loaded_in_text_format_is_checked_alike(tmp_path, capsys):
    source = fixture_copy(tmp_path, "bn_global_norm")
    graph = Graph.load(source)
    text = tmp_path / "g.pbtxt"
    graph.save(text)
    text.write_text(text.read_text().replace("type: DT_FLOAT", "i: 1", 1))
    assert main(["summarize", str(text)]) == 2
    error_line(capsys, f"{text}: node 'input': attr 'dtype' is int, but Placeholder takes type")


def test_kernel_giving_fewer_outputs_than_read_is_an_error(tmp_path, capsys):
    # IdentityN without its T attr: the registry cannot count its inputs, and it passes on none.
    def edit(graph_def):
        target = node(graph_def, "bn/gamma")
        target.op = "IdentityN"
        target.attr.clear()
    source = fixture_copy(tmp_path, "bn_global_norm", edit)
    assert main(["run", str(source)]) == 2
    error_line(capsys, f"{source}: node 'bn/gamma': IdentityN produced no output 0")


def test_malformed_control_flow_node_is_an_error(tmp_path, capsys):
    def edit(graph_def):
        for each in graph_def.node:
            if each.op == "Enter":
                del each.attr["frame_name"]
    source = fixture_copy(tmp_path, "tf1_while_loop", edit)
    assert main(["run", str(source), "--outputs", "output"]) == 2
    error_line(capsys, f"{source}: node '", "Enter failed: ", "has no attr 'frame_name'")


def test_placeholder_too_big_for_a_random_value_is_not_allocated(tmp_path, capsys):
    def edit(graph_def):
        dims = node(graph_def, "input").attr["shape"].shape.dim
        del dims[:]
        dims.add(size=2**20)
        dims.add(size=2**20)
    source = fixture_copy(tmp_path, "tf1_mul_fold", edit)
    assert main(["run", str(source)]) == 2
    error_line(capsys, f"{source}: node 'input': placeholder 'input' (float, shape [1048576, 1048576]) "
                       f"is too big for a random value")


def test_control_characters_in_names_stay_on_one_line(tmp_path, capsys):
    def edit(graph_def):
        node(graph_def, "output").input[0] = "missing\nnode\r\x1b[2J"
    source = fixture_copy(tmp_path, "bn_global_norm", edit)
    assert main(["summarize", str(source)]) == 2
    error_line(capsys, f"{source}: node 'output': input 'missing\\nnode\\r\\x1b[2J' names a missing node")


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs a device file")
def test_a_device_is_refused_before_reading(capsys):
    # /dev/zero would be read forever; /dev/null stands in for it, ending at once if it is read.
    assert main(["summarize", "/dev/null"]) == 2
    assert error_line(capsys) == "gtt-rules: error: /dev/null: is a device, not a graph file"



def test_a_device_as_min_max_log_is_refused_before_reading(tmp_path, capsys):
    source = fixture_copy(tmp_path, "quantized_ops")
    assert main(["apply", str(source), "-o", str(tmp_path / "out.pb"), "--rules",
                 'freeze_requantization_ranges(min_max_log_file="/dev/null")']) == 2
    error_line(capsys, "/dev/null: is a device, not a min/max log")
    assert_only(tmp_path, source.name)


def test_apply_refuses_an_output_port_the_node_does_not_have(tmp_path, capsys):
    source = fixture_copy(tmp_path, "quantized_ops")
    output = Graph.load(source).sinks()[0].name
    assert main(["apply", str(source), "-o", str(tmp_path / "out.pb"), "--outputs", f"{output}:7",
                 "--transforms", "sort_by_execution_order"]) == 2
    error_line(capsys, f"node '{output}' has no output 7")
    assert_only(tmp_path, source.name)
    # A port the node has picks that node.
    assert main(["apply", str(source), "-o", str(tmp_path / "out.pb"), "--outputs", f"{output}:0",
                 "--transforms", "sort_by_execution_order"]) == 0

# ---- feeds and samples ---------------------------------------------------------------------------

def npy_header(shape, descr: str = "<f4", header_text: str | None = None) -> bytes:
    """A .npy file's magic and header, claiming `shape`, with no data after it."""
    text = header_text or repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    text = text.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


@pytest.mark.parametrize("content, message", [
    (npy_header((2**40, 8, 8, 3)) + bytes(64),
     "not a readable .npy array: its header claims shape [1099511627776, 8, 8, 3] of float32"),
    # numpy's header parser raises tokenize's TokenError for a header cut inside brackets.
    (npy_header((), header_text="{'descr': '<f4', 'fortran_order': False, 'shape': (1,"),
     "not a readable .npy array: "),
])
def test_feed_file_with_a_lying_header_is_rejected(tmp_path, capsys, content, message):
    feed = tmp_path / "x.npy"
    feed.write_bytes(content)
    source = fixture_path("bn_global_norm")
    assert main(["run", str(source), "--feed", f"input={feed}", "--save", str(tmp_path / "o.npz")]) == 2
    error_line(capsys, f"{feed}: {message}")
    assert_only(tmp_path, "x.npy")


def test_feed_holding_objects_is_not_unpickled(tmp_path, capsys):
    feed = tmp_path / "x.npy"
    np.save(feed, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["run", str(fixture_path("bn_global_norm")), "--feed", f"input={feed}"]) == 2
    error_line(capsys, f"{feed}: not a readable .npy array: holds Python objects")


def _deflated_garbage() -> bytes:
    """A .npz whose one member's deflate stream is corrupt: zlib fails, not zipfile."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("input.npy", np.arange(192, dtype=np.float32).tobytes())
    data = bytearray(buffer.getvalue())
    start = 30 + len("input.npy")   # after the local file header
    data[start:start + 16] = b"\xff" * 16
    return bytes(data)


def _huge_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("input.npy", npy_header((2**40, 8, 8, 3)) + bytes(64))
    return buffer.getvalue()


def _unknown_input() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, input=np.zeros((1, 8, 8, 3), np.float32), other=np.zeros(3, np.float32))
    return buffer.getvalue()


def _wrong_shape() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, input=np.zeros(3, np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize("content, message", [
    (_deflated_garbage(), "not a readable .npz sample: 'input.npy': Error -3 while decompressing"),
    (_huge_member(), "not a readable .npz sample: 'input.npy': its header claims shape "
                     "[1099511627776, 8, 8, 3]"),
    (_unknown_input(), "has an array 'other', but the graph has no node of that name"),
    (_wrong_shape(), "feed 'input' has shape [3], but placeholder 'input' takes [1, 8, 8, 3]"),
])
def test_bad_calibration_sample_is_named(tmp_path, capsys, content, message):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "a.npz").write_bytes(content)
    out = tmp_path / "out.pb"
    assert main(["calibrate", str(fixture_path("quantized_ops")), "-o", str(out),
                 "--feed-dir", str(samples)]) == 2
    error_line(capsys, f"{samples / 'a.npz'}: {message}")
    assert_only(tmp_path, "samples")


# ---- options -------------------------------------------------------------------------------------

def test_run_save_refuses_to_write_over_its_inputs(tmp_path, capsys):
    source = fixture_copy(tmp_path, "bn_global_norm")
    feed = tmp_path / "x.npy"
    np.save(feed, np.zeros((1, 8, 8, 3), np.float32))
    before = source.read_bytes(), feed.read_bytes()
    for target in (source, feed):
        assert main(["run", str(source), "--feed", f"input={feed}", "--save", str(target)]) == 2
        error_line(capsys, f"{target}: refusing to write over {target}, an input of this command")
    assert (source.read_bytes(), feed.read_bytes()) == before
    assert_only(tmp_path, source.name, feed.name)


@pytest.mark.parametrize("log, message", [
    ("graph", "refusing to write over"),
    ("out.pb", "--log and -o name the same file"),
    ("no/log.txt", "the folder"),
])
def test_calibrate_log_is_checked_before_any_work(tmp_path, capsys, log, message):
    source = fixture_copy(tmp_path, "quantized_ops")
    before = source.read_bytes()
    log_path = source if log == "graph" else tmp_path / log
    assert main(["calibrate", str(source), "-o", str(tmp_path / "out.pb"), "--random", "1",
                 "--log", str(log_path)]) == 2
    error_line(capsys, f"{log_path}: {message}")
    assert source.read_bytes() == before
    assert_only(tmp_path, source.name)


@pytest.mark.parametrize("args, message", [
    (["run", "--seed", "-1"], "argument --seed: a seed must not be negative"),
    (["calibrate", "-o", "OUT", "--seed", "-1"], "argument --seed: a seed must not be negative"),
    (["compare", "GRAPH", "--rtol", "nan"], "--rtol and --atol must be numbers, not negative"),
])
def test_bad_numbers_in_options_are_usage_errors(tmp_path, capsys, args, message):
    graph = str(fixture_path("quantized_ops"))
    args = [graph if a == "GRAPH" else str(tmp_path / "out.pb") if a == "OUT" else a for a in args]
    assert main([args[0], graph, *args[1:]]) == 2
    error_line(capsys, message)
    assert_only(tmp_path)
