"""Regenerate engine/data/ops.json from the op definitions TensorFlow registers.

Run from the repository root, with TensorFlow installed (the `test` extra):

    python scripts/regenerate_op_registry.py            # writes engine/data/ops.json
    python scripts/regenerate_op_registry.py --check    # exit 1 if the file is stale
    python scripts/regenerate_op_registry.py -o other.json

The runtime loader is `gtt_rules.engine.op_registry`; it reads the JSON and never
imports TensorFlow. This script is a development tool and is not part of the package.

File layout (strict JSON, keys sorted, one op per line so diffs stay readable):

    {"dtypes": {"DT_FLOAT": 1, ...},        every DataType enum name -> value
     "format_version": 1,
     "generator": "scripts/regenerate_op_registry.py",
     "ops": {"Abs": {...}, ...},
     "tensorflow_version": "2.21.0"}

Each op record holds `inputs`, `outputs` and `attrs` (lists, in TensorFlow's order)
and, only when true, `is_aggregate`, `is_commutative`, `is_stateful`, plus
`deprecated_since` (GraphDef version) when TensorFlow deprecates the op.
Keys that would be null or false are left out to keep the file small:

    arg:  name, type ("DT_FLOAT"), type_attr, number_attr, type_list_attr, is_ref
    attr: name, type ("int", "list(type)", ...), default, allowed_values, minimum

Attr defaults are plain JSON: type -> enum name, shape -> list of dims (-1 for an
unknown dim) or null for unknown rank, tensor -> null, func -> function name,
list(...) -> JSON list, non-finite floats -> "Infinity" / "-Infinity" / "NaN".
`minimum` is the smallest value of an int attr, or the shortest length of a list attr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

FORMAT_VERSION = 1
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "engine" / "data" / "ops.json"


def _load_tensorflow():
    # Silence TensorFlow's start-up logging; it goes to stderr and hides real errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from tensorflow.core.framework import op_def_pb2, types_pb2
    from tensorflow.python.client import pywrap_tf_session
    from tensorflow.python.framework import op_def_registry

    return tf, op_def_pb2, types_pb2, pywrap_tf_session, op_def_registry


def registered_op_defs():
    """Every OpDef TensorFlow has registered, sorted by name, without docs."""
    tf, op_def_pb2, _, pywrap_tf_session, op_def_registry = _load_tensorflow()
    # tf.raw_ops misses ~450 registered ops (_Mkl*, _FusedConv2D, _Retval, Xla*...),
    # so take the names from the C registry itself.
    buffer = pywrap_tf_session.TF_GetAllOpList()
    op_list = op_def_pb2.OpList()
    op_list.ParseFromString(pywrap_tf_session.TF_GetBuffer(buffer))
    names = sorted({op.name for op in op_list.op})
    # op_def_registry.get returns the same defs with descriptions stripped.
    return tf.__version__, [op_def_registry.get(name) for name in names]


def dtype_names() -> dict[str, int]:
    _, _, types_pb2, _, _ = _load_tensorflow()
    return {name: int(value) for name, value in types_pb2.DataType.items()}


def _float(value: float):
    # Strict JSON has no Infinity/NaN literals; the loader turns these strings back.
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _shape(shape_proto):
    if shape_proto.unknown_rank:
        return None
    return [int(dim.size) for dim in shape_proto.dim]


def encode_attr_value(attr_type: str, value, enum_name) -> object:
    """Encode an AttrValue as plain JSON, guided by the attr's declared type."""
    if attr_type.startswith("list(") and attr_type.endswith(")"):
        element = attr_type[5:-1]
        items = value.list
        if element == "type":
            return [enum_name(t) for t in items.type]
        if element == "int":
            return [int(i) for i in items.i]
        if element == "float":
            return [_float(f) for f in items.f]
        if element == "bool":
            return [bool(b) for b in items.b]
        if element == "string":
            return [s.decode("utf-8", "backslashreplace") for s in items.s]
        if element == "shape":
            return [_shape(s) for s in items.shape]
        if element == "func":
            return [f.name for f in items.func]
        if element == "tensor":
            return None
        raise ValueError(f"unknown attr type {attr_type!r}")
    if attr_type == "type":
        return enum_name(value.type)
    if attr_type == "int":
        return int(value.i)
    if attr_type == "float":
        return _float(value.f)
    if attr_type == "bool":
        return bool(value.b)
    if attr_type == "string":
        return value.s.decode("utf-8", "backslashreplace")
    if attr_type == "shape":
        return _shape(value.shape)
    if attr_type == "func":
        return value.func.name
    if attr_type == "tensor":
        return None
    raise ValueError(f"unknown attr type {attr_type!r}")


def encode_arg(arg, enum_name) -> dict:
    record: dict = {"name": arg.name}
    if arg.type:  # DT_INVALID (0) means the type comes from an attr
        record["type"] = enum_name(arg.type)
    for key in ("type_attr", "number_attr", "type_list_attr"):
        if getattr(arg, key):
            record[key] = getattr(arg, key)
    if arg.is_ref:
        record["is_ref"] = True
    return record


def encode_attr(attr, enum_name) -> dict:
    record: dict = {"name": attr.name, "type": attr.type}
    if attr.HasField("default_value"):
        record["default"] = encode_attr_value(attr.type, attr.default_value, enum_name)
    if attr.HasField("allowed_values"):
        # allowed_values is always a list of the attr's element type.
        element = attr.type[5:-1] if attr.type.startswith("list(") else attr.type
        record["allowed_values"] = encode_attr_value(
            f"list({element})", attr.allowed_values, enum_name
        )
    if attr.has_minimum:
        record["minimum"] = int(attr.minimum)
    return record


def encode_op(op_def, enum_name) -> dict:
    record: dict = {
        "inputs": [encode_arg(a, enum_name) for a in op_def.input_arg],
        "outputs": [encode_arg(a, enum_name) for a in op_def.output_arg],
        "attrs": [encode_attr(a, enum_name) for a in op_def.attr],
    }
    for flag in ("is_aggregate", "is_commutative", "is_stateful"):
        if getattr(op_def, flag):
            record[flag] = True
    if op_def.HasField("deprecation"):
        record["deprecated_since"] = int(op_def.deprecation.version)
    return record


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def render() -> str:
    """The full text of ops.json for the TensorFlow in this environment."""
    version, op_defs = registered_op_defs()
    dtypes = dtype_names()
    by_value = {value: name for name, value in dtypes.items()}

    def enum_name(value: int) -> str:
        return by_value[int(value)]

    # Written by hand around json.dumps so each op gets its own line; the result is
    # still one JSON document with sorted keys at every level.
    lines = ["{", f'"dtypes":{_dumps(dtypes)},', f'"format_version":{FORMAT_VERSION},']
    lines.append('"generator":"scripts/regenerate_op_registry.py",')
    lines.append('"ops":{')
    op_lines = [f"{_dumps(op.name)}:{_dumps(encode_op(op, enum_name))}" for op in op_defs]
    lines.append(",\n".join(op_lines))
    lines.append("},")
    lines.append(f'"tensorflow_version":{_dumps(version)}')
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # fail here, not at runtime, if the hand-made layout is broken
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the file differs"
    )
    args = parser.parse_args(argv)

    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0

    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".json.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(args.output)  # never leave a half-written registry behind
    ops = len(json.loads(text)["ops"])
    print(f"wrote {args.output}: {ops} ops, {len(text.encode('utf-8'))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
