"""Eight-bit graphs that always run: a float op becomes eight-bit only when TensorFlow's kernel takes
that exact node (and the report says why the others stayed float); calibrated graphs have static
ranges; weights and nodes can be kept float. TensorFlow (oneDNN off, see conftest) runs every result.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tf_run
from gtt_rules.cli import main
from gtt_rules.engine.evaluator import evaluate
from gtt_rules.engine.graph import Graph


def _build(tf, shape, body, seed=0):
    """A TF1 graph x -> body(x) -> out, and a random feed for x."""
    rng = np.random.default_rng(seed)

    def weights(*dims):
        return tf.constant((rng.standard_normal(dims) * 0.3).astype(np.float32))

    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        tf.identity(body(tf, x, weights), name="out")
    feed_shape = [2 if d is None else d for d in shape]
    return graph.as_graph_def().SerializeToString(), {"x": rng.standard_normal(feed_shape).astype(np.float32)}


def _eightbit(tmp_path, data, *extra):
    source, target = tmp_path / "float.pb", tmp_path / "eight.pb"
    source.write_bytes(data)
    assert main(["apply", str(source), "-o", str(target), "--inputs", "x", "--outputs", "out",
                 "--pipeline", "eightbit", "--json", *extra]) == 0
    return Graph.load(target), target


def _report_notes(capsys) -> list[str]:
    report = json.loads(capsys.readouterr().out)
    return [note for stage in report["stages"] for note in stage["notes"]]


# Nodes whose float op has an eight-bit kernel that refuses them, or computes something else.
REFUSED = {
    "row_stride_only": ([1, 9, 9, 3], lambda tf, x, w: tf.nn.conv2d(x, w(3, 3, 3, 4), [1, 1, 2, 1], "SAME"),
                        "Conv2D", "equal row and column strides"),
    "column_stride_only": ([1, 9, 9, 3], lambda tf, x, w: tf.nn.conv2d(x, w(3, 3, 3, 4), [1, 2, 1, 1], "VALID"),
                           "Conv2D", "equal row and column strides"),
    "dilated": ([1, 9, 9, 3], lambda tf, x, w: tf.nn.conv2d(x, w(3, 3, 3, 4), 1, "SAME", dilations=2),
                "Conv2D", "no dilations"),
    "explicit_padding": ([1, 9, 9, 3],
                         lambda tf, x, w: tf.nn.conv2d(x, w(3, 3, 3, 4), 1, [[0, 0], [1, 2], [0, 1], [0, 0]]),
                         "Conv2D", "SAME or VALID padding only"),
    "valid_windows_off": ([1, 8, 8, 2], lambda tf, x, w: tf.nn.conv2d(x, w(1, 1, 2, 3), 4, "VALID"),
                          "Conv2D", "places its windows off"),
    "add_broadcast_inside": ([2, 3, 4], lambda tf, x, w: x + w(3, 1), "AddV2", "does not broadcast"),
}

# Odd nodes the kernels do take, converted (a pool after a Relu: one between float ops alone
# would go back to float, see lone_moves_to_float).
ACCEPTED = {
    "valid_stride_3": ([1, 11, 11, 3], lambda tf, x, w: tf.nn.conv2d(x, w(3, 3, 3, 4), 3, "VALID"), "QuantizedConv2D"),
    "uneven_pool": ([1, 9, 9, 3], lambda tf, x, w: tf.nn.max_pool(tf.nn.relu(x), [1, 2, 3, 1], [1, 1, 2, 1], "SAME"),
                    "QuantizedMaxPool"),
    "transposed_matmul": ([16, 4], lambda tf, x, w: tf.matmul(x, w(16, 8), transpose_a=True), "QuantizedMatMul"),
    "half_pixel_resize": ([1, 4, 5, 3], lambda tf, x, w: tf.compat.v1.image.resize_bilinear(
        tf.nn.relu(x), [7, 9], half_pixel_centers=True), "QuantizedResizeBilinear"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_node_the_kernel_refuses_stays_float_and_is_reported(tf, tmp_path, capsys, case):
    shape, body, op, reason = REFUSED[case]
    data, feeds = _build(tf, shape, body)
    graph, path = _eightbit(tmp_path, data)
    assert op in {n.op for n in graph}
    notes = _report_notes(capsys)
    assert any(reason in note and "stays float" in note for note in notes), notes
    (expected,) = tf_run(data, feeds, ["out"])
    (theirs,) = tf_run(path.read_bytes(), feeds, ["out"])
    (ours,) = evaluate(graph, feeds, ["out"])
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(theirs, expected, atol=0.05 * np.abs(expected).max())


def test_pooling_across_channels_stays_float(tf, tmp_path, capsys):
    # TensorFlow's float MaxPool pools across channels (its AvgPool does not); our evaluator does
    # neither, so TensorFlow alone runs the result.
    data, feeds = _build(tf, [1, 4, 4, 6], lambda tf, x, w: tf.nn.max_pool(x, [1, 1, 1, 2], [1, 1, 1, 2], "VALID"))
    graph, path = _eightbit(tmp_path, data)
    assert "MaxPool" in {n.op for n in graph} and "QuantizedMaxPool" not in {n.op for n in graph}
    assert any("across channels" in note for note in _report_notes(capsys))
    np.testing.assert_array_equal(tf_run(path.read_bytes(), feeds, ["out"])[0], tf_run(data, feeds, ["out"])[0])


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_an_odd_node_the_kernel_takes_is_converted_and_bit_exact(tf, tmp_path, case):
    shape, body, op = ACCEPTED[case]
    data, feeds = _build(tf, shape, body)
    graph, path = _eightbit(tmp_path, data)
    assert op in {n.op for n in graph}
    (expected,) = tf_run(data, feeds, ["out"])
    (theirs,) = tf_run(path.read_bytes(), feeds, ["out"])
    (ours,) = evaluate(graph, feeds, ["out"])
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(theirs, expected, atol=0.05 * np.abs(expected).max())


@pytest.mark.parametrize("size, window, stride", [(11, 3, 3), (8, 1, 4), (13, 2, 5)])
def test_quantized_conv2d_places_valid_windows_as_tensorflow_does(tf, size, window, stride):
    """TensorFlow 2.21 adds 1 before halving a VALID slack: with 11x11, 3x3, stride 3 the windows
    start at 0 (our kernel started them at 1, shifted down and right)."""
    from gtt_rules.engine.evaluator import run_kernel
    from gtt_rules.engine.graph import Node
    from gtt_rules.engine.proto import graph_def_pb2 as pb

    rng = np.random.default_rng(size)
    x = rng.integers(0, 256, (1, size, size, 2)).astype(np.uint8)
    w = rng.integers(0, 256, (window, window, 2, 3)).astype(np.uint8)
    ranges = [np.float32(v) for v in (-1.0, 2.0, -0.5, 0.5)]
    theirs = tf.raw_ops.QuantizedConv2D(input=tf.bitcast(tf.constant(x), tf.quint8),
                                        filter=tf.bitcast(tf.constant(w), tf.quint8), min_input=ranges[0],
                                        max_input=ranges[1], min_filter=ranges[2], max_filter=ranges[3],
                                        strides=[1, stride, stride, 1], padding="VALID")[0]
    node = Node(pb.NodeDef(name="conv", op="QuantizedConv2D"))
    for name, value in {"Tinput": 12, "Tfilter": 12, "out_type": 13, "strides": [1, stride, stride, 1],
                        "padding": "VALID"}.items():
        node.set_attr(name, value)
    ours = run_kernel(node, [x, w, *ranges])[0]
    np.testing.assert_array_equal(ours, np.frombuffer(theirs.numpy().tobytes(), np.int32).reshape(theirs.shape))


# ---- static ranges: calibration ------------------------------------------------------------------

def small_cnn(tf, x, w):
    """Conv, bias, Relu6, a residual add, pooling and a dense head: every range kind quantize_nodes
    makes (QuantizeV2 over Min/Max, Requantize over RequantizationRange, narrowed for activations).
    The add stays float: with an unknown batch, QuantizedAdd might not broadcast as AddV2 does."""
    y = tf.nn.relu6(tf.nn.bias_add(tf.nn.conv2d(x, w(3, 3, 3, 8), 2, "SAME"), w(8)))
    z = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(y, w(1, 1, 8, 8), 1, "SAME"), w(8)))
    y = tf.nn.max_pool2d(y + z, 2, 2, "VALID")
    y = tf.nn.relu(tf.matmul(tf.reshape(y, [-1, 3 * 3 * 8]), w(3 * 3 * 8, 16)))
    return tf.matmul(y, w(16, 5)) + w(5)


def _cnn_and_samples(tf, tmp_path, count=8):
    data, _ = _build(tf, [None, 12, 12, 3], small_cnn)
    stacked = np.random.default_rng(1).standard_normal((count, 12, 12, 3)).astype(np.float32)
    np.savez(tmp_path / "samples.npz", x=stacked)
    return data, stacked


def _alone_and_in_batch(run, stacked):
    """The first sample's output run alone, and run inside a batch with all the others."""
    return run({"x": stacked[:1]})[0], run({"x": stacked})[0][:1]


