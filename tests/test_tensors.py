"""The tensor codec against TensorFlow itself.

Oracles: `tf.make_tensor_proto` (layout), `tf.make_ndarray` (Python decoding) and
`tf.io.parse_tensor`, which runs C++ `Tensor::FromProto`, the code that loads Const nodes.
"""
from __future__ import annotations

import time
import zlib

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2  # noqa: E402

from gtt_rules.engine import dtypes  # noqa: E402
from gtt_rules.engine.proto import graph_def_pb2 as pb  # noqa: E402
from gtt_rules.engine.tensors import (  # noqa: E402
    check_tensor, decode_tensor, encode_tensor, shape_from_proto, shape_to_proto, tensor_shape)
from gtt_rules.errors import GraphError  # noqa: E402

TF_DTYPES = {
    "float": tf.float32, "double": tf.float64, "half": tf.float16, "bfloat16": tf.bfloat16,
    "int8": tf.int8, "int16": tf.int16, "int32": tf.int32, "int64": tf.int64,
    "uint8": tf.uint8, "uint16": tf.uint16, "uint32": tf.uint32, "uint64": tf.uint64,
    "bool": tf.bool, "string": tf.string, "complex64": tf.complex64, "complex128": tf.complex128,
    "qint8": tf.qint8, "quint8": tf.quint8, "qint16": tf.qint16, "quint16": tf.quint16,
    "qint32": tf.qint32,
}
NAMES = list(TF_DTYPES)
SHAPES = [(), (0,), (1,), (7,), (2, 3, 4), (3, 0, 2)]
BF16 = tf.bfloat16.as_numpy_dtype


# ---- helpers -------------------------------------------------------------------------------------

def ours(tf_proto) -> pb.TensorProto:
    return pb.TensorProto.FromString(tf_proto.SerializeToString())


def theirs(our_proto) -> tf_tensor_pb2.TensorProto:
    return tf_tensor_pb2.TensorProto.FromString(our_proto.SerializeToString())


def normalize(name: str, a: np.ndarray) -> np.ndarray:
    """TensorFlow's arrays in our holder dtypes: quantized codes, bfloat16 as float32."""
    if a.dtype.names:
        a = a[a.dtype.names[0]]
    if name == "bfloat16":
        a = a.astype(np.float32)
    return a


def tf_make_ndarray(name: str, tf_proto) -> np.ndarray:
    return normalize(name, tf.make_ndarray(tf_proto))


def tf_cpp(name: str, our_proto) -> np.ndarray:
    """What C++ Tensor::FromProto makes of the proto."""
    value = tf.io.parse_tensor(our_proto.SerializeToString(), TF_DTYPES[name]).numpy()
    if name == "bfloat16":
        value = value.astype(np.float32)
    return np.asarray(value, dtype=object) if name == "string" else value


def assert_same(name: str, got: np.ndarray, want: np.ndarray) -> None:
    holder = dtypes.numpy_dtype(dtypes.parse_dtype(name))
    assert got.dtype == holder, (got.dtype, holder)
    want = np.asarray(want, dtype=object) if name == "string" else np.asarray(want)
    assert got.shape == want.shape
    if name == "string":
        assert [bytes(x) for x in got.ravel()] == [bytes(x) for x in want.ravel()]
        return
    want = np.asarray(want).astype(holder)
    # Bit for bit: distinguishes -0.0 from 0.0, and NaN equals NaN of the same bits.
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), (got, want)


def random_array(name: str, shape, rng) -> np.ndarray:
    """Values in our holder dtype, covering each type's range and its special values."""
    holder = dtypes.numpy_dtype(dtypes.parse_dtype(name))
    size = int(np.prod(shape))
    if name == "string":
        out = np.empty(size, dtype=object)
        out[:] = [rng.bytes(int(rng.integers(0, 6))) + (b"\x00" if i % 3 == 0 else b"")
                  for i in range(size)]
        return out.reshape(shape)
    if name == "bool":
        return rng.random(shape) < 0.5
    if name == "bfloat16":
        # Exact bfloat16 values: random bit patterns, widened.
        bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint32)
        return (bits << 16).view(np.float32)
    if name in ("float", "double", "half"):
        a = (rng.standard_normal(size) * 100).astype(holder)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype=holder)
        a[: min(size, 5)] = specials[: min(size, 5)]
        return rng.permutation(a).reshape(shape)
    if name.startswith("complex"):
        return (rng.standard_normal(size) + 1j * rng.standard_normal(size)).astype(
            holder).reshape(shape)
    info = np.iinfo(holder)
    a = rng.integers(info.min, info.max, size=size, dtype=holder, endpoint=True)
    a[: min(size, 2)] = [info.min, info.max][: min(size, 2)]
    return a.reshape(shape)


