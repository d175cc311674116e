"""What `apply` tells: trace lines naming every node removed, added, replaced and rewired; stage
counts that show in-place rewrites; the closing line; --quiet; --report; progress on a terminal."""
from __future__ import annotations

import io
import json
import re
import time

import pytest

from conftest import fixture_path
from test_cli import run_cli

from gtt_rules import progress
from gtt_rules.cli import main
from gtt_rules.engine.graph import Graph

TRACE = re.compile(r"^(?P<location>\S+:\d+): (?P<rule>[\w-]+) at '(?P<root>[^']+)': (?P<parts>.+)$")


def parse_trace(line: str) -> dict[str, dict[str, str]]:
    """A trace line's parts: {"removed": {name: op}, "added": {...}, "replaced": {name: "A -> B"},
    "rewired": {name: ""}}."""
    match = TRACE.match(line)
    assert match, line
    parts: dict[str, dict[str, str]] = {}
    for part in match["parts"].split("; "):
        word, _, names = part.partition(" ")
        parts[word] = {}
        for item in re.findall(r"([^ ,]+)(?: \(([^)]*)\))?", names):
            parts[word][item[0]] = item[1]
    return parts


def test_trace_lines_name_what_each_rewrite_replaced_removed_and_added(tmp_path, capsys):
    source, out = fixture_path("tf1_mul_fold"), tmp_path / "out.pb"
    assert main(["apply", str(source), "-o", str(out), "--rules", "batch_norm", "--trace"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if TRACE.match(line)]
    before, after = Graph.load(source), Graph.load(out)
    removed, added, replaced = {}, {}, {}
    for line in lines:
        parts = parse_trace(line)
        assert set(parts) <= {"replaced", "removed", "added", "rewired"} and parts, line
        removed.update(parts.get("removed", {}))
        added.update(parts.get("added", {}))
        replaced.update(parts.get("replaced", {}))
    # Every node of the input that is gone was named removed, with the op it had there; every new
    # node was named added, with its op; a replaced node kept its name and changed its op.
    gone = {n.name for n in before if n.name not in after}
    new = {n.name for n in after if n.name not in before}
    assert set(removed) - set(added) == gone
    assert all(before[name].op == op for name, op in removed.items() if name in before)
    assert set(added) - set(removed) == new
    assert all(after[name].op == op for name, op in added.items() if name in after)
    assert replaced["conv_a/mul"] == "Mul -> Conv2D"
    assert before["conv_a/mul"].op == "Mul" and after["conv_a/mul"].op == "Conv2D"
    # The fold reroutes the consumer of what it replaced: the line says so.
    fold = next(line for line in lines if "fold-mul-into-conv at 'conv_a/mul'" in line)
    assert parse_trace(fold)["rewired"] == {"conv_a_out": ""}


def test_a_rewrite_that_only_rewires_says_so(tmp_path, capsys):
    """A loop's Identity with a control consumer stays; the rewrite moves its data consumers."""
    out = tmp_path / "out.pb"
    assert main(["apply", str(fixture_path("tf1_while_loop")), "-o", str(out), "--pipeline", "optimize_for_inference",
                 "--trace"]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(line for line in lines if "at 'loop/Identity'" in line)
    assert " -" not in line.split(": ", 2)[2]
    parts = parse_trace(line)
    assert set(parts) == {"rewired"} and parts["rewired"]
    assert "loop/Identity" in Graph.load(out)


def test_stage_counts_show_nodes_replaced_in_place(tmp_path, capsys):
    """round_weights replaces each weight by a new Const of the same name: the count of nodes
    stays, and the stage says how many it replaced."""
    source, out = fixture_path("keras_mobilenet_tiny"), tmp_path / "out.pb"
    assert main(["apply", str(source), "-o", str(out), "--rules", "round_weights", "--json"]) == 0
    (stage,) = json.loads(capsys.readouterr().out)["stages"]
    assert stage["rewrites"] > 0 and stage["nodes_before"] == stage["nodes_after"]
    assert stage["nodes_replaced"] == stage["rewrites"]
    assert stage["nodes_added"] == stage["nodes_removed"] == 0
    assert main(["apply", str(source), "-o", str(out), "--overwrite", "--rules", "round_weights"]) == 0
    err = capsys.readouterr().err
    count = f"{stage['nodes_before']:,}"
    rewrites = stage["rewrites"]
    assert f"round_weights: {count} -> {count} nodes ({rewrites} replaced), {rewrites} rewrites" in err


def test_stage_counts_add_up_to_the_node_counts(tmp_path, capsys):
    out = tmp_path / "out.pb"
    assert main(["apply", str(fixture_path("keras_mobilenet_tiny")), "-o", str(out),
                 "--pipeline", "optimize_for_inference", "--json"]) == 0
    stages = [s for s in json.loads(capsys.readouterr().out)["stages"] if s["rewrites"]]
    assert len(stages) >= 3
    for stage in stages:
        assert stage["nodes_after"] - stage["nodes_before"] == stage["nodes_added"] - stage["nodes_removed"], stage


@pytest.mark.parametrize("count, shown", [(0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (337_276, "337.3 KB"),
                                          (999_949, "999.9 KB"), (999_999, "1.0 MB"), (95_800_000, "95.8 MB")])
def test_byte_counts_read_in_powers_of_1000_never_as_1000_of_a_unit(count, shown):
    from gtt_rules.console import human_bytes
    assert human_bytes(count) == shown


def test_apply_ends_with_one_line_of_nodes_size_and_time(tmp_path):
    source, out = fixture_path("keras_mobilenet_tiny"), tmp_path / "out.pb"
    result = run_cli("apply", str(source), "-o", str(out), "--pipeline", "optimize_for_inference")
    assert result.returncode == 0, result.stderr
    last = result.stderr.splitlines()[-1]
    match = re.fullmatch(r"wrote (\S+): ([\d,]+) -> ([\d,]+) nodes, ([\d.]+) -> ([\d.]+) MB, ([\d.]+) s", last)
    assert match, last
    assert match[1] == str(out)
    assert int(match[2].replace(",", "")) == len(Graph.load(source))
    assert int(match[3].replace(",", "")) == len(Graph.load(out))
    assert float(match[4]) == round(source.stat().st_size / 1e6, 1)
    assert float(match[5]) == round(out.stat().st_size / 1e6, 1)
    assert 0 < float(match[6]) < 600


def test_quiet_prints_nothing_but_still_writes(tmp_path):
    out = tmp_path / "out.pb"
    result = run_cli("apply", str(fixture_path("tf1_mul_fold")), "-o", str(out), "--rules", "batch_norm", "--quiet")
    assert result.returncode == 0
    assert (result.stdout, result.stderr) == ("", "")
    assert len(Graph.load(out)) < len(Graph.load(fixture_path("tf1_mul_fold")))


@pytest.mark.parametrize("samples, shown", [(["--random", "2"], ""), ([], "note: ")])
def test_quiet_says_what_calibration_did_only_when_it_warns(tmp_path, samples, shown):
    out = tmp_path / "out.pb"
    result = run_cli("apply", str(fixture_path("tf1_conv_bn")), "-o", str(out), "--pipeline", "eightbit",
                     *samples, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr.startswith(shown) and result.stderr.count("\n") <= 1, result.stderr


def test_quiet_keeps_errors(tmp_path):
    result = run_cli("apply", str(tmp_path / "missing.pb"), "-o", str(tmp_path / "out.pb"), "--rules", "cleanup", "-q")
    assert result.returncode == 2 and "missing.pb" in result.stderr


def test_report_page_holds_stages_sizes_and_both_pictures(tmp_path, capsys):
    source, out, page = fixture_path("tf1_mul_fold"), tmp_path / "out.pb", tmp_path / "report.html"
    assert main(["apply", str(source), "-o", str(out), "--rules", "batch_norm", "--report", str(page)]) == 0
    text = page.read_text()
    assert "<script" not in text and "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert '<table id="stages">' in text and "fold-mul-into-conv &times;4" in text
    assert f"{len(Graph.load(source)):,} -&gt; {len(Graph.load(out)):,} nodes" in text
    assert '<figure id="before"' in text and '<figure id="after"' in text
    before = text[text.index('<figure id="before"'):text.index('<figure id="after"')]
    after = text[text.index('<figure id="after"'):]
    assert 'class="node removed"' in before and 'class="node added"' not in before
    assert 'class="node added"' in after and 'class="node removed"' not in after


def test_report_refuses_to_write_over_the_input(tmp_path):
    source = tmp_path / "in.pb"
    source.write_bytes(fixture_path("tf1_mul_fold").read_bytes())
    result = run_cli("apply", str(source), "-o", str(tmp_path / "out.pb"), "--rules", "batch_norm",
                     "--report", str(source))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert source.read_bytes() == fixture_path("tf1_mul_fold").read_bytes()
    assert not (tmp_path / "out.pb").exists()


def test_report_and_output_cannot_be_one_file(tmp_path):
    out = tmp_path / "out.pb"
    result = run_cli("apply", str(fixture_path("tf1_mul_fold")), "-o", str(out), "--rules", "batch_norm",
                     "--report", str(out))
    assert result.returncode == 2 and "--report and -o name the same file" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not out.exists()


def test_the_stages_table_shows_every_name_as_text():
    """Stage and rule names are shown, never read as markup, like every name on the page."""
    from types import SimpleNamespace

    from gtt_rules.report import stages_html

    report = SimpleNamespace(fires={"<img src=x>": 2}, seconds={"<img src=x>": 0.001}, nodes_before=3,
                             nodes_after=2, rewrites=2, stop_reason="saturated", added=0, removed=1, replaced=0)
    table = stages_html([("<script>", report)])
    assert "<img" not in table and "<script>" not in table
    assert "&lt;img src=x&gt; &times;2" in table and "&lt;script&gt;" in table


# ---- progress ------------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_after_the_delay(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "DELAY", 0.05)
    monkeypatch.setattr(progress, "quiet", False)
    with progress.step("loading big.pb", total=3) as shown:
        shown.advance()
        time.sleep(0.6)
        shown.describe("folding")
        time.sleep(0.6)
    assert "loading big.pb" in terminal.getvalue() or "folding" in terminal.getvalue()


def test_progress_shows_nothing_for_quick_work_or_when_quiet(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "quiet", False)
    with progress.step("quick"):
        pass
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "quiet", True)
    with progress.step("quiet"):
        time.sleep(0.3)
    assert terminal.getvalue() == ""


def test_progress_shows_nothing_on_a_pipe(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "quiet", False)
    with progress.step("piped"):
        time.sleep(0.3)
    assert pipe.getvalue() == ""


def test_every_command_that_reads_graphs_shows_loading_them(tmp_path, monkeypatch):
    """run, compare, diff, summarize and memmap load through the one progress step, named after the file."""
    labels = []
    step = progress.step

    def recording(label, total=None):
        labels.append(label)
        return step(label, total)

    monkeypatch.setattr(progress, "step", recording)
    graph = str(fixture_path("tf1_conv_bn"))
    for command, graphs in ((["run", graph], 1), (["compare", graph, graph], 2), (["diff", graph, graph], 2),
                            (["summarize", graph], 1), (["memmap", graph, "-o", str(tmp_path / "out.mmpb")], 1)):
        labels.clear()
        assert main(command) == 0
        assert labels.count(f"loading {graph}") == graphs, command
    labels.clear()
    assert main(["run", graph]) == 0
    assert labels == [f"loading {graph}", f"running {graph}"]


# ---- the picture's layout -------------------------------------------------------------------------

def test_the_layout_draws_every_node_and_edge_without_overlaps_even_around_a_loop():
    """TF1 while loops make real cycles (NextIteration -> Merge): the layered layout still places
    every node, draws every edge once, and no two boxes overlap."""
    from gtt_rules.picture import draw

    graph = Graph.load(fixture_path("tf1_while_loop"))
    names = [node.name for node in graph]
    svg, width = draw(graph, names, {})
    edges = sum(len(node.inputs) + len(node.control_inputs) for node in graph)
    assert svg.count("<rect ") == len(names) and svg.count('class="edge"') == edges
    assert svg.count('stroke-dasharray') == sum(len(node.control_inputs) for node in graph)
    boxes = [tuple(float(v) for v in found) for found in re.findall(
        r'<rect x="([\d.-]+)" y="([\d.-]+)" width="([\d.]+)" height="([\d.]+)"', svg)]
    assert all(x >= 0 and y >= 0 and x + w <= width + 0.5 for x, y, w, _ in boxes)
    for i, (x, y, w, h) in enumerate(boxes):
        for (x2, y2, w2, h2) in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, "boxes overlap"
    # Every node's label is on the page, hover title in full.
    assert all(f"<title>{name} (" in svg for name in names)


def test_apply_shows_loading_rewriting_and_calibrating_on_a_terminal(tmp_path, monkeypatch):
    """Every long step of `apply --pipeline eightbit --random N` goes through the one progress
    display: the stages as a bar of stages, calibration as a bar of samples."""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "DELAY", 0.0)
    out = tmp_path / "tiny8.pb"
    assert main(["apply", str(fixture_path("keras_mobilenet_tiny")), "-o", str(out), "--pipeline", "eightbit",
                 "--random", "3"]) == 0
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert "calibrating" in shown and "3/3" in shown
    assert re.search(r"(quantize_nodes|fold_constants|optimize_for_inference)", shown)
    assert "wrote " in shown.splitlines()[-1]