def test_calibrated_graph_gives_one_input_the_same_answer_alone_and_in_a_batch(tf, tmp_path, capsys):
    from gtt_rules import calibration

    data, stacked = _cnn_and_samples(tf, tmp_path)
    graph, path = _eightbit(tmp_path, data)
    captured = capsys.readouterr()
    assert "computed at run time" in captured.err
    notes = [n for stage in json.loads(captured.out)["stages"] for n in stage["notes"]]
    assert any("'add': stays float: operand shapes not fully known" in n for n in notes), notes
    dynamic = calibration.runtime_ranges(graph)
    assert {graph[n].op for n in dynamic} == {"Min", "Max", "RequantizationRange"}
    # Uncalibrated, the answer depends on the batch mates (so the check below can fail).
    alone, inside = _alone_and_in_batch(lambda f: tf_run(path.read_bytes(), f, ["out"]), stacked)
    assert not np.array_equal(alone, inside)

    frozen = tmp_path / "calibrated.pb"
    assert main(["calibrate", str(path), "-o", str(frozen), "--samples", str(tmp_path / "samples.npz")]) == 0
    calibrated = Graph.load(frozen)
    assert not calibration.runtime_ranges(calibrated)
    assert not {"Min", "Max", "RequantizationRange"} & {n.op for n in calibrated}
    for run in (lambda f: tf_run(frozen.read_bytes(), f, ["out"]), lambda f: evaluate(calibrated, f, ["out"])):
        alone, inside = _alone_and_in_batch(run, stacked)
        assert alone.tobytes() == inside.tobytes()
    (theirs,) = tf_run(frozen.read_bytes(), {"x": stacked}, ["out"])
    np.testing.assert_array_equal(evaluate(calibrated, {"x": stacked}, ["out"])[0], theirs)
    (expected,) = tf_run(data, {"x": stacked}, ["out"])
    assert (theirs.argmax(1) == expected.argmax(1)).mean() >= 0.75
    np.testing.assert_allclose(theirs, expected, atol=0.05 * np.abs(expected).max())


