"""TensorFlow's DataTypes: names, the numpy dtype that holds values, and how values are stored.

One table, `DTYPES`, holds every fact about a type; the functions below only look things up in it.

How values are held in numpy (numpy has no TensorFlow-specific types, and we must not depend on
ml_dtypes at runtime):

- quantized types (qint8, quint8, qint16, quint16, qint32) hold their integer codes in the plain
  integer dtype of the same width and signedness; the scale lives elsewhere (min/max inputs).
- bfloat16 values are held as float32. numpy has no bfloat16, and every bfloat16 is a float32 with
  the low 16 bits of the mantissa zero, so float32 holds each one exactly; encoding rounds back to
  nearest-even bfloat16 as TensorFlow does.
- string is an object array of `bytes`.
- resource, variant, the float8 types and int4/uint4/int2/uint2 have names (so messages and attrs
  can mention them) but no numpy holder: their values cannot be decoded.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DType(NamedTuple):
    """Facts about one TensorFlow DataType."""

    enum: int                   # the DataType enum value in GraphDef protos
    name: str                   # the short name TensorFlow prints ("float", "half", ...)
    aliases: tuple[str, ...]    # other accepted spellings (numpy / tf.* names)
    kind: str                   # float | int | bool | complex | string | quantized | handle
    holder: np.dtype | None     # numpy dtype that holds decoded values; None: not decodable
    wire_size: int | None       # bytes per element in tensor_content; None: not fixed-size
    val_field: str | None       # repeated TensorProto field used when there is no tensor_content
    content_layout: bool        # tf.make_tensor_proto uses tensor_content when size > 1


def _row(enum, name, aliases, kind, holder, wire_size, val_field, content_layout):
    return DType(enum, name, tuple(aliases), kind,
                 None if holder is None else np.dtype(holder), wire_size, val_field, content_layout)


# tf.make_tensor_proto puts arrays of more than one element in tensor_content for the types marked
# True; uint16, bool, complex and string always go to their *_val field.
DTYPES: tuple[DType, ...] = (
    _row(1, "float", ["float32"], "float", np.float32, 4, "float_val", True),
    _row(2, "double", ["float64"], "float", np.float64, 8, "double_val", True),
    _row(3, "int32", [], "int", np.int32, 4, "int_val", True),
    _row(4, "uint8", [], "int", np.uint8, 1, "int_val", True),
    _row(5, "int16", [], "int", np.int16, 2, "int_val", True),
    _row(6, "int8", [], "int", np.int8, 1, "int_val", True),
    _row(7, "string", ["bytes"], "string", object, None, "string_val", False),
    _row(8, "complex64", [], "complex", np.complex64, 8, "scomplex_val", False),
    _row(9, "int64", [], "int", np.int64, 8, "int64_val", True),
    _row(10, "bool", [], "bool", np.bool_, 1, "bool_val", False),
    _row(11, "qint8", [], "quantized", np.int8, 1, "int_val", True),
    _row(12, "quint8", [], "quantized", np.uint8, 1, "int_val", True),
    _row(13, "qint32", [], "quantized", np.int32, 4, "int_val", True),
    _row(14, "bfloat16", [], "float", np.float32, 2, "half_val", True),
    _row(15, "qint16", [], "quantized", np.int16, 2, "int_val", True),
    _row(16, "quint16", [], "quantized", np.uint16, 2, "int_val", True),
    _row(17, "uint16", [], "int", np.uint16, 2, "int_val", False),
    _row(18, "complex128", [], "complex", np.complex128, 16, "dcomplex_val", False),
    _row(19, "half", ["float16"], "float", np.float16, 2, "half_val", True),
    _row(20, "resource", [], "handle", None, None, None, False),
    _row(21, "variant", [], "handle", None, None, None, False),
    _row(22, "uint32", [], "int", np.uint32, 4, "uint32_val", True),
    _row(23, "uint64", [], "int", np.uint64, 8, "uint64_val", True),
    _row(24, "float8_e5m2", [], "float", None, 1, None, False),
    _row(25, "float8_e4m3fn", [], "float", None, 1, None, False),
    _row(26, "float8_e4m3fnuz", [], "float", None, 1, None, False),
    _row(27, "float8_e4m3b11fnuz", [], "float", None, 1, None, False),
    _row(28, "float8_e5m2fnuz", [], "float", None, 1, None, False),
    _row(29, "int4", [], "int", None, None, None, False),
    _row(30, "uint4", [], "int", None, None, None, False),
    _row(31, "int2", [], "int", None, None, None, False),
    _row(32, "uint2", [], "int", None, None, None, False),
    _row(33, "float4_e2m1fn", [], "float", None, None, None, False),
)

# Reference types (a ref to a variable of type T) are T + 100; they appear in old graphs' attrs.
REF_OFFSET = 100

_BY_ENUM = {d.enum: d for d in DTYPES}
_BY_NAME = {spelling: d for d in DTYPES for spelling in (d.name, *d.aliases)}
# The DataType an array of a numpy dtype stands for: only rows whose holder is the type itself
# (not quantized codes, not bfloat16-held-as-float32).
_BY_HOLDER = {d.holder: d.enum for d in DTYPES
              if d.holder is not None and d.kind != "quantized" and d.name != "bfloat16"}

# The constants, for convenience: DT_FLOAT = 1, DT_HALF = 19, ...
DT_INVALID = 0
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_COMPLEX64, DT_INT64, DT_BOOL, DT_QINT8, DT_QUINT8, DT_QINT32 = 8, 9, 10, 11, 12, 13
DT_BFLOAT16, DT_QINT16, DT_QUINT16, DT_UINT16, DT_COMPLEX128, DT_HALF = 14, 15, 16, 17, 18, 19
DT_RESOURCE, DT_VARIANT, DT_UINT32, DT_UINT64 = 20, 21, 22, 23


def dtype_info(dt: int) -> DType | None:
    """The table row for a DataType enum value, or None if it is unknown."""
    return _BY_ENUM.get(int(dt))


def dtype_name(dt: int) -> str:
    """TensorFlow's short name for a DataType ("float", "quint8", "float_ref", ...)."""
    dt = int(dt)
    row = _BY_ENUM.get(dt)
    if row is not None:
        return row.name
    row = _BY_ENUM.get(dt - REF_OFFSET)
    if row is not None:
        return row.name + "_ref"
    # Same wording as TensorFlow's DataTypeString for values it does not know.
    return f"unknown dtype enum ({dt})"


