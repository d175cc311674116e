"""TensorFlow's memory-mapped model package, what `convert_graphdef_memmapped_format` wrote.

The layout (tensorflow/core/util/memmapped_file_system.h and its writer):
- each big constant's bytes in a region of their own, starting at a multiple of 64 bytes (the
  alignment TensorFlow's allocator gives tensors), read by an `ImmutableConst` node whose attrs are
  `dtype`, `shape` and `memory_region_name`;
- the GraphDef in its own region, `memmapped_package://.`;
- the directory, a `MemmappedFileSystemDirectory` of each region's offset, name and length, in
  file order;
- the directory's offset, as the file's last 8 bytes, little-endian.

Region names are `memmapped_package://` followed by letters, digits, `_` and `.` only. Reading
turns each `ImmutableConst` into the Const it stands for, with its value a view of the mapped
region: every command and rule then sees plain Consts, and writing makes them ImmutableConsts again.
"""
from __future__ import annotations

import math
import os
import re
from typing import BinaryIO, NamedTuple

import numpy as np
from google.protobuf import message as protobuf_message

from gtt_rules.errors import GraphError

from .dtypes import DT_STRING, dtype_info, dtype_name
from .graph import Graph, Node
from .output import write_output
from .proto import graph_def_pb2 as pb
from .proto import memmapped_pb2
from .tensors import content_array, decode_tensor

PREFIX = "memmapped_package://"
GRAPH_REGION = PREFIX + "."
ALIGNMENT = 64                  # Allocator::kAllocatorAlignment
MIN_CONVERSION_BYTES = 10_000   # convert_graphdef_memmapped_format's --min_conversion_tensor_size
_OFFSET_BYTES = 8
_REGION_NAME = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_.]*")
# TensorFlow's converter maps its POD types; the quantized ones map too (ImmutableConst's kernel
# takes every dtype but strings, resources and variants), so eight-bit weights stay in the file.
_MAPPED_KINDS = ("float", "int", "bool", "complex", "quantized")


class Region(NamedTuple):
    """A region of a package: where it starts in the file, and its bytes (a view of the map)."""

    offset: int
    data: memoryview


# ---- reading --------------------------------------------------------------------------------------

def read_directory(view: memoryview) -> dict[str, Region] | None:
    """The regions of the package in `view`, by name; None if it is not laid out as a package
    (its last 8 bytes point at a directory whose every name has the package prefix). GraphError
    for a package whose directory breaks TensorFlow's rules."""
    size = len(view)
    if size <= _OFFSET_BYTES:
        return None
    directory_offset = int.from_bytes(view[size - _OFFSET_BYTES:], "little")
    if directory_offset >= size - _OFFSET_BYTES:
        return None
    directory = memmapped_pb2.MemmappedFileSystemDirectory()
    try:
        directory.ParseFromString(view[directory_offset:size - _OFFSET_BYTES])
    except protobuf_message.DecodeError:
        return None
    elements = list(directory.element)
    if not elements or not all(e.name.startswith(PREFIX) for e in elements):
        return None

    def fail(message: str):
        raise GraphError(f"memmapped package: {message}")

    regions: dict[str, Region] = {}
    for element, after in zip(elements, [e.offset for e in elements[1:]] + [directory_offset]):
        name = element.name
        if not _REGION_NAME.fullmatch(name):
            fail(f"region name {name!r} has characters other than letters, digits, '_' and '.'")
        if element.offset >= after:
            fail(f"region {name} at offset {element.offset} does not come before the next one "
                 f"(offset {after}); regions are in file order")
        # Packages written before TensorFlow recorded lengths: the region runs up to the next.
        length = element.length or after - element.offset
        if element.offset + length > after:
            fail(f"region {name} of {length} bytes at offset {element.offset} runs into the next "
                 f"one (offset {after})")
        if name in regions:
            fail(f"two regions are named {name}")
        regions[name] = Region(element.offset, view[element.offset:element.offset + length])
    if GRAPH_REGION not in regions:
        fail(f"it has no graph (no region {GRAPH_REGION})")
    return regions


def resolve(nodes: list[pb.NodeDef], regions: dict[str, Region]) -> list[tuple[int, np.ndarray, memoryview]]:
    """Turn each ImmutableConst of `nodes` into the Const it stands for, in place; return the
    values that stay in the mapped file, as (node index, value, bytes)."""
    mapped = []
    for index, node in enumerate(nodes):
        if node.op != "ImmutableConst":
            continue
        header, content = _immutable_tensor(node, regions)
        const = pb.NodeDef()
        const.CopyFrom(node)    # small: an ImmutableConst's attrs are a dtype, a shape and a name
        const.ClearField("attr")
        const.op = "Const"
        const.attr["dtype"].type = header.dtype
        const.attr["value"].tensor.CopyFrom(header)
        nodes[index] = const
        if len(content):
            mapped.append((index, decode_tensor(header, content=content, node=node.name), content))
    return mapped