def tf_input(name: str, a: np.ndarray) -> np.ndarray:
    """The array TensorFlow expects for values of type `name`."""
    return a.astype(BF16) if name == "bfloat16" else a


def hand_proto(name: str, shape, **fields) -> pb.TensorProto:
    tp = pb.TensorProto(dtype=dtypes.parse_dtype(name))
    tp.tensor_shape.SetInParent()
    for d in shape:
        tp.tensor_shape.dim.add(size=d)
    for key, value in fields.items():
        if key == "tensor_content":
            tp.tensor_content = value
        else:
            getattr(tp, key).extend(value)
    return tp


def val_fields(name: str, values: np.ndarray) -> dict:
    """`values` (holder dtype, 1-D) written by hand into the dtype's *_val field."""
    row = dtypes.dtype_info(dtypes.parse_dtype(name))
    if name == "half":
        data = values.view(np.uint16).tolist()
    elif name == "bfloat16":
        data = (values.view(np.uint32) >> 16).tolist()
    elif name.startswith("complex"):
        data = values.view(np.float32 if name == "complex64" else np.float64).tolist()
    else:
        data = values.tolist()
    return {row.val_field: data}


def content_bytes(name: str, values: np.ndarray) -> bytes:
    """`values` written by hand as tensor_content (C++'s string layout for strings)."""
    if name == "string":
        def varint(n):
            out = bytearray()
            while True:
                out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
                n >>= 7
                if not n:
                    return bytes(out)
        return b"".join(varint(len(s)) for s in values) + b"".join(values)
    if name == "bfloat16":
        return (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    return values.astype(values.dtype.newbyteorder("<")).tobytes()


# ---- decoding what TensorFlow encodes ------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_decode_matches_make_ndarray(name, shape):
    rng = np.random.default_rng(zlib.crc32(repr((name, shape)).encode()))
    a = random_array(name, shape, rng)
    tf_proto = tf.make_tensor_proto(tf_input(name, a), dtype=TF_DTYPES[name])
    got = decode_tensor(ours(tf_proto))
    assert_same(name, got, tf_make_ndarray(name, tf_proto))
    assert_same(name, got, a)
    assert tensor_shape(ours(tf_proto)) == shape


# ---- hand-made protos: the fill rule, *_val and tensor_content for every dtype -----------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("given,shape", [(1, (2, 3)), (2, (5,)), (3, (3,)), (1, ()), (0, (4,)),
                                         (0, ()), (0, (0,))],
                         ids=lambda v: str(v))
def test_val_fields_and_fill_rule(name, given, shape):
    rng = np.random.default_rng(7)
    values = random_array(name, (given,), rng)
    tp = hand_proto(name, shape, **val_fields(name, values))
    got = decode_tensor(tp)
    # TensorFlow repeats the last value given; no values at all means zeros.
    size = int(np.prod(shape))
    if given:
        want = np.concatenate([values, np.repeat(values[-1:], size - given)]).reshape(shape)
    elif name == "string":
        want = np.full(shape, b"", dtype=object)
    else:
        want = np.zeros(shape, dtype=values.dtype)
    assert_same(name, got, want)
    assert_same(name, got, tf_cpp(name, tp))
    if not (name == "string" and given == 0 and size):   # make_ndarray fills with "" (str) there
        assert_same(name, got, tf_make_ndarray(name, theirs(tp)))
    assert got.flags.writeable


