"""TensorFlow op definitions, read from the generated `data/ops.json`.

The data comes from TensorFlow's own op registry (see
`scripts/regenerate_op_registry.py`); this module only reads it, so TensorFlow is
not needed at runtime. Data types are the integer `DataType` enum values of
TensorFlow's `types.proto` (DT_FLOAT = 1, DT_QUINT8 = 12, ...).
"""

from __future__ import annotations

import json
import operator
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = [
    "ArgDef",
    "AttrDef",
    "OpDef",
    "all_op_names",
    "default_attrs",
    "dtype_enum",
    "dtype_name",
    "get_op",
    "input_count",
    "input_dtypes",
    "AmbiguousInputs",
    "infer_input_attrs",
    "num_outputs",
    "output_dtypes",
]

# TensorFlow encodes a reference to a tensor of type T as T + 100 (DT_FLOAT_REF = 101).
_REF_OFFSET = 100

AttrLookup = Callable[[str], Any]


@dataclass(frozen=True)
class ArgDef:
    """One input or output argument of an op.

    Exactly one of `dtype` (a fixed type), `type_attr` or `type_list_attr` says the
    type; `number_attr` names the int attr that repeats the argument N times.
    """

    name: str
    dtype: int | None
    type_attr: str | None
    number_attr: str | None
    type_list_attr: str | None
    is_ref: bool


@dataclass(frozen=True)
class AttrDef:
    """One attr of an op.

    `default` is decoded: type -> int enum value, list(type) -> tuple of ints,
    shape -> tuple of dims (-1 unknown) or None for unknown rank, other lists ->
    tuples, tensor -> None. `allowed_values` holds enum values for type attrs and
    strings for string attrs. `minimum` is the least value of an int attr or the
    least length of a list attr.
    """

    name: str
    type: str
    has_default: bool
    default: Any = field(hash=False)
    allowed_values: tuple | None
    minimum: int | None

    @property
    def known_default(self) -> bool:
        """Whether the attr has a default we can write: TensorFlow's importer fills it into a node
        that leaves the attr unset (a tensor's default, which reads as None here, is left alone)."""
        return self.has_default and (self.default is not None or self.type == "shape")


@dataclass(frozen=True)
class OpDef:
    """An op's signature: its arguments, attrs and flags, as TensorFlow registers it.

    OpDefs are shared between callers; treat `attrs` as read-only.
    """

    name: str
    inputs: tuple[ArgDef, ...]
    outputs: tuple[ArgDef, ...]
    attrs: dict[str, AttrDef] = field(hash=False)
    is_commutative: bool = False
    is_stateful: bool = False
    is_aggregate: bool = False
    # GraphDef producer version from which TensorFlow refuses the op, if any.
    deprecated_since: int | None = None


class _Registry:
    """The parsed JSON plus a cache of decoded OpDefs; built on first use."""

    def __init__(self, document: dict) -> None:
        self.dtypes: dict[str, int] = document["dtypes"]
        self.dtype_names: dict[int, str] = {v: k for k, v in self.dtypes.items()}
        self.records: dict[str, dict] = document["ops"]
        self.tensorflow_version: str = document.get("tensorflow_version", "")
        self.op_defs: dict[str, OpDef] = {}

    def op(self, name: str) -> OpDef | None:
        op_def = self.op_defs.get(name)
        if op_def is None:
            record = self.records.get(name)
            if record is None:
                return None
            op_def = self.op_defs.setdefault(name, self._decode_op(name, record))
        return op_def

    def _decode_op(self, name: str, record: dict) -> OpDef:
        attrs = {a["name"]: self._decode_attr(a) for a in record.get("attrs", ())}
        return OpDef(
            name=name,
            inputs=tuple(self._decode_arg(a) for a in record.get("inputs", ())),
            outputs=tuple(self._decode_arg(a) for a in record.get("outputs", ())),
            attrs=attrs,
            is_commutative=record.get("is_commutative", False),
            is_stateful=record.get("is_stateful", False),
            is_aggregate=record.get("is_aggregate", False),
            deprecated_since=record.get("deprecated_since"),
        )

    def _decode_arg(self, record: dict) -> ArgDef:
        fixed = record.get("type")
        return ArgDef(
            name=record["name"],
            dtype=self.dtypes[fixed] if fixed is not None else None,
            type_attr=record.get("type_attr"),
            number_attr=record.get("number_attr"),
            type_list_attr=record.get("type_list_attr"),
            is_ref=record.get("is_ref", False),
        )

    def _decode_attr(self, record: dict) -> AttrDef:
        attr_type = record["type"]
        has_default = "default" in record
        allowed = record.get("allowed_values")
        if allowed is not None:
            element = attr_type[5:-1] if attr_type.startswith("list(") else attr_type
            allowed = self._decode_value(f"list({element})", allowed)
        return AttrDef(
            name=record["name"],
            type=attr_type,
            has_default=has_default,
            default=self._decode_value(attr_type, record["default"]) if has_default else None,
            allowed_values=allowed,
            minimum=record.get("minimum"),
        )

    def _decode_value(self, attr_type: str, value: Any) -> Any:
        if value is None:
            return None
        if attr_type.startswith("list("):
            element = attr_type[5:-1]
            return tuple(self._decode_value(element, item) for item in value)
        if attr_type == "type":
            return self.dtypes[value]
        if attr_type == "float":
            # Non-finite floats are stored as strings to keep the JSON strict.
            return float(value)
        if attr_type == "shape":
            return tuple(value)
        return value


