"""`gtt-rules compare FLOAT EIGHTBIT --per-layer`: layers found without hand-listed names, in
execution order, with SQNR, cosine, max abs error and range checked against TensorFlow's values."""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

import real_models
from conftest import tf_run
from gtt_rules import cli as cli_module
from gtt_rules.engine.graph import Graph

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "mobilenet_tiny.pb"
F32 = np.float32
# quantize_nodes names the QuantizeV2 of a Relu6 it converts after the Relu6 node: widening its
# range a hundredfold leaves that Relu6 (held only as codes) about two of 255 levels.
BROKEN = "mobilenet_tiny_1/block_3_depthwise_relu6_1/Relu6"


def cli(*args) -> int:
    return cli_module.main([str(a) for a in args])


@pytest.fixture(scope="module")
def eightbit(tmp_path_factory) -> pathlib.Path:
    """The example Keras model (built and frozen by TensorFlow) through `--pipeline eightbit`,
    calibrated on four random inputs."""
    path = tmp_path_factory.mktemp("per_layer") / "tiny8.pb"
    assert cli("apply", EXAMPLE, "-o", path, "--pipeline", "eightbit", "--outputs", "Identity",
               "--random", "4") == 0
    return path


def widen_broken_range(eightbit: pathlib.Path, bad: pathlib.Path) -> None:
    """Write to `bad` the eight-bit graph with BROKEN's range a hundredfold wider."""
    graph = Graph.load(eightbit)
    # The layer's eight-bit op took its name; the top of the range its QuantizeV2 reads is a Const.
    assert graph[BROKEN].op == "QuantizedRelu6"
    maximum = graph[graph[graph[BROKEN].inputs[0].node].inputs[2].node]
    assert maximum.op == "Const"
    maximum.set_attr("value", (maximum.get_attr("value") * F32(100)).astype(F32))
    graph.save(bad)


def per_layer_json(capsys, float_path, eightbit_path, *extra) -> dict:
    capsys.readouterr()
    assert cli("compare", float_path, eightbit_path, "--per-layer", "--json", *extra) == 0
    return json.loads(capsys.readouterr().out)


def sqnr(want: np.ndarray, got: np.ndarray) -> float:
    want, got = want.astype(np.float64), got.astype(np.float64)
    return 10 * math.log10(np.sum(want ** 2) / np.sum((want - got) ** 2))


def test_layers_come_in_execution_order_with_finite_numbers(capsys, eightbit):
    report = per_layer_json(capsys, EXAMPLE, eightbit)
    layers = report["layers"]
    names = [row["layer"] for row in layers]
    # Every conv, Relu6, residual Add and the classifier head: no name was listed anywhere.
    float_graph = Graph.load(EXAMPLE)
    for op, count in (("Relu6", 13), ("AddV2", 3 + 19), ("MatMul", 1), ("Softmax", 1)):
        assert sum(float_graph[name].op == op for name in names) == count, op
    assert len(set(names)) == len(names)
    # In execution order in both graphs (the model is a chain of blocks).
    for graph, key in ((Graph.load(eightbit), "eightbit_tensor"), (float_graph, "layer")):
        position = {node.name: i for i, node in enumerate(graph.topological_order())}
        places = [position[row[key].split(":")[0]] for row in layers]
        assert places == sorted(places), key
    for row in layers:
        assert not row["exact"]
        for field in ("sqnr_db", "cosine", "max_abs_error"):
            assert math.isfinite(row[field]), (row["layer"], field)
        assert 15 < row["sqnr_db"] < 80 and 0.99 < row["cosine"] <= 1
    # Every Relu6 held in eight bits (one between float ops stays float: lone_moves_to_float) is
    # held in a quint8 range that starts at 0.
    relu6 = [row for row in layers if row["op"] == "Relu6" and row["range_type"] is not None]
    assert relu6
    for row in relu6:
        assert row["range_type"] == "quint8" and row["range_min"] == 0 and 0 < row["range_max"] <= 6
    assert report["worst"] == min(layers, key=lambda row: row["sqnr_db"])["layer"]
    assert "TF_ENABLE_ONEDNN_OPTS=0" in report["reference"]