@pytest.mark.parametrize("shape", [(), (1,), (2, 3)], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_tensor_content_for_every_dtype(name, shape):
    rng = np.random.default_rng(11)
    values = random_array(name, shape, rng)
    tp = hand_proto(name, shape, tensor_content=content_bytes(name, values.ravel()))
    got = decode_tensor(tp)
    assert_same(name, got, values)
    assert_same(name, got, tf_cpp(name, tp))
    if name != "string":                 # make_ndarray cannot read C++'s string content
        assert_same(name, got, tf_make_ndarray(name, theirs(tp)))


def test_tensor_content_wins_over_val_fields():
    tp = hand_proto("float", [2], tensor_content=np.array([1, 2], "<f4").tobytes(),
                    float_val=[7.0])
    assert decode_tensor(tp).tolist() == [1.0, 2.0] == tf_cpp("float", tp).tolist()


def test_values_in_another_field_are_ignored_like_tensorflow():
    tp = hand_proto("float", [2], int_val=[1, 2])
    assert decode_tensor(tp).tolist() == [0.0, 0.0] == tf_cpp("float", tp).tolist()


@pytest.mark.parametrize("name,field,raw", [
    ("int8", "int_val", [300, -200, 127]),
    ("uint8", "int_val", [-1, 256, 511]),
    ("uint16", "int_val", [-1, 70000, 65535]),
    ("qint8", "int_val", [200, -129, 5]),
    ("quint16", "int_val", [-2, 65536, 1]),
    ("half", "half_val", [0x13C00, -1, 0x3C00]),
    ("bfloat16", "half_val", [0x13F80, -0x4000, 0x4000]),
])
def test_out_of_range_int_val_keeps_low_bits_like_cpp(name, field, raw):
    tp = hand_proto(name, [3], **{field: raw})
    # tf.make_ndarray raises OverflowError here; C++ keeps the low bits.
    assert_same(name, decode_tensor(tp), tf_cpp(name, tp))


def test_decoding_tensor_content_does_not_copy():
    tp = encode_tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert tp.tensor_content
    arr = decode_tensor(tp)
    assert arr.flags.writeable is False
    assert arr.base is not None
    assert isinstance(arr.base, (bytes, np.ndarray))


# ---- encoding ------------------------------------------------------------------------------------

def layout(tp) -> list[str]:
    return sorted(f.name for f, _ in tp.ListFields() if f.name not in ("dtype", "tensor_shape"))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_make_tensor_proto(name, shape):
    rng = np.random.default_rng(zlib.crc32(repr((name, shape, 1)).encode()))
    a = random_array(name, shape, rng)
    dt = dtypes.parse_dtype(name)
    mine = encode_tensor(a, dt)
    tf_proto = tf.make_tensor_proto(tf_input(name, a), dtype=TF_DTYPES[name])
    assert layout(mine) == layout(tf_proto)
    # Same fields and same values: the very same message.
    assert mine == ours(tf_proto)
    assert mine.SerializeToString(deterministic=True) == tf_proto.SerializeToString(
        deterministic=True)
    # And TensorFlow reads back what we gave it, in Python and in C++.
    assert_same(name, tf_make_ndarray(name, theirs(mine)), a)
    assert_same(name, tf_cpp(name, mine), a)


# Without a dtype, an array stands for its own type; quantized codes and bfloat16-as-float32 cannot.
@pytest.mark.parametrize("name", [n for n in NAMES
                                  if n != "bfloat16" and not dtypes.is_quantized(
                                      dtypes.parse_dtype(n))])
def test_encode_default_dtype_matches_make_tensor_proto(name):
    a = random_array(name, (2, 2), np.random.default_rng(3))
    assert encode_tensor(a) == ours(tf.make_tensor_proto(a))
    assert encode_tensor(a[0, 0]) == ours(tf.make_tensor_proto(a[0, 0]))


def test_encode_accepts_arrays_from_tensorflow():
    """make_ndarray gives ml_dtypes bfloat16 and structured quantized arrays; both encode."""
    for name in ("bfloat16", "qint8", "quint16", "qint32"):
        a = random_array(name, (3, 2), np.random.default_rng(5))
        tf_proto = tf.make_tensor_proto(tf_input(name, a), dtype=TF_DTYPES[name])
        from_tf = tf.make_ndarray(tf_proto)
        assert dtypes.dtype_for_array(from_tf) == dtypes.parse_dtype(name)
        assert encode_tensor(from_tf) == ours(tf_proto)


def test_bfloat16_rounding_matches_tensorflow():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=20000, dtype=np.uint64).astype(np.uint32)
    special = np.array([
        0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,          # ties to even and near ties
        0x7F7FFFFF, 0x7F7F8000, 0xFF7FFFFF,                      # rounding up to infinity
        0x00000001, 0x00008000, 0x00018000, 0x80008000,          # subnormals
        0x7F800000, 0xFF800000, 0x7FC00001, 0x7F800001,          # infinities, NaNs
        0xFFFFFFFF, 0x7FFFFFFF, 0xFF800001], dtype=np.uint32)
    f = np.concatenate([special, bits]).view(np.float32)
    with np.errstate(invalid="ignore"):
        want = tf.make_tensor_proto(f.astype(BF16), dtype=tf.bfloat16)
    mine = encode_tensor(f, dtypes.DT_BFLOAT16)
    assert mine.tensor_content == want.tensor_content
    with np.errstate(invalid="ignore"):
        want = tf.make_tensor_proto(f[:1], dtype=tf.bfloat16)
    assert list(encode_tensor(f[:1], dtypes.DT_BFLOAT16).half_val) == list(want.half_val)


