"""What a graph holds, like the Graph Transform Tool's summarize_graph: inputs, outputs, ops, sizes."""
from __future__ import annotations

from collections import Counter
from typing import Any

from gtt_rules.engine.dtypes import dtype_info, dtype_name
from gtt_rules.engine.graph import Graph
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.engine.tensors import tensor_shape


def summarize(graph: Graph) -> dict[str, Any]:
    """A JSON-ready summary: node count, op histogram, likely inputs and outputs, parameters."""
    ops = Counter(node.op for node in graph)
    parameter_count = parameter_bytes = const_count = 0
    for node in graph:
        if node.op == "Const" and "value" in node.header.attr:
            tensor = node.header.attr["value"].tensor
            count = 1
            for dim in tensor_shape(tensor):
                count *= dim
            parameter_count += count
            parameter_bytes += tensor_nbytes(tensor)
            const_count += 1
    inputs = []
    for node in graph.placeholders():
        shape = node.get_attr("shape", None)
        inputs.append({
            "name": node.name,
            "op": node.op,
            "dtype": _dtype_text(node.get_attr("dtype", None)),
            "shape": None if shape is None else list(shape),
        })
    outputs = []
    for node in graph.sinks():
        dtypes = graph.output_dtypes(node)
        outputs.append({
            "name": node.name,
            "op": node.op,
            "dtypes": None if dtypes is None else [_dtype_text(d) for d in dtypes],
        })
    return {
        "nodes": len(graph),
        "ops": dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"count": parameter_count, "bytes": parameter_bytes, "consts": const_count},
        "control_edges": sum(len(node.control_inputs) for node in graph),
        "functions": len(graph.library.function),
        "producer_version": graph.versions.producer,
    }


def tensor_nbytes(tensor: pb.TensorProto) -> int:
    """Bytes a tensor's values take in a GraphDef file, without decoding them."""
    count = 1
    for dim in tensor_shape(tensor):
        count *= dim
    row = dtype_info(tensor.dtype)
    if row is not None and row.wire_size:
        return count * row.wire_size
    return sum(len(s) for s in tensor.string_val)


def _dtype_text(dtype: int | None) -> str | None:
    if dtype is None:
        return None
    try:
        return dtype_name(dtype)
    except (KeyError, ValueError):
        return f"dtype {dtype}"
