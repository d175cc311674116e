"""Graph validation: the checks a graph passes when it is loaded and before it leaves the tool.

Names, inputs that name outputs their producers have, cycles (other than through a
NextIteration), well-formed attrs and tensors, the attrs and input count each op's definition
asks for, and input dtypes, as TensorFlow's importer checks them. A rewrite's result is checked
by `check_nodes` and `check_acyclic`, at a cost that does not grow with the graph.
"""
from __future__ import annotations

from typing import Collection, Iterable, Mapping

from gtt_rules.errors import GraphError

from . import op_registry
from .dtypes import REF_OFFSET, dtype_name
from .graph import EDITS, Graph, Node, TensorRef, _signature
from .proto import graph_def_pb2 as pb
from .tensors import check_tensor

_UNCOUNTED = object()

# The checks read the graph's node index (`graph._nodes`) directly rather than through
# `graph.get` and `in graph`: they run on every rewrite, and a method call per input shows there.


def validate(graph: Graph) -> None:
    """Raise GraphError naming the first problem: bad names, dangling inputs, cycles, bad tensors."""
    # Every node's attrs first: counting a producer's outputs reads its attrs.
    for node in graph._nodes.values():
        _check_node(node)
    counts: dict[str, int | None] = {}  # outputs of each producer, counted once
    for node in graph._nodes.values():
        _check_edges(graph, node, counts)
    graph.topological_order()


def check_dtypes(graph: Graph) -> None:
    """Raise GraphError if a data input has another dtype than its node's op takes there, as
    TensorFlow's importer does. Dtypes the op registry cannot tell pass.

    Apart from `validate`, as graphs built in tests and rule fixtures may mix dtypes freely.
    """
    for node in graph._nodes.values():
        if node.inputs:
            _check_inputs(graph, node, range(len(node.inputs)), edges=False)


def check(graph: Graph) -> None:
    """Every check loading makes (`validate` and `check_dtypes`): what a graph passes before
    it leaves the tool. A graph that passed and has not changed since is not checked again
    (saving what was just loaded costs no second validation)."""
    if graph._checked_at is not None and graph._checked_at == EDITS.mark():
        return
    validate(graph)
    check_dtypes(graph)
    graph._checked_at = EDITS.mark()


def check_nodes(graph: Graph, made: Mapping[str, Collection[str] | None],
                rerouted: Mapping[str, Collection[int]] = {}) -> None:
    """The checks of `check`, but for cycles, on what a rewrite did, at a cost that does not
    grow with the graph. Each node it `made` gets the checks of its attrs (of those named, when
    it has the others from a node of its own op, which passed them there), must carry every
    attr its op gives no default, as TensorFlow's importer demands (loading lets the graphs of
    rules' tests leave them out), and gets the checks of its inputs; each node it `rerouted`
    gets the checks of the inputs named by position."""
    nodes = graph._nodes
    for name, keys in made.items():
        node = nodes[name]
        _check_node(node, keys, required=True)
        if node.inputs:
            _check_inputs(graph, node, range(len(node.inputs)))
        for control in node.control_inputs:
            if control not in nodes:
                raise GraphError(f"control input '^{control}' names a missing node", node=name)
    for name, positions in rerouted.items():
        node = nodes.get(name)  # a rerouted node may have gone since
        if positions and node is not None and name not in made:
            _check_inputs(graph, node, positions)


def check_acyclic(graph: Graph, names: Iterable[str]) -> None:
    """Raise GraphError if a cycle (not through a NextIteration) runs through what these
    nodes read: a walk up from them, which costs what lies above them, not the whole graph."""
    nodes, done = graph._nodes, set()
    for start in names:
        if start in done or start not in nodes:
            continue
        path, on_path = [(start, iter(graph._producer_names(start)))], {start}
        while path:
            name, producers = path[-1]
            producer = next(producers, None)
            if producer is None:
                path.pop()
                on_path.discard(name)
                done.add(name)
            elif producer in on_path:
                cycle = [n for n, _ in path[[n for n, _ in path].index(producer):]] + [producer]
                raise GraphError(f"the graph has a cycle: {' -> '.join(reversed(cycle))}")
            elif producer not in done and producer in nodes:
                path.append((producer, iter(graph._producer_names(producer))))
                on_path.add(producer)


