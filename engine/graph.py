"""The in-memory graph model: a GraphDef's nodes with parsed edges and a consumer index.

Each `Node` wraps its NodeDef message, so everything a rule does not touch (attrs, debug info,
experimental fields, fields we do not know) is written back exactly as it was read. The graph
keeps the parsed data and control edges in step with the NodeDef `input` strings.

It is also the one graph-edit core that the rewriter, the Python passes and calibration share:
`reroute` (data edges), `hand_over` (the control-edge policy when a node takes another's place),
`succeed` (a node taking another's place and name), `edit_node`, `sweep` (what nothing reads),
`walk` (reachability), `fresh_name` and `origin`, `add_const`, and the type attrs a new node's
inputs imply (`implied_attrs`).

Validation lives in `engine/validation.py` and reading and writing files in `engine/graph_io.py`;
the Graph keeps one-line delegations for the calls used everywhere (`Graph.load`, `save`,
`check`, ...).
"""
from __future__ import annotations

import functools
import operator
import os
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from gtt_rules.errors import GraphError

from . import op_registry
from .attrs import decode_attr, encode_attr
from .dtypes import dtype_for_array, numpy_dtype
from .proto import graph_def_pb2 as pb
from .tensors import encode_tensor_into

_MISSING = object()


class EditLog:
    """Names of nodes whose definition changed (op, attrs, inputs, presence), in order, so that a
    cache of facts derived from nodes (engine/shapes.py) invalidates only what changed instead of
    re-checking everything it relies on. The log is trimmed now and then; a reader that fell
    behind a trim (`epoch` changed) must check everything once."""

    __slots__ = ("names", "epoch")

    def __init__(self):
        self.names: list[str] = []
        self.epoch = 0

    def mark(self) -> tuple[int, int]:
        """Where the log is now: equal marks mean no node of any graph changed in between."""
        return self.epoch, len(self.names)

    def record(self, name: str) -> None:
        self.names.append(name)
        if len(self.names) > 1_000_000:
            self.names = []
            self.epoch += 1


EDITS = EditLog()


class TensorRef(NamedTuple):
    """One output of a node: `node:port`."""

    node: str
    port: int = 0

    def __str__(self) -> str:
        return self.node if self.port == 0 else f"{self.node}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> "TensorRef":
        """`name`, `name:0` or `name:3` to a TensorRef."""
        name, sep, port = text.rpartition(":")
        if sep and port.isdigit():
            return cls(name, int(port))
        return cls(text, 0)


