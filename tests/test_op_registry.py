"""The op registry against TensorFlow itself: its registered OpDefs and real graph nodes."""

from __future__ import annotations

import math
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, op_def_pb2, types_pb2
from tensorflow.python.client import pywrap_tf_session

from gtt_rules.engine import op_registry
from gtt_rules.engine.op_registry import (
    all_op_names,
    default_attrs,
    get_op,
    input_count,
    num_outputs,
    output_dtypes,
)


def _tf_op_defs() -> dict[str, op_def_pb2.OpDef]:
    op_list = op_def_pb2.OpList()
    op_list.ParseFromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
    return {op.name: op for op in op_list.op}


TF_OP_DEFS = _tf_op_defs()


def _decode_attr_value(value, attr_type: str | None = None):
    """A TF AttrValue as the plain Python value the registry API uses."""
    kind = value.WhichOneof("value")
    if attr_type is not None and attr_type.startswith("list("):
        kind = "list"
    if kind == "list":
        items = value.list
        element = attr_type[5:-1] if attr_type else None
        if element is None:  # node attrs carry no declared type: use the filled field
            fields = ("type", "i", "f", "b", "s", "shape", "func", "tensor")
            element = next((f for f in fields if getattr(items, f)), "i")
        element = {"int": "i", "float": "f", "bool": "b", "string": "s"}.get(element, element)
        if element == "tensor":
            return None
        return tuple(_decode_scalar(element, item) for item in getattr(items, element))
    if kind in (None, "tensor", "placeholder"):
        return None
    return _decode_scalar(kind, getattr(value, kind))


def _decode_scalar(kind: str, item):
    if kind == "s":
        return item.decode("utf-8", "backslashreplace")
    if kind == "shape":
        return None if item.unknown_rank else tuple(d.size for d in item.dim)
    if kind == "func":
        return item.name
    if kind in ("type", "i"):
        return int(item)
    if kind == "f":
        return float(item)
    return item


def _node_attr_lookup(node_def, keep=lambda name, value: True):
    """attr(name) for a TF NodeDef; `keep` hides attrs to force registry defaults."""

    def attr(name):
        if name not in node_def.attr:
            raise KeyError(name)
        value = _decode_attr_value(node_def.attr[name])
        if not keep(name, value):
            raise KeyError(name)
        return value

    return attr


# --- the data file covers TensorFlow's registry, field by field ----------------------


def test_every_registered_op_is_present():
    ours = set(all_op_names())
    missing = sorted(set(TF_OP_DEFS) - ours)
    assert not missing, f"regenerate engine/data/ops.json; missing {missing[:20]}"
    assert len(ours) > 1500
    for name in [
        "QuantizeV2", "QuantizedConv2D", "Requantize", "RequantizationRange", "Dequantize",
        "Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond",
        "While", "If", "StatelessWhile", "BatchNormWithGlobalNormalization", "_FusedConv2D",
    ]:
        assert get_op(name) is not None, name


def test_unknown_op_is_none():
    assert get_op("NoSuchOpAnywhere") is None


def test_dtype_table_matches_types_proto():
    assert op_registry._load().dtypes == {k: int(v) for k, v in types_pb2.DataType.items()}
    assert op_registry.dtype_enum("DT_QUINT8") == types_pb2.DT_QUINT8 == 12
    assert op_registry.dtype_name(types_pb2.DT_FLOAT8_E4M3FN) == "DT_FLOAT8_E4M3FN"


def _expected_arg(arg):
    return (
        arg.name,
        arg.type or None,
        arg.type_attr or None,
        arg.number_attr or None,
        arg.type_list_attr or None,
        arg.is_ref,
    )


def _actual_arg(arg):
    return (arg.name, arg.dtype, arg.type_attr, arg.number_attr, arg.type_list_attr, arg.is_ref)


def _same(a, b):
    # inf == inf holds, but NaN would not; compare element-wise with a NaN escape.
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", sorted(TF_OP_DEFS))
def test_op_matches_tensorflow_op_def(name):
    expected = TF_OP_DEFS[name]
    ours = get_op(name)
    assert ours is not None and ours.name == name
    assert [_actual_arg(a) for a in ours.inputs] == [_expected_arg(a) for a in expected.input_arg]
    assert [_actual_arg(a) for a in ours.outputs] == [_expected_arg(a) for a in expected.output_arg]
    assert list(ours.attrs) == [a.name for a in expected.attr]
    for attr in expected.attr:
        got = ours.attrs[attr.name]
        assert got.type == attr.type
        assert got.has_default == attr.HasField("default_value")
        if got.has_default:
            want = _decode_attr_value(attr.default_value, attr.type)
            assert _same(got.default, want), (attr.name, got.default, want)
        # allowed_values is a list of the attr's element type, also for list attrs.
        element = attr.type.removeprefix("list(").removesuffix(")")
        want_allowed = (
            _decode_attr_value(attr.allowed_values, f"list({element})")
            if attr.HasField("allowed_values")
            else None
        )
        assert got.allowed_values == want_allowed
        assert got.minimum == (attr.minimum if attr.has_minimum else None)
    assert ours.is_commutative == expected.is_commutative
    assert ours.is_stateful == expected.is_stateful
    assert ours.is_aggregate == expected.is_aggregate
    want_deprecated = expected.deprecation.version if expected.HasField("deprecation") else None
    assert ours.deprecated_since == want_deprecated