def _check_edges(graph: Graph, node: Node, counts: dict[str, int | None]) -> None:
    """Every input of `node` names an existing node, and an output that node has."""
    nodes = graph._nodes
    for ref in node.inputs:
        count = counts.get(ref.node, _UNCOUNTED)
        if count is _UNCOUNTED:
            producer = nodes.get(ref.node)
            if producer is None:
                raise GraphError(f"input '{ref}' names a missing node", node=node.name)
            count = counts[ref.node] = graph.num_outputs(producer)
        if count is not None and ref.port >= count:
            raise _port_error(node, ref, nodes[ref.node], count)
    for name in node.control_inputs:
        if name not in nodes:
            raise GraphError(f"control input '^{name}' names a missing node", node=node.name)


def _check_inputs(graph: Graph, node: Node, positions: Iterable[int], edges: bool = True) -> None:
    """The inputs of `node` at `positions` name outputs their producers have (with `edges`), of
    the dtypes its op takes there, as far as the op registry can tell."""
    wants = (node._signature or _signature(node))[0]
    nodes = graph._nodes
    for position in positions:
        ref = node.inputs[position]
        producer = nodes.get(ref.node)
        if producer is None:
            raise GraphError(f"input '{ref}' names a missing node", node=node.name)
        have = (producer._signature or _signature(producer))[1]
        if edges:
            count = len(have) if have is not None else graph.num_outputs(producer)
            if count is not None and ref.port >= count:
                raise _port_error(node, ref, producer, count)
        if have is None or wants is None or ref.port >= len(have) or position >= len(wants):
            continue
        want = wants[position]
        # A reference (a TF1 variable) is read as the value it refers to.
        if have[ref.port] != want and have[ref.port] != want + REF_OFFSET:
            raise GraphError(f"input '{ref}' is {dtype_name(have[ref.port])}, but "
                             f"{node.op} takes {dtype_name(want)} there", node=node.name)


def _port_error(node: Node, ref: TensorRef, producer: Node, count: int) -> GraphError:
    return GraphError(f"input '{ref}' asks for output {ref.port}, but '{producer.name}' "
                      f"({producer.op}) has {count} output{'' if count == 1 else 's'}", node=node.name)


_KNOWN_DTYPES = frozenset(pb.DataType.values())


def _check_node(node: Node, keys: Collection[str] | None = None, required: bool = False) -> None:
    """A node's own checks: a name, an op, well-formed attrs, and what its op's definition asks
    (of the attrs `keys` only, when given, and of its input count); with `required`, every attr
    its op gives no default is set."""
    if not node.name:
        raise GraphError("a node has an empty name")
    if not node.op:
        raise GraphError("node has no op", node=node.name)
    if keys is None:
        attrs = node.header.attr     # a mapped tensor's bytes are not read, nor copied in
    else:  # read in place: a copy's attrs shared with its original stay shared
        attrs = {key: value for key in keys if (value := node.attr_value(key)) is not None} if keys else {}
    for attr_name in attrs:
        _check_attr(node, attr_name, attrs[attr_name])
    op_def = op_registry.get_op(node.op)
    if op_def is None:
        return
    _check_against_op(node, op_def, attrs)
    missing = [name for name in _op_checks(op_def)[2] if node.attr_value(name) is None] if required else ()
    if missing:
        raise GraphError(f"{node.op} needs attr{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(m) for m in missing)}, which has no default", node=node.name)


def _check_attr(node: Node, name: str, value: pb.AttrValue) -> None:
    kind = value.WhichOneof("value")
    if kind == "shape":
        _check_shape(node, name, value.shape)
    elif kind == "tensor":
        try:
            check_tensor(value.tensor)
        except GraphError as e:
            raise GraphError(f"attr '{name}': {e.message}", node=node.name) from None
    elif kind == "type" and value.type not in _KNOWN_DTYPES:
        raise GraphError(f"attr '{name}' has unknown dtype {value.type}", node=node.name)
    elif kind == "list":
        for dtype in value.list.type:
            if dtype not in _KNOWN_DTYPES:
                raise GraphError(f"attr '{name}' has unknown dtype {dtype}", node=node.name)
        for tensor in value.list.tensor:
            try:
                check_tensor(tensor)
            except GraphError as e:
                raise GraphError(f"attr '{name}': {e.message}", node=node.name) from None
        for shape in value.list.shape:
            _check_shape(node, name, shape)