def test_encode_layout_independent_of_memory_order():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for variant in (np.asfortranarray(a), a.astype(">f4"), a[:, :, ::-1][:, :, ::-1]):
        assert encode_tensor(variant) == encode_tensor(a)
    assert encode_tensor(a.T) == ours(tf.make_tensor_proto(a.T))


def test_encode_strings_from_str_and_bytes():
    tp = encode_tensor(np.array(["é", "x"]))
    assert tp.dtype == dtypes.DT_STRING and list(tp.string_val) == ["é".encode(), b"x"]
    assert list(encode_tensor([b"a\x00", b"b"]).string_val) == [b"a\x00", b"b"]
    assert list(encode_tensor(b"a\x00\x00").string_val) == [b"a\x00\x00"]
    assert encode_tensor(np.array([b"a\x00", b""], dtype=object)) == ours(
        tf.make_tensor_proto(np.array([b"a\x00", b""], dtype=object)))


# ---- bad tensors ---------------------------------------------------------------------------------

def cpp_rejects(name, tp) -> bool:
    try:
        tf_cpp(name, tp)
    except tf.errors.InvalidArgumentError:
        return True
    return False


def test_content_length_mismatch():
    tp = hand_proto("float", [2, 3], tensor_content=b"\x00" * 12)
    with pytest.raises(GraphError, match=r"tensor_content has 12 bytes, but shape \[2, 3\] of "
                                         r"float needs 24"):
        decode_tensor(tp)
    assert cpp_rejects("float", tp)


def test_huge_claimed_shape_rejected_before_allocating():
    tp = hand_proto("float", [1 << 40], float_val=[1.0])
    start = time.perf_counter()
    with pytest.raises(GraphError, match=r"tensor shape \[1099511627776\] of float needs "
                                         r"4398046511104 bytes when decoded, over the limit of "
                                         r"2147483648"):
        decode_tensor(tp)
    with pytest.raises(GraphError):
        check_tensor(tp)
    assert time.perf_counter() - start < 0.5


def test_max_bytes_is_a_parameter():
    tp = hand_proto("int64", [100], int64_val=[1])
    check_tensor(tp, max_bytes=800)
    with pytest.raises(GraphError, match="over the limit of 799"):
        decode_tensor(tp, max_bytes=799)


def test_element_count_overflow():
    tp = hand_proto("int8", [1 << 62, 4])
    with pytest.raises(GraphError, match="more than TensorFlow can index"):
        check_tensor(tp, max_bytes=2**80)


@pytest.mark.parametrize("enum,message", [(99, r"tensor has unknown dtype enum \(99\)"),
                                          (0, "tensor has no dtype"),
                                          (20, "tensors of dtype resource are not supported"),
                                          (24, "float8_e5m2 are not supported")])
def test_unknown_or_unsupported_dtype(enum, message):
    tp = pb.TensorProto(dtype=enum)
    tp.tensor_shape.dim.add(size=1)
    with pytest.raises(GraphError, match=message):
        decode_tensor(tp)


def test_negative_dim_and_unknown_rank():
    tp = hand_proto("float", [2, -1], float_val=[1.0])
    with pytest.raises(GraphError, match=r"tensor shape \[2, -1\] has a negative dimension"):
        decode_tensor(tp)
    assert cpp_rejects("float", tp)
    tp = hand_proto("float", [], float_val=[1.0])
    tp.tensor_shape.unknown_rank = True
    with pytest.raises(GraphError, match="unknown rank"):
        decode_tensor(tp)
    # Stricter than C++, which ignores the unknown_rank flag and reads the dims (here: a scalar).
    assert tf_cpp("float", tp) == 1.0


def test_more_values_than_the_shape_holds():
    tp = hand_proto("float", [2], float_val=[1, 2, 3])
    with pytest.raises(GraphError, match=r"float_val has 3 values, but shape \[2\] of float "
                                         r"holds only 2"):
        decode_tensor(tp)
    # C++ would silently keep the first two; make_ndarray raises.
    assert tf_cpp("float", tp).tolist() == [1.0, 2.0]
    with pytest.raises(GraphError, match="holds only 0"):
        decode_tensor(hand_proto("int32", [0], int_val=[1]))


