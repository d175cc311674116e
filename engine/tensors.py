"""Decode TensorProtos into numpy arrays and encode arrays back, as TensorFlow does.

Decoding follows TensorFlow's C++ `Tensor::FromProto`, which is what runs graphs; value for value it
agrees with `tf.make_ndarray` wherever that function succeeds:

- A non-empty `tensor_content` wins over every `*_val` field. Its bytes are little-endian, and its
  length must be exactly elements x bytes-per-element. Strings in `tensor_content` use C++'s layout
  (all lengths as varints, then all the bytes), which `tf.make_ndarray` cannot read but C++ can.
- Otherwise values come from the one `*_val` field of the dtype (values in any other field are
  ignored, so a float tensor with only `int_val` is zeros, as in TensorFlow). If the field has fewer
  values than the shape needs, the rest are filled with the LAST value given: one value fills the
  whole shape, [1, 2] for shape [5] gives [1, 2, 2, 2, 2]; no values at all gives zeros (b"" for
  strings). Both C++ and `tf.make_ndarray` do this.
- `int_val` and `half_val` hold int32s; narrower types take the low bits (C++'s static_cast), so
  int_val 300 in an int8 tensor is 44. `tf.make_ndarray` raises OverflowError there instead.

Where TensorFlow's C++ silently ignores garbage, `check_tensor` rejects it, so a broken file is
reported rather than half-read: more `*_val` values than the shape holds (C++ keeps the first ones),
`tensor_content` in a tensor with no elements (C++ ignores it), an odd number of floats in a complex
field (C++ drops the last one), a shape marked unknown-rank (C++ ignores the flag, reads the dims).

Decoded values are held in the numpy dtypes listed in `dtypes.py` (bfloat16 as float32, quantized
types as their integer codes, strings as object arrays of bytes).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from gtt_rules.errors import GraphError

from . import dtypes
from .dtypes import DT_BFLOAT16, DT_HALF, DT_STRING, DType
from .proto import graph_def_pb2 as pb

_MAX_RANK = 254                 # TensorShape's limit in TensorFlow
_MAX_ELEMENTS = 2**63 - 1       # element counts are int64 in TensorFlow
_PROTO_LIMIT = 2**31            # protobuf messages cannot be 2 GB or more
DEFAULT_MAX_BYTES = 2**31


def _format_shape(dims: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def tensor_shape(tp: pb.TensorProto) -> tuple[int, ...]:
    """The dimensions of the tensor a TensorProto holds."""
    return tuple(d.size for d in tp.tensor_shape.dim)


def shape_to_proto(shape) -> pb.TensorShapeProto:
    """A TensorShapeProto; None means unknown rank, a None or -1 dimension is unknown."""
    proto = pb.TensorShapeProto()
    if shape is None:
        proto.unknown_rank = True
        return proto
    for dim in shape:
        proto.dim.add(size=-1 if dim is None else int(dim))
    return proto


def shape_from_proto(proto: pb.TensorShapeProto) -> tuple[int, ...] | None:
    """The shape as a tuple (-1 for unknown dimensions), or None for unknown rank."""
    if proto.unknown_rank:
        return None
    return tuple(d.size for d in proto.dim)


# ---- validation ----------------------------------------------------------------------------------

def _validate(tp: pb.TensorProto, content: bytes, max_bytes: int,
              node: str | None) -> tuple[DType, tuple[int, ...], int]:
    """Check a TensorProto without decoding it; return its dtype row, dims and element count."""
    def fail(message: str):
        raise GraphError(message, node=node)

    dtype = tp.dtype
    row = dtypes.dtype_info(dtype)
    if row is None or dtype == dtypes.DT_INVALID:
        fail(f"tensor has {dtypes.dtype_name(dtype)}" if dtype else "tensor has no dtype")
    if row.holder is None:
        fail(f"tensors of dtype {row.name} are not supported")
    shape_proto = tp.tensor_shape
    if shape_proto.unknown_rank:
        fail("tensor shape has unknown rank; a tensor value needs a fully known shape")
    dims = tuple([d.size for d in shape_proto.dim])
    if len(dims) > _MAX_RANK:
        fail(f"tensor has rank {len(dims)}; TensorFlow allows at most {_MAX_RANK}")
    if dims and min(dims) < 0:
        fail(f"tensor shape {_format_shape(dims)} has a negative dimension")
    count = math.prod(dims)             # Python ints: no overflow while checking for overflow
    if count > _MAX_ELEMENTS:
        fail(f"tensor shape {_format_shape(dims)} has {count} elements, more than TensorFlow can "
             f"index")
    # Checked before anything is allocated, so a tiny file claiming a huge shape costs nothing.
    decoded = count * row.holder.itemsize
    if decoded > max_bytes:
        fail(f"tensor shape {_format_shape(dims)} of {row.name} needs {decoded} bytes when "
             f"decoded, over the limit of {max_bytes}")

    if content:
        if row.enum == DT_STRING:
            # Each string takes at least its one-byte length; the rest is checked when decoding.
            if count == 0:
                fail(f"tensor_content has {len(content)} bytes, but shape {_format_shape(dims)} "
                     f"of string holds no elements")
            if len(content) < count:
                fail(f"tensor_content has {len(content)} bytes, too few for shape "
                     f"{_format_shape(dims)} of string")
        elif len(content) != count * row.wire_size:
            fail(f"tensor_content has {len(content)} bytes, but shape {_format_shape(dims)} of "
                 f"{row.name} needs {count * row.wire_size}")
    else:
        given = len(getattr(tp, row.val_field))
        if row.kind == "complex":
            if given % 2:
                fail(f"{row.val_field} has {given} numbers; complex values are (real, imag) pairs")
            given //= 2
        if given > count:
            fail(f"{row.val_field} has {given} values, but shape {_format_shape(dims)} of "
                 f"{row.name} holds only {count}")
    return row, dims, count


def check_tensor(tp: pb.TensorProto, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 node: str | None = None) -> None:
    """Raise GraphError if the TensorProto cannot be decoded, without decoding or allocating it.

    Checks: a known, decodable dtype; a fully known shape with non-negative dimensions and an
    element count TensorFlow can index; `tensor_content` of exactly the right length; no more
    `*_val` values than the shape holds; a decoded size of at most `max_bytes`.
    """
    _validate(tp, tp.tensor_content, max_bytes, node)


# ---- decoding ------------------------------------------------------------------------------------

def _bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    # A bfloat16 is the high half of a float32.
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16, ties to even, as TensorFlow does; keep NaNs NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    # NaNs become the quiet NaN of the same sign, as tf.make_tensor_proto (ml_dtypes) makes them;
    # rounding their mantissa could carry into the sign or turn them into infinities.
    nan = ((bits >> 16) & 0x8000) | 0x7FC0
    return np.where(np.isnan(values), nan, rounded).astype(np.uint16)


def _decode_strings(content: bytes, count: int, node: str | None) -> np.ndarray:
    """C++'s string tensor_content: `count` varint lengths, then the strings back to back."""
    lengths = []
    pos = 0
    size = len(content)
    for _ in range(count):
        length = shift = 0
        while True:
            if pos >= size or shift > 28:
                raise GraphError("string tensor_content is malformed: bad length prefix",
                                 node=node)
            byte = content[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        lengths.append(length)
    if pos + sum(lengths) != size:
        raise GraphError(f"string tensor_content is malformed: the lengths add up to "
                         f"{sum(lengths)} bytes, but {size - pos} follow them", node=node)
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = content[pos:pos + length]
        pos += length
    return out


def _decode_content(row: DType, content: bytes, count: int, node: str | None) -> np.ndarray:
    if row.enum == DT_STRING:
        return _decode_strings(content, count, node)
    if row.enum == DT_BFLOAT16:
        return _bfloat16_bits_to_float32(np.frombuffer(content, dtype="<u2"))
    # A view of the bytes: no copy, and read-only because bytes are immutable.
    values = np.frombuffer(content, dtype=row.holder.newbyteorder("<"))
    if row.kind == "bool" and count and np.frombuffer(content, dtype=np.uint8).max() > 1:
        # TensorFlow's C++ refuses bool bytes other than 0 and 1.
        raise GraphError("bool tensor_content has a byte that is neither 0 nor 1", node=node)
    return values


def _decode_field(tp: pb.TensorProto, row: DType, given: int) -> np.ndarray:
    """The values of the dtype's *_val field as a 1-D array of the holder dtype."""
    field = getattr(tp, row.val_field)
    if row.kind == "string":
        out = np.empty(given, dtype=object)
        out[:] = list(field)
        return out
    if row.val_field in ("int_val", "half_val"):
        # int32 on the wire; narrower types keep the low bits, like C++'s static_cast.
        wide = np.fromiter(field, dtype=np.int64, count=given)
        if row.enum == DT_HALF:
            return wide.astype(np.uint16).view(np.float16)
        if row.enum == DT_BFLOAT16:
            return _bfloat16_bits_to_float32(wide.astype(np.uint16))
        return wide.astype(row.holder)
    if row.kind == "complex":
        part = np.float32 if row.holder == np.complex64 else np.float64
        return np.fromiter(field, dtype=part, count=2 * given).view(row.holder)
    return np.fromiter(field, dtype=row.holder, count=given)


def decode_tensor(tp: pb.TensorProto, *, max_bytes: int = DEFAULT_MAX_BYTES,
                  node: str | None = None, content=None) -> np.ndarray:
    """The numpy array a TensorProto holds, with TensorFlow's fill rule for short `*_val` fields.

    Arrays decoded from `tensor_content` are read-only views of the proto's bytes (except
    bfloat16, converted to float32, and strings); arrays from `*_val` fields are fresh and writable.
    `content` gives the `tensor_content` bytes when they are kept apart from `tp` (a view into a
    memory-mapped file, which the array then views). Raises GraphError (see `check_tensor`) for
    tensors that cannot be decoded.
    """
    if content is None:
        content = tp.tensor_content     # fetched once: every access copies the bytes
    row, dims, count = _validate(tp, content, max_bytes, node)
    if content:
        return _decode_content(row, content, count, node).reshape(dims)
    given = len(getattr(tp, row.val_field))
    if row.kind == "complex":
        given //= 2
    if given == 0:
        if row.kind == "string":
            return np.full(dims, b"", dtype=object)
        return np.zeros(dims, dtype=row.holder)
    values = _decode_field(tp, row, given)
    if given < count:
        filled = np.empty(count, dtype=row.holder)
        filled[:given] = values
        filled[given:] = values[-1]     # TensorFlow repeats the last value given
        values = filled
    return values.reshape(dims)


# ---- encoding ------------------------------------------------------------------------------------

def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"a string tensor holds bytes or str, not {type(value).__name__}")