def parse_dtype(text: str) -> int:
    """The DataType enum for a name: `float`, `float32`, `DT_FLOAT`, `tf.float32` (any case)."""
    key = text.strip().lower()
    for prefix in ("tf.", "dt_"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    ref = key.endswith("_ref")
    row = _BY_NAME.get(key[:-4] if ref else key)
    if row is None:
        valid = ", ".join(d.name for d in DTYPES)
        raise ValueError(f"unknown dtype {text!r}; valid names: {valid}")
    return row.enum + (REF_OFFSET if ref else 0)


def numpy_dtype(dt: int) -> np.dtype:
    """The numpy dtype that holds decoded values of `dt` (ValueError if it has none)."""
    row = _BY_ENUM.get(int(dt))
    if row is None or row.holder is None:
        raise ValueError(f"dtype {dtype_name(dt)} has no numpy representation")
    return row.holder


def dtype_for_array(a: np.ndarray) -> int:
    """The DataType an array stands for: float32 -> DT_FLOAT, bytes/str -> DT_STRING, ...

    Arrays that come from TensorFlow itself are recognised too: ml_dtypes bfloat16 (by name, without
    importing ml_dtypes) and TF's one-field structured dtypes for quantized types.
    """
    dt = np.asarray(a).dtype
    enum = _BY_HOLDER.get(dt)  # the usual case first: a plain numpy dtype (`dt.name` costs more)
    if enum is not None:
        return enum
    if dt.kind in "OSU":
        return DT_STRING
    if dt.names is not None and len(dt.names) == 1 and dt.names[0] in _BY_NAME:
        row = _BY_NAME[dt.names[0]]
        if row.kind == "quantized":
            return row.enum
    if dt.name == "bfloat16" and dt.itemsize == 2:
        return DT_BFLOAT16
    enum = _BY_HOLDER.get(dt.newbyteorder("="))  # big-endian arrays stand for the same type
    if enum is None:
        raise ValueError(f"numpy dtype {dt} has no TensorFlow DataType")
    return enum


def _kind(dt: int) -> str | None:
    row = _BY_ENUM.get(int(dt))
    return None if row is None else row.kind


def is_quantized(dt: int) -> bool:
    """qint8, quint8, qint16, quint16, qint32."""
    return _kind(dt) == "quantized"


def is_float(dt: int) -> bool:
    """Real floating point: half, bfloat16, float, double (and the float8/float4 types)."""
    return _kind(dt) == "float"


def is_integer(dt: int) -> bool:
    """Plain signed and unsigned integers; not bool and not the quantized types."""
    return _kind(dt) == "int"