class Node:
    """A node of a Graph: name, op, device, attrs, data inputs and control inputs.

    Change a node's inputs or name through its Graph, which keeps the consumer index right;
    attrs and the device can be changed here.
    """

    # name and op are read on every match; kept as plain attributes, as reading them from the
    # protobuf message each time costs more than all the matching around it.
    __slots__ = ("_proto", "inputs", "control_inputs", "_name", "_op", "_decoded", "_canonical",
                 "_borrowed", "_lent", "_mapped", "_signature")

    def __init__(self, proto: pb.NodeDef):
        self._proto = proto
        self._name = proto.name
        self._op = proto.op
        self.inputs: list[TensorRef] = []
        self.control_inputs: list[str] = []
        # Decoded attr values, so a weight read by several guards and kernels is decoded once.
        self._decoded: dict[str, Any] = {}
        # True once `input` is written from the lists, with no control input repeated: as the
        # file wrote it, it may differ (`x:0`), and every edit rewrites it.
        self._canonical = False
        # Attrs shared with another node instead of copied (`Graph.copy_attrs`): the AttrValues
        # this node reads from that node's NodeDef, and the nodes reading this one's.
        self._borrowed: dict[str, pb.AttrValue] | None = None
        self._lent: list[Node] | None = None
        # Tensor attrs whose bytes stay in a memory-mapped file (`map_tensor`): the value, a
        # read-only view, and the bytes it was decoded from; the NodeDef holds dtype and shape.
        self._mapped: dict[str, tuple[np.ndarray, memoryview]] | None = None
        # (input dtypes, output dtypes) under the op and attrs, until they change (`signature`).
        self._signature: tuple | None = None
        for text in proto.input:
            if text.startswith("^"):
                self.control_inputs.append(text[1:])
            else:
                self.inputs.append(TensorRef.parse(text))

    @property
    def proto(self) -> pb.NodeDef:
        """The NodeDef. Edit its attrs only through `attr` or `set_attr`, which first give the
        nodes sharing them their own copies."""
        if self._borrowed is not None:
            self._settle()
        if self._mapped is not None:
            self._unmap()
        return self._proto

    @property
    def header(self) -> pb.NodeDef:
        """The NodeDef for reading names, dtypes and shapes: a tensor mapped from a file
        (`map_tensor`) has its dtype and shape here but not its bytes, which `get_attr` reads and
        `proto` copies in. Whatever reads or compares values reads `proto` or `get_attr`."""
        if self._borrowed is not None:
            self._settle()
        return self._proto

    def map_tensor(self, name: str, value: np.ndarray, content: memoryview) -> None:
        """Make tensor attr `name` read its bytes, `content`, from a memory-mapped file, not from
        the NodeDef, which holds the tensor's dtype and shape only: `value` is its decoded array
        (read-only, usually a view of `content`). Loading a big model then copies no weights."""
        if self._mapped is None:
            self._mapped = {}
        self._mapped[name] = (value, content)

    @property
    def mapped(self) -> tuple[str, ...]:
        """The tensor attrs whose bytes are in a memory-mapped file (see `map_tensor`)."""
        return tuple(self._mapped or ())

    def mapped_content(self, name: str) -> memoryview:
        """The bytes of mapped tensor attr `name`, a view of the file (see `map_tensor`)."""
        return self._mapped[name][1]

    @proto.setter
    def proto(self, value: pb.NodeDef) -> None:
        self._proto = value
        self._mapped = None
        self._signature = None
        EDITS.record(self._name)

    # Read on every match and every dispatch: getters in C (attrgetter), not Python calls.
    name = property(operator.attrgetter("_name"), doc="The node's name (`Graph.rename_node` changes it).")

    def _set_op(self, value: str) -> None:
        self._proto.op = self._op = value
        self._signature = None
        EDITS.record(self._name)

    op = property(operator.attrgetter("_op"), _set_op, doc="The node's op.")

    @property
    def device(self) -> str:
        return self._proto.device

    @device.setter
    def device(self, value: str) -> None:
        self._proto.device = value

    @property
    def attr(self):
        """The raw AttrValue map of the NodeDef. The caller may edit it, so reading it forgets
        the decoded values `get_attr` keeps, and gives the nodes sharing the attrs their copies."""
        self._decoded.clear()
        self._signature = None
        self._unshare()
        EDITS.record(self._name)
        return self.proto.attr

    def get_attr(self, name: str, default: Any = _MISSING) -> Any:
        """The decoded value of attr `name`, else the op's registered default, else `default`.

        A decoded value is kept until the attr changes: arrays come back read-only, and lists
        (which callers may edit) are decoded afresh each time.
        """
        value = self._decoded.get(name, _MISSING)
        if value is not _MISSING:
            return value
        if self._mapped is not None and name in self._mapped:
            return self._mapped[name][0]
        attrs = self._proto.attr  # `attr_value`, inline: every guard and kernel reads attrs here
        encoded = attrs[name] if name in attrs else None if self._borrowed is None else self._borrowed.get(name)
        if encoded is not None:
            value = decode_attr(encoded)
            if not isinstance(value, list):
                if isinstance(value, np.ndarray):
                    value.flags.writeable = False
                self._decoded[name] = value
            return value
        op_def = op_registry.get_op(self._op)
        if op_def is not None and name in op_def.attrs and op_def.attrs[name].has_default:
            return op_def.attrs[name].default
        if default is _MISSING:
            raise KeyError(f"node '{self.name}' ({self.op}) has no attr '{name}'")
        return default

    def attr_value(self, name: str) -> pb.AttrValue | None:
        """The AttrValue of attr `name` as set on the node (None if unset), to read, not edit."""
        attrs = self._proto.attr
        if name in attrs:
            return attrs[name]
        return None if self._borrowed is None else self._borrowed.get(name)

    def set_attr(self, name: str, value: Any, kind: str | None = None) -> None:
        """Set attr `name`; its type comes from the op registry when `kind` is not given."""
        if kind is None:
            op_def = op_registry.get_op(self._op)
            if op_def is not None and name in op_def.attrs:
                kind = op_def.attrs[name].type
        encoded = value if isinstance(value, pb.AttrValue) else encode_attr(value, kind)
        self._decoded.pop(name, None)
        self._signature = None
        self._unshare()
        if self._mapped is not None and self._mapped.pop(name, None) is not None and not self._mapped:
            self._mapped = None     # the old bytes are not copied in only to be replaced
        self.header.attr[name].CopyFrom(encoded)    # other mapped tensors stay in the file
        EDITS.record(self._name)

    def delete_attr(self, name: str) -> None:
        """Remove attr `name`. The bytes of a mapped tensor (`map_tensor`) are not copied in: only
        the header changes, or the mapping of `name` itself goes."""
        self._decoded.pop(name, None)
        self._signature = None
        self._unshare()
        if self._mapped is not None and self._mapped.pop(name, None) is not None and not self._mapped:
            self._mapped = None
        del self.header.attr[name]
        EDITS.record(self._name)

    def _settle(self) -> None:
        """Copy the attrs this node shares with another into its own NodeDef."""
        borrowed, self._borrowed = self._borrowed, None
        for key, value in borrowed.items():
            self._proto.attr[key].CopyFrom(value)

    def _unmap(self) -> None:
        """Copy the bytes of the mapped tensors into the NodeDef: it is then whole again."""
        mapped, self._mapped = self._mapped, None
        for name, (_, content) in mapped.items():
            self._proto.attr[name].tensor.tensor_content = content.tobytes()

    def _unshare(self) -> None:
        """Before this node's attrs change: the nodes sharing them take their own copies."""
        lent, self._lent = self._lent, None
        for node in lent or ():
            if node._borrowed is not None:
                node._settle()

    def _write_inputs(self) -> None:
        texts = [ref.node if ref.port == 0 else f"{ref.node}:{ref.port}" for ref in self.inputs]
        texts += ["^" + c for c in self.control_inputs]
        self._proto.input[:] = texts
        self._canonical = len(set(self.control_inputs)) == len(self.control_inputs)
        EDITS.record(self._name)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op!r})"