_registry: _Registry | None = None
_lock = threading.Lock()


def _load() -> _Registry:
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                text = resources.files(__package__).joinpath("data/ops.json").read_text("utf-8")
                _registry = _Registry(json.loads(text))
    return _registry


def get_op(name: str) -> OpDef | None:
    """The definition of op `name`, or None if TensorFlow registers no such op."""
    return _load().op(name)


def all_op_names() -> list[str]:
    """Every registered op name, sorted."""
    return sorted(_load().records)


def dtype_enum(name: str) -> int:
    """The DataType enum value for a name such as "DT_FLOAT" (KeyError if unknown)."""
    return _load().dtypes[name]


def dtype_name(value: int) -> str:
    """The DataType enum name for a value such as 1 (KeyError if unknown)."""
    return _load().dtype_names[value]


def default_attrs(op_def: OpDef) -> dict[str, Any]:
    """The decoded default of every attr of `op_def` that has one."""
    return {name: a.default for name, a in op_def.attrs.items() if a.has_default}


class _Undetermined(Exception):
    """An attr needed to size or type an argument is missing or malformed."""


def _lookup(op_def: OpDef, attr: AttrLookup | Mapping[str, Any], name: str) -> Any:
    try:
        return attr[name] if isinstance(attr, Mapping) else attr(name)
    except KeyError:
        attr_def = op_def.attrs.get(name)
        if attr_def is None or not attr_def.has_default:
            raise _Undetermined(name) from None
        return attr_def.default


def _as_int(value: Any, name: str) -> int:
    # bool is an int subclass but never a valid count or dtype; numpy ints are fine.
    if isinstance(value, bool):
        raise _Undetermined(name)
    try:
        return operator.index(value)
    except TypeError:
        raise _Undetermined(name) from None


def _lookup_int(op_def: OpDef, attr, name: str) -> int:
    return _as_int(_lookup(op_def, attr, name), name)


def _lookup_int_list(op_def: OpDef, attr, name: str) -> list[int]:
    value = _lookup(op_def, attr, name)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise _Undetermined(name)
    return [_as_int(item, name) for item in value]


def _arg_count(op_def: OpDef, arg: ArgDef, attr) -> int:
    if arg.number_attr:
        count = _lookup_int(op_def, attr, arg.number_attr)
        if count < 0:
            raise _Undetermined(arg.number_attr)
        return count
    if arg.type_list_attr:
        return len(_lookup_int_list(op_def, attr, arg.type_list_attr))
    return 1


def _arg_dtypes(op_def: OpDef, arg: ArgDef, attr) -> list[int]:
    if arg.type_list_attr:
        dtypes = _lookup_int_list(op_def, attr, arg.type_list_attr)
    else:
        dtype = arg.dtype
        if dtype is None:
            if not arg.type_attr:
                raise _Undetermined(arg.name)
            dtype = _lookup_int(op_def, attr, arg.type_attr)
        dtypes = [dtype] * _arg_count(op_def, arg, attr)
    if arg.is_ref:
        # A ref output's dtype is the *_REF variant, as TensorFlow reports it.
        dtypes = [d if d > _REF_OFFSET else d + _REF_OFFSET for d in dtypes]
    return dtypes


def output_dtypes(op_def: OpDef, attr: AttrLookup | Mapping[str, Any]) -> list[int] | None:
    """The DataType enum value of every output port of a node of `op_def`.

    `attr(name)` returns the node's decoded attr value (int for type and int attrs,
    a list of ints for list(type)) or raises KeyError, in which case the registry
    default is used; a Mapping works too. Ref outputs get the *_REF enum value.
    Returns None when a needed attr is missing and has no default, or is malformed.
    """
    try:
        return [d for arg in op_def.outputs for d in _arg_dtypes(op_def, arg, attr)]
    except _Undetermined:
        return None


