"""The command line tells instead of leaving users to guess: close names for typos, dtype names,
.npz feeds, why a run stopped, readable error lines, unknown ops; and its output reads well in pipes
and as JSON."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import fixture_path, tf_run
from gtt_rules.cli import main
from gtt_rules.console import LINE_LIMIT
from gtt_rules.engine.report import StopReason
from gtt_rules.engine.graph import Graph

GRAPH = fixture_path("tf1_conv_bn")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a child process whose stdout is a pipe, as in `gtt-rules list | less`."""
    return subprocess.run([sys.executable, "-m", "gtt_rules", *map(str, args)], capture_output=True, text=True)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("gtt-rules: error: ")
    return line


# ---- did you mean ----

@pytest.mark.parametrize("option, spec, suggestion", [
    ("--pipeline", "optimise_for_inference", "optimize_for_inference"),
    ("--rules", "fold_constant", "fold_constants"),
    ("--rules", "quantize_weights(minimum_sise=16)", "minimum_size"),
    ("--transforms", "strip_unused_node", "strip_unused_nodes"),
    ("--transforms", "fold_constants(exclude_ops=Shape)", "exclude_op"),
])
def test_a_mistyped_name_gets_the_closest_one(tmp_path, capsys, option, spec, suggestion):
    out = tmp_path / "out.pb"
    assert main(["apply", str(GRAPH), "-o", str(out), option, spec]) == 2
    assert f"did you mean '{suggestion}'?" in error_line(capsys)
    assert not out.exists()


def test_a_mistyped_node_name_gets_the_closest_one(tmp_path, capsys):
    assert main(["apply", str(GRAPH), "-o", str(tmp_path / "out.pb"), "--rules", "cleanup",
                 "--inputs", "inptu"]) == 2
    assert "no node named 'inptu' (from --inputs/--outputs); did you mean 'input'?" in error_line(capsys)
    assert main(["run", str(GRAPH), "--outputs", "outptu"]) == 2
    assert "output 'outptu' names no node in the graph; did you mean 'output'?" in error_line(capsys)
    feed = tmp_path / "x.npy"
    np.save(feed, np.zeros((1, 8, 8, 3), np.float32))
    assert main(["run", str(GRAPH), "--feed", f"inptu={feed}"]) == 2
    assert "feed 'inptu' names no node in the graph; did you mean 'input'?" in error_line(capsys)


# ---- dtype names ----

def test_list_shows_a_dtype_default_by_its_name(capsys):
    assert main(["list", "--json"]) == 0
    strip = next(e for e in json.loads(capsys.readouterr().out) if e["name"] == "strip_unused_nodes")
    assert {p["name"]: p["default"] for p in strip["params"]}["type"] == "float"
    result = run_cli("list")
    line = next(line for line in result.stdout.splitlines() if line.startswith("│ strip_unused_nodes "))
    assert "type: dtype = float," in line


def test_a_failing_fixture_names_dtypes_not_enum_numbers(tmp_path, capsys):
    rules = tmp_path / "cast.rules"
    rules.write_text("""rule abs-to-cast:
    n = Abs(x)
    => n -> Cast(x) {DstT: float}

test abs-to-cast:
    given:
        x   = Placeholder {dtype: float, shape: [2]}
        out = Abs(x)
    expect:
        out = Cast(x) {DstT: half}
""")
    assert main(["test", str(rules)]) == 1
    assert "attr 'DstT' is float, expected half" in capsys.readouterr().out


def test_summarize_fills_the_dtypes_column():
    result = run_cli("summarize", GRAPH)
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ output "))
    assert "[float]" in row


# ---- .npz feeds ----