class Graph:
    """A TensorFlow graph: nodes in file order, a consumer index, and the GraphDef's other fields."""

    def __init__(self, graph_def: pb.GraphDef | None = None, *, validate: bool = True,
                 node_defs: Iterable[pb.NodeDef] | None = None):
        """`node_defs`: the nodes, when they were parsed apart from `graph_def`, which has none."""
        self._graph_def = graph_def if graph_def is not None else pb.GraphDef()
        self._nodes: dict[str, Node] = {}
        # The node named, or None: the dict's own `get`, without a Python call (every match and
        # dispatch asks); `_nodes` is therefore only ever changed in place.
        self.get = self._nodes.get
        for proto in self._graph_def.node if node_defs is None else node_defs:
            node = Node(proto)
            if node.name in self._nodes:
                raise GraphError(f"duplicate node name '{node.name}'", node=node.name)
            self._nodes[node.name] = node
        self._membership_changed = node_defs is not None  # the GraphDef lacks the nodes
        # File position of each node, as an increasing number: a node added or renamed goes last.
        self._sequence = {name: i for i, name in enumerate(self._nodes)}
        self._next_sequence = len(self._sequence)
        self._journal: list | None = None  # undo steps while a transaction is open
        self._checked_at: tuple[int, int] | None = None  # EDITS.mark() when `check` last passed
        self._left: dict[str, int] = {}  # file positions of the nodes that left in the transaction
        self._origins: dict[str, str] = {}  # a helper's name -> the node it was made for (`origin`)
        self._consumers: dict[str, set[str]] = {name: set() for name in self._nodes}
        for node in self._nodes.values():
            for producer in [ref.node for ref in node.inputs] + node.control_inputs:
                consumers = self._consumers.get(producer)
                if consumers is not None:
                    consumers.add(node._name)
        if validate:
            validation.validate(self)

    # ---- reading and writing (engine/graph_io.py) ----

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Graph":
        """Read a graph file, a memory-mapped package or a SavedModel: see `graph_io.load`."""
        from . import graph_io
        return graph_io.load(path)

    @classmethod
    def from_bytes(cls, data: bytes, *, text: bool = False) -> "Graph":
        """Parse a serialized GraphDef: see `graph_io.from_bytes`."""
        from . import graph_io
        return graph_io.from_bytes(data, text=text)

    def to_graph_def(self) -> pb.GraphDef:
        """The GraphDef message for this graph (shared, not a copy): see `graph_io.to_graph_def`."""
        from . import graph_io
        return graph_io.to_graph_def(self)

    def to_bytes(self, *, text: bool = False) -> bytes:
        """Serialize, deterministically: see `graph_io.to_bytes`."""
        from . import graph_io
        return graph_io.to_bytes(self, text=text)

    def save(self, path: str | os.PathLike, *, text: bool | None = None) -> None:
        """Write, checked first, through the one output writer: see `graph_io.save`."""
        from . import graph_io
        graph_io.save(self, path, text=text)

    # ---- queries ----

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def __contains__(self, name: str) -> bool:
        return name in self._nodes

    def __getitem__(self, name: str) -> Node:
        return self._nodes[name]

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    @property
    def versions(self) -> pb.VersionDef:
        return self._graph_def.versions

    @property
    def library(self) -> pb.FunctionDefLibrary:
        return self._graph_def.library

    def consumers(self, name: str) -> list[Node]:
        """Nodes that take `name` as a data or control input, in file order."""
        names = self._consumers.get(name, ())
        if len(names) > 1:
            names = sorted(names, key=self._sequence.__getitem__)  # `position`, without a Python call
        return [self._nodes[n] for n in names]

    def consumer_names(self, name: str) -> Collection[str]:
        """The names of the nodes that take `name` as an input, in no order (`consumers` sorts)."""
        return self._consumers.get(name, ())

    def uses(self, ref: TensorRef | str) -> int:
        """How many data inputs read `ref` (a TensorRef), or any output of node `ref` (a name)."""
        nodes = self._nodes
        if isinstance(ref, TensorRef):
            return sum(nodes[c].inputs.count(ref) for c in self._consumers.get(ref.node, ()))
        count = 0
        for consumer in self._consumers.get(ref, ()):
            for r in nodes[consumer].inputs:
                if r.node == ref:
                    count += 1
        return count

    def is_read(self, name: str) -> bool:
        """Whether a data input reads an output of node `name` (`uses(name) > 0`, sooner)."""
        nodes = self._nodes
        for consumer in self._consumers.get(name, ()):
            node = nodes[consumer]
            # A consumer that waits on nothing reads it.
            if not node.control_inputs or any(r.node == name for r in node.inputs):
                return True
        return False

    def has_control_consumers(self, name: str) -> bool:
        return any(name in self._nodes[c].control_inputs for c in self._consumers.get(name, ()))

    def live_nodes(self, outputs: Iterable[str], inputs: Iterable[str] = ()) -> set[str]:
        """The nodes `outputs` need: what they read through data inputs and through control
        edges that order something (`orders_nothing`), up to `inputs`, which are fed."""
        fed, pure = set(inputs), {}
        return self.walk(outputs, lambda node: () if node.name in fed else
                         [ref.node for ref in node.inputs] + self.ordering(node.control_inputs, pure))

    def walk(self, starts: Iterable[str], step: Callable[[Node], Iterable[str]]) -> set[str]:
        """The nodes reached from `starts` by following `step`, which names the nodes next to a
        node (its producers, say, or only some of its consumers); each is stepped from once."""
        nodes = self._nodes
        return set(walk(starts, lambda name: step(nodes[name])))

    def sweep(self, seeds: Iterable[str], protected: Collection[str], keep: Collection[str] = (),
              heirs: Mapping[str, Collection[str]] = {}, fallback: Collection[str] = ()
              ) -> tuple[dict[str, str], set[str]]:
        """Remove what nothing reads, walking up from `seeds`, but the nodes `protected` or `keep`
        name. A node only control edges read is dead too if those edges order nothing
        (`orders_nothing`): they go with it. A dead node's control inputs that order something
        still order the nodes that took its place: its `heirs`, or else `fallback`. The nodes
        removed (name to the op it had, in order), and those left whose control inputs changed or
        whose producers went."""
        removed, touched, pure = {}, set(), {}
        stack = list(dict.fromkeys(seeds))
        while stack:
            name = stack.pop()
            if name in protected or name in keep:
                continue
            node = self._nodes.get(name)
            if node is None or self.is_read(name):
                continue
            waiting = self.consumers(name) if self._consumers.get(name) else ()
            if waiting:
                if not self.orders_nothing(name, pure):
                    continue
                for consumer in waiting:
                    self.set_inputs(consumer, consumer.inputs, [c for c in consumer.control_inputs if c != name])
                    touched.add(consumer.name)
            ordering = self.ordering(node.control_inputs, pure) if node.control_inputs else ()
            if ordering:
                for heir_name in heirs.get(name) or fallback:
                    heir = self._nodes.get(heir_name)
                    if heir is not None:
                        self.set_inputs(heir, heir.inputs, list(dict.fromkeys(heir.control_inputs + ordering)))
            producers = [r.node for r in node.inputs] + node.control_inputs
            removed[name] = node.op
            self.remove_node(name)
            touched.update(producers)
            stack.extend(producers)
        return removed, {name for name in touched if name in self._nodes}

    def orders_nothing(self, name: str, memo: dict[str, bool] | None = None) -> bool:
        """True if a control edge from node `name` orders nothing (DESIGN.md, "Control edges"):
        neither it nor anything it waits on, through data or control inputs, has a side effect.

        Side effects: ops the registry marks stateful, ops writing through a reference (TF1
        `Assign`), ops it does not know (library functions, custom ops), and TF1 control flow,
        whose frames control edges join. `memo` keeps answers across calls on an unchanged graph.
        A walk past `_PURITY_WALK` nodes answers False: keeping an edge is always safe, and a
        rewrite must not cost the graph's size.
        """
        memo = {} if memo is None else memo
        stack, open_ = [(name, False)], set()
        while stack:
            current, expanded = stack.pop()
            if current in memo:
                continue
            node = self._nodes.get(current)
            if node is None or _has_effect(node):
                memo[current] = False
                continue
            producers = self._producers(node)
            if expanded:  # a producer still open closes a loop: counted as an effect
                memo[current] = all(memo.get(p, False) for p in producers)
                continue
            if any(memo.get(p, True) is False for p in producers) or len(open_) >= _PURITY_WALK:
                memo[current] = False
                continue
            open_.add(current)
            stack.append((current, True))
            stack.extend((p, False) for p in producers if p not in memo and p not in open_)
        return memo[name]

    def ordering(self, names: Iterable[str], memo: dict[str, bool] | None = None) -> list[str]:
        """Of control inputs `names`, those that order something (see `orders_nothing`)."""
        memo = {} if memo is None else memo
        return [name for name in names if not self.orders_nothing(name, memo)]

    def op_def_of(self, node: Node):
        return op_registry.get_op(node.op)

    def num_outputs(self, node: Node) -> int | None:
        """How many outputs `node` has, from the op registry or the function library."""
        signature = self._function_signature(node.op)
        if signature is not None:
            return len(signature.output_arg)
        op_def = op_registry.get_op(node.op)
        return None if op_def is None else op_registry.num_outputs(op_def, lambda a: node.get_attr(a))

    def output_dtypes(self, node: Node) -> list[int] | None:
        """The DataType of each output of `node`, where the op registry can tell."""
        dtypes = _signature(node)[1]
        return None if dtypes is None else list(dtypes)

    def _function_signature(self, name: str):
        for function in self._graph_def.library.function:
            if function.signature.name == name:
                return function.signature
        return None

    def placeholders(self) -> list[Node]:
        """Likely graph inputs: the Placeholder nodes."""
        return [n for n in self._nodes.values() if n.op in ("Placeholder", "PlaceholderWithDefault")]

    def sinks(self) -> list[Node]:
        """Likely graph outputs: nodes nothing consumes, other than bookkeeping ops."""
        return [n for n in self._nodes.values()
                if not self._consumers[n.name] and n.op not in _NOT_OUTPUTS]

    def topological_order(self) -> list[Node]:
        """Nodes so that each comes after its inputs; ties keep file order.

        Edges from a NextIteration are loop back edges (TF1 while loops), so a Merge is ready
        once its other inputs are, as in TensorFlow's executor.
        """
        order, remaining = self._kahn()
        if remaining:
            raise GraphError(f"the graph has a cycle: {' -> '.join(self._find_cycle(remaining))}")
        return order

    # ---- validation (engine/validation.py) ----

    def check(self) -> None:
        """Every check loading makes: see `validation.check`."""
        validation.check(self)

    def check_nodes(self, made: Mapping[str, Collection[str] | None],
                    rerouted: Mapping[str, Collection[int]] = {}) -> None:
        """The checks of `check` on what a rewrite did: see `validation.check_nodes`."""
        validation.check_nodes(self, made, rerouted)

    def check_acyclic(self, names: Iterable[str]) -> None:
        """No cycle runs through what these nodes read: see `validation.check_acyclic`."""
        validation.check_acyclic(self, names)

    def _producer_names(self, name: str) -> list[str]:
        """The nodes `name` waits on; a NextIteration closes a loop and is not waited on."""
        node = self._nodes[name]
        return [p for p in dict.fromkeys([r.node for r in node.inputs] + node.control_inputs)
                if not self._is_back_edge(p)]

    def _kahn(self) -> tuple[list[Node], set[str]]:
        nodes, consumers, position = self._nodes, self._consumers, self.position
        back = {name for name, node in nodes.items() if node.op == "NextIteration"}
        pending: dict[str, int] = {}
        for name, node in nodes.items():
            if node.control_inputs or back or len(node.inputs) > 1:
                producers = {ref.node for ref in node.inputs}
                producers.update(node.control_inputs)
                pending[name] = len(producers - back)
            else:
                pending[name] = len(node.inputs)
        ready = [name for name, count in pending.items() if count == 0]
        index = 0
        while index < len(ready):
            name = ready[index]
            index += 1
            if name in back:
                continue
            waiting = consumers[name]
            for consumer in (sorted(waiting, key=position) if len(waiting) > 1 else waiting):
                pending[consumer] -= 1
                if pending[consumer] == 0:
                    ready.append(consumer)
        remaining = {name for name, count in pending.items() if count > 0}
        return [nodes[name] for name in ready], remaining

    def position(self, name: str) -> int:
        """Where node `name` stands in the node order: file order, nodes added since last."""
        return self._sequence[name]

    def _place_last(self, name: str) -> None:
        self._sequence[name] = self._next_sequence
        self._next_sequence += 1

    def _is_back_edge(self, producer: str) -> bool:
        node = self._nodes.get(producer)
        return node is not None and node.op == "NextIteration"

    def _find_cycle(self, remaining: set[str]) -> list[str]:
        # Every node left over waits on another left-over node, so walking inputs must loop.
        start = min(remaining, key=self.position)
        path, seen = [start], {start: 0}
        while True:
            nxt = next(p for p in self._producer_names(path[-1]) if p in remaining)
            if nxt in seen:
                cycle = path[seen[nxt]:] + [nxt]
                return list(reversed(cycle))
            seen[nxt] = len(path)
            path.append(nxt)

    # ---- editing ----

    def transaction(self) -> "_Transaction":
        """Group edits: if the block raises, every edit made in it is undone; so is every edit
        made so far when the block calls the transaction's `undo` (`with graph.transaction() as t`)."""
        return _Transaction(self)

    def _restore_order(self) -> None:
        """After an undo: the nodes that left and came back go back to their file positions."""
        back = [name for name in self._left if name in self._sequence]
        if not back:
            return
        for name in back:
            self._sequence[name] = self._left.pop(name)
        ordered = sorted(self._nodes.items(), key=lambda item: self._sequence[item[0]])
        self._nodes.clear()
        self._nodes.update(ordered)

    def _note_leaving(self, name: str) -> None:
        if self._journal is not None:
            self._left.setdefault(name, self._sequence[name])

    def _record(self, undo) -> None:
        if self._journal is not None:
            self._journal.append(undo)

    def add_node(self, name: str, op: str, inputs: Iterable[TensorRef | str] = (),
                 control_inputs: Iterable[str] = (), attrs: dict[str, Any] | None = None,
                 device: str = "", proto: pb.NodeDef | None = None) -> Node:
        """Add a node; its inputs must name nodes already in the graph.

        `attrs` gives attr values; those it leaves out that the inputs imply (`T`, `N`, ...: see
        `implied_attrs`) are set too. `proto`, a NodeDef with no inputs, gives attrs already
        encoded instead: the node takes it over (name, op and device set here) rather than copying.
        """
        if name in self._nodes:
            raise GraphError(f"a node named '{name}' already exists", node=name)
        inputs = [ref if isinstance(ref, TensorRef) else TensorRef.parse(ref) for ref in inputs]
        if proto is None:
            proto = pb.NodeDef(name=name, op=op, device=device)
            try:
                attrs = {**self.implied_attrs(op, [self.dtype_of(ref) for ref in inputs], attrs or {}),
                         **(attrs or {})}
            except op_registry.AmbiguousInputs as error:
                raise GraphError(f"a {op} node: {error}", node=name) from None
        else:
            proto.name, proto.op, proto.device = name, op, device
        node = Node(proto)
        node.inputs = inputs
        node.control_inputs = list(control_inputs)
        node._write_inputs()
        for key, value in (attrs or {}).items():
            node.set_attr(key, value)
        self._insert(node)
        self._record(lambda: self.remove_node(name))
        return node

    def dtype_of(self, ref: TensorRef) -> int | None:
        """The dtype of tensor `ref`, where the op registry can tell."""
        node = self._nodes.get(ref.node)
        dtypes = None if node is None else (node._signature or _signature(node))[1]
        return dtypes[ref.port] if dtypes is not None and ref.port < len(dtypes) else None

    @staticmethod
    def implied_attrs(op: str, input_dtypes: list[int | None], given: Mapping[str, Any]) -> dict[str, Any]:
        """The attrs a node of `op` with inputs of `input_dtypes` needs, that `given` (attr name ->
        value, None where only its presence counts) leaves out and the inputs imply: each type
        attr from its inputs' dtypes, each list length from the input count. Raises
        op_registry.AmbiguousInputs where the inputs could split among list arguments in more
        than one way."""
        op_def = op_registry.get_op(op)
        return {} if op_def is None else op_registry.infer_input_attrs(op_def, input_dtypes, given)

    def add_const(self, name: str, value: Any, dtype: int | None = None, device: str = "") -> Node:
        """Add a Const node holding array `value` as `dtype` (default: the array's own)."""
        return self.add_node(name, "Const", device=device, proto=const_node_def(np.asarray(value), dtype))

    def _insert(self, node: Node) -> None:
        self._nodes[node.name] = node
        self._consumers[node.name] = set()
        self._link(node)
        self._membership_changed = True
        self._place_last(node.name)
        EDITS.record(node.name)

    def remove_node(self, name: str) -> None:
        """Remove a node that nothing consumes any more."""
        if self._consumers[name]:
            raise GraphError(f"cannot remove '{name}': still used by "
                             f"{', '.join(sorted(self._consumers[name]))}", node=name)
        if self._journal is not None:  # `_note_leaving`, inline: sweeps remove nodes by the thousand
            self._left.setdefault(name, self._sequence[name])
        node = self._nodes.pop(name)
        self._unlink(node)
        del self._consumers[name]
        del self._sequence[name]
        self._membership_changed = True
        EDITS.record(name)
        self._record(lambda: self._insert(node))

    def remove_nodes(self, names: Collection[str]) -> None:
        """Remove a set of nodes that nothing outside the set consumes (they may feed each other)."""
        for name in names:
            self.set_inputs(self._nodes[name], [], [])
        for name in names:
            self.remove_node(name)

    def set_inputs(self, node: Node, inputs: Iterable[TensorRef], control_inputs: Iterable[str] | None = None) -> None:
        """Replace the data inputs (and, if given, the control inputs) of `node`."""
        if self._journal is not None:
            old_inputs, old_control = list(node.inputs), list(node.control_inputs)
            self._record(lambda: self.set_inputs(node, old_inputs, old_control))
        before = self._producers(node)
        node.inputs = list(inputs)
        if control_inputs is not None:
            node.control_inputs = list(dict.fromkeys(control_inputs))
        after = self._producers(node)
        missing = [name for name in after - before if name not in self._consumers]
        if missing:
            node.inputs, node.control_inputs = [], []  # leave the index consistent before failing
            node._canonical = False
            self._unlink_names(node.name, before)
            raise GraphError(f"input '{missing[0]}' names a missing node", node=node.name)
        # Only the edges that changed are re-indexed: a NoOp waiting on hundreds of nodes is common.
        self._unlink_names(node.name, before - after)
        for name in after - before:
            self._consumers[name].add(node.name)
        node._write_inputs()

    def reroute(self, old: TensorRef, new: TensorRef, *, exclude: Collection[str] = ()) -> dict[str, list[int]]:
        """Make every data input that reads `old` read `new` instead, but in the nodes `exclude`
        names; the nodes changed, with the positions of the inputs that changed."""
        changed = {}
        for consumer in self.consumers(old.node):
            if consumer.name in exclude or old not in consumer.inputs:
                continue
            changed[consumer.name] = [i for i, ref in enumerate(consumer.inputs) if ref == old]
            self.set_inputs(consumer, [new if ref == old else ref for ref in consumer.inputs])
        return changed

    def hand_over(self, old: str, heir: str, *, waiting: bool = True, memo: dict[str, bool] | None = None
                  ) -> list[str]:
        """The control edges of node `old` when node `heir` takes its place (DESIGN.md, "Control
        edges"): `heir` waits on what `old` waited on that orders something (`ordering`), and, with
        `waiting`, what waited on `old` waits on `heir`. The nodes that wait on `old`, by name."""
        waits = [c for c in self.consumers(old) if old in c.control_inputs]
        if waiting:
            for consumer in waits:
                self.set_inputs(consumer, consumer.inputs, [heir if c == old else c for c in consumer.control_inputs])
        node = self._nodes[heir]
        extra = [c for c in self.ordering(self._nodes[old].control_inputs, memo) if c not in node.control_inputs]
        if extra:
            self.set_inputs(node, node.inputs, node.control_inputs + extra)
        return [c.name for c in waits]

    def succeed(self, old: str, heir: str, *, in_place: bool = False, memo: dict[str, bool] | None = None
                ) -> list[str]:
        """Node `heir` takes the place of node `old`, and its name; `old` goes. With `in_place`, what
        read `old` reads `heir` (`replace_node`), else nothing may read `old` any more. Control
        edges move as `hand_over` moves them (in place, what waits on `old` waits on `heir` as it
        is). The nodes that waited on `old`, by name."""
        waiting = self.hand_over(old, heir, waiting=not in_place, memo=memo)
        if in_place:
            self.replace_node(old, heir)
        else:
            self.remove_node(old)
            self.rename_node(heir, old)
        return waiting

    def replace_node(self, old: str, new: str) -> None:
        """Remove node `old` and give its name to node `new`, which nothing reads yet: whatever read
        output `p` of `old` reads output `p` of `new`, with no input renamed.

        The same as rerouting every consumer of `old` to `new`, removing `old` and renaming `new`,
        without rewriting each consumer twice (a NoOp waiting on hundreds of nodes is common). The
        consumers end up as rerouting leaves them, to the byte, and are undone as it undoes them:
        an `input` list still as the file wrote it is written out, and a consumer waiting on `old`
        loses repeated control inputs.
        """
        if self._consumers[new]:
            raise GraphError(f"cannot replace '{old}' by '{new}': '{new}' is already used", node=new)
        node, heir = self._nodes[old], self._nodes[new]
        for consumer in [self._nodes[name] for name in self._consumers[old]]:
            if consumer._canonical:
                continue
            control = consumer.control_inputs
            if old in control and len(set(control)) < len(control):
                self.set_inputs(consumer, consumer.inputs, control)  # drops the repeats
            else:
                self._record(functools.partial(self.set_inputs, consumer, list(consumer.inputs),
                                               list(control)))
                consumer._write_inputs()
        consumers = self._consumers.pop(old)
        self._detach(node)
        self._rename(heir, old)
        self._consumers[old] = consumers
        self._record(lambda: self._undo_replace(node, heir, new))

    def _undo_replace(self, node: Node, heir: Node, name: str) -> None:
        consumers, self._consumers[heir.name] = self._consumers[heir.name], set()
        self._rename(heir, name)
        self._insert(node)
        self._consumers[node.name] = consumers

    def _detach(self, node: Node) -> None:
        """Take `node` out of the maps; its consumers' entry is the caller's."""
        self._note_leaving(node.name)
        del self._nodes[node.name], self._sequence[node.name]
        self._unlink(node)
        self._membership_changed = True
        EDITS.record(node.name)

    def _rename(self, node: Node, name: str) -> None:
        """Give `node`, which nothing reads, another name; it goes last in file order."""
        del self._consumers[node.name]
        self._detach(node)
        node._proto.name = node._name = name
        self._insert(node)

    def edit_node(self, name: str, op: str, device: str, attrs: Mapping[str, pb.AttrValue],
                  keep: Collection[str] = (), control_inputs: list[str] | None = None) -> tuple[str, ...] | None:
        """Node `name` becomes, where it stands, a node of `op` on `device` with attrs `attrs` and
        those of its own that `keep` names, waiting on `control_inputs` (None: as it does); its name
        and data inputs stay. The names of the attrs that changed, or None if nothing did. Undone
        with the transaction; no mapped tensor (`map_tensor`) is copied in but one the edit changes."""
        node = self._nodes[name]
        changes: dict[str, pb.AttrValue | None] = {
            key: value for key, value in attrs.items() if node.attr_value(key) != value}
        changes.update((key, None) for key in node.header.attr if key not in attrs and key not in keep)
        control = node.control_inputs if control_inputs is None else control_inputs
        if op == node.op and device == node.device and not changes and control == node.control_inputs:
            return None

        def apply(op, device, attrs):
            if op != node.op:
                node.op = op
            node.device = device
            for key, value in attrs.items():
                if value is not None:
                    node.set_attr(key, value)
                elif node.attr_value(key) is not None:
                    node.delete_attr(key)
            EDITS.record(name)

        before: dict[str, pb.AttrValue | None] = {}     # what undo writes back
        for key in changes:
            # Only a mapped tensor that is itself edited is read whole (its bytes copied in).
            current = node.proto.attr[key] if key in node.mapped else node.attr_value(key)
            before[key] = None if current is None else pb.AttrValue()
            if current is not None:
                before[key].CopyFrom(current)
        self._record(functools.partial(apply, node.op, node.device, before))
        apply(op, device, changes)
        if control != node.control_inputs:
            self.set_inputs(node, node.inputs, control)
        return tuple(changes)

    def copy_attrs(self, node: Node, source: Node, keys: Iterable[str]) -> None:
        """Give `node` the attrs `keys` of node `source`, which `node` does not have.

        They are shared rather than copied until either node's attrs change or `node`'s NodeDef
        is read: a copy of a big Const often leaves the graph before anything reads it (frozen
        Keras graphs read each weight through an Identity that rules replace with such a copy).
        """
        attrs = source.proto.attr
        borrowed = {key: attrs[key] for key in keys}
        if not borrowed:
            return
        if node._borrowed is not None:
            node._settle()
        node._borrowed = borrowed
        # A copy of its source's op with all of its source's dtype attrs has its signature.
        op_def, dtype_attrs = _dtype_attrs(node.op) if node.op == source.op else (None, ())
        same = op_def is not None and all(key not in node._proto.attr and (key in borrowed) == (key in attrs)
                                          for key in dtype_attrs)
        node._signature = _signature(source) if same else None
        source._lent = (source._lent or []) + [node]
        EDITS.record(node.name)

        def undo():
            if node._borrowed is not None:
                node._borrowed = None
            else:
                _delete_attrs(node._proto, list(borrowed))
            node._signature = None
            node._decoded.clear()
            EDITS.record(node.name)
        self._record(undo)

    def fresh_name(self, base: str, taken: Collection[str] = (), origin: str | None = None) -> str:
        """`base`, or `base_1`, `base_2`, ...: the first name no node has, nor any in `taken`.
        With `origin`, the name stands for that node from then on (see `origin`)."""
        name = fresh_name(base, self._nodes, taken)
        if origin is not None:
            self._origins[name] = origin
        return name

    def origin(self, name: str) -> str:
        """The node a rewrite's helper named `name` was made for (as `fresh_name` recorded it in
        this graph), else `name`: a rule names its helpers after their root's origin, so derived
        names do not grow with each rewrite (a rule's Const quantized by the next rule is
        `conv/quantize/Const`, not `conv/fold/Const/quantize/Const`)."""
        return self._origins.get(name, name)

    def rename_node(self, old: str, new: str) -> None:
        """Rename a node and every input that names it."""
        if new in self._nodes:
            raise GraphError(f"a node named '{new}' already exists", node=new)
        node = self._nodes[old]
        consumers = self.consumers(old)
        self._note_leaving(old)
        # The renamed node moves to the end of the file order; keeping its place would cost O(n).
        self._nodes[new] = self._nodes.pop(old)
        node._proto.name = node._name = new
        self._consumers[new] = self._consumers.pop(old)
        for producer in {ref.node for ref in node.inputs} | set(node.control_inputs):
            self._consumers[producer].discard(old)
            self._consumers[producer].add(new)
        for consumer in consumers:
            consumer.inputs = [TensorRef(new, r.port) if r.node == old else r for r in consumer.inputs]
            consumer.control_inputs = [new if c == old else c for c in consumer.control_inputs]
            consumer._write_inputs()
        del self._sequence[old]
        self._place_last(new)
        self._membership_changed = True
        EDITS.record(old)
        EDITS.record(new)
        self._record(lambda: self.rename_node(new, old))

    def rename_nodes(self, renames: dict[str, str]) -> None:
        """Rename several nodes at once, keeping the file order (O(nodes), unlike rename_node), and
        the colocation attrs (`_class: loc:@NAME`) that name them."""
        order = [renames.get(name, name) for name in self._nodes]
        for old, new in renames.items():
            self.rename_node(old, new)
        self.reorder(order)
        prefix = b"loc:@"
        for node in self:
            if "_class" in node.attr:
                entries = list(node.attr["_class"].list.s)
                updated = [prefix + renames.get(e[len(prefix):].decode(), e[len(prefix):].decode()).encode()
                           if e.startswith(prefix) else e for e in entries]
                if updated != entries:
                    del node.attr["_class"].list.s[:]
                    node.attr["_class"].list.s.extend(updated)

    def reorder(self, names: list[str]) -> None:
        """Put the nodes in the given order (a permutation of all node names)."""
        ordered = [(name, self._nodes[name]) for name in names]
        self._nodes.clear()
        self._nodes.update(ordered)
        self._sequence = {name: i for i, name in enumerate(self._nodes)}
        self._next_sequence = len(self._sequence)
        self._membership_changed = True

    @staticmethod
    def _producers(node: Node) -> set[str]:
        return {ref.node for ref in node.inputs} | set(node.control_inputs)

    def _unlink_names(self, consumer: str, producers) -> None:
        for name in producers:
            if name in self._consumers:
                self._consumers[name].discard(consumer)

    def _link(self, node: Node) -> None:
        for name in {ref.node for ref in node.inputs} | set(node.control_inputs):
            if name not in self._consumers:
                raise GraphError(f"input '{name}' names a missing node", node=node.name)
            self._consumers[name].add(node.name)

    def _unlink(self, node: Node) -> None:
        for name in {ref.node for ref in node.inputs} | set(node.control_inputs):
            if name in self._consumers:
                self._consumers[name].discard(node.name)