def _immutable_tensor(node: pb.NodeDef, regions: dict[str, Region]) -> tuple[pb.TensorProto, memoryview]:
    """The tensor an ImmutableConst reads (dtype and shape), and its bytes in their region,
    checked as TensorFlow's kernel checks them."""
    def fail(message: str):
        raise GraphError(message, node=node.name)

    attrs = node.attr
    for key, kind in (("dtype", "type"), ("shape", "shape"), ("memory_region_name", "s")):
        if key not in attrs or attrs[key].WhichOneof("value") != kind:
            fail(f"ImmutableConst needs attr '{key}' ({'string' if kind == 's' else kind})")
    dtype, shape = attrs["dtype"].type, attrs["shape"].shape
    name = attrs["memory_region_name"].s.decode("utf-8", "replace")
    row = dtype_info(dtype)
    if row is None or row.holder is None or row.enum == DT_STRING or row.wire_size is None:
        fail(f"ImmutableConst of {dtype_name(dtype)} is not supported (TensorFlow maps fixed-size "
             f"types only)")
    if shape.unknown_rank or any(d.size < 0 for d in shape.dim):
        fail("ImmutableConst needs a fully known shape")
    region = regions.get(name)
    if region is None:
        fail(f"reads region {name!r}, which the package does not have")
    if region.offset % ALIGNMENT:
        fail(f"region {name} starts at offset {region.offset}, not a multiple of {ALIGNMENT}: "
             f"TensorFlow cannot map it")
    header = pb.TensorProto(dtype=dtype, tensor_shape=shape)
    needed = math.prod(d.size for d in shape.dim) * row.wire_size
    if needed > len(region.data):
        fail(f"region {name} holds {len(region.data)} bytes, but shape "
             f"[{', '.join(str(d.size) for d in shape.dim)}] of {row.name} needs {needed}")
    return header, region.data[:needed]


# ---- writing --------------------------------------------------------------------------------------

def save(graph: Graph, path: str | os.PathLike, *, min_bytes: int = MIN_CONVERSION_BYTES) -> int:
    """Write `graph` as a memory-mapped package through the one output writer: each Const of a
    fixed-size dtype holding at least `min_bytes` goes to its own aligned region, read by an
    ImmutableConst. The graph is checked first, as `Graph.save` checks it. Returns the number of
    regions given to constants."""
    graph.check()
    counts = []
    write_output(path, lambda f: counts.append(_write_package(graph, f, min_bytes)))
    return counts[-1]


def _write_package(graph: Graph, f: BinaryIO, min_bytes: int) -> int:
    from .graph_io import serialize_node, write_binary

    directory = memmapped_pb2.MemmappedFileSystemDirectory()
    offset = 0
    converted: dict[str, pb.NodeDef] = {}
    used = {"."}    # the graph's own region
    for node in graph:
        values = _region_bytes(node, min_bytes)
        if values is None:
            continue
        padding = -offset % ALIGNMENT
        f.write(bytes(padding))
        offset += padding
        name = PREFIX + _region_name(node.name, used)
        directory.element.add(offset=offset, name=name, length=values.nbytes)
        f.write(values)
        offset += values.nbytes
        converted[node.name] = _immutable_const(node, name)

    def serialize(node: Node) -> bytes:
        replaced = converted.get(node.name)
        return serialize_node(node) if replaced is None else replaced.SerializeToString(deterministic=True)

    length = write_binary(graph, f, serialize)
    directory.element.add(offset=offset, name=GRAPH_REGION, length=length)
    f.write(directory.SerializeToString(deterministic=True))
    f.write((offset + length).to_bytes(_OFFSET_BYTES, "little"))
    return len(converted)


def _region_bytes(node: Node, min_bytes: int) -> np.ndarray | None:
    """The bytes a Const's region holds, as an array (its own buffer when it is mapped), or None
    if it stays a Const: another op, a dtype of no fixed size, or fewer than `min_bytes`."""
    if node.op != "Const" or "value" not in node.header.attr:
        return None
    tensor = node.header.attr["value"].tensor
    row = dtype_info(tensor.dtype)
    if row is None or row.holder is None or row.kind not in _MAPPED_KINDS:
        return None
    if math.prod(d.size for d in tensor.tensor_shape.dim) * row.wire_size < max(min_bytes, 1):
        return None     # TensorFlow refuses an empty region
    return content_array(node.get_attr("value"), tensor.dtype)


def _immutable_const(node: Node, region: str) -> pb.NodeDef:
    """The ImmutableConst standing for Const `node`: its other fields kept, its attrs replaced."""
    header = node.header
    immutable = pb.NodeDef()
    for field, value in header.ListFields():    # not CopyFrom: that would copy the tensor too
        if field.name == "input":
            immutable.input.extend(value)
        elif field.message_type is not None and field.name != "attr":
            getattr(immutable, field.name).CopyFrom(value)
        elif field.name != "attr":
            setattr(immutable, field.name, value)
    immutable.op = "ImmutableConst"
    tensor = header.attr["value"].tensor
    immutable.attr["dtype"].type = tensor.dtype
    immutable.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
    immutable.attr["memory_region_name"].s = region.encode("utf-8")
    return immutable


def _region_name(node_name: str, used: set[str]) -> str:
    """A region name for a node's tensor: unlike characters as `_`, unique by trailing `_`s."""
    name = re.sub(r"[^A-Za-z0-9_.]", "_", node_name)
    while name in used:
        name += "_"
    used.add(name)
    return name
