"""Reading and writing graphs: files (binary and text GraphDefs, memory-mapped packages), bytes and
GraphDef messages.

Binary files are read from a memory map, node by node. A big Const's `tensor_content` is not
copied: its value is a read-only numpy view of the mapped file (`Node.map_tensor`), so a model's
weights cost no memory until they are read, and then only the page cache's. A memory-mapped
package (`engine/memmapped.py`) is recognized by its layout and read the same way.
"""
from __future__ import annotations

import mmap
import os
import pathlib
import re
import stat
import warnings
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple

import numpy as np
from google.protobuf import message as protobuf_message
from google.protobuf import text_format, unknown_fields

from gtt_rules.errors import GraphError, UnknownOpWarning

from . import memmapped, op_registry, validation
from .dtypes import DT_BFLOAT16, dtype_info
from .graph import EDITS, Graph, Node
from .output import write_output
from .proto import graph_def_pb2 as pb
from .tensors import decode_tensor

TEXT_SUFFIXES = (".pbtxt", ".txt", ".prototxt")
# A tensor_content at least this big stays in the mapped file: below a page, a view saves nothing.
MIN_MAPPED_BYTES = 4096


class Parsed(NamedTuple):
    """A binary GraphDef parsed node by node: the other fields, the nodes, and the tensors left in
    the mapped file as (node index, value, bytes)."""

    rest: pb.GraphDef
    nodes: list[pb.NodeDef]
    mapped: list[tuple[int, np.ndarray, memoryview]]


def load(path: str | os.PathLike) -> Graph:
    """Read a `.pb` (binary) or `.pbtxt` (text) GraphDef file, or a memory-mapped package
    (`engine/memmapped.py`), validated and its dtypes checked, or a SavedModel folder, whose
    default signature is frozen (`engine/savedmodel.py`). Big tensors of a binary file are not
    copied in: they stay views of the mapped file."""
    from .savedmodel import freeze, is_saved_model
    if is_saved_model(path):
        return freeze(path)
    path = pathlib.Path(path)
    text = path.suffix.lower() in TEXT_SUFFIXES
    try:
        with open(path, "rb") as f:
            if stat.S_ISCHR(os.fstat(f.fileno()).st_mode):  # /dev/zero would never end
                raise GraphError("is a device, not a graph file", path=str(path))
            parsed = None if text else _parse_mapped(f)
            data = f.read() if parsed is None else b""
    except FileNotFoundError:
        raise GraphError("no such file", path=str(path)) from None
    except IsADirectoryError:
        raise GraphError("is a directory, not a graph file", path=str(path)) from None
    except OSError as e:
        raise GraphError(f"cannot read: {e.strerror}", path=str(path)) from None
    except GraphError as e:
        raise e.located(str(path)) from None
    try:
        graph = _graph(parsed) if parsed is not None else from_bytes(data, text=text)
        validation.check_dtypes(graph)
    except GraphError as e:
        raise e.located(str(path)) from None
    graph._checked_at = EDITS.mark()    # what `check` would do again before saving
    _warn_unknown_ops(graph, str(path))
    return graph


def _warn_unknown_ops(graph: Graph, path: str) -> None:
    """Warn of ops neither TensorFlow's registry nor the library defines: they load, rewrite
    and save, but no kernel runs them, and a misspelt op otherwise shows only at `run`."""
    functions = {f.signature.name for f in graph.library.function}
    unknown = sorted(op for op in {node.op for node in graph} if op not in functions
                     and op_registry.get_op(op) is None)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        warnings.warn(UnknownOpWarning(f"{path}: ops unknown to TensorFlow's registry: {shown} (they are "
                                       f"kept as they are, but `run` cannot evaluate them)"), stacklevel=3)


def source_format(path: str | os.PathLike) -> str:
    """What `load` reads `path` as: "saved_model", "memmapped" (a package), "text" or "binary"."""
    from .savedmodel import is_saved_model
    if is_saved_model(path):
        return "saved_model"
    if pathlib.Path(path).suffix.lower() in TEXT_SUFFIXES:
        return "text"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "binary"     # a FIFO or a device is read once, by `load`: a package is a file
        with open(path, "rb") as f:
            # Not closed here: the directory's region views point into the map, which goes with them.
            regions = memmapped.read_directory(memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)))
        return "binary" if regions is None else "memmapped"
    except (OSError, ValueError, GraphError):   # a pipe, an empty file, a flawed package: load says why
        return "binary"