def test_a_one_array_npz_feeds_the_named_input(tmp_path, capsys):
    value = np.random.default_rng(3).standard_normal((1, 8, 8, 3)).astype(np.float32)
    one = tmp_path / "one.npz"
    np.savez(one, sample=value)
    assert main(["run", str(GRAPH), "--feed", f"input={one}", "--save", str(tmp_path / "out.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fed"] == ["input"]
    expected, = tf_run(GRAPH.read_bytes(), {"input": value}, ["output"])
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["output"], expected, rtol=1e-5, atol=1e-6)


def test_an_npz_alone_feeds_each_array_by_its_name_in_run_and_compare(tmp_path, capsys):
    value = np.random.default_rng(4).standard_normal((1, 8, 8, 3)).astype(np.float32)
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, input=value)
    assert main(["run", str(GRAPH), "--feed", str(feeds), "--save", str(tmp_path / "out.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["random"] == []
    expected, = tf_run(GRAPH.read_bytes(), {"input": value}, ["output"])
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["output"], expected, rtol=1e-5, atol=1e-6)
    assert main(["compare", str(GRAPH), str(GRAPH), "--feed", str(feeds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["within_tolerance"]


def test_an_npz_with_several_arrays_none_named_says_so(tmp_path, capsys):
    several = tmp_path / "several.npz"
    np.savez(several, inputs=np.zeros((1, 8, 8, 3), np.float32), other=np.zeros(2))
    assert main(["run", str(GRAPH), "--feed", f"input={several}"]) == 2
    line = error_line(capsys)
    assert f"{several}: holds 2 arrays (inputs, other), none named 'input'; did you mean 'inputs'?" in line
    assert "several arrays (.npz); give one array per --feed" not in line


# ---- why a run stopped ----

def test_max_rewrites_is_its_own_stop_reason_not_a_loop(tmp_path, capsys):
    from gtt_rules.engine.driver import Limits
    from gtt_rules.errors import RewriteError
    from gtt_rules import standard_library

    assert main(["apply", str(GRAPH), "-o", str(tmp_path / "out.pb"), "--rules", "cleanup",
                 "--max-rewrites", "1"]) == 2
    line = error_line(capsys)
    assert "stopped at the rewrite limit of 1 (max_rewrites)" in line and "do not terminate" not in line
    (stage,) = standard_library().stages("cleanup")
    graph = Graph.load(GRAPH)
    with pytest.raises(RewriteError) as caught:
        stage.run(graph, inputs=["input"], outputs=["output"], limits=Limits(max_rewrites=1))
    assert caught.value.report.stop_reason is StopReason.REWRITE_LIMIT


# ---- readable errors, unknown ops ----

def test_an_error_line_is_capped_at_a_readable_length(tmp_path, capsys):
    text = Graph.load(fixture_path("keras_bn_frozen")).to_bytes(text=True).decode()
    start = text.index("tensor_content")
    cut = tmp_path / "cut.pbtxt"
    cut.write_text(text[:start + (text.index("\n", start) - start) // 2])   # inside a long tensor line
    assert main(["summarize", str(cut)]) == 2
    line = error_line(capsys)
    assert len(line) <= LINE_LIMIT and "characters ...]" in line
    assert line.startswith(f"gtt-rules: error: {cut}: not a text GraphDef: ")


def test_a_graph_with_unknown_ops_loads_with_a_warning_naming_them(tmp_path):
    graph = Graph.load(GRAPH)
    graph["output"].op = "Softmaxx"
    source = tmp_path / "typo.pb"
    source.write_bytes(graph.to_bytes())
    result = run_cli("summarize", source)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [f"gtt-rules: warning: {source}: ops unknown to TensorFlow's registry: "
                                          f"Softmaxx (they are kept as they are, but `run` cannot evaluate them)"]


# ---- pipes and JSON ----

def test_a_piped_table_prints_in_full_as_plain_text():
    result = run_cli("list")
    assert result.returncode == 0
    assert "\x1b[" not in result.stdout and "…" not in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("│ fold_batch_norms_after_concat ") for line in lines)
    assert "exclude_op: [str] = []" in result.stdout      # a list type is shown, not read as markup


def test_check_json_gives_each_files_counts_or_located_errors(tmp_path, capsys):
    bad = tmp_path / "bad.rules"
    bad.write_text("rule x:\n    n = Idenity(a)\n    => n -> a\n")
    good = fixture_path("tf1_conv_bn").parents[2].parent / "stdlib_rules" / "cleanup.rules"
    assert main(["check", str(good), str(bad), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    ok, failed = report["files"]
    assert ok["ok"] and ok["rules"] >= 3 and ok["tests"] >= 1
    (error,) = failed["errors"]
    assert (error["path"], error["line"], error["column"]) == (str(bad), 2, 9)
    assert error["message"] == "unknown op 'Idenity'" and error["hint"] == "did you mean 'Identity'?"


def test_test_json_gives_every_result(tmp_path, capsys):
    rules = tmp_path / "t.rules"
    rules.write_text("""rule remove-identity:
    n = Identity(x)
    => n -> x

test passes:
    given:
        x   = Placeholder {dtype: float, shape: [2]}
        out = Neg(Identity(x))
    expect:
        out = Neg(x)

test fails:
    given:
        x   = Placeholder {dtype: float, shape: [2]}
        out = Neg(Identity(x))
    expect:
        out = Abs(x)
""")
    assert main(["test", str(rules), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["passed"], report["failed"]) == (1, 1)
    results = {t["name"]: t for t in report["tests"]}
    assert results["passes"]["passed"] and results["passes"]["message"] is None
    assert not results["fails"]["passed"] and "op is Neg, expected Abs" in results["fails"]["message"]