class _Transaction:
    """`Graph.transaction`: a class, not a generator, as every rewrite opens one. An inner
    transaction is part of the outer one: only the outer one undoes what a raise leaves, and
    an inner one's `undo` undoes only its own edits."""

    __slots__ = ("graph", "outer", "start")

    def __init__(self, graph: Graph):
        self.graph = graph

    def __enter__(self) -> "_Transaction":
        graph = self.graph
        self.outer = graph._journal is not None
        if not self.outer:
            graph._journal, graph._left = [], {}
        self.start = len(graph._journal)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if not self.outer:
            if kind is not None:
                self.undo()
            self.graph._journal = None

    def undo(self) -> None:
        """Undo every edit made in this transaction so far; it stays open."""
        graph = self.graph
        journal, graph._journal = graph._journal, None  # undoing records nothing
        for step in reversed(journal[self.start:]):
            step()
        del journal[self.start:]
        graph._journal = journal
        graph._restore_order()


def walk(starts: Iterable[str], step: Callable[[str], Iterable[str]]) -> list[str]:
    """The names reached from `starts` by following `step` (the names next to a name), depth
    first, in the order first reached; each is stepped from once. The one reachability walk:
    `Graph.walk` on a graph, and the SavedModel freezer before a graph exists."""
    reached: dict[str, None] = {}
    stack = list(starts)
    while stack:
        name = stack.pop()
        if name not in reached:
            reached[name] = None
            stack.extend(step(name))
    return list(reached)


