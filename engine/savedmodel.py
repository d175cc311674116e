"""Freeze a TensorFlow 2 SavedModel into a GraphDef, without TensorFlow and without running it.

A SavedModel folder holds `saved_model.pb` (a SavedModel message: MetaGraphDefs, each a graph,
its function library, its signatures and the object graph of the saved Python objects) and the
variables checkpoint `variables/variables.*`. Its graph calls each signature's function once,
with the signature's Placeholders and the handles (VarHandleOp) of the variables it captures.

Freezing one signature:
1. the signature's inputs become Placeholders named after its input keys;
2. `StatefulPartitionedCall`/`PartitionedCall` (and direct calls) are inlined, recursively;
   consumers of a call's control output wait on the function's control outputs;
3. each captured handle is matched to its checkpoint key: the call's bound inputs name saved
   objects, whose path from the root in the object graph is also their path in the checkpoint's;
4. each variable read becomes a Const of the checkpoint's value (the first read of a variable;
   later reads are Identities of it); `ResourceGather`/`ResourceGatherNd`/`VariableShape` read
   their Const through `GatherV2`/`GatherNd`/`Shape`;
5. functional control flow (`While`, `If`, `Case` and their stateless forms) stays a call into
   the library, fed the variable's Const instead of its handle, and the reads inside its
   functions become Identities of that argument;
6. the outputs become Identity nodes named after the signature's output keys; the rest is pruned.

What freezing cannot express (assets, lookup tables, queues, variables written by the
signature, partitioned variables) is an error naming what and where, never a wrong graph.
"""
from __future__ import annotations

import os
import pathlib
import stat
from collections import deque
from typing import Iterable

from google.protobuf import message as protobuf_message

from gtt_rules.errors import GraphError, did_you_mean

from . import op_registry
from .functions import attr_lookup, body_tensor, output_ports
from .graph import fresh_name, walk
from .proto import graph_def_pb2 as pb
from .proto import saved_model_pb2 as smpb
from .tensor_bundle import TensorBundle

SAVED_MODEL_FILE = "saved_model.pb"
DEFAULT_SIGNATURE = "serving_default"
DEFAULT_TAG = "serve"
DT_INT32, DT_STRING, DT_RESOURCE, DT_VARIANT = 3, 7, 20, 21

CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
# Functional control flow: op -> (the type-list attr of its data inputs, how many leading inputs
# are not passed to the functions, the attrs naming its functions).
CONTROL_FLOW_OPS = {
    "While": ("T", 0, ("cond", "body")),
    "StatelessWhile": ("T", 0, ("cond", "body")),
    "If": ("Tin", 1, ("then_branch", "else_branch")),
    "StatelessIf": ("Tin", 1, ("then_branch", "else_branch")),
    "Case": ("Tin", 1, ("branches",)),
    "StatelessCase": ("Tin", 1, ("branches",)),
}
WHILE_OPS = frozenset({"While", "StatelessWhile"})
TF1_VARIABLE_OPS = frozenset({"VariableV2", "Variable"})
VARIABLE_OPS = TF1_VARIABLE_OPS | {"VarHandleOp"}
_MAX_INLINE_ROUNDS = 64   # deeper nesting than any traced model: a function that calls itself
_MAX_NODES = 2_000_000    # inlined nodes: a small file whose calls multiply must not take gigabytes


def is_saved_model(path: str | os.PathLike) -> bool:
    """True if `path` is a folder holding a saved_model.pb."""
    path = pathlib.Path(path)
    return path.is_dir() and (path / SAVED_MODEL_FILE).is_file()


def freeze(path: str | os.PathLike, signature: str = DEFAULT_SIGNATURE, tag: str = DEFAULT_TAG):
    """The frozen Graph of SavedModel folder `path`'s `signature`, from its MetaGraph tagged `tag`
    (several tags: comma-separated)."""
    from .graph import Graph

    folder = pathlib.Path(path)
    if folder.exists() and not folder.is_dir():
        raise GraphError("is a file, not a SavedModel folder (other commands read graph files as they are)",
                         path=str(folder))
    model_file = folder / SAVED_MODEL_FILE
    meta_graph = _meta_graph(_read_saved_model(model_file), tag, str(model_file))
    try:
        graph_def = _Freezer(meta_graph, folder, signature).freeze()
    except GraphError as e:
        raise e.located(str(model_file)) from None
    try:
        graph = Graph(graph_def, validate=False)
        graph.check()         # as loading checks a graph, once: saving it checks no more
    except GraphError as e:
        raise e.located(str(model_file)) from None
    return graph