def stored_bytes(path: str | os.PathLike) -> int:
    """The bytes a graph takes on disk: a regular file's size, a SavedModel folder's files summed;
    0 for what has no size to measure (a device, a FIFO)."""
    from .savedmodel import is_saved_model
    if is_saved_model(path):
        return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())
    try:
        status = os.stat(path)
    except OSError:
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def from_bytes(data: bytes, *, text: bool = False) -> Graph:
    """Parse a serialized GraphDef: text format when `text`, else binary (or text, if it is)."""
    if not data:
        raise GraphError("file is empty, not a GraphDef")
    graph_def = pb.GraphDef()
    if text:
        _parse_text(data, graph_def)
    else:
        try:
            graph_def.ParseFromString(data)
        except protobuf_message.DecodeError:
            # A text GraphDef saved under a binary name still loads; anything else is reported
            # as the binary parse failure, the likelier mistake.
            try:
                _parse_text(data, graph_def)
            except GraphError:
                raise GraphError("not a GraphDef: the file is truncated or is not a protobuf") from None
    if not graph_def.node:
        raise GraphError("not a GraphDef: it has no nodes")
    return Graph(graph_def)


def from_graph_def(message: Any) -> Graph:
    """A Graph from any GraphDef message (ours, TensorFlow's) or its serialized bytes."""
    if isinstance(message, pb.GraphDef):
        return Graph(message)
    if isinstance(message, (bytes, bytearray, memoryview)):
        return from_bytes(bytes(message))
    return from_bytes(message.SerializeToString())


def to_graph_def(graph: Graph) -> pb.GraphDef:
    """The GraphDef message for `graph` (shared, not a copy): rebuilt once after nodes came or
    went, and every Node then points at its copy inside it, so later edits land there."""
    if graph._membership_changed:
        rebuilt = _without_nodes(graph._graph_def)
        rebuilt.node.extend(node.proto for node in graph)
        for node, proto in zip(graph, rebuilt.node):
            node.proto = proto
        graph._graph_def = rebuilt
        graph._membership_changed = False
    return graph._graph_def


def to_bytes(graph: Graph, *, text: bool = False) -> bytes:
    """Serialize `graph`, deterministically: the same graph always gives the same bytes."""
    graph_def = to_graph_def(graph)
    if text:
        return text_format.MessageToString(graph_def).encode("utf-8")
    return graph_def.SerializeToString(deterministic=True)


def save(graph: Graph, path: str | os.PathLike, *, text: bool | None = None) -> None:
    """Write `graph` through the one output writer (`engine/output.py`): atomically for a regular
    file, to its target for a symlink, directly to a device, a FIFO or `-` (stdout).

    Text format is chosen by `text`, or else by a `.pbtxt`/`.txt` suffix. The graph is
    checked first as loading checks it (`validation.check`): an invalid graph is never written.
    """
    validation.check(graph)
    if text is None:
        text = pathlib.Path(path).suffix.lower() in TEXT_SUFFIXES
    if text:
        write_output(path, lambda f: f.write(to_bytes(graph, text=True)))
    else:
        write_output(path, lambda f: write_binary(graph, f))


