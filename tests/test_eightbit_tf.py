"""quantize_nodes, the cancellation rules, calibration and the eightbit pipeline, on graphs that
TensorFlow built, with TensorFlow running every result.

What must hold for an eight-bit graph:
- TensorFlow imports and runs it, and its outputs stay close to the float graph's;
- every float op of the converted kinds is gone, and no Dequantize feeds a QuantizeV2;
- each eight-bit node, run by our kernel on the very inputs TensorFlow gave it, yields TensorFlow's
  outputs bit for bit (so the evaluator and TensorFlow differ only in the float islands).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules.cli import main
from gtt_rules import calibration
from gtt_rules.engine.evaluator import evaluate, run_kernel
from gtt_rules.engine.graph import Graph
from gtt_rules import load_rules

CONVERTED = {"Conv2D", "MatMul", "BiasAdd", "Relu", "Relu6", "MaxPool", "AvgPool", "ConcatV2", "Concat",
             "ResizeBilinear"}
MUST_GO = {"Conv2D", "MatMul", "Relu", "Relu6", "MaxPool", "AvgPool"}  # issue #6's list
# ... but one that only moves values, read from a float op and read by float ops, stays float
# (lone_moves_to_float): its eight-bit kernel would only round it.
MOVES = {"Relu", "Relu6", "MaxPool"}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def transform(graph: Graph, spec: str, inputs: list[str], outputs: list[str]) -> Graph:
    for stage in load_rules([spec]):
        stage.run(graph, inputs=inputs, outputs=outputs)
    return graph


def dequantize_feeding_quantize(graph: Graph) -> list[str]:
    return [n.name for n in graph if n.op == "QuantizeV2" and graph[n.inputs[0].node].op == "Dequantize"]


def assert_eight_bit_nodes_match_tensorflow(graph: Graph, feeds: dict[str, np.ndarray]) -> int:
    """Run each eight-bit node's kernel on the inputs TensorFlow computed; compare with TF's outputs."""
    nodes = [n for n in graph if n.op.startswith("Quantize") or n.op in ("Requantize", "RequantizationRange",
                                                                          "Dequantize")]
    fetches = sorted({str(r) if r.port else r.node for n in nodes for r in n.inputs} |
                     {f"{n.name}:{p}" for n in nodes for p in range(graph.num_outputs(n))})
    values = dict(zip(fetches, tf_run(graph.to_bytes(), feeds, fetches)))
    for node in nodes:
        inputs = [values[str(r) if r.port else r.node] for r in node.inputs]
        ours = run_kernel(node, inputs)
        for port, value in enumerate(ours):
            theirs = values[f"{node.name}:{port}"]
            assert np.asarray(value).tobytes() == np.asarray(theirs).astype(np.asarray(value).dtype).tobytes(), \
                f"{node.name}:{port} ({node.op}) differs from TensorFlow"
    return len(nodes)


# ---- one op family at a time, on TF1 graphs ------------------------------------------------------

def _tf1_graph(build) -> tuple[bytes, dict[str, np.ndarray]]:
    import tensorflow as tf

    rng = np.random.default_rng(7)
    with tf.Graph().as_default() as g:
        feeds = build(tf, rng)
    return g.as_graph_def().SerializeToString(), feeds


def _placeholder(tf, rng, feeds, shape, name="x"):
    feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return tf.compat.v1.placeholder(tf.float32, shape, name=name)


def _weights(tf, rng, shape):
    return tf.constant((rng.standard_normal(shape) * 0.3).astype(np.float32))


def conv_bias_relu(tf, rng):
    feeds = {}
    x = _placeholder(tf, rng, feeds, [2, 9, 9, 3])
    y = tf.nn.conv2d(x, _weights(tf, rng, [3, 3, 3, 8]), strides=2, padding="SAME")
    y = tf.nn.relu(tf.nn.bias_add(y, _weights(tf, rng, [8])))
    y = tf.nn.max_pool2d(y, 2, 1, "VALID")
    tf.nn.avg_pool2d(y, 2, 2, "SAME", name="out")
    return feeds


def matmul_relu6(tf, rng):
    feeds = {}
    x = _placeholder(tf, rng, feeds, [4, 16])
    y = tf.nn.relu6(tf.matmul(x, _weights(tf, rng, [16, 8])) * 4.0)
    tf.matmul(y, _weights(tf, rng, [5, 8]), transpose_b=True, name="out")
    return feeds


def add_mul_broadcasts(tf, rng):
    feeds = {}
    x = _placeholder(tf, rng, feeds, [2, 4, 4, 6])
    y = _placeholder(tf, rng, feeds, [2, 4, 4, 6], name="y")
    s = tf.add(x, y)                              # equal shapes
    s = tf.multiply(s, _weights(tf, rng, [6]))    # a vector along the last dimension
    tf.add(s, tf.constant(0.5), name="out")       # a scalar
    return feeds


def concat_reshape_resize(tf, rng):
    feeds = {}
    x = _placeholder(tf, rng, feeds, [1, 4, 4, 3])
    y = _placeholder(tf, rng, feeds, [1, 4, 4, 5], name="y")
    c = tf.concat([tf.nn.relu(x), y], axis=3)
    r = tf.compat.v1.image.resize_bilinear(c, [7, 7], align_corners=True)
    tf.reshape(r, [1, -1], name="out")
    return feeds


FAMILIES = {
    "conv_bias_relu": (conv_bias_relu, {"QuantizedConv2D", "QuantizedBiasAdd", "QuantizedRelu",
                                        "QuantizedMaxPool", "QuantizedAvgPool"}),
    "matmul_relu6": (matmul_relu6, {"QuantizedMatMul", "QuantizedRelu6", "QuantizedMul"}),
    "add_mul_broadcasts": (add_mul_broadcasts, {"QuantizedAdd", "QuantizedMul"}),
    "concat_reshape_resize": (concat_reshape_resize, {"QuantizedConcat", "QuantizedResizeBilinear",
                                                      "QuantizedReshape", "QuantizedRelu"}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_quantize_nodes_converts_each_op_family(family):
    build, expected_ops = FAMILIES[family]
    data, feeds = _tf1_graph(build)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    ops = {n.op for n in graph}
    assert expected_ops <= ops, expected_ops - ops
    assert not ops & CONVERTED - {"ConcatV2"} and not {"Add", "AddV2", "Mul"} & ops
    assert not dequantize_feeding_quantize(graph)
    assert graph["out"].op == "Dequantize"                        # the output keeps its name
    (float_out,) = tf_run(data, feeds, ["out"])
    (eight_out,) = tf_run(graph.to_bytes(), feeds, ["out"])
    assert eight_out.shape == float_out.shape
    assert cosine(eight_out, float_out) >= 0.99
    # No float islands: our evaluator gives TensorFlow's eight-bit result exactly.
    (ours,) = evaluate(graph, feeds, ["out"])
    np.testing.assert_array_equal(ours, eight_out)
    assert assert_eight_bit_nodes_match_tensorflow(graph, feeds) > 5


def test_ignore_op_keeps_that_op_float():
    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), 'quantize_nodes(ignore_op=["Relu", "MaxPool"])', list(feeds), ["out"])
    ops = {n.op for n in graph}
    assert {"Relu", "MaxPool", "QuantizedConv2D", "QuantizedAvgPool"} <= ops
    assert not {"QuantizedRelu", "QuantizedMaxPool"} & ops
    (eight_out,) = tf_run(graph.to_bytes(), feeds, ["out"])
    assert cosine(eight_out, tf_run(data, feeds, ["out"])[0]) >= 0.99


def test_fallback_range_replaces_every_measured_range():
    data, feeds = _tf1_graph(matmul_relu6)
    graph = transform(Graph.from_bytes(data), "quantize_nodes(fallback_min=-8.0, fallback_max=8.0)",
                      list(feeds), ["out"])
    assert not [n for n in graph if n.op == "RequantizationRange"]
    requantizes = [n for n in graph if n.op == "Requantize"]
    assert requantizes
    for node in requantizes:
        assert [float(graph[r.node].get_attr("value")) for r in node.inputs[3:]] == [-8.0, 8.0]
    (eight_out,) = tf_run(graph.to_bytes(), feeds, ["out"])
    assert cosine(eight_out, tf_run(data, feeds, ["out"])[0]) >= 0.99


def test_placeholders_become_eight_bit_inputs_with_the_given_range():
    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), "quantize_nodes(input_min=-4.0, input_max=4.0)", ["x"], ["out"])
    assert graph["x"].op == "Placeholder" and graph["x"].get_attr("dtype") == 12  # quint8, same name
    conv = next(n for n in graph if n.op == "QuantizedConv2D")
    assert conv.inputs[0].node == "x"                                           # read directly
    codes = np.clip(np.round((feeds["x"] + 4.0) * 255.0 / 8.0), 0, 255).astype(np.uint8)
    import tensorflow as tf
    gd = tf.compat.v1.GraphDef.FromString(graph.to_bytes())
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as session:
            eight_out = session.run("out:0", {"x:0": codes})
    float_in = {"x": (codes.astype(np.float32) * 8.0 / 255.0 - 4.0).astype(np.float32)}
    assert cosine(eight_out, tf_run(data, float_in, ["out"])[0]) >= 0.99
    np.testing.assert_array_equal(evaluate(graph, {"x": codes}, ["out"])[0], eight_out)


def test_gtt_style_quantize_nodes_output_cancels_too():
    """A graph converted twice (GTT's own layout on the second pass) ends with no float detours."""
    data, feeds = _tf1_graph(conv_bias_relu)
    once = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    twice = transform(Graph.from_bytes(once.to_bytes()), "quantize_nodes", list(feeds), ["out"])
    assert twice.to_bytes() == once.to_bytes()


# ---- the eightbit pipeline on frozen Keras models ------------------------------------------------

@pytest.fixture(scope="module", params=["keras_mobilenet_tiny", "keras_bn_frozen"])
def eightbit_model(request):
    name = request.param
    spec = fixture_spec(name)
    inputs = [i["name"] for i in spec["inputs"]]
    outputs = [o.split(":")[0] for o in spec["outputs"]]
    graph = transform(Graph.load(fixture_path(name)), "eightbit", inputs, outputs)
    return name, spec, graph, outputs


def float_compute_left(graph) -> list[str]:
    """The float nodes of MUST_GO's ops that should have become eight-bit (not those of MOVES
    between float ops)."""
    return [n.name for n in graph if n.op in MUST_GO and not (
        n.op in MOVES and graph[n.inputs[0].node].op != "Dequantize"
        and not any(c.op == "QuantizeV2" for c in graph.consumers(n.name)))]


def test_a_concatenation_of_eight_bit_results_read_as_floats_is_left_eight_bit(tf):
    """lone_moves_to_float takes a QuantizedConcat back to float only where QuantizeV2s made each
    of its values from floats; one of max pools' codes (musicnn's branches, once the layout rules
    join their squeezes after the concatenation) stays as it is, and is no rewrite error."""
    def build(tf, rng):
        feeds = {}
        x = _placeholder(tf, rng, feeds, [1, 6, 6, 2])
        y = tf.nn.relu(tf.nn.conv2d(x, _weights(tf, rng, [3, 3, 2, 4]), 1, "SAME"))
        pools = [tf.nn.max_pool2d(y, 2, 2, "VALID"), tf.nn.max_pool2d(y, [1, 2], 2, "VALID")]
        tf.tanh(tf.concat(pools, axis=3), name="out")
        return feeds

    graph_bytes, feeds = _tf1_graph(build)
    graph = transform(Graph.from_bytes(graph_bytes), "eightbit", ["x"], ["out"])
    concat = next(n for n in graph if n.op == "QuantizedConcat")
    assert {graph[r.node].op for r in concat.inputs[1:3]} == {"QuantizedMaxPool"}
    (expected,) = tf_run(graph_bytes, feeds, ["out"])
    (actual,) = tf_run(graph.to_bytes(), feeds, ["out"])
    assert cosine(actual, expected) > 0.99


def test_eightbit_pipeline_leaves_no_float_compute_op_and_no_detour(eightbit_model):
    name, spec, graph, _ = eightbit_model
    ops = {n.op for n in graph}
    assert not float_compute_left(graph), float_compute_left(graph)
    assert not dequantize_feeding_quantize(graph)
    assert "QuantizedConv2D" in ops


def test_eightbit_pipeline_runs_in_tensorflow_close_to_float(eightbit_model):
    name, spec, graph, _ = eightbit_model
    for seed in (0, 1):
        feeds = random_feeds(spec, seed=seed)
        (expected,) = tf_run(fixture_path(name).read_bytes(), feeds, spec["outputs"])
        (actual,) = tf_run(graph.to_bytes(), feeds, spec["outputs"])
        assert actual.shape == expected.shape
        assert cosine(actual, expected) >= 0.98, cosine(actual, expected)


def test_eightbit_pipeline_every_eight_bit_node_is_bit_exact(eightbit_model):
    name, spec, graph, _ = eightbit_model
    assert assert_eight_bit_nodes_match_tensorflow(graph, random_feeds(spec, seed=3)) > 10


def test_eightbit_pipeline_evaluator_agrees_with_tensorflow(eightbit_model):
    name, spec, graph, outputs = eightbit_model
    feeds = random_feeds(spec, seed=4)
    (theirs,) = tf_run(graph.to_bytes(), feeds, spec["outputs"])
    (ours,) = evaluate(graph, feeds, spec["outputs"])
    assert cosine(ours, theirs) >= 0.9999


# ---- calibration ---------------------------------------------------------------------------------

def test_calibrate_freezes_every_range_and_stays_close(eightbit_model, tmp_path):
    name, spec, graph, outputs = eightbit_model
    source, frozen, log = tmp_path / "eight.pb", tmp_path / "calibrated.pb", tmp_path / "ranges.log"
    graph.save(source)
    assert main(["calibrate", str(source), "-o", str(frozen), "--random", "4", "--outputs", ",".join(outputs),
                 "--log", str(log)]) == 0
    calibrated = Graph.load(frozen)
    assert not [n for n in calibrated if n.op in ("RequantizationRange", "Min", "Max")]
    if not calibration.runtime_ranges(graph):
        # Every 32-bit result here goes straight to float: nothing to freeze, nothing changes.
        assert name != "keras_mobilenet_tiny" and frozen.read_bytes() == source.read_bytes()
        return
    feeds = random_feeds(spec, seed=9)
    (expected,) = tf_run(fixture_path(name).read_bytes(), feeds, spec["outputs"])
    (actual,) = tf_run(frozen.read_bytes(), feeds, spec["outputs"])
    assert cosine(actual, expected) >= 0.98, cosine(actual, expected)
    # The GTT spelling, fed the log the command wrote, freezes the same graph (calibrate then
    # computes the frozen ranges' widening around zero, as fold_constants does).
    again = tmp_path / "again.pb"
    assert main(["apply", str(source), "-o", str(again), "--outputs", ",".join(outputs), "--transforms",
                 f"freeze_requantization_ranges(min_max_log_file={log}, min_percentile=0, max_percentile=0) "
                 f"fold_constants(exclude_op=Dequantize)"]) == 0
    assert again.read_bytes() == frozen.read_bytes()


def test_recorded_ranges_are_what_tensorflow_computes():
    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    records = calibration.record_ranges(graph, [feeds])
    names = sorted(records)
    assert {graph[n].op for n in names} == {"RequantizationRange", "Min", "Max"}
    ports = {n: (0, 1) if graph[n].op == "RequantizationRange" else (0, 0) for n in names}
    theirs = tf_run(graph.to_bytes(), feeds, [f"{n}:{p}" for n in names for p in ports[n]])
    assert [r for n in names for r in records[n][0]] == [float(v) for v in theirs]


def _calibration_samples(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [{"x": (rng.standard_normal((2, 9, 9, 3)) * (1 + i % 3)).astype(np.float32)} for i in range(count)]


@pytest.mark.parametrize("percentile", [None, 99.0])
def test_records_over_forked_workers_are_the_records_of_one_process(percentile):
    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    samples = _calibration_samples(9)
    alone = calibration.record_ranges(graph, samples, percentile=percentile, workers=1)
    shared = calibration.record_ranges(graph, iter(samples), percentile=percentile, workers=3)
    assert shared == alone
    assert all(len(observed) == 9 for observed in alone.values())


def test_the_samples_after_the_first_are_measured_in_other_processes(monkeypatch):
    import os

    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    monkeypatch.setattr(calibration, "_measured", lambda node, values, percentile: (os.getpid(), 0))
    records = calibration.record_ranges(graph, _calibration_samples(6), workers=2)
    pids = [low for low, _ in next(iter(records.values()))]
    assert pids[0] == os.getpid() and os.getpid() not in pids[1:] and len(set(pids[1:])) <= 2


def test_workers_share_the_memory_budget_and_fall_back_to_one_process():
    from gtt_rules.engine.limits import memory_budget

    with memory_budget(1000):
        assert calibration._worker_count(4, 100) == 4       # each share (250) holds twice 100
        assert calibration._worker_count(4, 200) == 2
        assert calibration._worker_count(4, 400) == 1
        assert calibration._worker_count(None, 1) == calibration.chunked.THREADS


def test_the_cores_counted_are_those_this_process_may_use(monkeypatch, tmp_path):
    """A container's CPU quota or a taskset caps the workers, not the host's core count."""
    chunked = calibration.chunked
    monkeypatch.setattr(chunked.os, "sched_getaffinity", lambda pid: {0, 1, 2, 5, 7, 9}, raising=False)
    assert chunked.usable_cpus(str(tmp_path / "absent")) == 6
    quota = tmp_path / "cpu.max"
    for text, count in (("max 100000", 6), ("150000 100000", 2), ("50000 100000", 1), ("garbage", 6)):
        quota.write_text(text + "\n")
        assert chunked.usable_cpus(str(quota)) == count, text


def test_jobs_sets_the_measuring_processes_and_the_ranges_stay(monkeypatch, tmp_path, capsys):
    import concurrent.futures

    example = fixture_path("keras_mobilenet_tiny")
    common = ["apply", str(example), "--pipeline", "eightbit", "--random", "3"]
    assert main(common + ["-o", str(tmp_path / "two.pb"), "--jobs", "2"]) == 0

    def no_fork(*args, **kwargs):
        raise AssertionError("--jobs 1 forked")
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_fork)
    assert main(common + ["-o", str(tmp_path / "one.pb"), "--jobs", "1"]) == 0
    assert (tmp_path / "one.pb").read_bytes() == (tmp_path / "two.pb").read_bytes()
    capsys.readouterr()
    assert main(common + ["-o", str(tmp_path / "none.pb"), "--jobs", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--jobs needs at least 1 process" in error and "\n" not in error
    assert not (tmp_path / "none.pb").exists()


def test_a_worker_error_and_a_sample_that_cannot_be_read_are_raised_in_sample_order():
    from gtt_rules.errors import EvaluationError, UsageError

    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    samples = _calibration_samples(8)
    samples[3] = {"x": np.zeros((2, 9, 9, 4), np.float32)}      # the wrong depth: a kernel fails

    def unreadable_after(count):
        yield from samples[:count]
        raise UsageError("cannot read sample", path="sample.npz")

    errors = []
    for workers in (1, 2):
        with pytest.raises(EvaluationError) as failed:
            calibration.record_ranges(graph, unreadable_after(6), workers=workers)
        errors.append(str(failed.value))
        with pytest.raises(UsageError, match="cannot read sample"):
            calibration.record_ranges(graph, unreadable_after(3), workers=workers)
    assert errors[0] == errors[1]


def test_requantize_rounds_its_output_offset_like_tensorflow(tf):
    """Found by the per-node check on MobileNet: with this range the fixed-point output offset is
    -8221124.7; truncating it (as TensorFlow's older source did) gives code 127 for input 483,
    TensorFlow 2.21 gives 128."""
    from gtt_rules.engine.kernels import quantization as Q

    codes = np.arange(-3000, 3000, dtype=np.int32)
    ranges = [np.float32(v) for v in (-60282.73828125, 60282.73828125, -0.827416718006134, 0.8545336127281189)]
    theirs = tf.raw_ops.Requantize(input=tf.bitcast(tf.constant(codes), tf.qint32), input_min=ranges[0],
                                   input_max=ranges[1], requested_output_min=ranges[2],
                                   requested_output_max=ranges[3], out_type=tf.quint8)[0]
    ours = Q.requantize_eigen(codes, *ranges, Q.DT_QINT32, Q.DT_QUINT8)
    np.testing.assert_array_equal(ours, np.frombuffer(theirs.numpy().tobytes(), np.uint8))
    assert ours[3000 + 483] == 128


def conv_fake_quant(tf, rng):
    feeds = {}
    x = _placeholder(tf, rng, feeds, [1, 8, 8, 3])
    y = tf.nn.bias_add(tf.nn.conv2d(x, _weights(tf, rng, [3, 3, 3, 4]), 1, "SAME"), _weights(tf, rng, [4]))
    y = tf.quantization.fake_quant_with_min_max_vars(y, tf.constant(-2.5), tf.constant(3.0))
    tf.nn.relu(y, name="out")
    return feeds


def test_fake_quant_range_is_used_and_its_requantize_merges():
    data, feeds = _tf1_graph(conv_fake_quant)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    ops = [n.op for n in graph]
    assert "FakeQuantWithMinMaxVars" not in ops and not dequantize_feeding_quantize(graph)
    bias_add = next(n for n in graph if n.op == "QuantizedBiasAdd")
    (merged,) = [n for n in graph.consumers(bias_add.name) if n.op == "Requantize"]
    assert [float(graph[r.node].get_attr("value")) for r in merged.inputs[3:]] == [-2.5, 3.0]
    (eight_out,) = tf_run(graph.to_bytes(), feeds, ["out"])
    (float_out,) = tf_run(data, feeds, ["out"])
    assert cosine(eight_out, float_out) >= 0.99
    np.testing.assert_array_equal(evaluate(graph, feeds, ["out"])[0], eight_out)


def test_results_read_by_a_relu_are_narrowed_over_what_the_relu_keeps():
    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    relu = next(n for n in graph if n.op == "QuantizedRelu")
    requantize = graph[relu.inputs[0].node]
    assert requantize.op == "Requantize"
    assert float(graph[requantize.inputs[3].node].get_attr("value")) == 0.0
    # Narrower than the bias add's full range, so finer codes: closer to float than GTT's layout.
    (ours,) = tf_run(graph.to_bytes(), feeds, ["out"])
    (float_out,) = tf_run(data, feeds, ["out"])
    assert np.max(np.abs(ours - float_out)) < 0.02 * np.max(np.abs(float_out))


# ---- bad input: one line naming the file and the problem, exit 2, nothing written ----------------

@pytest.fixture(scope="module")
def eight_bit_file(tmp_path_factory):
    data, feeds = _tf1_graph(conv_bias_relu)
    path = tmp_path_factory.mktemp("eight") / "eight.pb"
    transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"]).save(path)
    return path


def _bad(args, tmp_path, capsys, message):
    out = tmp_path / "out.pb"
    assert main([*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_calibrate_rejects_a_missing_sample_folder(eight_bit_file, tmp_path, capsys):
    _bad(["calibrate", str(eight_bit_file), "--feed-dir", str(tmp_path / "none")], tmp_path, capsys,
         f"{tmp_path / 'none'}: no such folder")


def test_calibrate_rejects_a_sample_without_an_input(eight_bit_file, tmp_path, capsys):
    samples = tmp_path / "samples"
    samples.mkdir()
    np.savez(samples / "a.npz", other=np.zeros(3, np.float32))
    _bad(["calibrate", str(eight_bit_file), "--feed-dir", str(samples)], tmp_path, capsys,
         f"{samples / 'a.npz'}: has no array for input x")


def test_calibrate_rejects_an_unreadable_sample(eight_bit_file, tmp_path, capsys):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "a.npz").write_bytes(b"not a zip")
    _bad(["calibrate", str(eight_bit_file), "--feed-dir", str(samples)], tmp_path, capsys,
         f"{samples / 'a.npz'}: not a readable .npz sample")


def test_calibrate_refuses_to_overwrite_its_input(eight_bit_file, tmp_path, capsys):
    before = eight_bit_file.read_bytes()
    assert main(["calibrate", str(eight_bit_file), "-o", str(eight_bit_file)]) == 2
    assert "refusing to write over the input graph" in capsys.readouterr().err
    assert eight_bit_file.read_bytes() == before


def test_calibrate_samples_from_files_match_the_same_random_inputs(eight_bit_file, tmp_path):
    graph = Graph.load(eight_bit_file)
    samples = tmp_path / "samples"
    samples.mkdir()
    from gtt_rules.engine.evaluator import random_feeds as graph_feeds
    for seed in range(3):
        np.savez(samples / f"{seed}.npz", **graph_feeds(graph, seed))
    from_files, from_random = tmp_path / "files.pb", tmp_path / "random.pb"
    assert main(["calibrate", str(eight_bit_file), "-o", str(from_files), "--feed-dir", str(samples)]) == 0
    assert main(["calibrate", str(eight_bit_file), "-o", str(from_random), "--random", "3"]) == 0
    assert from_files.read_bytes() == from_random.read_bytes()


@pytest.mark.parametrize("log_text, message", [
    (None, "cannot read the min/max log"),
    ("nothing useful here\n", "no min/max records found"),
    ("ghost__print__;__requant_min_max:[-1.0][1.0]\n", "'ghost' has a recorded range but is not in the graph"),
])
def test_freeze_requantization_ranges_bad_logs(eight_bit_file, tmp_path, capsys, log_text, message):
    log = tmp_path / "ranges.log"
    if log_text is not None:
        log.write_text(log_text)
    _bad(["apply", str(eight_bit_file), "--outputs", "out", "--transforms",
          f"freeze_requantization_ranges(min_max_log_file={log})"], tmp_path, capsys, message)


def test_gtt_percentiles_choose_like_gtt():
    observed = [(-float(i), float(i)) for i in range(1, 21)]   # 20 runs
    assert calibration.chosen_range(observed, 0.0, 0.0) == (-20.0, 20.0)
    # 5%: index round(20 * 0.05) = 1 from the bottom of the mins, round(20 * 0.95) = 19 of the maxes.
    assert calibration.chosen_range(observed, 5.0, 5.0) == (-19.0, 20.0)
    assert calibration.chosen_range(observed, 10.0, 10.0) == (-18.0, 19.0)   # indices 2 and 18


def test_a_sample_a_workers_share_cannot_hold_is_measured_by_the_parent():
    """The workers split the budget; a sample that needs more than a share but fits the whole
    budget gives the records of one process, not an over-budget error."""
    from gtt_rules.engine.limits import memory_budget

    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    graph["x"].set_attr("shape", [-1, 9, 9, 3])     # any batch
    rng = np.random.default_rng(3)
    samples = [{"x": rng.standard_normal((batch, 9, 9, 3)).astype(np.float32)} for batch in (1, 1, 60, 1, 1)]
    alone = calibration.record_ranges(graph, samples, workers=1)
    big = calibration.Evaluator(graph, [f"{n}:0" for n in calibration.runtime_ranges(graph)], fed=["x"])
    big.run(samples[2])
    budget = big.peak_bytes * 3 // 2    # holds the batch of 60; half of it holds a batch of 1 only
    with memory_budget(budget // 2), pytest.raises(calibration.MemoryBudgetError):
        calibration.record_ranges(graph, samples[2:3], workers=1)
    with memory_budget(budget):
        assert calibration._worker_count(2, big.peak_bytes // 60) == 2
        assert calibration.record_ranges(graph, iter(samples), workers=2) == alone


def test_a_worker_that_dies_is_a_one_line_error(monkeypatch):
    import os

    from gtt_rules.errors import EvaluationError

    data, feeds = _tf1_graph(conv_bias_relu)
    graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
    parent = os.getpid()
    real = calibration._measured

    def dies_in_a_worker(node, values, percentile):
        if os.getpid() != parent:
            os._exit(9)
        return real(node, values, percentile)
    monkeypatch.setattr(calibration, "_measured", dies_in_a_worker)
    with pytest.raises(EvaluationError, match="a calibration worker process died"):
        calibration.record_ranges(graph, _calibration_samples(6), workers=2)


def test_workers_die_with_their_parent(tmp_path):
    """A calibrating process killed (as `timeout` does) leaves no worker behind."""
    import os
    import pathlib
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "workers"
    script = f"""
import os, sys, numpy as np
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
from test_eightbit_tf import _tf1_graph, conv_bias_relu, transform, Graph, calibration
data, feeds = _tf1_graph(conv_bias_relu)
graph = transform(Graph.from_bytes(data), "quantize_nodes", list(feeds), ["out"])
parent, real = os.getpid(), calibration._measured
def slow(node, values, percentile):
    if os.getpid() != parent:
        with open({str(pids)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        import time; time.sleep(0.2)
    return real(node, values, percentile)
calibration._measured = slow
def forever():
    rng = np.random.default_rng(0)
    while True:
        yield {{"x": rng.standard_normal((2, 9, 9, 3)).astype(np.float32)}}
calibration.record_ranges(graph, forever(), workers=2)
"""
    process = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(set(pids.read_text().split())) >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = {int(p) for p in pids.read_text().split()}
    assert len(workers) >= 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1.0)

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    left = [pid for pid in workers if alive(pid)]
    for pid in left:                # not to leave them running if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left