def test_eightbit_pipeline_with_samples_equals_apply_then_calibrate(tf, tmp_path):
    data, stacked = _cnn_and_samples(tf, tmp_path)
    samples = str(tmp_path / "samples.npz")
    graph, path = _eightbit(tmp_path, data)
    two_steps = tmp_path / "two.pb"
    assert main(["calibrate", str(path), "-o", str(two_steps), "--samples", samples, "--outputs", "out"]) == 0
    one_step = tmp_path / "one.pb"
    assert main(["apply", str(tmp_path / "float.pb"), "-o", str(one_step), "--inputs", "x", "--outputs", "out",
                 "--pipeline", "eightbit", "--samples", samples]) == 0
    assert one_step.read_bytes() == two_steps.read_bytes()


def _frozen_ranges(path) -> dict[str, tuple[float, float]]:
    """The constant range each QuantizeV2 and Requantize of the graph takes, by node name."""
    graph = Graph.load(path)
    ports = {"QuantizeV2": slice(1, 3), "Requantize": slice(3, 5)}
    return {node.name: tuple(float(graph[r.node].get_attr("value")) for r in node.inputs[ports[node.op]])
            for node in graph if node.op in ports}


def test_estimators_choose_ranges_inside_the_minmax_one(tf, tmp_path):
    data, stacked = _cnn_and_samples(tf, tmp_path)
    graph, path = _eightbit(tmp_path, data)
    chosen = {}
    for estimator, extra in [("minmax", []), ("percentile", ["--percentile", "90"]), ("moving-average", [])]:
        out = tmp_path / f"{estimator}.pb"
        assert main(["calibrate", str(path), "-o", str(out), "--samples", str(tmp_path / "samples.npz"),
                     "--estimator", estimator, *extra]) == 0
        chosen[estimator] = _frozen_ranges(out)
        (theirs,) = tf_run(out.read_bytes(), {"x": stacked}, ["out"])
        np.testing.assert_array_equal(evaluate(Graph.load(out), {"x": stacked}, ["out"])[0], theirs)
    assert len(chosen["minmax"]) >= 4
    for other in ("percentile", "moving-average"):
        assert chosen[other].keys() == chosen["minmax"].keys()
        for name, (lo, hi) in chosen[other].items():
            mlo, mhi = chosen["minmax"][name]
            assert mlo <= lo <= 0.0 <= hi <= mhi, (other, name)
        assert chosen[other] != chosen["minmax"]