def serialize_node(node: Node) -> bytes:
    """The NodeDef's bytes, deterministic. A mapped value's bytes are laid in where deterministic
    serialization puts them (its attr entry among the others, sorted by key), not copied into the
    node: one copy of the weights instead of three, and the node stays mapped."""
    if node.mapped != ("value",):
        return node.proto.SerializeToString(deterministic=True)
    header = node.header
    tensor = header.attr["value"].tensor.SerializeToString(deterministic=True)
    content = node.mapped_content("value")
    content_field = _CONTENT_TAG + _varint(len(content))
    tensor_length = len(tensor) + len(content_field) + len(content)
    attr_value = _ATTR_TENSOR_TAG + _varint(tensor_length)
    attr_value_length = len(attr_value) + tensor_length
    entry = _VALUE_KEY + _ENTRY_VALUE_TAG + _varint(attr_value_length)
    entry_head = _ATTR_TAG + _varint(len(entry) + attr_value_length) + entry + attr_value
    rest = pb.NodeDef()
    rest.CopyFrom(header)   # small: the value's bytes are not in it
    del rest.attr["value"]
    others = memoryview(rest.SerializeToString(deterministic=True))
    cut = len(others)
    for number, wire_type, start, payload, end in _fields(others, 0, len(others)):
        if number > _ATTR_FIELD or number == _ATTR_FIELD and _entry_key(others, payload, end) > b"value":
            cut = start
            break
    return b"".join((others[:cut], entry_head, tensor, content_field, content, others[cut:]))


def _entry_key(view: memoryview, start: int, end: int) -> bytes:
    for number, _, _, payload, field_end in _fields(view, start, end):
        if number == 1:
            return bytes(view[payload:field_end])
    return b""


def write_binary(graph: Graph, f: BinaryIO, serialize: Callable[[Node], bytes] = serialize_node) -> int:
    """Write the binary GraphDef node by node, each as `serialize` gives it: the bytes of
    `to_bytes`, without building the whole message (a copy of every node) or holding all its bytes
    (peak memory above 3x the file size). Returns the number of bytes written."""
    graph_def = graph._graph_def
    if serialize is serialize_node and len(unknown_fields.UnknownFieldSet(graph_def)):
        data = to_bytes(graph)   # keep unknown fields in place
        f.write(data)
        return len(data)
    written = 0
    for node in graph:
        body = serialize(node)
        head = _NODE_TAG + _varint(len(body))
        f.write(head)
        f.write(body)
        written += len(head) + len(body)
    rest = _without_nodes(graph_def).SerializeToString(deterministic=True)
    f.write(rest)
    return written + len(rest)


def release_pages(value: np.ndarray) -> None:
    """Tell the OS this process no longer needs `value`'s pages resident, if it is a view of a
    mapped file: they leave the process's memory (not the page cache), and come back on the next
    read. A run then holds only the weights in use, not every weight it has read so far."""
    owner = value
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    mapped = owner.obj if isinstance(owner, memoryview) else None
    if not isinstance(mapped, mmap.mmap) or value.nbytes < mmap.PAGESIZE or \
            not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        offset = value.ctypes.data - np.frombuffer(mapped, np.uint8, count=1).ctypes.data
        start = offset - offset % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, start, offset + value.nbytes - start)
    except (OSError, ValueError):
        pass    # advice only: a closed map, a platform without it


# ---- binary, from a memory map --------------------------------------------------------------------

def _parse_mapped(f) -> Parsed | None:
    """The binary GraphDef (or memory-mapped package) in file `f`, parsed node by node from a
    memory map: the file is never copied whole into memory, a copy that costs a big model as
    much time as the parse itself, and big tensors stay in the map.

    None if the file is empty, has no nodes or is not a plain binary GraphDef: the caller then
    reads and parses it whole, and reports any problem as it always has. A package with a flaw
    raises GraphError.
    """
    try:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # an empty file, a pipe
        return None
    # Not closed here: the views of mapped tensors keep the map alive, and it goes with the last.
    view = memoryview(mapped)
    regions = memmapped.read_directory(view)
    if regions is not None:
        parsed = _parse_fields(regions[memmapped.GRAPH_REGION].data)
        if parsed is None:
            raise GraphError(f"memmapped package: region {memmapped.GRAPH_REGION} is not a GraphDef")
        parsed.mapped.extend(memmapped.resolve(parsed.nodes, regions))
    else:
        parsed = _parse_fields(view)
    if parsed is not None and hasattr(mmap, "MADV_DONTNEED"):
        # The pages parsing read are copied into the nodes: they need not stay in this process.
        mapped.madvise(mmap.MADV_DONTNEED)
    return parsed