def input_dtypes(op_def: OpDef, attr: AttrLookup | Mapping[str, Any]) -> list[int] | None:
    """The DataType enum value every data input of a node of `op_def` takes (see `output_dtypes`)."""
    try:
        return [d for arg in op_def.inputs for d in _arg_dtypes(op_def, arg, attr)]
    except _Undetermined:
        return None


def num_outputs(op_def: OpDef, attr: AttrLookup | Mapping[str, Any]) -> int | None:
    """The number of output ports of a node of `op_def` (see `output_dtypes`)."""
    try:
        return sum(_arg_count(op_def, arg, attr) for arg in op_def.outputs)
    except _Undetermined:
        return None


def input_count(op_def: OpDef, attr: AttrLookup | Mapping[str, Any]) -> int | None:
    """The number of data inputs a node of `op_def` takes (see `output_dtypes`)."""
    try:
        return sum(_arg_count(op_def, arg, attr) for arg in op_def.inputs)
    except _Undetermined:
        return None


class AmbiguousInputs(ValueError):
    """A node's inputs cannot be split among its op's list arguments without more attrs."""


def infer_input_attrs(op_def: OpDef, input_dtypes: list[int | None], given: Mapping[str, Any]) -> dict[str, Any]:
    """Attr values a node's inputs imply, for the attrs not in `given` (attr name -> decoded
    value): each list argument's length (`N`, `num_args`) and each type attr (`T`, `TArgs`) from
    the dtypes of the inputs it covers.

    The lengths come from the attrs given, then from the input count. When that leaves more than
    one length open, registry defaults settle all but one (as TensorFlow reads an absent attr);
    if that is not enough, or the inputs do not fit, raises AmbiguousInputs rather than guess.
    """
    try:
        lengths = _list_lengths(op_def, len(input_dtypes), given)
    except _Undetermined:
        return {}  # a given count attr is malformed: validation names it
    found: dict[str, Any] = {}
    # A type attr is a value type: an input of a ref type implies its base type (read by value).
    input_dtypes = [dt - _REF_OFFSET if dt is not None and dt > _REF_OFFSET else dt for dt in input_dtypes]
    index = 0  # the node input where this argument starts; a list argument spans several
    for arg in op_def.inputs:
        count = 1
        variable = arg.number_attr or arg.type_list_attr
        if variable:
            count = lengths[variable]
            if arg.number_attr and arg.number_attr not in given:
                found[arg.number_attr] = count
            if arg.type_list_attr and arg.type_list_attr not in given:
                listed = input_dtypes[index:index + count]
                if len(listed) == count and all(dt is not None for dt in listed):
                    found[arg.type_list_attr] = list(listed)
        if arg.type_attr and arg.type_attr not in given and arg.type_attr not in found and count \
                and index < len(input_dtypes) and input_dtypes[index] is not None:
            found[arg.type_attr] = input_dtypes[index]
        index += count
    return found


def _list_lengths(op_def: OpDef, inputs: int, given: Mapping[str, Any]) -> dict[str, int]:
    """The length of each list argument's count attr (several arguments may share one)."""
    uses: dict[str, int] = {}  # count attr -> how many arguments it sizes
    for arg in op_def.inputs:
        variable = arg.number_attr or arg.type_list_attr
        if variable:
            uses[variable] = uses.get(variable, 0) + 1
    spare = inputs - (len(op_def.inputs) - sum(uses.values()))
    lengths: dict[str, int] = {}
    for variable in uses:
        if variable in given:
            value = given[variable]
            if _is_number_attr(op_def, variable):
                lengths[variable] = _as_int(value, variable)
            elif isinstance(value, (list, tuple)):
                lengths[variable] = len(value)
            else:
                raise _Undetermined(variable)
            spare -= lengths[variable] * uses[variable]
    open_ = [v for v in uses if v not in lengths]
    if len(open_) > 1:
        defaulted = [v for v in open_ if op_def.attrs[v].has_default and op_def.attrs[v].default is not None]
        if len(open_) - len(defaulted) == 1:
            for variable in defaulted:
                default = op_def.attrs[variable].default
                lengths[variable] = default if _is_number_attr(op_def, variable) else len(default)
                spare -= lengths[variable] * uses[variable]
            open_ = [v for v in open_ if v not in lengths]
    if len(open_) > 1:
        raise AmbiguousInputs(f"cannot tell how {inputs} inputs split among {op_def.name}'s list "
                              f"arguments: give all but one of the attrs {', '.join(open_)}")
    if open_:
        (variable,) = open_
        if spare < 0 or spare % uses[variable]:
            raise AmbiguousInputs(f"{inputs} inputs do not fit {op_def.name}'s arguments "
                                  f"({', '.join(a.name for a in op_def.inputs)})")
        lengths[variable] = spare // uses[variable]
    return lengths


def _is_number_attr(op_def: OpDef, name: str) -> bool:
    return op_def.attrs[name].type == "int"