def test_content_in_empty_tensor_and_odd_complex_rejected():
    with pytest.raises(GraphError, match=r"tensor_content has 4 bytes, but shape \[0\]"):
        decode_tensor(hand_proto("float", [0], tensor_content=b"abcd"))
    with pytest.raises(GraphError, match=r"shape \[2, 0\] of string holds no elements"):
        decode_tensor(hand_proto("string", [2, 0], tensor_content=b"\x00"))
    with pytest.raises(GraphError, match="scomplex_val has 3 numbers"):
        decode_tensor(hand_proto("complex64", [3], scomplex_val=[1, 2, 3]))


def test_bad_bool_and_string_content_rejected_like_cpp():
    tp = hand_proto("bool", [2], tensor_content=b"\x02\x00")
    with pytest.raises(GraphError, match="neither 0 nor 1"):
        decode_tensor(tp)
    assert cpp_rejects("bool", tp)
    for content in (b"\x02\x00\x03abxy", b"\x02\x00\x03abxyzq", b"\x80\x80\x80"):
        tp = hand_proto("string", [3], tensor_content=content)
        with pytest.raises(GraphError, match="string tensor_content is malformed"):
            decode_tensor(tp)
        assert cpp_rejects("string", tp)


def test_error_carries_node_name():
    with pytest.raises(GraphError) as info:
        decode_tensor(hand_proto("float", [-1]), node="conv/weights")
    assert info.value.node == "conv/weights"
    assert "node 'conv/weights'" in str(info.value)


# ---- shapes and dtypes ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [None, (), (3,), (2, None, 4), (0, 5)], ids=str)
def test_shape_protos_match_tensorflow(shape):
    proto = shape_to_proto(shape)
    want = tf.TensorShape(None if shape is None else list(shape)).as_proto()
    assert proto == pb.TensorShapeProto.FromString(want.SerializeToString())
    expected = None if shape is None else tuple(-1 if d is None else d for d in shape)
    assert shape_from_proto(proto) == expected


@pytest.mark.parametrize("name", NAMES + ["resource", "variant"])
def test_dtype_table_agrees_with_tensorflow(name):
    tf_dt = tf.as_dtype(name if name in ("resource", "variant") else TF_DTYPES[name])
    enum = tf_dt.as_datatype_enum
    assert dtypes.parse_dtype(name) == enum
    assert dtypes.parse_dtype("tf." + tf_dt.name) == enum
    assert dtypes.parse_dtype("DT_" + name.upper()) == enum
    assert dtypes.dtype_name(enum) == name
    assert dtypes.is_quantized(enum) == tf_dt.is_quantized
    assert dtypes.is_float(enum) == tf_dt.is_floating
    assert dtypes.is_integer(enum) == (tf_dt.is_integer and not tf_dt.is_quantized)
    if name in ("resource", "variant"):
        with pytest.raises(ValueError):
            dtypes.numpy_dtype(enum)
        return
    row = dtypes.dtype_info(enum)
    if row.wire_size is not None:
        assert row.wire_size == tf_dt.size
    holder = dtypes.numpy_dtype(enum)
    if not tf_dt.is_quantized and name != "bfloat16":
        assert holder == np.dtype(tf_dt.as_numpy_dtype)
        assert dtypes.dtype_for_array(np.zeros(2, holder)) == enum
    # Dtype names are TensorFlow's C++ ones: the same as in a GraphDef printed as text.
    assert row.enum == getattr(dtypes, "DT_" + name.upper())


def test_parse_dtype_spellings_and_errors():
    assert dtypes.parse_dtype("float32") == dtypes.parse_dtype("FLOAT") == dtypes.DT_FLOAT
    assert dtypes.parse_dtype("tf.float16") == dtypes.parse_dtype("half") == dtypes.DT_HALF
    assert dtypes.parse_dtype("float64") == dtypes.DT_DOUBLE
    assert dtypes.parse_dtype("float_ref") == 101 and dtypes.dtype_name(101) == "float_ref"
    with pytest.raises(ValueError, match="valid names: float, double, int32"):
        dtypes.parse_dtype("flaot")
    assert dtypes.dtype_name(99) == "unknown dtype enum (99)"


def test_dtype_for_array():
    assert dtypes.dtype_for_array(np.array([b"a"])) == dtypes.DT_STRING
    assert dtypes.dtype_for_array(np.array(["a"])) == dtypes.DT_STRING
    assert dtypes.dtype_for_array(np.array([b"a"], dtype=object)) == dtypes.DT_STRING
    assert dtypes.dtype_for_array(np.zeros(2, ">i4")) == dtypes.DT_INT32
    assert dtypes.dtype_for_array(np.zeros(2, BF16)) == dtypes.DT_BFLOAT16
    with pytest.raises(ValueError):
        dtypes.dtype_for_array(np.zeros(2, "datetime64[s]"))