def _graph(parsed: Parsed) -> Graph:
    graph = Graph(parsed.rest, node_defs=parsed.nodes, validate=False)
    for index, value, content in parsed.mapped:
        graph[parsed.nodes[index].name].map_tensor("value", value, content)
    validation.validate(graph)
    return graph


def _parse_fields(view: memoryview) -> Parsed | None:
    """A binary GraphDef's other fields as a GraphDef, and its nodes, each parsed on its own.
    None if it is not one (see `_parse_mapped`)."""
    nodes: list[pb.NodeDef] = []
    mapped: list[tuple[int, np.ndarray, memoryview]] = []
    rest = bytearray()  # every field but the nodes, as written
    try:
        for number, wire_type, start, payload, end in _fields(view, 0, len(view)):
            if number == _NODE_FIELD and wire_type == 2:
                node, tensor = _parse_node(view, payload, end)
                if tensor is not None:
                    mapped.append((len(nodes), *tensor))
                nodes.append(node)
            else:
                rest += view[start:end]
    except (IndexError, protobuf_message.DecodeError):
        return None
    if not nodes:
        return None
    return Parsed(pb.GraphDef.FromString(bytes(rest)), nodes, mapped)


def _parse_node(view: memoryview, start: int, end: int) -> tuple[pb.NodeDef, tuple | None]:
    """The NodeDef in `view[start:end]`; for a Const with a big `tensor_content`, parsed without
    those bytes, and its value as a view of them."""
    found = _big_content(view, start, end) if end - start >= MIN_MAPPED_BYTES else None
    if found is None:
        return pb.NodeDef.FromString(view[start:end]), None
    (entry_start, entry_end), (tensor_start, tensor_end), (content_field, content, content_end) = found
    node = pb.NodeDef.FromString(bytes(view[start:entry_start]) + bytes(view[entry_end:end]))
    header = pb.TensorProto.FromString(bytes(view[tensor_start:content_field]) +
                                       bytes(view[content_end:tensor_end]))
    row = dtype_info(header.dtype)
    if row is None or row.kind == "string" or row.enum == DT_BFLOAT16:  # bfloat16 decodes to a copy
        return pb.NodeDef.FromString(view[start:end]), None
    try:
        value = decode_tensor(header, content=view[content:content_end], node=node.name)
    except GraphError:
        # Parsed whole, validation reports the problem as it does for every tensor.
        return pb.NodeDef.FromString(view[start:end]), None
    node.attr["value"].tensor.CopyFrom(header)
    return node, (value, view[content:content_end])


def _big_content(view: memoryview, start: int, end: int):
    """Where a Const NodeDef keeps its value's `tensor_content`, if that is big and the value is
    plainly laid out: the byte ranges of its attr map entry, of its TensorProto, and of the
    content field (field start, bytes start, end). None otherwise."""
    op, entries = None, []
    for number, wire_type, field_start, payload, field_end in _fields(view, start, end):
        if number == 2 and wire_type == 2:
            op = view[payload:field_end]
        elif number == 5 and wire_type == 2:    # attr: a map entry of key (1) and value (2)
            key = value = None
            for inner, inner_type, _, inner_payload, inner_end in _fields(view, payload, field_end):
                if inner == 1 and inner_type == 2:
                    key = view[inner_payload:inner_end]
                elif inner == 2 and inner_type == 2:
                    value = (inner_payload, inner_end)
                else:
                    return None
            if key == b"value":
                entries.append(((field_start, field_end), value))
    if op != b"Const" or len(entries) != 1 or entries[0][1] is None:
        return None
    entry, (value_start, value_end) = entries[0]
    fields = list(_fields(view, value_start, value_end))
    if len(fields) != 1 or fields[0][:2] != (_ATTR_TENSOR_FIELD, 2):
        return None
    tensor = fields[0][3:]
    contents = []
    for number, wire_type, field_start, payload, field_end in _fields(view, *tensor):
        if number == _CONTENT_FIELD and wire_type == 2:
            contents.append((field_start, payload, field_end))
        elif number not in _HEADER_FIELDS:
            return None     # values in *_val fields too: parsed whole, as they are rare
    if len(contents) != 1 or contents[0][2] - contents[0][1] < MIN_MAPPED_BYTES:
        return None
    return entry, tensor, contents[0]