def test_known_defaults():
    quantize = default_attrs(get_op("QuantizeV2"))
    assert quantize["mode"] == "MIN_COMBINED"
    assert quantize["round_mode"] == "HALF_AWAY_FROM_ZERO"
    assert quantize["narrow_range"] is False
    # The default is a float32 in the proto; it must equal what a NodeDef read gives.
    assert quantize["ensure_minimum_range"] == float(np.float32(0.01))
    assert "T" not in quantize  # no default: every QuantizeV2 node must set it
    conv = default_attrs(get_op("Conv2D"))
    assert conv["data_format"] == "NHWC"
    assert conv["dilations"] == (1, 1, 1, 1)
    assert conv["explicit_paddings"] == ()
    assert default_attrs(get_op("QuantizedConv2D"))["out_type"] == types_pb2.DT_QINT32
    assert default_attrs(get_op("FusedBatchNormV3"))["epsilon"] == float(np.float32(0.0001))
    assert default_attrs(get_op("Placeholder"))["shape"] is None  # unknown rank
    assert get_op("QuantizeV2").attrs["T"].allowed_values == (
        types_pb2.DT_QINT8, types_pb2.DT_QUINT8, types_pb2.DT_QINT32,
        types_pb2.DT_QINT16, types_pb2.DT_QUINT16,
    )
    assert get_op("Split").attrs["num_split"].minimum == 1
    upper = default_attrs(get_op("DebugNumericSummary"))["upper_bound"]
    assert upper == math.inf


@pytest.mark.parametrize("name", ["AddV2", "Mul", "AddN", "Equal", "LogicalAnd"])
def test_commutative(name):
    assert get_op(name).is_commutative


@pytest.mark.parametrize("name", ["Add", "Sub", "Maximum", "Minimum", "MatMul", "Conv2D"])
def test_not_marked_commutative(name):
    # TensorFlow does not flag Add (string concatenation), Maximum or Minimum.
    assert get_op(name).is_commutative is False


# --- port counts and dtypes against nodes that TensorFlow built -----------------------


def _build_graph() -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        f32 = tf.float32
        x = tf.raw_ops.Placeholder(dtype=f32, shape=[1, 8, 8, 3])
        pred = tf.raw_ops.Placeholder(dtype=tf.bool, shape=[])
        w = tf.constant(np.ones((3, 3, 3, 4), np.float32))
        conv = tf.raw_ops.Conv2D(input=x, filter=w, strides=[1, 1, 1, 1], padding="SAME")
        lo, hi = tf.constant(-1.0), tf.constant(1.0)
        qx = tf.raw_ops.QuantizeV2(input=x, min_range=lo, max_range=hi, T=tf.quint8)
        qw = tf.raw_ops.QuantizeV2(
            input=w, min_range=lo, max_range=hi, T=tf.quint8, mode="MIN_FIRST"
        )
        qconv = tf.raw_ops.QuantizedConv2D(
            input=qx.output, filter=qw.output,
            min_input=qx.output_min, max_input=qx.output_max,
            min_filter=qw.output_min, max_filter=qw.output_max,
            strides=[1, 1, 1, 1], padding="SAME",
        )
        rng = tf.raw_ops.RequantizationRange(
            input=qconv.output, input_min=qconv.min_output, input_max=qconv.max_output
        )
        req = tf.raw_ops.Requantize(
            input=qconv.output, input_min=qconv.min_output, input_max=qconv.max_output,
            requested_output_min=rng.output_min, requested_output_max=rng.output_max,
            out_type=tf.quint8,
        )
        tf.raw_ops.Dequantize(input=req.output, min_range=req.output_min, max_range=req.output_max)
        tf.raw_ops.QuantizedRelu(features=req.output, min_features=req.output_min,
                                 max_features=req.output_max, out_type=tf.quint8)
        halves = tf.raw_ops.Split(axis=3, value=conv, num_split=2)
        tf.raw_ops.Unpack(value=conv, num=8, axis=1)
        tf.raw_ops.ConcatV2(values=list(halves), axis=3)
        tf.raw_ops.IdentityN(input=[conv, tf.constant(1, tf.int32), qx.output])
        ones = tf.constant(np.ones(4, np.float32))
        tf.raw_ops.FusedBatchNormV3(x=conv, scale=ones, offset=ones, mean=ones, variance=ones,
                                    is_training=False)
        tf.raw_ops.AddN(inputs=[conv, conv, conv])
        tf.raw_ops.BiasAdd(value=conv, bias=ones)
        # TF1 control flow, built from its raw ops.
        entered = tf.raw_ops.Enter(data=x, frame_name="loop")
        merged = tf.raw_ops.Merge(inputs=[entered, entered])
        switched = tf.raw_ops.Switch(data=merged.output, pred=tf.raw_ops.LoopCond(input=pred))
        tf.raw_ops.NextIteration(data=switched.output_true)
        tf.raw_ops.Exit(data=switched.output_false)
        tf.raw_ops.RefEnter(data=tf.raw_ops.VariableV2(shape=[2], dtype=f32), frame_name="loop")
        # Functional control flow: stateful bodies give While / If, pure ones the Stateless forms.
        tf.while_loop(lambda i: i < 10, lambda i: i + 1, [tf.constant(0)])
        tf.while_loop(lambda i: i < 10.0, lambda i: i + tf.random.uniform([]), [tf.constant(0.0)])
        tf.cond(pred, lambda: conv, lambda: conv * 2.0)
        tf.cond(pred, lambda: tf.random.uniform([2]), lambda: tf.zeros([2]))
        tf.raw_ops.Shape(input=conv, out_type=tf.int64)
        tf.raw_ops.TopKV2(input=conv, k=tf.constant(2))
    return graph