def test_numbers_equal_what_tensorflow_computes(capsys, eightbit, tf):
    """TensorFlow runs both graphs; each layer's float value, or its codes dequantized by
    TensorFlow in its range, give the SQNR, cosine and error the report shows."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, size=(1, 96, 96, 3)).astype(F32)
    np.save(eightbit.parent / "x.npy", x)
    report = per_layer_json(capsys, EXAMPLE, eightbit, "--feed", f"input={eightbit.parent / 'x.npy'}")
    graph = Graph.load(eightbit)
    rows = report["layers"]
    codes_rows = [row for row in rows if row["held_as"] == "codes"]
    assert {row["op"] for row in codes_rows} >= {"Relu6", "AddV2"}     # Dequantize cancelled
    want = tf_run(EXAMPLE.read_bytes(), {"input": x}, [row["layer"] + ":0" for row in rows])
    fetches = []
    for row in rows:
        fetches.append(row["eightbit_tensor"] + ":0")
        if row["held_as"] == "codes":
            fetches += [row["eightbit_tensor"] + ":1", row["eightbit_tensor"] + ":2"]
    got = iter(tf_run(eightbit.read_bytes(), {"input": x}, fetches))
    for row, expected in zip(rows, want):
        value = next(got)
        if row["held_as"] == "codes":
            lo, hi = next(got), next(got)
            assert (row["range_min"], row["range_max"]) == (float(lo), float(hi))
            dtype = tf.as_dtype(graph[row["eightbit_tensor"]].get_attr("out_type", None)
                                or graph[row["eightbit_tensor"]].get_attr("T"))
            value = tf.quantization.dequantize(tf.constant(value, dtype), lo, hi, mode="MIN_FIRST").numpy()
        assert row["sqnr_db"] == pytest.approx(sqnr(expected, value), abs=0.01), row["layer"]
        error = float(np.max(np.abs(expected - value)))
        assert row["max_abs_error"] == pytest.approx(error, rel=1e-3, abs=1e-6)
        cosine = float(np.sum(expected.astype(np.float64) * value)) / \
            float(np.linalg.norm(expected.astype(np.float64)) * np.linalg.norm(value.astype(np.float64)))
        assert row["cosine"] == pytest.approx(cosine, abs=1e-6)


def test_a_layer_made_bad_shows_the_worst_sqnr(capsys, eightbit, tmp_path):
    bad = tmp_path / "bad.pb"
    widen_broken_range(eightbit, bad)
    good = {row["layer"]: row for row in per_layer_json(capsys, EXAMPLE, eightbit)["layers"]}
    report = per_layer_json(capsys, EXAMPLE, bad)
    assert report["worst"] == BROKEN
    rows = {row["layer"]: row for row in report["layers"]}
    assert rows[BROKEN]["held_as"] == "codes"
    assert rows[BROKEN]["sqnr_db"] < good[BROKEN]["sqnr_db"] - 20
    assert rows[BROKEN]["range_max"] == pytest.approx(good[BROKEN]["range_max"] * 100, rel=1e-5)
    # The text table marks it too.
    capsys.readouterr()
    assert cli("compare", EXAMPLE, bad, "--per-layer") == 0
    out = capsys.readouterr().out
    assert f"lowest SQNR: {BROKEN}" in " ".join(out.split())


def test_a_graph_against_itself_is_exact_everywhere(capsys):
    report = per_layer_json(capsys, EXAMPLE, EXAMPLE)
    assert report["layers"] and all(row["exact"] and row["sqnr_db"] is None and row["max_abs_error"] == 0
                                    for row in report["layers"])
    assert report["worst"] is None


def test_html_goes_through_the_writer_and_bad_usage_writes_nothing(capsys, eightbit, tmp_path):
    page = tmp_path / "report.html"
    assert cli("compare", EXAMPLE, eightbit, "--html", page) == 2
    assert "add --per-layer" in capsys.readouterr().err and not page.exists()
    assert cli("compare", EXAMPLE, eightbit, "--per-layer", "--html", tmp_path / "no" / "r.html") == 2
    assert "does not exist" in capsys.readouterr().err
    before = eightbit.read_bytes()
    assert cli("compare", EXAMPLE, eightbit, "--per-layer", "--html", eightbit) == 2
    assert eightbit.read_bytes() == before
    capsys.readouterr()
    assert cli("compare", EXAMPLE, eightbit, "--per-layer", "--html", page) == 0
    assert f"wrote the report page to {page}" in " ".join(capsys.readouterr().out.split())
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert list(tmp_path.iterdir()) == [page]      # no temp file left beside it


def test_unrelated_graphs_share_no_layer(capsys, tmp_path):
    from conftest import fixture_path
    other = fixture_path("tf1_mul_fold")
    assert cli("compare", EXAMPLE, other, "--per-layer", "--outputs", "Identity") == 2
    err = capsys.readouterr().err
    assert "share no layer" in err and len(err.strip().splitlines()) == 1


def test_real_trained_model_digits(capsys, tmp_path, tf):
    """The digits CNN trained at test time on scikit-learn's digits, made eight-bit with calibration
    on real digits and compared on a real held-out digit."""
    spec = real_models.SPECS["digits_cnn"]
    path = real_models.write("digits_cnn", tmp_path)
    samples = real_models.samples("digits_cnn")
    np.savez(tmp_path / "calibration.npz", **{spec.input: samples.calibration[:16]})
    np.save(tmp_path / "x.npy", samples.inputs[:4])
    eight = tmp_path / "digits8.pb"
    outputs = ",".join(name.split(":")[0] for name in spec.outputs)
    assert cli("apply", path, "-o", eight, "--pipeline", "eightbit", "--outputs", outputs,
               "--samples", tmp_path / "calibration.npz") == 0
    report = per_layer_json(capsys, path, eight, "--feed", f"{spec.input}={tmp_path / 'x.npy'}")
    rows = report["layers"]
    converted = [node.name for node in Graph.load(eight) if node.op == "Dequantize"
                 and node.name in Graph.load(path)]
    assert converted and set(converted) <= {row["layer"] for row in rows}
    assert all(math.isfinite(row["sqnr_db"]) and row["sqnr_db"] > 10 for row in rows)
    assert rows[-1]["layer"] == spec.outputs[0].split(":")[0] or rows[-1]["op"] in ("Softmax", "BiasAdd")


def test_html_to_stdout_sends_the_report_to_stderr(capsys, eightbit):
    assert cli("compare", EXAMPLE, eightbit, "--per-layer", "--json", "--html", "-") == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("<!DOCTYPE html>") and captured.out.rstrip().endswith("</html>")
    assert json.loads(captured.err)["html"] == "-"