_ATTR_FIELD = pb.NodeDef.DESCRIPTOR.fields_by_name["attr"].number
_ATTR_TENSOR_FIELD = pb.AttrValue.DESCRIPTOR.fields_by_name["tensor"].number
_CONTENT_FIELD = pb.TensorProto.DESCRIPTOR.fields_by_name["tensor_content"].number
# The length-delimited tags, and a map entry's key "value", for laying out a mapped value.
_ATTR_TAG = bytes([_ATTR_FIELD << 3 | 2])
_ATTR_TENSOR_TAG = bytes([_ATTR_TENSOR_FIELD << 3 | 2])
_CONTENT_TAG = bytes([_CONTENT_FIELD << 3 | 2])
_VALUE_KEY = b"\x0a\x05value"     # field 1 (key), 5 bytes
_ENTRY_VALUE_TAG = b"\x12"         # field 2 (value)
_HEADER_FIELDS = {pb.TensorProto.DESCRIPTOR.fields_by_name[name].number
                  for name in ("dtype", "tensor_shape", "version_number")}


def _fields(view: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Each field of the message in `view[pos:end]`: (number, wire type, field start, payload
    start, field end). DecodeError if it is not a message."""
    while pos < end:
        start = pos
        key, pos = _read_varint(view, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0 or wire_type not in (0, 1, 2, 5):
            # Groups are long gone from TensorFlow's protos: not a GraphDef.
            raise protobuf_message.DecodeError("not a message")
        payload = pos
        if wire_type == 0:
            pos = _read_varint(view, pos)[1]
        elif wire_type == 2:
            length, payload = _read_varint(view, pos)
            pos = payload + length
        else:
            pos += 8 if wire_type == 1 else 4
        if pos > end:
            raise protobuf_message.DecodeError("truncated")
        yield number, wire_type, start, payload, pos


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it (IndexError past the end)."""
    value = shift = 0
    while True:
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise protobuf_message.DecodeError("varint too long")


def _without_nodes(graph_def: pb.GraphDef) -> pb.GraphDef:
    """A copy of everything but the nodes (versions, library, ...), without copying the nodes."""
    rest = pb.GraphDef()
    if len(unknown_fields.UnknownFieldSet(graph_def)):
        rest.CopyFrom(graph_def)  # fields we do not know must survive: copy all, then drop nodes
        del rest.node[:]
        return rest
    for field, value in graph_def.ListFields():
        if field.number == _NODE_FIELD:
            continue
        if field.message_type is not None:
            getattr(rest, field.name).CopyFrom(value)
        else:
            setattr(rest, field.name, value)
    return rest



_NODE_FIELD = pb.GraphDef.DESCRIPTOR.fields_by_name["node"].number
_NODE_TAG = bytes([_NODE_FIELD << 3 | 2])  # field 1, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# ---- text format ----------------------------------------------------------------------------------

# What can open or close a message in text format, and what can hide a brace: strings, comments.
_TEXT_NESTING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|([{}<>])')
_MAX_NESTING = 100      # protobuf's limit when it reads the binary form


def _text_nesting(text: str) -> int:
    """How deep messages nest in a text-format message."""
    depth = deepest = 0
    for found in _TEXT_NESTING.finditer(text):
        token = found.group(1)
        if token is None:
            continue
        if token in ("{", "<"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("}", ">"):
            depth -= 1
    return deepest


def _parse_text(data: bytes, graph_def: pb.GraphDef) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise GraphError("not a text GraphDef (not UTF-8 text)") from None
    # Python's text parser recurses once per message, and what it would read could not be
    # written as a binary GraphDef anyone can read back.
    if _text_nesting(text) > _MAX_NESTING:
        raise GraphError(f"not a text GraphDef: messages nested more than {_MAX_NESTING} levels "
                         f"deep (protobuf reads at most {_MAX_NESTING})")
    try:
        text_format.Parse(text, graph_def, allow_unknown_field=False)
    except text_format.ParseError as e:
        raise GraphError(f"not a text GraphDef: {e}") from None