def _bn_global_normalization_graph() -> tf.Graph:
    # TensorFlow refuses this op after GraphDef version 8, so import a hand-made one.
    graph_def = graph_pb2.GraphDef()
    graph_def.versions.producer = 8
    for name in ["t", "m", "v", "beta", "gamma"]:
        node = graph_def.node.add(name=name, op="Placeholder")
        node.attr["dtype"].type = types_pb2.DT_FLOAT
    node = graph_def.node.add(name="bn", op="BatchNormWithGlobalNormalization",
                              input=["t", "m", "v", "beta", "gamma"])
    node.attr["T"].type = types_pb2.DT_FLOAT
    node.attr["variance_epsilon"].f = 0.001
    node.attr["scale_after_normalization"].b = True
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


GRAPH_OPS = [op for op in _build_graph().get_operations()] + list(
    _bn_global_normalization_graph().get_operations()
)

REQUIRED_TYPES = {
    "Conv2D", "QuantizeV2", "QuantizedConv2D", "Requantize", "RequantizationRange",
    "Dequantize", "Split", "Unpack", "ConcatV2", "IdentityN", "FusedBatchNormV3", "Switch",
    "Merge", "Enter", "Exit", "NextIteration", "Const", "VariableV2", "RefEnter", "While",
    "StatelessWhile", "If", "StatelessIf", "AddN", "BatchNormWithGlobalNormalization",
}


def test_graph_covers_the_sample():
    assert REQUIRED_TYPES <= {op.type for op in GRAPH_OPS}


def _check_node(op, attr):
    op_def = get_op(op.type)
    assert op_def is not None, op.type
    want_dtypes = [t.dtype.as_datatype_enum for t in op.outputs]
    assert num_outputs(op_def, attr) == len(op.outputs)
    assert output_dtypes(op_def, attr) == want_dtypes
    assert input_count(op_def, attr) == len(op.inputs)


@pytest.mark.parametrize("op", GRAPH_OPS, ids=lambda op: f"{op.type}:{op.name}")
def test_ports_match_tensorflow_node(op):
    _check_node(op, _node_attr_lookup(op.node_def))


@pytest.mark.parametrize("op", GRAPH_OPS, ids=lambda op: f"{op.type}:{op.name}")
def test_ports_fall_back_to_defaults(op):
    # As in a GraphDef written with default attrs stripped.
    defaults = default_attrs(get_op(op.type))
    stripped = _node_attr_lookup(
        op.node_def, keep=lambda name, value: name not in defaults or defaults[name] != value
    )
    _check_node(op, stripped)


def test_attr_mapping_and_callable_agree():
    split = get_op("Split")
    assert num_outputs(split, {"num_split": 3, "T": 1}) == 3
    assert num_outputs(split, lambda name: {"num_split": 3}[name]) == 3
    assert output_dtypes(split, {"num_split": np.int64(2), "T": np.int32(1)}) == [1, 1]


def test_undeterminable_ports_are_none():
    quantize = get_op("QuantizeV2")
    assert num_outputs(quantize, {}) == 3  # counts need no type
    assert output_dtypes(quantize, {}) is None  # T has no default
    split = get_op("Split")
    assert num_outputs(split, {}) is None
    assert input_count(split, {}) == 2
    assert num_outputs(split, {"num_split": "three"}) is None
    assert num_outputs(split, {"num_split": True}) is None
    identity_n = get_op("IdentityN")
    assert num_outputs(identity_n, {"T": 1}) is None  # list(type) given as one type
    assert output_dtypes(identity_n, {"T": [1, 3]}) == [1, 3]
    assert input_count(get_op("ConcatV2"), {"N": 4}) == 5
    assert output_dtypes(get_op("NoOp"), {}) == []


def test_op_defs_are_cached_and_hashable():
    assert get_op("Conv2D") is get_op("Conv2D")
    assert hash(get_op("Conv2D")) == hash(get_op("Conv2D"))


def test_runtime_does_not_import_tensorflow():
    code = (
        "import sys, gtt_rules.engine.op_registry as r; "
        "assert r.get_op('Conv2D') is not None; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
