"""`gtt-rules run` and `gtt-rules compare`: outputs against TensorFlow, exit codes, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules import cli as cli_module
from gtt_rules.cli_run import compare_arrays
from gtt_rules.engine.evaluator import random_feeds as graph_random_feeds
from gtt_rules.engine.graph import Graph

F32 = np.float32


@pytest.fixture
def cli():
    """`gtt-rules ARGS...` in this process: the exit code (output goes to capsys)."""
    return lambda *args: cli_module.main([str(a) for a in args])


def write_npy(path, value) -> str:
    np.save(path, value)
    return str(path)


def changed_const_copy(tmp_path, name: str, scale: float) -> str:
    """A copy of a fixture with its largest float Const multiplied by `scale`."""
    graph = Graph.load(fixture_path(name))
    consts = [n for n in graph if n.op == "Const" and n.get_attr("value").dtype == F32]
    target = max(consts, key=lambda n: n.get_attr("value").size)
    target.set_attr("value", (target.get_attr("value") * F32(scale)).astype(F32))
    out = tmp_path / f"{name}_changed.pb"
    graph.save(out)
    return str(out)


def one_error_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("gtt-rules: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in captured.err
    return lines[0]


# ---- run -----------------------------------------------------------------------------------------

def test_run_json_reports_each_output_and_matches_tensorflow(cli, capsys, tmp_path):
    name = "tf1_mul_fold"
    spec = fixture_spec(name)
    x = random_feeds(spec, 3)["input"]
    feed = write_npy(tmp_path / "x.npy", x)
    outputs = ",".join(spec["outputs"])
    assert cli("run", fixture_path(name), "--outputs", outputs, "--feed", f"input={feed}", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    theirs = tf_run(fixture_path(name).read_bytes(), {"input": x}, spec["outputs"])
    assert [o["name"] for o in report["outputs"]] == spec["outputs"]
    assert report["fed"] == ["input"] and report["random"] == []
    for summary, want in zip(report["outputs"], theirs):
        assert summary["shape"] == list(want.shape)
        assert summary["dtype"] == "float"
        assert summary["min"] == pytest.approx(float(want.min()), rel=1e-4, abs=1e-5)
        assert summary["max"] == pytest.approx(float(want.max()), rel=1e-4, abs=1e-5)
        assert summary["mean"] == pytest.approx(float(want.mean()), rel=1e-3, abs=1e-5)
        np.testing.assert_allclose(summary["first"], want.reshape(-1)[:len(summary["first"])],
                                   rtol=1e-4, atol=1e-5)


def test_run_save_writes_tensorflows_outputs_keyed_as_written(cli, capsys, tmp_path):
    name = "tf1_while_loop"
    x = random_feeds(fixture_spec(name), 2)["input"]
    feed = write_npy(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert cli("run", fixture_path(name), "--outputs", "hidden:0, output", "--feed", f"input:0={feed}",
               "--save", out) == 0
    printed = capsys.readouterr().out
    assert "hidden:0" in printed and "saved 2 arrays" in printed
    theirs = tf_run(fixture_path(name).read_bytes(), {"input": x}, ["hidden:0", "output:0"])
    with np.load(out) as saved:
        assert sorted(saved.files) == ["hidden:0", "output"]
        np.testing.assert_allclose(saved["hidden:0"], theirs[0], rtol=1e-4)
        np.testing.assert_allclose(saved["output"], theirs[1], rtol=1e-4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_run_with_random_inputs_is_seeded(cli, capsys, tmp_path):
    name = "keras_bn_frozen"
    results = []
    for seed in (4, 4, 5):
        out = tmp_path / f"out{len(results)}.npz"
        assert cli("run", fixture_path(name), "--seed", seed, "--save", out, "--json") == 0
        report = json.loads(capsys.readouterr().out)
        assert report["random"] == ["input"]
        with np.load(out) as saved:
            results.append(saved["Identity"])       # default outputs: the graph's sinks
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])
    feeds = graph_random_feeds(Graph.load(fixture_path(name)), 4)
    theirs = tf_run(fixture_path(name).read_bytes(), feeds, ["Identity:0"])
    np.testing.assert_allclose(results[0], theirs[0], rtol=1e-4)


def test_run_prints_a_table_for_people(cli, capsys, tmp_path):
    # A long path must not wrap the header line (CI checks out deep below /).
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4)
    deep.mkdir(parents=True)
    graph = deep / "tf1_conv_bn.pb"
    graph.write_bytes(fixture_path("tf1_conv_bn").read_bytes())
    assert cli("run", graph, "--outputs", "output") == 0
    out = capsys.readouterr().out
    assert f"{graph}: inputs input (random, seed 0)\n" in out
    assert "output" in out and "[1,10]" in out and "float" in out


# ---- compare -------------------------------------------------------------------------------------

def test_compare_identical_graphs_exits_0(cli, capsys):
    name = "keras_mobilenet_tiny"
    path = fixture_path(name)
    assert cli("compare", path, path, "--outputs", "Identity:0", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["within_tolerance"] is True
    row = report["outputs"][0]
    assert row["max_abs_error"] == 0 and row["max_rel_error"] == 0
    assert row["cosine_similarity"] == pytest.approx(1.0)
    assert row["top1_agreement"] == 1.0


def test_compare_a_changed_const_exits_1(cli, capsys, tmp_path):
    name = "tf1_conv_bn"
    changed = changed_const_copy(tmp_path, name, 1.5)
    assert cli("compare", fixture_path(name), changed, "--outputs", "output", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["within_tolerance"] is False
    row = report["outputs"][0]
    assert row["within_tolerance"] is False and row["max_abs_error"] > 1e-4
    # The same numbers TensorFlow gives for both graphs.
    feeds = graph_random_feeds(Graph.load(fixture_path(name)), 0)
    a = tf_run(fixture_path(name).read_bytes(), feeds, ["output:0"])[0].astype(np.float64)
    b = tf_run(open(changed, "rb").read(), feeds, ["output:0"])[0].astype(np.float64)
    assert row["max_abs_error"] == pytest.approx(float(np.max(np.abs(a - b))), rel=1e-3, abs=1e-6)
    cosine = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert row["cosine_similarity"] == pytest.approx(cosine, rel=1e-4)
    # A loose enough tolerance accepts the change.
    assert cli("compare", fixture_path(name), changed, "--outputs", "output", "--atol", "10") == 0
    assert "within tolerance" in capsys.readouterr().out


def test_compare_prints_a_table(cli, capsys, tmp_path):
    changed = changed_const_copy(tmp_path, "tf1_mul_fold", 1.01)
    assert cli("compare", fixture_path("tf1_mul_fold"), changed) == 1
    out = capsys.readouterr().out
    assert "conv_a_out" in out and "fc_out" in out and "beyond tolerance" in out


def test_compare_arrays_metrics():
    a = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]], F32)
    b = np.array([[1.0, 2.5, 3.0], [3.0, 4.0, 0.0]], F32)
    row = compare_arrays(a, b, rtol=0.0, atol=0.1)
    assert row["max_abs_error"] == 3.0
    assert row["max_rel_error"] == 3.0
    assert row["top1_agreement"] == 0.5
    assert row["within_tolerance"] is False
    assert compare_arrays(a, a.copy(), 0, 0)["within_tolerance"] is True
    assert compare_arrays(a, a[:1], 1, 1)["within_tolerance"] is False


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------

def test_missing_feed_file(cli, capsys, tmp_path):
    out = tmp_path / "out.npz"
    missing = tmp_path / "missing.npy"
    assert cli("run", fixture_path("tf1_conv_bn"), "--feed", f"input={missing}", "--save", out) == 2
    one_error_line(capsys, str(missing), "no such file")
    assert not out.exists()


def test_unreadable_feed_file(cli, capsys, tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"this is not numpy")
    out = tmp_path / "out.npz"
    assert cli("run", fixture_path("tf1_conv_bn"), "--feed", f"input={bad}", "--save", out) == 2
    one_error_line(capsys, str(bad), "not a readable .npy")
    assert not out.exists()


def test_feed_for_unknown_node(cli, capsys, tmp_path):
    feed = write_npy(tmp_path / "x.npy", np.zeros((1, 8, 8, 3), F32))
    out = tmp_path / "out.npz"
    assert cli("run", fixture_path("tf1_conv_bn"), "--feed", f"nosuch={feed}", "--save", out) == 2
    one_error_line(capsys, "feed 'nosuch' names no node", "tf1_conv_bn.pb")
    assert list(tmp_path.iterdir()) == [tmp_path / "x.npy"]


def test_feed_of_the_wrong_shape(cli, capsys, tmp_path):
    feed = write_npy(tmp_path / "x.npy", np.zeros((1, 4, 4, 3), F32))
    assert cli("compare", fixture_path("tf1_conv_bn"), fixture_path("tf1_conv_bn"),
               "--feed", f"input={feed}") == 2
    one_error_line(capsys, "feed 'input' has shape [1, 4, 4, 3]", "[1, 8, 8, 3]")


def test_output_naming_a_missing_node(cli, capsys, tmp_path):
    out = tmp_path / "out.npz"
    assert cli("run", fixture_path("tf1_conv_bn"), "--outputs", "output,ghost", "--save", out) == 2
    one_error_line(capsys, "output 'ghost' names no node")
    assert not out.exists()
    assert cli("compare", fixture_path("tf1_conv_bn"), fixture_path("tf1_mul_fold"),
               "--outputs", "output") == 2
    one_error_line(capsys, "tf1_mul_fold.pb", "output 'output' names no node")


def test_bad_feed_syntax_and_missing_graph(cli, capsys, tmp_path):
    assert cli("run", fixture_path("tf1_conv_bn"), "--feed", "input") == 2
    one_error_line(capsys, "NAME=FILE.npy")
    assert cli("run", tmp_path / "nothere.pb") == 2
    one_error_line(capsys, "nothere.pb", "no such file")
    assert cli("compare", fixture_path("tf1_conv_bn")) == 2
    one_error_line(capsys)


def test_save_into_a_missing_folder_fails_before_running(cli, capsys, tmp_path):
    out = tmp_path / "no" / "out.npz"
    assert cli("run", fixture_path("tf1_conv_bn"), "--save", out) == 2
    one_error_line(capsys, "does not exist")
    assert not (tmp_path / "no").exists()


def test_tf2_functional_control_flow_runs(cli, capsys, tmp_path):
    """The fixture's While and If run their library functions, to TensorFlow's values."""
    name = "tf2_function_library"
    out = tmp_path / "out.npz"
    feed = write_npy(tmp_path / "input.npy", random_feeds(fixture_spec(name))["input"])
    assert cli("run", fixture_path(name), "--feed", f"input={feed}", "--save", out) == 0
    (expected,) = tf_run(fixture_path(name).read_bytes(), {"input": np.load(feed)}, ["Identity:0"])
    np.testing.assert_allclose(np.load(out)["Identity"], expected, rtol=1e-5, atol=1e-6)
