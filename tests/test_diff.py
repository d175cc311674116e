"""`gtt-rules diff A B`: nodes added, removed and changed, the op delta, parameters and bytes.

Graph A is built by TensorFlow; B is A's GraphDef with known edits made through TensorFlow's own
protobuf classes, so what the diff must find is known by construction.
"""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from test_cli import run_cli

from gtt_rules.cli import main

LONG = "a_scope_name_long_enough_that_a_table_would_cut_it_on_any_terminal/and_a_second_one_as_long_as_that/weights"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(A, B, A's GraphDef, B's GraphDef): B has one node added, one removed, an op changed, an
    input changed, a weight's values changed, and a weight re-encoded with the same values."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("diff")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
        w = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3), name=LONG)
        b = tf.constant(np.ones(3, np.float32), name="bias")
        y = tf.nn.bias_add(tf.matmul(x, w, name="matmul"), b, name="biased")
        z = tf.identity(tf.nn.relu(y, name="relu"), name="out")
        tf.identity(z, name="spare")
    a_def = graph.as_graph_def()
    b_def = tf.compat.v1.GraphDef()
    b_def.CopyFrom(a_def)
    nodes = {n.name: n for n in b_def.node}
    nodes["relu"].op = "Relu6"                                       # op changed
    nodes["out"].input[0] = "biased"                                 # input changed
    weights = tf.make_ndarray(nodes[LONG].attr["value"].tensor).copy()
    weights[1, 2] = -1.0
    nodes[LONG].attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights))          # values changed
    bias = nodes["bias"].attr["value"].tensor
    bias.ClearField("tensor_content")
    bias.float_val[:] = [1.0]                                        # same values, another encoding
    b_def.node.remove(nodes["spare"])                                # removed
    added = b_def.node.add()                                         # added
    added.CopyFrom(tf.compat.v1.GraphDef.FromString(_sigmoid_def(tf)).node[1])
    a, b = folder / "a.pb", folder / "b.pb"
    a.write_bytes(a_def.SerializeToString())
    b.write_bytes(b_def.SerializeToString())
    return a, b, a_def, b_def


def _sigmoid_def(tf) -> bytes:
    graph = tf.Graph()
    with graph.as_default():
        tf.sigmoid(tf.compat.v1.placeholder(tf.float32, [1, 3], name="biased"), name="extra")
    return graph.as_graph_def().SerializeToString()


def test_diff_finds_exactly_the_edits(pair, capsys):
    import tensorflow as tf

    a, b, a_def, b_def = pair
    assert main(["diff", str(a), str(b), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in diff["added"]] == ["extra"] and diff["added"][0]["op"] == "Sigmoid"
    assert diff["added"][0]["inputs"] == ["biased"]
    assert [n["name"] for n in diff["removed"]] == ["spare"]
    changed = {n["name"]: n["changes"] for n in diff["changed"]}
    assert set(changed) == {"relu", "out", LONG}            # not "bias": the same values
    assert changed["relu"] == {"op": ["Relu", "Relu6"]}
    assert changed["out"] == {"inputs": [["relu"], ["biased"]]}
    (old, new), = changed[LONG]["attrs"].values()
    assert list(changed[LONG]["attrs"]) == ["value"]
    assert old.startswith("float [4, 3] #") and new.startswith("float [4, 3] #") and old != new
    # Op histogram and totals, counted from the GraphDefs here.
    ops_a = collections.Counter(n.op for n in a_def.node)
    ops_b = collections.Counter(n.op for n in b_def.node)
    expected = {op: ops_b[op] - ops_a[op] for op in ops_a | ops_b if ops_b[op] != ops_a[op]}
    assert {op: row["delta"] for op, row in diff["ops"].items()} == expected
    for side, graph_def in (("before", a_def), ("after", b_def)):
        arrays = [tf.make_ndarray(n.attr["value"].tensor) for n in graph_def.node if n.op == "Const"]
        assert diff[side]["nodes"] == len(graph_def.node)
        assert diff[side]["parameters"] == sum(v.size for v in arrays)
        assert diff[side]["parameter_bytes"] == sum(v.nbytes for v in arrays)
    assert diff["file_bytes"] == {"before": a.stat().st_size, "after": b.stat().st_size}


def test_a_graph_against_itself_has_no_differences(pair, capsys, tmp_path):
    a, *_ = pair
    assert main(["diff", str(a), str(a), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["added"] == diff["removed"] == diff["changed"] == [] and diff["ops"] == {}
    page = tmp_path / "same.html"
    assert main(["diff", str(a), str(a), "--html", str(page)]) == 0
    text = page.read_text()
    assert "<h2>Ops: no count changed</h2>" in text and '<table id="ops"' not in text


def test_piped_output_is_plain_text_in_full(pair):
    a, b, a_def, b_def = pair
    result = run_cli("diff", str(a), str(b))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b" not in out and "…" not in out
    lines = out.splitlines()
    assert lines[0] == f"{a} -> {b}: {len(a_def.node)} -> {len(b_def.node)} nodes: 1 added, 1 removed, 3 changed"
    # Each row whole on one line: name, op, what changed, as the tables of every command print piped.
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "│" in line]
    row = next(cells for cells in cells if cells[0] == LONG)
    assert row[1] == "Const" and row[2].startswith("value float [4, 3] #")
    assert ["relu", "Relu6", "op Relu -> Relu6"] in cells
    assert ["Relu6", "0", "1", "+1"] in cells and ["Identity", "2", "1", "-1"] in cells


def test_html_page_is_written_and_holds_the_picture(pair, tmp_path):
    a, b, a_def, b_def = pair
    page = tmp_path / "diff.html"
    result = run_cli("diff", str(a), str(b), "--html", str(page))
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    assert text.count("<svg class=\"graph\"") == 2 and 'class="node changed"' in text
    assert f"{len(a_def.node)} -&gt; {len(b_def.node)} nodes: 1 added, 1 removed, 3 changed" in text


def test_bad_inputs_are_one_line_errors(pair, tmp_path):
    a, b, *_ = pair
    result = run_cli("diff", str(a), str(tmp_path / "missing.pb"))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "missing.pb" in result.stderr
    result = run_cli("diff", str(a), str(b), "--html", str(a))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert a.read_bytes() == pair[2].SerializeToString()
