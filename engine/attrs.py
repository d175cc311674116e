"""Decode NodeDef attr values into plain Python values, and encode them back.

Decoded forms: string -> str (bytes when not UTF-8), int -> int, float -> float, bool -> bool,
type -> int (a DataType), shape -> tuple of ints or None for unknown rank, tensor -> numpy array,
func -> the function name, list(...) -> list of the element form.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .proto import graph_def_pb2 as pb
from .tensors import decode_tensor, encode_tensor_into, shape_from_proto, shape_to_proto


def _decode_string(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def decode_attr(value: pb.AttrValue) -> Any:
    """The Python value of one AttrValue."""
    kind = value.WhichOneof("value")
    if kind == "s":
        return _decode_string(value.s)
    if kind in ("i", "f", "b", "type", "placeholder"):
        return getattr(value, kind)
    if kind == "shape":
        return shape_from_proto(value.shape)
    if kind == "tensor":
        return decode_tensor(value.tensor)
    if kind == "func":
        return value.func.name
    if kind == "list":
        items = value.list
        for field in ("s", "i", "f", "b", "type", "shape", "tensor", "func"):
            elements = getattr(items, field)
            if len(elements):
                if field == "s":
                    return [_decode_string(e) for e in elements]
                if field == "shape":
                    return [shape_from_proto(e) for e in elements]
                if field == "tensor":
                    return [decode_tensor(e) for e in elements]
                if field == "func":
                    return [e.name for e in elements]
                return list(elements)
        return []
    return None


def attr_kind(value: Any) -> str:
    """Guess the attr type of a Python value whose op gives no declared type."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, (str, bytes)):
        return "string"
    if isinstance(value, np.ndarray):
        return "tensor"
    if isinstance(value, (list, tuple)):
        inner = attr_kind(value[0]) if value else "int"
        return f"list({inner})"
    raise TypeError(f"cannot store {type(value).__name__} in an attr")


def encode_attr(value: Any, kind: str | None = None) -> pb.AttrValue:
    """An AttrValue holding `value`, stored as attr type `kind` (e.g. "type", "list(int)")."""
    kind = kind or attr_kind(value)
    out = pb.AttrValue()
    if kind.startswith("list("):
        inner = kind[5:-1]
        items = out.list
        items.SetInParent()  # an empty list is still a list, not an unset attr
        for element in value:
            _append(items, inner, element)
        return out
    if kind == "string":
        out.s = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    elif kind == "int":
        out.i = int(value)
    elif kind == "float":
        out.f = float(value)
    elif kind == "bool":
        out.b = bool(value)
    elif kind == "type":
        out.type = int(value)
    elif kind == "shape":
        out.shape.CopyFrom(shape_to_proto(value))
    elif kind == "tensor":
        if isinstance(value, pb.TensorProto):
            out.tensor.CopyFrom(value)
        else:
            encode_tensor_into(out.tensor, np.asarray(value))
    elif kind == "func":
        out.func.name = value
    else:
        raise TypeError(f"unknown attr type '{kind}'")
    return out


def _append(items: pb.AttrValue.ListValue, inner: str, element: Any) -> None:
    if inner == "string":
        items.s.append(element.encode("utf-8") if isinstance(element, str) else bytes(element))
    elif inner == "int":
        items.i.append(int(element))
    elif inner == "float":
        items.f.append(float(element))
    elif inner == "bool":
        items.b.append(bool(element))
    elif inner == "type":
        items.type.append(int(element))
    elif inner == "shape":
        items.shape.add().CopyFrom(shape_to_proto(element))
    elif inner == "tensor":
        encode_tensor_into(items.tensor.add(), np.asarray(element))
    elif inner == "func":
        items.func.add().name = element
    else:
        raise TypeError(f"unknown attr type 'list({inner})'")