def fresh_name(base: str, taken: Collection[str], also: Collection[str] = ()) -> str:
    """`base`, or `base_1`, `base_2`, ...: the first name neither `taken` nor `also` holds (see
    `Graph.fresh_name`)."""
    name, k = base, 0
    while name in taken or name in also:
        k += 1
        name = f"{base}_{k}"
    return name


def const_node_def(array: np.ndarray, dtype: int | None = None) -> pb.NodeDef:
    """A Const's NodeDef, without a name, holding `array` as `dtype` (default: the array's own),
    encoded straight into the node's attr: a new weight's bytes are not copied again."""
    dtype = dtype_for_array(array) if dtype is None else dtype
    proto = pb.NodeDef(op="Const")
    proto.attr["dtype"].type = dtype
    encode_tensor_into(proto.attr["value"].tensor, array, dtype)
    return proto


def const_array(value: Any, dtype: int | None) -> np.ndarray:
    """`value`, a constant a rule computed, as an array of `dtype`, or else of TensorFlow's usual
    float32 / int32 for Python numbers and float64 results."""
    array = np.asarray(value)
    if array.dtype.kind in "USO" and dtype is None:
        raise TypeError(f"a computed constant must be numbers, not {value!r}")
    if dtype is not None:
        return array.astype(numpy_dtype(dtype), copy=False)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype == np.int64 and not isinstance(value, np.ndarray):
        return array.astype(np.int32)
    return array


