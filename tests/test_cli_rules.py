"""The rules commands: apply --rules, check, test, list, and their bad-input paths."""
from __future__ import annotations

import json
import pathlib

from conftest import fixture_path
from test_cli import run_cli

from gtt_rules.cli import main
from gtt_rules.engine.graph import Graph

BAD_RULES = "rule r:\n    n = Conv2d(x)\n    where usess(x)\n    => n -> x\n"

WRONG_EXPECTATION = """
rule remove-neg:
    n = Neg(x)
    => n -> x

test claims-too-much:
    given:
        x = Placeholder {dtype: float, shape: [2]}
        a = Neg(x)
        out = Relu(a)
    expect:
        out = Relu6(x)
"""


def test_apply_with_rules_traces_and_reports(tmp_path, capsys):
    out = tmp_path / "out.pb"
    code = main(["apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--rules", "cleanup",
                 "--trace", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    (stage,) = report["stages"]
    assert stage["name"] == "cleanup"
    assert stage["rules"]["remove-identity"]["fires"] >= 2
    assert stage["rules"]["remove-check-numerics"]["fires"] == 1
    assert stage["nodes_after"] == len(Graph.load(out)) < stage["nodes_before"]
    assert stage["stop_reason"] == "saturated"
    assert all(t["location"].endswith(".rules:" + t["location"].rsplit(":", 1)[1]) for t in stage["trace"])
    assert {t["rule"] for t in stage["trace"]} == {"remove-identity", "remove-check-numerics"}


def test_apply_trace_lines_name_rule_root_and_changes(tmp_path, capsys):
    out = tmp_path / "out.pb"
    assert main(["apply", str(fixture_path("tf1_mul_fold")), "-o", str(out), "--rules", "batch_norm", "--trace"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "fold-mul-into-conv" in l]
    assert len(lines) == 4
    assert all("batch_norm.rules:" in l and "replaced" in l and "added" in l and "removed" in l for l in lines)


def test_apply_with_a_rules_file_and_explicit_outputs(tmp_path):
    rules = tmp_path / "mine.rules"
    rules.write_text("rule relu-to-relu6:\n    n = Relu(x)\n    => n -> Relu6(x)\n")
    out = tmp_path / "out.pb"
    assert main(["apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--rules", str(rules),
                 "--outputs", "output"]) == 0
    graph = Graph.load(out)
    assert not any(n.op == "Relu" for n in graph) and any(n.op == "Relu6" for n in graph)


def test_apply_with_bad_rules_fails_before_reading_the_graph(tmp_path):
    rules = tmp_path / "bad.rules"
    rules.write_text(BAD_RULES)
    out = tmp_path / "out.pb"
    result = run_cli("apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--rules", str(rules))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"gtt-rules: error: {rules}:2:9: unknown op 'Conv2d'"
    assert lines[1:3] == ["        n = Conv2d(x)", "            ^"]
    assert lines[3] == "    hint: did you mean 'Conv2D'?"
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_apply_with_unknown_rule_set_or_output(tmp_path):
    out = tmp_path / "out.pb"
    result = run_cli("apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--rules", "cleanpu")
    assert result.returncode == 2
    assert "unknown rule set or pipeline 'cleanpu'; did you mean 'cleanup'?" in result.stderr
    result = run_cli("apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--rules", "cleanup",
                     "--outputs", "nope")
    assert result.returncode == 2
    assert "no node named 'nope' (from --inputs/--outputs)" in result.stderr
    result = run_cli("apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--rules", "cleanup(",
                     )
    assert result.returncode == 2 and "cannot read rule spec 'cleanup('" in result.stderr
    assert not out.exists()


def test_apply_stops_on_cycling_rules_and_writes_nothing(tmp_path):
    rules = tmp_path / "cycle.rules"
    rules.write_text("rule a:\n    n = Relu(x)\n    => n -> Relu6(x)\n"
                     "rule b:\n    n = Relu6(x)\n    => n -> Relu(x)\n")
    out = tmp_path / "out.pb"
    result = run_cli("apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--rules", str(rules))
    assert result.returncode == 2
    assert "the rules do not terminate" in result.stderr
    # Each rule in the loop is named with the file and line it was written at.
    assert f"rules involved: a ({rules}:1), b ({rules}:4)" in result.stderr
    assert not out.exists()


def test_check_reports_every_error_with_position(tmp_path):
    good, bad = tmp_path / "good.rules", tmp_path / "bad.rules"
    good.write_text("rule r:\n    n = Relu(x)\n    => n -> x\n")
    bad.write_text(BAD_RULES)
    result = run_cli("check", str(good), str(bad))
    assert result.returncode == 2
    assert f"{good}: ok (1 rules, 1 rule sets, 0 pipelines, 0 tests)" in result.stdout
    errors = [l for l in result.stderr.splitlines() if l.startswith("gtt-rules: error:")]
    assert errors == [f"gtt-rules: error: {bad}:2:9: unknown op 'Conv2d'",
                      f"gtt-rules: error: {bad}:3:11: unknown function 'usess'"]
    assert run_cli("check", str(good)).returncode == 0


def test_check_reports_syntax_errors_with_a_caret(tmp_path):
    bad = tmp_path / "syntax.rules"
    bad.write_text("rule r\n    n = Relu(x)\n    => n -> x\n")
    result = run_cli("check", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"gtt-rules: error: {bad}:1:7: missing ':' at the end of the header line"


def test_a_bad_string_escape_is_a_one_line_error_not_a_traceback(tmp_path):
    bad = tmp_path / "escape.rules"
    bad.write_text('rule r:\n    n = Identity(x)\n    where op(n) == "a\\x"\n    => n -> x\n')
    result = run_cli("check", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith(f"gtt-rules: error: {bad}:3:20: bad string literal: ")


def test_test_command_passes_the_stdlib_and_fails_a_wrong_fixture(tmp_path):
    # The repository's own folder, so that the test runs from any working directory.
    result = run_cli("test", str(pathlib.Path(__file__).resolve().parents[1] / "stdlib_rules"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(" passed, 0 failed")
    wrong = tmp_path / "wrong.rules"
    wrong.write_text(WRONG_EXPECTATION)
    result = run_cli("test", str(wrong))
    assert result.returncode == 1
    assert f"FAIL {wrong}:6 claims-too-much: node 'out' (expected 'out'): op is Relu, expected Relu6" in result.stdout
    assert result.stdout.strip().endswith("0 passed, 1 failed")


def test_list_shows_rule_sets_with_parameters(tmp_path, capsys):
    extra = tmp_path / "extra.rules"
    extra.write_text("ruleset shrink(limit: int = 4):\n    rule r:\n        n = Relu(x)\n        where limit > 0\n        => n -> x\n")
    assert main(["list", str(extra), "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert {"cleanup", "batch_norm", "quantization", "shrink"} <= set(entries)
    assert entries["shrink"]["params"] == [{"name": "limit", "type": "int", "default": 4}]
    assert "remove-identity" in entries["cleanup"]["rules"]


def test_list_describes_each_rule_set_by_its_comment_and_marks_required_parameters(tmp_path, capsys):
    extra = tmp_path / "extra.rules"
    extra.write_text("# Unused: drop Relus. Second sentence.\n\n# Shrinks things. Not shown.\n"
                     "ruleset shrink(limit: int):\n    rule r:\n        n = Relu(x)\n        where limit > 0\n"
                     "        => n -> x\n\nrule top:\n    n = Relu6(x)\n    => n -> x\n")
    assert main(["list", str(extra), "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["shrink"]["doc"] == "Shrinks things."
    assert entries["extra"]["doc"] == "Unused: drop Relus."      # the file's top-level rules
    assert entries["set_device"]["doc"].startswith("GTT's set_device: every node")
    assert entries["cleanup"]["doc"] == "Nodes that do nothing at inference time."
    assert main(["list", str(extra)]) == 0
    table = capsys.readouterr().out
    assert "limit: int (required)" in table and "Shrinks things." in table
    assert "old_op_name: str (required)" in table