def encode_tensor(array, dtype: int | None = None) -> pb.TensorProto:
    """A TensorProto laid out as `tf.make_tensor_proto` lays it out.

    `dtype` defaults to the array's own (`dtype_for_array`: float64 stays double). Arrays of more
    than one element go to `tensor_content` except for uint16, bool, complex and string, which
    (like every one-element tensor) go to their `*_val` field; an empty tensor has neither. bfloat16
    values are rounded from float32 to nearest-even.
    """
    tp = pb.TensorProto()
    encode_tensor_into(tp, array, dtype)
    return tp


def encode_tensor_into(tp: pb.TensorProto, array, dtype: int | None = None) -> None:
    """`encode_tensor` into `tp`, an empty TensorProto such as a new node's attr: building it in
    place spares copying the bytes again."""
    a = np.asarray(array)
    if a.dtype.kind in "SU" and not isinstance(array, np.ndarray):
        # numpy's fixed-width bytes drop trailing NULs; keep Python strings as they are.
        a = np.array(array, dtype=object)
    if dtype is None:
        dtype = dtypes.dtype_for_array(a)
    if a.dtype.names is not None and len(a.dtype.names) == 1:
        a = a[a.dtype.names[0]]          # TensorFlow's structured quantized dtypes: the codes
    row = dtypes.dtype_info(dtype)
    if row is None or row.holder is None:
        raise ValueError(f"cannot encode values of dtype {dtypes.dtype_name(dtype)}")

    tp.dtype = row.enum
    tp.tensor_shape.SetInParent()       # TensorFlow writes the (empty) shape of a scalar too
    for d in a.shape:
        tp.tensor_shape.dim.add(size=d)
    if a.size == 0:
        return

    if row.kind == "string":
        getattr(tp, row.val_field).extend(_as_bytes(v) for v in a.reshape(-1).tolist())
        return
    values = _holder_values(a, row)
    if row.content_layout and a.size > 1:
        wire = values.astype(values.dtype.newbyteorder("<"), copy=False)
        if wire.nbytes >= _PROTO_LIMIT:
            raise GraphError(f"tensor of shape {_format_shape(a.shape)} needs {wire.nbytes} "
                             f"bytes; protobuf messages are limited to 2 GB")
        tp.tensor_content = wire.tobytes()   # tobytes writes C order whatever the layout
        return

    flat = np.ascontiguousarray(values).reshape(-1)
    if row.enum == DT_HALF:
        flat = flat.view(np.uint16)          # half_val holds the bits
    elif row.kind == "complex":
        flat = flat.view(np.float32 if row.holder == np.complex64 else np.float64)
    getattr(tp, row.val_field).extend(flat.tolist())


def _holder_values(a: np.ndarray, row: DType) -> np.ndarray:
    """`a` in the dtype's holder, bfloat16 as its bits."""
    if row.enum == DT_BFLOAT16:
        if a.dtype.name == "bfloat16" and a.dtype.itemsize == 2:
            return np.ascontiguousarray(a).view(np.uint16)   # already bfloat16 (ml_dtypes)
        return _float32_to_bfloat16_bits(a.astype(np.float32))
    return a.astype(row.holder, copy=False)


def content_array(array, dtype: int) -> np.ndarray:
    """An array whose buffer is the bytes `tensor_content` would hold for `array` as `dtype`
    (little-endian, C order, bfloat16 as its bits, no strings): `array` itself when it already is
    that, as a view of a memory-mapped file is."""
    row = dtypes.dtype_info(dtype)
    if row is None or row.holder is None or row.kind == "string":
        raise ValueError(f"tensors of dtype {dtypes.dtype_name(dtype)} have no fixed-size bytes")
    values = _holder_values(np.asarray(array), row)
    return np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))
