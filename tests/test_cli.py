"""The command line: summarize, apply without rules, and every bad input it must refuse cleanly."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import fixture_path, fixture_spec
from gtt_rules.cli import main
from gtt_rules.engine.graph import Graph
from gtt_rules.engine.proto import graph_def_pb2 as pb


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console entry point in a child process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "gtt_rules", *args], capture_output=True, text=True)


def test_summarize_json_matches_what_tensorflow_built(capsys, tf):
    name = "keras_bn_frozen"
    assert main(["summarize", str(fixture_path(name)), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    graph_def = tf.compat.v1.GraphDef.FromString(fixture_path(name).read_bytes())
    assert summary["nodes"] == len(graph_def.node)
    assert sum(summary["ops"].values()) == len(graph_def.node)
    spec = fixture_spec(name)
    assert [i["name"] for i in summary["inputs"]] == [i["name"] for i in spec["inputs"]]
    assert summary["inputs"][0]["dtype"] == "float"
    assert [o["name"] for o in summary["outputs"]] == [o.split(":")[0] for o in spec["outputs"]]
    expected_params = sum(
        int(tf.make_ndarray(n.attr["value"].tensor).size) for n in graph_def.node if n.op == "Const")
    assert summary["parameters"]["count"] == expected_params
    expected_bytes = sum(
        tf.make_ndarray(n.attr["value"].tensor).nbytes for n in graph_def.node if n.op == "Const")
    assert summary["parameters"]["bytes"] == expected_bytes


def test_summarize_prints_tables_for_people(capsys):
    assert main(["summarize", str(fixture_path("tf1_conv_bn"))]) == 0
    out = capsys.readouterr().out
    assert "Likely inputs" in out and "Likely outputs" in out and "Conv2D" in out


def test_summarize_shows_bytes_in_the_units_apply_and_diff_use(capsys, tf):
    """One unit for every command: powers of 1000 (the apply closing line's "95.8 MB")."""
    graph_def = tf.compat.v1.GraphDef.FromString(fixture_path("keras_bn_frozen").read_bytes())
    weight_bytes = sum(tf.make_ndarray(n.attr["value"].tensor).nbytes for n in graph_def.node if n.op == "Const")
    assert weight_bytes >= 1000
    assert main(["summarize", str(fixture_path("keras_bn_frozen"))]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert f"({weight_bytes / 1000:.1f} KB)" in first_line or f"({weight_bytes / 1e6:.1f} MB)" in first_line


@pytest.mark.parametrize("command", ["summarize", "apply", "run", "compare", "diff", "memmap"])
def test_help_says_every_kind_of_graph_is_accepted(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "memory-mapped package" in help_text and "SavedModel folder" in help_text


def test_apply_with_a_transform_that_changes_nothing_writes_an_equal_graph(tmp_path, tf):
    out = tmp_path / "out.pb"
    assert main(["apply", str(fixture_path("tf2_function_library")), "-o", str(out),
                 "--transforms", "rename_op(old_op_name=NoSuchOp, new_op_name=Other)"]) == 0
    assert tf.compat.v1.GraphDef.FromString(out.read_bytes()) == \
        tf.compat.v1.GraphDef.FromString(fixture_path("tf2_function_library").read_bytes())


def test_apply_without_a_transform_is_a_usage_error_as_in_gtt(tmp_path, capsys):
    out = tmp_path / "out.pb"
    assert main(["apply", str(fixture_path("tf1_conv_bn")), "-o", str(out)]) == 2
    assert "no transform given" in capsys.readouterr().err
    assert not out.exists()


def test_apply_writes_text_format_when_asked(tmp_path):
    out = tmp_path / "out.pb"
    assert main(["apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--output_as_text",
                 "--transforms", "remove_device"]) == 0
    assert Graph.load(tmp_path / "out.pb").to_bytes() != b""
    assert out.read_text().startswith("node {")


def test_output_as_text_false_writes_binary_whatever_the_suffix(tmp_path, tf):
    out = tmp_path / "out.pbtxt"
    assert main(["apply", f"--in_graph={fixture_path('tf1_conv_bn')}", f"--out_graph={out}",
                 "--output_as_text=false", "--transforms", "remove_device"]) == 0
    graph_def = tf.compat.v1.GraphDef.FromString(out.read_bytes())    # binary: text would not parse
    assert len(graph_def.node) == len(Graph.load(fixture_path("tf1_conv_bn")))


def test_summarize_takes_in_graph_like_summarize_graph(capsys):
    assert main(["summarize", f"--in_graph={fixture_path('tf1_conv_bn')}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"] == len(Graph.load(fixture_path("tf1_conv_bn")))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _duplicate_names_graph() -> bytes:
    graph_def = pb.GraphDef()
    graph_def.node.add(name="a", op="NoOp")
    graph_def.node.add(name="a", op="NoOp")
    return graph_def.SerializeToString()


BAD_INPUTS = {
    "missing": (None, "missing.pb: no such file"),
    "empty": (b"", "empty.pb: file is empty, not a GraphDef"),
    "truncated": ("truncate", "truncated.pb: not a GraphDef: the file is truncated or is not a protobuf"),
    "not_a_graph": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not_a_graph.pb: not a GraphDef"),
    "json": (b'{"nodes": []}', "json.pb: not a GraphDef"),
    "bad_text": (b"node { name: 'a' op: }", "bad_text.pbtxt: not a text GraphDef"),
    "invalid": (_duplicate_names_graph(), "invalid.pb: node 'a': duplicate node name 'a'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", ["summarize", "apply"])
def test_bad_input_one_line_error_exit_2_no_output(case, command, tmp_path):
    content, message = BAD_INPUTS[case]
    suffix = ".pbtxt" if case == "bad_text" else ".pb"
    source = tmp_path / f"{case}{suffix}"
    if content == "truncate":
        data = fixture_path("tf1_conv_bn").read_bytes()
        content = data[: len(data) // 2]
    if content is not None:
        source.write_bytes(content)
    out = tmp_path / "out.pb"
    args = [command, str(source)] + (["-o", str(out), "--transforms", "remove_device"] if command == "apply" else [])
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert lines[0].startswith("gtt-rules: error: ")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([source.name] if content is not None else [])


def test_refuses_to_overwrite_the_input_unless_asked(tmp_path):
    source = tmp_path / "model.pb"
    shutil.copy(fixture_path("tf1_conv_bn"), source)
    before = source.read_bytes()
    result = run_cli("apply", str(source), "-o", str(source), "--transforms", "remove_device")
    assert result.returncode == 2
    assert "refusing to write over the input graph; pass --overwrite" in result.stderr
    assert source.read_bytes() == before
    assert main(["apply", str(source), "-o", str(source), "--overwrite", "--transforms", "remove_device"]) == 0
    assert Graph.load(source).to_bytes() == Graph.from_bytes(before).to_bytes()


def test_output_folder_must_exist(tmp_path):
    result = run_cli("apply", str(fixture_path("tf1_conv_bn")), "-o", str(tmp_path / "no" / "out.pb"),
                     "--transforms", "remove_device")
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


def test_usage_errors_exit_2_without_traceback():
    result = run_cli("apply", str(fixture_path("tf1_conv_bn")))
    assert result.returncode == 2
    assert "the following arguments are required: -o/--output" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli("no-such-command").returncode == 2


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "summarize" in result.stdout and "apply" in result.stdout