def _read_saved_model(path: pathlib.Path) -> smpb.SavedModel:
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise GraphError("is not a regular file", path=str(path))
            data = f.read()
    except FileNotFoundError:
        raise GraphError("no such file: not a SavedModel folder", path=str(path)) from None
    except OSError as e:
        raise GraphError(f"cannot read: {e.strerror}", path=str(path)) from None
    saved_model = smpb.SavedModel()
    try:
        saved_model.ParseFromString(data)
    except protobuf_message.DecodeError:
        raise GraphError("not a SavedModel: the file is truncated or is not a protobuf",
                         path=str(path)) from None
    if not saved_model.meta_graphs:
        raise GraphError("not a SavedModel: it has no MetaGraph", path=str(path))
    return saved_model


def _meta_graph(saved_model: smpb.SavedModel, tag: str, where: str) -> smpb.MetaGraphDef:
    wanted = {t.strip() for t in tag.split(",") if t.strip()}
    for meta_graph in saved_model.meta_graphs:
        if wanted <= set(meta_graph.meta_info_def.tags):
            return meta_graph
    have = "; ".join(",".join(m.meta_info_def.tags) or "(none)" for m in saved_model.meta_graphs)
    raise GraphError(f"no MetaGraph tagged '{tag}' (tag sets: {have})", path=where)


# ---- names of tensors ----

def _split(ref: str) -> tuple[str, int]:
    """'node:2' -> ('node', 2); 'node' -> ('node', 0). Not for control inputs."""
    name, _, port = ref.rpartition(":")
    if name and port.isdigit():
        return name, int(port)
    return ref, 0


def _ref(name: str, port: int) -> str:
    return name if port == 0 else f"{name}:{port}"


def _data_inputs(node: pb.NodeDef) -> list[str]:
    return [i for i in node.input if not i.startswith("^")]


def _control_inputs(node: pb.NodeDef) -> list[str]:
    return [i[1:] for i in node.input if i.startswith("^")]


def _shape_proto(entry_shape: pb.TensorShapeProto) -> pb.TensorShapeProto:
    shape = pb.TensorShapeProto()
    shape.CopyFrom(entry_shape)
    return shape