_PURITY_WALK = 10_000  # nodes `orders_nothing` looks at in one call before it keeps the edge

# TF1 control flow: a control edge from inside a loop joins a node to the loop's frame.
_CONTROL_FLOW = frozenset({"Enter", "RefEnter", "Exit", "RefExit", "Switch", "RefSwitch", "Merge", "RefMerge",
                           "NextIteration", "RefNextIteration", "LoopCond", "ControlTrigger"})


def _has_effect(node: Node) -> bool:
    """Whether running `node` does something besides computing its outputs (see `orders_nothing`)."""
    if node.op in _CONTROL_FLOW:
        return True
    op_def = op_registry.get_op(node.op)
    return op_def is None or op_def.is_stateful or any(arg.is_ref for arg in op_def.inputs)


# Ops that end a graph without being an output people fetch.
_NOT_OUTPUTS = frozenset({"Const", "NoOp", "Assert", "Placeholder", "PlaceholderWithDefault",
                          "VarHandleOp", "VariableV2", "Assign", "AssignVariableOp", "SaveV2", "RestoreV2"})


_SIGNATURES: dict[tuple, tuple] = {}  # (op, dtype attrs as bytes) -> (input dtypes, output dtypes)
_DTYPE_ATTRS: dict[str, tuple] = {}  # op -> (its definition, the attrs that set its dtypes); () if unknown