def _check_shape(node: Node, name: str, shape: pb.TensorShapeProto) -> None:
    dims = [d.size for d in shape.dim]
    if shape.unknown_rank and dims:
        raise GraphError(f"attr '{name}': a shape of unknown rank has dimensions", node=node.name)
    if dims and min(dims) < -1:
        raise GraphError(f"attr '{name}': shape [{', '.join(map(str, dims))}] has a dimension "
                         f"below -1 (-1 is unknown)", node=node.name)


# The AttrValue field that holds each attr type of an op definition, bare or in a list.
_ATTR_FIELDS = {"string": "s", "int": "i", "float": "f", "bool": "b", "type": "type",
                "shape": "shape", "tensor": "tensor", "func": "func"}
_OP_CHECKS: dict[str, tuple] = {}


def _attr_type(value: pb.AttrValue) -> str:
    """The attr type an AttrValue holds, in an op definition's terms ("int", "list(type)")."""
    kind = value.WhichOneof("value")
    if kind == "list":
        held = [t for t, f in _ATTR_FIELDS.items() if len(getattr(value.list, f))]
        return f"list({'/'.join(held)})" if held else "an empty list"
    return {f: t for t, f in _ATTR_FIELDS.items()}.get(kind, kind or "empty")


def _op_checks(op_def) -> tuple:
    """Per attr of `op_def`: (name, declared type, is a list, AttrValue field, allowed values);
    its input count when no attr sets it; and the attrs without a default. Made once per op:
    validation is on the load path."""
    checks = _OP_CHECKS.get(op_def.name)
    if checks is None:
        attrs = []
        for name, attr_def in op_def.attrs.items():
            is_list = attr_def.type.startswith("list(")
            field = _ATTR_FIELDS[attr_def.type[5:-1] if is_list else attr_def.type]
            allowed = attr_def.allowed_values if field in ("type", "s") else None
            attrs.append((name, attr_def.type, is_list, field, allowed))
        fixed = not any(arg.number_attr or arg.type_list_attr for arg in op_def.inputs)
        required = tuple(name for name, attr_def in op_def.attrs.items() if not attr_def.has_default)
        checks = _OP_CHECKS[op_def.name] = (attrs, len(op_def.inputs) if fixed else None, required)
    return checks


def _check_against_op(node: Node, op_def, attrs) -> None:
    """TensorFlow's checks of a NodeDef against its op, which its importer makes too: each attr
    the op declares holds the declared type, within the allowed values, and the node has as many
    inputs as the op takes. Kernels, shape functions and rules then get attrs of the types they
    expect."""
    def fail(message: str):
        raise GraphError(message, node=node.name)

    checks, expected = _op_checks(op_def)[:2]
    for name, want, is_list, field, allowed in checks if attrs else ():
        if name not in attrs:
            continue  # rules' test graphs leave out attrs; whatever reads one reports it missing
        value = attrs[name]
        kind = value.WhichOneof("value")
        if is_list:
            if kind is None:
                continue  # an empty list, as GraphDefs before version 5 wrote it
            items = getattr(value.list, field)
            if kind != "list" or len(value.list.ListFields()) > (1 if len(items) else 0):
                fail(f"attr '{name}' is {_attr_type(value)}, but {node.op} takes {want}")
        elif kind != field:
            fail(f"attr '{name}' is {_attr_type(value)}, but {node.op} takes {want}")
        else:
            items = (getattr(value, field),)
        if field == "type":
            for dtype in items:
                if dtype == pb.DT_INVALID or dtype > REF_OFFSET:
                    shown = "DT_INVALID" if dtype == pb.DT_INVALID else dtype_name(dtype)
                    fail(f"attr '{name}' is {shown}; {node.op} takes a value type")
        if allowed is not None:
            show = dtype_name if field == "type" else repr
            for item in items:
                item = item.decode("utf-8", "replace") if field == "s" else item
                if item not in allowed:
                    fail(f"attr '{name}' is {show(item)}, but {node.op} allows only "
                         f"{', '.join(show(a) for a in allowed)}")
    if expected is None:
        expected = op_registry.input_count(op_def, node.get_attr)
    if expected is not None and expected != len(node.inputs):
        fail(f"{node.op} takes {expected} input{'' if expected == 1 else 's'}, but the node has "
             f"{len(node.inputs)}")