class _Freezer:
    """One signature of one MetaGraph, frozen into a new GraphDef."""

    def __init__(self, meta_graph: smpb.MetaGraphDef, folder: pathlib.Path, signature: str):
        self.meta_graph = meta_graph
        self.folder = folder
        signatures = {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}
        if signature not in signatures:
            raise GraphError(f"no signature '{signature}'{did_you_mean(signature, signatures)} (signatures: "
                             f"{', '.join(sorted(signatures)) or 'none'})")
        self.signature = signatures[signature]
        self.signature_name = signature
        if meta_graph.asset_file_def:
            raise GraphError(f"unsupported: the SavedModel has {len(meta_graph.asset_file_def)} "
                             f"asset file(s) (vocabularies, tables); freeze reads variables only")
        source = meta_graph.graph_def
        self.nodes: dict[str, pb.NodeDef] = {}
        for node in source.node:
            if node.name in self.nodes:
                raise GraphError(f"duplicate node name '{node.name}'")
            self.nodes[node.name] = node
        self.functions: dict[str, pb.FunctionDef] = {f.signature.name: f for f in source.library.function}
        self.alias: dict[str, str] = {}              # tensor of an inlined call -> what it returns
        self.control_alias: dict[str, list[str]] = {}   # inlined call -> what waiting on it means
        self._bundle: TensorBundle | None = None
        self._consts: dict[str, str] = {}            # VarHandleOp -> the Const holding its value

    # ---- the steps ----

    def freeze(self) -> pb.GraphDef:
        inputs = {key: self._signature_tensor(key, info, "input")
                  for key, info in sorted(self.signature.inputs.items())}
        outputs = {key: self._signature_tensor(key, info, "output")
                   for key, info in sorted(self.signature.outputs.items())}
        if set(inputs) & set(outputs):
            raise GraphError(f"signature '{self.signature_name}': a key is both an input and an "
                             f"output: {', '.join(sorted(set(inputs) & set(outputs)))}")
        for key, ref in inputs.items():
            name, port = _split(ref)
            if port != 0 or self.nodes.get(name) is None or self.nodes[name].op != "Placeholder":
                raise GraphError(f"signature input '{key}' is '{ref}', not a Placeholder")
        self.variable_keys = self._variable_keys()
        self._inline_calls(list(outputs.values()))
        self._freeze_variables(list(outputs.values()))
        return self._assemble(inputs, outputs)

    def _signature_tensor(self, key: str, info: smpb.TensorInfo, kind: str) -> str:
        if info.WhichOneof("encoding") != "name":
            raise GraphError(f"unsupported: signature {kind} '{key}' is a sparse or composite tensor")
        name, _ = _split(info.name)
        if name not in self.nodes:
            raise GraphError(f"signature {kind} '{key}' names '{info.name}', which is not in the graph")
        return _ref(*_split(info.name))

    # ---- inlining ----

    def _function_of_call(self, node: pb.NodeDef) -> str | None:
        if node.op in CALL_OPS:
            return node.attr["f"].func.name
        return node.op if node.op in self.functions else None

    def _inline_calls(self, outputs: list[str]) -> None:
        sizes: dict[str, int] = {}
        calls = [self._function_of_call(self.nodes[n]) for n in self._reachable(outputs)]
        total = len(self.nodes) + sum(self._inlined_size(f, sizes, ()) for f in calls if f)
        if total > _MAX_NODES:
            raise GraphError(f"inlining the signature's calls would make {total:,} nodes, more than "
                             f"{_MAX_NODES:,} (functions called too many times over)")
        for _ in range(_MAX_INLINE_ROUNDS):
            calls = [n for n in self._reachable(outputs) if self._function_of_call(self.nodes[n])]
            if not calls:
                return
            for name in calls:
                self._inline(self.nodes.pop(name))
        raise GraphError("function calls nest too deeply (a function that calls itself?)")

    def _inlined_size(self, fname: str, sizes: dict[str, int], stack: tuple[str, ...]) -> int:
        """How many nodes inlining a call of `fname` makes, its own calls inlined too."""
        if fname in sizes:
            return sizes[fname]
        function = self.functions.get(fname)
        if function is None:
            return 1     # reported, with the calling node, when it is inlined
        if fname in stack or len(stack) >= _MAX_INLINE_ROUNDS:
            raise GraphError(f"function '{fname}' calls itself (or nests calls more than "
                             f"{_MAX_INLINE_ROUNDS} deep): it cannot be inlined")
        size = 0
        for node in function.node_def:
            called = self._function_of_call(node)
            size += self._inlined_size(called, sizes, stack + (fname,)) if called else 1
            if size > _MAX_NODES:
                break
        sizes[fname] = size
        return size

    def _reachable(self, outputs: Iterable[str]) -> list[str]:
        """The nodes `outputs` read, through data and control inputs, aliases resolved."""
        def step(name: str) -> list[str]:
            node = self.nodes.get(name)
            if node is None:
                raise GraphError(f"node '{name}' is used but not defined")
            return [_split(self._resolve(r))[0] for r in _data_inputs(node)] + \
                [c for r in _control_inputs(node) for c in self._resolve_control(r)]
        return walk([_split(self._resolve(r))[0] for r in outputs], step)

    def _resolve(self, ref: str) -> str:
        for _ in range(len(self.alias) + 1):
            target = self.alias.get(_ref(*_split(ref)))
            if target is None:
                return _ref(*_split(ref))
            ref = target
        raise GraphError(f"tensor '{ref}' is defined by itself")

    def _resolve_control(self, name: str, depth: int = 0) -> list[str]:
        if name not in self.control_alias:
            return [name]
        if depth > _MAX_INLINE_ROUNDS:
            raise GraphError(f"control input '^{name}' is defined by itself")
        return [c for target in self.control_alias[name] for c in self._resolve_control(target, depth + 1)]

    def _inline(self, call: pb.NodeDef) -> None:
        fname = self._function_of_call(call)
        function = self.functions.get(fname)
        if function is None:
            raise GraphError(f"calls function '{fname}', which the library does not define",
                             node=call.name)
        args = function.signature.input_arg
        data = _data_inputs(call)
        if len(args) != len(data):
            raise GraphError(f"calls '{fname}' with {len(data)} inputs; it takes {len(args)}",
                             node=call.name)
        prefix = call.name + "/"
        arg_map = {arg.name: ref for arg, ref in zip(args, data)}
        body_ports = {n.name: output_ports(n, self.functions, fname) for n in function.node_def}

        def translate(ref: str) -> str:
            if ref in arg_map:
                return arg_map[ref]
            node, port = body_tensor(ref, body_ports, fname)
            return _ref(prefix + node, port)

        waits = _control_inputs(call)
        for body in function.node_def:
            node = pb.NodeDef()
            node.CopyFrom(body)
            node.name = prefix + body.name
            if node.name in self.nodes:
                raise GraphError(f"inlining '{fname}' makes node '{node.name}', which exists",
                                 node=call.name)
            for value in node.attr.values():
                if value.WhichOneof("value") == "placeholder":
                    raise GraphError(f"unsupported: function '{fname}' has attr placeholders "
                                     f"(a polymorphic function)", node=call.name)
            del node.input[:]
            for ref in body.input:
                if ref.startswith("^"):
                    target = ref[1:]
                    node.input.append("^" + (_split(arg_map[target])[0] if target in arg_map
                                             else prefix + target))
                else:
                    node.input.append(translate(ref))
            if not body.input:       # what the call waited on, its body's sources wait on
                node.input.extend("^" + w for w in waits)
            self.nodes[node.name] = node
        results = []
        for port, arg in enumerate(function.signature.output_arg):
            if arg.name not in function.ret:
                raise GraphError(f"function '{fname}' does not return '{arg.name}'", node=call.name)
            results.append(translate(function.ret[arg.name]))
            self.alias[_ref(call.name, port)] = results[-1]
        self.control_alias[call.name] = ([prefix + n for n in function.control_ret.values()]
                                         + [_split(r)[0] for r in results] + waits)

    # ---- variables ----

    def _variable_keys(self) -> dict[str, str]:
        """VarHandleOp node -> checkpoint key, through the bound inputs of the graph's calls."""
        object_graph = self.meta_graph.object_graph_def
        handles: dict[str, int] = {}
        for node in self.nodes.values():
            fname = self._function_of_call(node)
            concrete = object_graph.concrete_functions.get(fname) if fname else None
            if concrete is None or not concrete.bound_inputs:
                continue
            data = _data_inputs(node)
            for ref, object_id in zip(data[len(data) - len(concrete.bound_inputs):], concrete.bound_inputs):
                handle = self.nodes.get(_split(ref)[0])
                if handle is not None and handle.op == "VarHandleOp":
                    handles[handle.name] = object_id
        if not object_graph.nodes:       # TF1: the Saver keyed each variable by its node's name
            return {n.name: n.name for n in self.nodes.values() if n.op in VARIABLE_OPS
                    and self._has_checkpoint() and n.name in self.bundle.entries}
        if not handles:
            return {}
        paths = _object_paths(object_graph.nodes, lambda n: n.children)
        checkpoint = self._checkpoint_object_graph()
        by_path = {path: i for i, path in _object_paths(checkpoint.nodes, lambda n: n.children).items()}
        keys = {}
        for handle, object_id in handles.items():
            path = paths.get(object_id)
            checkpoint_node = by_path.get(path) if path is not None else None
            if checkpoint_node is None:
                raise GraphError(f"variable '{handle}' (saved object {object_id}) has no place in the "
                                 f"checkpoint's object graph")
            attributes = {a.name: a.checkpoint_key for a in checkpoint.nodes[checkpoint_node].attributes}
            if "VARIABLE_VALUE" not in attributes:
                raise GraphError(f"variable '{handle}' ({'/'.join(path) or 'root'}) has no value in "
                                 f"the checkpoint")
            keys[handle] = attributes["VARIABLE_VALUE"]
        return keys

    def _has_checkpoint(self) -> bool:
        return (self.folder / "variables" / "variables.index").exists()

    @property
    def bundle(self) -> TensorBundle:
        if self._bundle is None:
            self._bundle = TensorBundle(self.folder / "variables" / "variables")
        return self._bundle

    def _checkpoint_object_graph(self) -> smpb.TrackableObjectGraph:
        values = self.bundle.strings("_CHECKPOINTABLE_OBJECT_GRAPH")
        graph = smpb.TrackableObjectGraph()
        try:
            graph.ParseFromString(values[0] if values else b"")
        except protobuf_message.DecodeError:
            raise GraphError("corrupt checkpoint: its object graph is not a TrackableObjectGraph",
                             path=self.bundle.prefix + ".index") from None
        return graph

    def _handle_of(self, ref: str) -> str | None:
        """The VarHandleOp a resource tensor comes from, through Identities and loop outputs."""
        for _ in range(len(self.nodes) + 1):
            name, port = _split(self._resolve(ref))
            node = self.nodes[name]
            if node.op == "VarHandleOp" or name in self._consts.values():
                return name
            if node.op == "Identity" or node.op in WHILE_OPS:
                ref = _data_inputs(node)[port if node.op in WHILE_OPS else 0]
                continue
            return None
        return None

    def _const_of(self, handle: str, node_name: str | None = None) -> str:
        """The Const holding variable `handle`'s value: made at `node_name` (a read that it
        replaces) or, without one, in place of the variable's node."""
        if handle in self._consts:
            return self._consts[handle]
        if handle in self._consts.values():    # a VarHandleOp already turned into its Const
            return handle
        if self.nodes[handle].op not in VARIABLE_OPS:
            raise GraphError(f"unsupported: '{self.nodes[handle].op}' is not a variable", node=handle)
        key = self.variable_keys.get(handle)
        if key is None:
            raise GraphError("unsupported: a variable handle that the signature does not capture "
                             "(no checkpoint key)", node=handle)
        entry = self.bundle.entry(key)
        expected = self.nodes[handle].attr["dtype"].type
        if entry.dtype != expected or entry.dtype in (DT_STRING, DT_RESOURCE, DT_VARIANT):
            raise GraphError(f"unsupported: variable of dtype {entry.dtype} in checkpoint key "
                             f"'{key}' (the handle says {expected})", node=handle)
        const = pb.NodeDef(name=node_name or handle, op="Const")
        const.attr["dtype"].type = entry.dtype
        tensor = const.attr["value"].tensor
        tensor.dtype = entry.dtype
        tensor.tensor_shape.CopyFrom(entry.shape)
        tensor.tensor_content = bytes(self.bundle.raw(key))
        self.nodes[const.name] = const
        self._consts[handle] = const.name
        return const.name

    def _freeze_variables(self, outputs: list[str]) -> None:
        for name in self._reachable(outputs):
            node = self.nodes[name]
            if node.op in ("ReadVariableOp", "ResourceGather", "ResourceGatherNd", "VariableShape"):
                handle = self._handle_of(_data_inputs(node)[0])
                if handle is None:
                    raise GraphError(f"unsupported: '{node.op}' of a resource that is not a variable",
                                     node=name)
                self._replace_read(node, handle)
            elif node.op in CONTROL_FLOW_OPS:
                self._freeze_control_flow(node)
            elif node.op in TF1_VARIABLE_OPS:      # a reference variable: its value, in place
                self._const_of(name)

    def _replace_read(self, node: pb.NodeDef, handle: str) -> None:
        name, op = node.name, node.op
        if op == "ReadVariableOp" and handle not in self._consts and handle not in self._consts.values():
            self._const_of(handle, name)       # the first read becomes the Const itself
            return
        params = self._const_of(handle, None if op == "ReadVariableOp"
                                else fresh_name(f"{name}/params", self.nodes))
        dtype = self.nodes[params].attr["dtype"].type
        new = pb.NodeDef(name=name, device=node.device)
        indices = _data_inputs(node)[1:]
        if op == "ReadVariableOp":
            new.op, new.input[:] = "Identity", [params]
            new.attr["T"].type = dtype
        elif op == "VariableShape":
            new.op, new.input[:] = "Shape", [params]
            new.attr["T"].type = dtype
            new.attr["out_type"].CopyFrom(node.attr["out_type"])
        elif op == "ResourceGatherNd":
            new.op, new.input[:] = "GatherNd", [params] + indices
            new.attr["Tparams"].type = dtype
            new.attr["Tindices"].CopyFrom(node.attr["Tindices"])
        else:
            axis = pb.NodeDef(name=fresh_name(f"{name}/axis", self.nodes), op="Const")
            axis.attr["dtype"].type = DT_INT32
            axis.attr["value"].tensor.dtype = DT_INT32
            axis.attr["value"].tensor.int_val.append(0)
            self.nodes[axis.name] = axis
            new.op, new.input[:] = "GatherV2", [params] + indices + [axis.name]
            new.attr["Tparams"].type = dtype
            new.attr["Tindices"].CopyFrom(node.attr["Tindices"])
            new.attr["Taxis"].type = DT_INT32
            new.attr["batch_dims"].i = node.attr["batch_dims"].i if "batch_dims" in node.attr else 0
        new.input.extend("^" + c for c in _control_inputs(node))
        self.nodes[name] = new

    # ---- functional control flow ----

    def _freeze_control_flow(self, node: pb.NodeDef) -> None:
        types_attr, skip, function_attrs = CONTROL_FLOW_OPS[node.op]
        data = _data_inputs(node)
        frozen: dict[int, pb.NodeDef] = {}   # argument position -> the variable's Const
        for position, ref in enumerate(data[skip:]):
            if node.attr[types_attr].list.type[position] != DT_RESOURCE:
                continue
            handle = self._handle_of(ref)
            if handle is None:
                raise GraphError(f"unsupported: '{node.op}' is passed a resource that is not a "
                                 f"variable (input {position + skip})", node=node.name)
            frozen[position] = self.nodes[self._const_of(handle)]
        if not frozen:
            return
        controls = _control_inputs(node)
        del node.input[:]
        for position, ref in enumerate(data):
            const = frozen.get(position - skip)
            node.input.append(const.name if const is not None else ref)
        node.input.extend("^" + c for c in controls)
        arguments = {position: (const.attr["dtype"].type, const.attr["value"].tensor.tensor_shape)
                     for position, const in frozen.items()}
        self._retype(node, arguments)

    def _freeze_function(self, fname: str, arguments: dict, passes_through: bool, where: str) -> str:
        """A copy of function `fname` whose resource arguments `arguments` (position -> dtype,
        shape) take the variable's value: reads become Identities. `passes_through`: a While
        body, which returns the argument at the same position."""
        source = self.functions.get(fname)
        if source is None:
            raise GraphError(f"uses function '{fname}', which the library does not define", node=where)
        function = pb.FunctionDef()
        function.CopyFrom(source)
        new_name = fname + "_frozen"
        while new_name in self.functions:
            new_name += "_"
        function.signature.name = new_name
        values: dict[str, tuple] = {}          # a tensor in the body that is now a value -> type
        for position, (dtype, shape) in arguments.items():
            arg = function.signature.input_arg[position]
            arg.type = dtype
            attrs = function.arg_attr[position].attr
            for key in ("_handle_dtypes", "_handle_shapes"):
                if key in attrs:
                    del attrs[key]
            if "_output_shapes" in attrs:
                attrs["_output_shapes"].list.shape[0].CopyFrom(shape)
            values[arg.name] = (dtype, shape)
        renamed: dict[str, str] = {}           # 'read:value:0' -> 'read:output:0'
        done: set[str] = set()
        changed = True
        while changed:             # until no node that takes a value is left to change
            changed = False
            for node in function.node_def:
                taken = [(i, values[r]) for i, r in enumerate(node.input) if r in values]
                if not taken or node.name in done:
                    continue
                done.add(node.name)
                changed = True
                dtype, shape = taken[0][1]
                if node.op == "ReadVariableOp":
                    node.op = "Identity"
                    del node.attr["dtype"]
                    node.attr["T"].type = dtype
                    renamed[f"{node.name}:value:0"] = f"{node.name}:output:0"
                elif node.op == "Identity":
                    node.attr["T"].type = dtype
                    values[f"{node.name}:output:0"] = (dtype, shape)
                elif node.op in CONTROL_FLOW_OPS:
                    skip = CONTROL_FLOW_OPS[node.op][1]
                    inner = {i - skip: v for i, v in taken if i >= skip}
                    self._retype(node, inner)
                    if node.op in WHILE_OPS:
                        for position, v in inner.items():
                            values[f"{node.name}:output:{position}"] = v
                elif node.op in CALL_OPS or node.op in self.functions:
                    raise GraphError(f"unsupported: function '{fname}' passes a variable to a "
                                     f"nested call ('{node.name}')", node=where)
                else:
                    raise GraphError(f"unsupported: function '{fname}' applies '{node.op}' to a "
                                     f"variable ('{node.name}')", node=where)
        for node in function.node_def:
            node.input[:] = [renamed.get(r, r) for r in node.input]
        for key in list(function.ret):
            function.ret[key] = renamed.get(function.ret[key], function.ret[key])
        for position, arg in enumerate(function.signature.output_arg):
            if arg.type == DT_RESOURCE:
                if not passes_through or position not in arguments:
                    raise GraphError(f"unsupported: function '{fname}' returns a resource",
                                     node=where)
                arg.type = arguments[position][0]
        self.functions[new_name] = function
        return new_name

    def _retype(self, node: pb.NodeDef, arguments: dict) -> None:
        """Control-flow `node` now gets values at `arguments` (position after its leading inputs
        -> dtype, shape): its types, a loop's output shapes and its functions follow."""
        types_attr, _, function_attrs = CONTROL_FLOW_OPS[node.op]
        for position, (dtype, shape) in arguments.items():
            node.attr[types_attr].list.type[position] = dtype
            if node.op in WHILE_OPS:      # a loop's outputs are its loop variables
                for key in ("output_shapes", "_output_shapes"):
                    if key in node.attr and position < len(node.attr[key].list.shape):
                        node.attr[key].list.shape[position].CopyFrom(shape)
        for attr in function_attrs:
            value = node.attr[attr]
            funcs = value.list.func if value.WhichOneof("value") == "list" else [value.func]
            for func in funcs:
                func.name = self._freeze_function(func.name, arguments, node.op in WHILE_OPS and
                                                  attr == "body", node.name)

    # ---- the new GraphDef ----

    def _assemble(self, inputs: dict[str, str], outputs: dict[str, str]) -> pb.GraphDef:
        from .graph import Graph

        renames = {_split(ref)[0]: key for key, ref in inputs.items()}
        taken = set(self.nodes) - set(renames)
        for key in list(inputs) + list(outputs):
            if key in taken:                    # a node already has the key's name: move it
                moved = fresh_name(key + "_", self.nodes)
                while moved in taken or moved in inputs or moved in outputs:
                    moved += "_"
                renames[key] = moved
                taken.add(moved)

        def rename(name: str) -> str:
            return renames.get(name, name)

        def rename_ref(ref: str) -> str:
            name, port = _split(self._resolve(ref))
            return _ref(rename(name), port)

        graph_def = pb.GraphDef()
        graph_def.versions.CopyFrom(self.meta_graph.graph_def.versions)
        # The signature's inputs stay, read or not: they are the graph's interface.
        live = set(self._reachable(list(outputs.values()))) | {_split(r)[0] for r in inputs.values()}
        for name, node in self.nodes.items():
            if name not in live:
                continue
            new = graph_def.node.add()
            new.CopyFrom(node)
            new.name = rename(name)
            del new.input[:]
            new.input.extend(rename_ref(r) for r in _data_inputs(node))
            controls = dict.fromkeys(rename(c) for r in _control_inputs(node)
                                     for c in self._resolve_control(r))
            new.input.extend("^" + c for c in controls)
            if "_class" in new.attr:            # colocation with nodes that may be gone
                del new.attr["_class"]
        for key, ref in outputs.items():
            info = self.signature.outputs[key]
            identity = graph_def.node.add(name=key, op="Identity", input=[rename_ref(ref)])
            identity.attr["T"].type = info.dtype
        for key, ref in inputs.items():
            info = self.signature.inputs[key]
            placeholder = next(n for n in graph_def.node if n.name == key)
            if info.HasField("tensor_shape"):
                placeholder.attr["shape"].shape.CopyFrom(info.tensor_shape)
        # Prune: what the outputs read, and only the control edges that order something. In
        # place: the Consts are most of the bytes, and copied once is enough.
        keep = Graph(graph_def, validate=False).live_nodes(list(outputs), list(inputs)) | set(inputs)
        for index in reversed(range(len(graph_def.node))):
            node = graph_def.node[index]
            if node.name not in keep:
                del graph_def.node[index]
            elif any(r.startswith("^") and r[1:] not in keep for r in node.input):
                node.input[:] = [r for r in node.input if not r.startswith("^") or r[1:] in keep]
        _check_supported(graph_def.node)
        graph_def.library.function.extend(self.functions[f] for f in _used_functions(graph_def.node, self.functions))
        for function in graph_def.library.function:
            name = function.signature.name
            args = list(function.signature.input_arg) + list(function.signature.output_arg)
            if any(arg.type == DT_RESOURCE for arg in args):
                raise GraphError(f"unsupported: function '{name}' still takes or returns a resource "
                                 f"(one that is not a variable the signature captures)")
            try:
                _check_supported(function.node_def)
            except GraphError as e:
                raise GraphError(f"in function '{name}': {e.message}", node=e.node) from None
        return graph_def