def _signature(node: Node) -> tuple:
    """(input dtypes, output dtypes) of `node`, each None where the op registry cannot tell: worked
    out once per op and dtype attrs, and kept on the node until its op or attrs change (rewrites
    check a few nodes each, thousands of times)."""
    found = node._signature
    if found is not None:
        return found
    op = node._op
    dtype = node.attr_value("dtype") if op == "Const" else None
    op_def, names = _DTYPE_ATTRS.get(op) or _dtype_attrs(op)
    if dtype is not None and dtype.WhichOneof("value") == "type":  # the commonest node, the fastest
        found = ((), (dtype.type,))
    elif op_def is None:
        found = (None, None)
    else:
        # A type attr (the commonest) keys by its dtype number, any other by its bytes: an int
        # and bytes never compare equal, and serializing costs several times the read.
        key = (op, *[None if (value := node.attr_value(a)) is None else value.type or value.SerializeToString()
                     for a in names])
        found = _SIGNATURES.get(key)
        if found is None:
            if len(_SIGNATURES) > 100_000:
                _SIGNATURES.clear()
            found = _SIGNATURES[key] = (_dtypes(op_registry.input_dtypes, op_def, node),
                                        _dtypes(op_registry.output_dtypes, op_def, node))
    node._signature = found
    return found


def _dtype_attrs(op: str) -> tuple:
    """(the definition of `op`, the attrs that set its inputs' and outputs' dtypes and counts),
    worked out once per op; (None, ()) for an op the registry does not know."""
    entry = _DTYPE_ATTRS.get(op)
    if entry is None:
        op_def = op_registry.get_op(op)
        names = () if op_def is None else tuple(sorted({
            a for arg in (*op_def.inputs, *op_def.outputs)
            for a in (arg.type_attr, arg.number_attr, arg.type_list_attr) if a}))
        entry = _DTYPE_ATTRS[op] = (op_def, names)
    return entry


def _dtypes(function, op_def, node: Node) -> tuple[int, ...] | None:
    try:
        dtypes = function(op_def, lambda a: node.get_attr(a))
    except (KeyError, TypeError):  # an attr the dtypes depend on is missing or of another type
        return None
    return None if dtypes is None else tuple(dtypes)


def _delete_attrs(proto: pb.NodeDef, keys: list[str]) -> None:
    for key in keys:
        del proto.attr[key]


from . import validation  # noqa: E402  (validation reads the model above: imported last)