def test_moving_average_and_minmax_estimates():
    from gtt_rules import calibration

    observed = [(-1.0, 1.0), (-3.0, 2.0), (-2.0, 0.5)]
    assert calibration.estimate(observed, "minmax") == (-3.0, 2.0)
    # Decay 0.9 from the first sample: -1 -> -1.2 -> -1.28, and 1 -> 1.1 -> 1.04.
    low, high = calibration.estimate(observed, "moving-average")
    assert low == pytest.approx(-1.28) and high == pytest.approx(1.04)


@pytest.mark.parametrize("arrays, extra, message", [
    ({"x": np.zeros((0, 12, 12, 3), np.float32)}, [], "at least 1"),
    ({"y": np.zeros((2, 12, 12, 3), np.float32)}, [], "has no array for input x"),
    ({"x": np.zeros((2, 12, 12, 4), np.float32)}, [], "samples.npz"),
    ({"x": np.zeros((2, 12, 12, 3), np.float32)}, ["--percentile", "99"], "--percentile needs --estimator percentile"),
    ({"x": np.zeros((2, 12, 12, 3), np.float32)}, ["--estimator", "percentile", "--percentile", "30"],
     "--percentile must be in (50, 100]"),
])
def test_calibrate_bad_samples_and_options(tf, tmp_path, capsys, arrays, extra, message):
    data, _ = _build(tf, [None, 12, 12, 3], small_cnn)
    graph, path = _eightbit(tmp_path, data)
    capsys.readouterr()
    np.savez(tmp_path / "samples.npz", **arrays)
    out = tmp_path / "out.pb"
    assert main(["calibrate", str(path), "-o", str(out), "--samples", str(tmp_path / "samples.npz"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


# ---- mixed precision: exclude_node, exclude_op, and what eight bits cannot hold -------------------

def _apply(tmp_path, data, transforms, name="out.pb"):
    source, target = tmp_path / "float.pb", tmp_path / name
    source.write_bytes(data)
    assert main(["apply", str(source), "-o", str(target), "--inputs", "x", "--outputs", "out",
                 "--transforms", transforms, "--json"]) == 0
    return Graph.load(target), target


def two_convs_and_a_dense(tf, x, w):
    with tf.compat.v1.variable_scope("conv1"):
        y = tf.nn.relu(tf.nn.conv2d(x, tf.identity(w(5, 5, 8, 64), name="kernel"), 1, "SAME"))
    with tf.compat.v1.variable_scope("conv2"):
        y = tf.nn.relu(tf.nn.conv2d(y, tf.identity(w(3, 3, 64, 64), name="kernel"), 2, "SAME"))
    return tf.matmul(tf.reshape(y, [1, -1]), w(4 * 4 * 64, 16))


def graph_reader(graph, name):
    """The name of the first node reading `name`."""
    return graph.consumers(name)[0].name


def _kind(graph, name):
    """'float' or 'eight-bit': how the weights that `name` reads are stored."""
    return "eight-bit" if graph[name].op == "Dequantize" else "float"


def test_quantize_weights_exclude_node_and_op_keep_those_weights_float(tf, tmp_path):
    data, feeds = _build(tf, [1, 8, 8, 8], two_convs_and_a_dense)
    float_graph = Graph.from_bytes(data)
    weights = sorted(n.name for n in float_graph if n.op == "Const" and n.get_attr("value").size >= 1024)
    conv1, conv2, dense = (next(w for w in weights if w.startswith(p) or graph_reader(float_graph, w).startswith(p))
                           for p in ("conv1/", "conv2/", "MatMul"))
    everything, _ = _apply(tmp_path, data, "quantize_weights", "all.pb")
    assert {_kind(everything, w) for w in (conv1, conv2, dense)} == {"eight-bit"}
    mixed, path = _apply(tmp_path, data, "quantize_weights(exclude_node=conv?/kern*, exclude_op=MatMul)")
    assert [_kind(mixed, w) for w in (conv1, conv2, dense)] == ["float", "float", "float"]
    only_conv1, path = _apply(tmp_path, data, "quantize_weights(exclude_node=conv1/*)", "conv1.pb")
    assert [_kind(only_conv1, w) for w in (conv1, conv2, dense)] == ["float", "eight-bit", "eight-bit"]
    (expected,) = tf_run(data, feeds, ["out"])
    (theirs,) = tf_run(path.read_bytes(), feeds, ["out"])
    (quantized,) = tf_run((tmp_path / "all.pb").read_bytes(), feeds, ["out"])
    assert np.abs(theirs - expected).max() < np.abs(quantized - expected).max()


def test_quantize_nodes_exclude_node_keeps_that_layer_float(tf, tmp_path):
    data, feeds = _build(tf, [1, 8, 8, 8], two_convs_and_a_dense)
    graph, path = _apply(tmp_path, data, "quantize_nodes(exclude_node=conv1/*)")
    ops = {n.name: n.op for n in graph}
    assert ops["conv1/Conv2D"] == "Conv2D" and ops["conv1/Relu"] == "Relu"
    assert "QuantizedConv2D" in ops.values() and "QuantizedMatMul" in ops.values()
    graph, path = _apply(tmp_path, data, "quantize_nodes(exclude_op=Conv*, exclude_op=MatMul)", "ops.pb")
    assert not {"QuantizedConv2D", "QuantizedMatMul"} & {n.op for n in graph}
    assert "QuantizedRelu" in {n.op for n in graph}
    (expected,) = tf_run(data, feeds, ["out"])
    np.testing.assert_allclose(tf_run(path.read_bytes(), feeds, ["out"])[0], expected,
                               atol=0.05 * np.abs(expected).max())


def test_batch_norm_statistics_and_variances_stay_float(tf, tmp_path, capsys):
    channels = 1024

    def batch_norms(tf, x, w):
        rng = np.random.default_rng(3)
        stat = lambda v: tf.constant(v.astype(np.float32))  # noqa: E731
        # The statistics of a trained TF1 music tagger's batch norm: variances from 1e-27 to 374.
        variance = 10.0 ** rng.uniform(-27, 2.5, channels)
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, stat(rng.uniform(0.5, 2, channels)),
                                                   stat(rng.uniform(-1, 1, channels)),
                                                   mean=stat(rng.uniform(-1, 1, channels)), variance=stat(variance),
                                                   is_training=False)
        return tf.compat.v1.nn.batch_normalization(y, stat(rng.uniform(-1, 1, channels)), stat(variance),
                                                   None, None, 1e-3)

    data, feeds = _build(tf, [1, 2, 2, channels], batch_norms)
    graph, path = _apply(tmp_path, data, "quantize_weights")
    notes = _report_notes(capsys)
    assert sum("batch-norm statistic (FusedBatchNormV3" in n for n in notes) == 4, notes
    assert sum("read by Rsqrt" in n for n in notes) == 1, notes
    # The unfolded batch norm's mean, times 1 / sqrt(variance + epsilon): rounded to eight bits, it
    # moved the outputs of the near-zero-variance channels by up to 31 steps (musicnn's tagger fell
    # to 0.04 top-1 agreement so).
    assert sum("multiplied by a reciprocal square root" in n for n in notes) == 1, notes
    assert "Dequantize" not in {n.op for n in graph}
    (expected,) = tf_run(data, feeds, ["out"])
    np.testing.assert_allclose(tf_run(path.read_bytes(), feeds, ["out"])[0], expected, rtol=1e-6)


def test_values_most_of_which_would_round_to_zero_stay_float(tf, tmp_path, capsys):
    rng = np.random.default_rng(4)
    outliers = rng.standard_normal(2048).astype(np.float32) * 1e-3
    outliers[:3] = [40.0, -25.0, 31.0]                      # a step of 65/255 = 0.25 rounds the rest to 0
    pruned = rng.standard_normal(2048).astype(np.float32)
    pruned[::2] = 0.0                                       # zeros are exact: nothing is lost

    def body(tf, x, w):
        return x * tf.constant(outliers, name="outliers") + x * tf.constant(pruned, name="pruned")

    data, feeds = _build(tf, [2048], body)
    graph, path = _apply(tmp_path, data, "quantize_weights")
    assert graph["outliers"].op == "Const" and graph["pruned"].op == "Dequantize"
    (note,) = [n for n in _report_notes(capsys) if "'outliers'" in n]
    assert "most values would round to 0" in note


def test_dot_product_weights_stay_float_only_when_their_sqnr_is_low(tf, tmp_path, capsys):
    """A convolution's weights sum their products: values near 0 that round to 0 carry little of
    the energy. musicnn's kernels (dead channels at 1e-34, most live values under half a step)
    measure 28-36 dB and lose no agreement as eight bits; they stayed float when counted."""
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((3, 3, 16, 32)).astype(np.float32) * 0.3
    kernel[..., 16:] *= 1e-30                               # dead channels: half the values
    dense = rng.standard_normal((4096, 16)).astype(np.float32) * 0.01
    dense[0, 0] = 5.0                   # 500 standard deviations: steps of 0.02 leave three codes

    def body(tf, x, w):
        y = tf.nn.conv2d(x, tf.constant(kernel, name="kernel"), 1, "SAME")
        return tf.matmul(tf.reshape(y, [1, 4096]), tf.constant(dense, name="dense"))

    data, feeds = _build(tf, [1, 8, 16, 16], body)
    graph, path = _apply(tmp_path, data, "quantize_weights")
    assert graph["kernel"].op == "Dequantize" and graph["dense"].op == "Const"
    (note,) = [n for n in _report_notes(capsys) if "'dense'" in n]
    assert "dB, under 20 dB" in note, note
    (expected,) = tf_run(data, feeds, ["out"])
    (got,) = tf_run(path.read_bytes(), feeds, ["out"])
    np.testing.assert_allclose(got, expected, atol=0.02 * np.abs(expected).max())


def test_apply_with_samples_on_a_graph_without_runtime_ranges_changes_nothing_more(tf, tmp_path, capsys):
    data, _ = _build(tf, [1, 8, 8, 8], two_convs_and_a_dense)
    plain, _ = _apply(tmp_path, data, "fold_constants", "plain.pb")
    source = tmp_path / "float.pb"
    sampled = tmp_path / "sampled.pb"
    assert main(["apply", str(source), "-o", str(sampled), "--transforms", "fold_constants", "--random", "2"]) == 0
    assert "nothing to freeze" in capsys.readouterr().err
    assert sampled.read_bytes() == (tmp_path / "plain.pb").read_bytes()


@pytest.mark.parametrize("op, attrs, message", [
    ("QuantizedConv2D", {"strides": [1, 1, 2, 1]}, "equal length strides"),
    ("QuantizedConv2D", {"strides": [1, 1, 1, 1], "dilations": [1, 2, 2, 1]}, "dilated rate as 1"),
    ("QuantizedAvgPool", {"ksize": [1, 1, 1, 2], "strides": [1, 1, 1, 2]}, "Non-spatial pooling"),
])
def test_evaluator_refuses_in_one_line_what_tensorflow_refuses(tf, tmp_path, capsys, op, attrs, message):
    with tf.Graph().as_default() as graph:
        x = tf.constant(np.zeros((1, 4, 4, 2), np.uint8), dtype=tf.quint8)
        lo, hi = tf.constant(-1.0), tf.constant(1.0)
        if op == "QuantizedConv2D":
            w = tf.constant(np.zeros((1, 1, 2, 3), np.uint8), dtype=tf.quint8)
            out = tf.raw_ops.QuantizedConv2D(input=x, filter=w, min_input=lo, max_input=hi, min_filter=lo,
                                             max_filter=hi, padding="VALID", **attrs)[0]
        else:
            out = tf.raw_ops.QuantizedAvgPool(input=x, min_input=lo, max_input=hi, padding="VALID", **attrs)[0]
        tf.identity(out, name="out")
    path = tmp_path / "refused.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(tf.errors.OpError, match=message):
        tf_run(path.read_bytes(), {}, ["out"])
    assert main(["run", str(path), "--outputs", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err


# ---- keeping the layers that lose most float: apply --keep-float-above ---------------------------

def sensitive_first_layer(tf, x, w):
    """conv1's output has one channel a thousand times the others: over the range that channel
    needs, eight bits leave the rest a few codes, so conv1 loses most."""
    scale = np.ones(16, np.float32)
    scale[0] = 1000.0
    with tf.compat.v1.variable_scope("conv1"):
        y = tf.nn.relu(tf.nn.conv2d(x, w(3, 3, 4, 16) * scale, 1, "SAME") + w(16))
    with tf.compat.v1.variable_scope("conv2"):
        y = tf.nn.relu(tf.nn.conv2d(y * (1.0 / scale), w(3, 3, 16, 16), 1, "SAME") + w(16))
    return tf.matmul(tf.reshape(y, [-1, 8 * 8 * 16]), w(8 * 8 * 16, 10))


def test_keep_float_above_keeps_the_layer_that_loses_most_float(tf, tmp_path, capsys):
    from gtt_rules import calibration

    data, _ = _build(tf, [None, 8, 8, 4], sensitive_first_layer)
    stacked = np.random.default_rng(2).standard_normal((8, 8, 8, 4)).astype(np.float32)
    np.savez(tmp_path / "samples.npz", x=stacked)
    source = tmp_path / "float.pb"
    source.write_bytes(data)
    plain, kept = tmp_path / "plain.pb", tmp_path / "kept.pb"
    common = ["--inputs", "x", "--outputs", "out", "--pipeline", "eightbit", "--samples", str(tmp_path / "samples.npz")]
    assert main(["apply", str(source), "-o", str(plain), *common]) == 0
    samples = [{"x": stacked[i:i + 1]} for i in range(len(stacked))]
    before = calibration.layer_errors(Graph.from_bytes(data), Graph.load(plain), samples)
    worst = max(before, key=before.get)
    assert worst.startswith("conv1/"), before
    capsys.readouterr()
    assert main(["apply", str(source), "-o", str(kept), *common, "--keep-float-above", "0.05"]) == 0
    err = capsys.readouterr().err
    assert f"kept float (error added above 0.05): '{worst}'" in err.splitlines(), err
    graph = Graph.load(kept)
    assert graph[worst].op != "Dequantize" and "QuantizedConv2D" in {n.op for n in graph}
    after = calibration.layer_errors(Graph.from_bytes(data), graph, samples)
    assert after and max(after.values()) <= 0.05
    (expected,) = tf_run(data, {"x": stacked}, ["out"])
    errors = [np.abs(tf_run(path.read_bytes(), {"x": stacked}, ["out"])[0] - expected).max() for path in (plain, kept)]
    assert errors[1] < errors[0], errors
    np.testing.assert_allclose(evaluate(graph, {"x": stacked}, ["out"])[0],
                               tf_run(kept.read_bytes(), {"x": stacked}, ["out"])[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("extra, message", [
    (["--keep-float-above", "0.1"], "--keep-float-above needs calibration samples"),
    (["--keep-float-above", "0", "--random", "2"], "--keep-float-above must be above 0"),
])
def test_keep_float_above_bad_usage(tf, tmp_path, capsys, extra, message):
    data, _ = _build(tf, [1, 8, 8, 8], two_convs_and_a_dense)
    source, out = tmp_path / "float.pb", tmp_path / "out.pb"
    source.write_bytes(data)
    assert main(["apply", str(source), "-o", str(out), "--pipeline", "eightbit", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