def _check_supported(nodes) -> None:
    """No handle may be left: a variable that is written or passed on, or another resource."""
    handles = {n.name for n in nodes if n.op == "VarHandleOp"}
    for node in nodes:
        used = [r for r in _data_inputs(node) if _split(r)[0] in handles]
        if used:
            raise GraphError(f"unsupported: '{node.op}' takes the handle of variable "
                             f"'{_split(used[0])[0]}' (a signature that writes its variables, or "
                             f"passes them on, cannot be frozen)", node=node.name)
    for node in nodes:
        op_def = op_registry.get_op(node.op)
        if op_def is None:
            continue
        dtypes = (op_registry.output_dtypes(op_def, attr_lookup(node)) or []) + \
                 (op_registry.input_dtypes(op_def, attr_lookup(node)) or [])
        if DT_RESOURCE in dtypes:
            raise GraphError(f"unsupported resource: '{node.op}' (lookup tables, queues and other "
                             f"resources that are not variables cannot be frozen)", node=node.name)


def _object_paths(nodes, children) -> dict[int, tuple[str, ...]]:
    """Each object's shortest path of child names from the root (object 0), breadth first."""
    paths = {0: ()} if len(nodes) else {}
    queue = deque([0] if len(nodes) else [])
    while queue:
        current = queue.popleft()
        for child in children(nodes[current]):
            if child.node_id not in paths and 0 <= child.node_id < len(nodes):
                paths[child.node_id] = paths[current] + (child.local_name,)
                queue.append(child.node_id)
    return paths


def _used_functions(nodes: Iterable[pb.NodeDef], functions: dict[str, pb.FunctionDef]) -> list[str]:
    """The library functions `nodes` call, directly or through other functions, sorted."""
    def called(body: Iterable[pb.NodeDef]) -> list[str]:
        names = [n for node in body for n in [node.op] + [v.func.name for v in node.attr.values()]
                 + [f.name for v in node.attr.values() for f in v.list.func]]
        return [name for name in names if name in functions]
    used = walk(called(nodes), lambda name: called(functions[name].node_def))
    return sorted(used)
