"""The functions of a GraphDef's library (FunctionDef): how their bodies name tensors, and running
the ops that call them.

A FunctionDef is a signature (input and output arguments), a body of NodeDefs and a `ret` map
from each output argument to a body tensor. The body names an input argument by its name and a
node's output as `node:output_arg:index`: the index counts within that output argument of the
node's op, so the port is where the argument starts (the op registry counts the arguments before
it) plus the index. Attr values may be placeholders (`$T`) that the call binds.

Running a call builds the function's body once into a Graph whose Placeholders are the input
arguments, prepares an Evaluator of its `ret` tensors, and runs it on the call's inputs:

- `PartitionedCall`, `StatefulPartitionedCall` and a node whose op is a library function: once;
- `If`/`StatelessIf`: `then_branch` or `else_branch`, by the truth of input 0;
- `Case`/`StatelessCase`: `branches[i]` for input 0 = i, the last branch when i is out of range;
- `While`/`StatelessWhile`: `body` maps the loop variables to their next values while `cond` of
  them is true, at most `MAX_LOOP_ITERATIONS` times.

A tensor is true as TensorFlow's functional ops see it: a scalar if it is non-zero (a string if
non-empty), any other tensor if it has elements. A call's evaluation gets the memory budget the
caller has left.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from gtt_rules.errors import EvaluationError, GraphError

from . import op_registry
from .attrs import decode_attr
from .proto import graph_def_pb2 as pb

WHILE_OPS = frozenset({"While", "StatelessWhile"})
IF_OPS = frozenset({"If", "StatelessIf"})
CASE_OPS = frozenset({"Case", "StatelessCase"})
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
FUNCTION_CALL_OPS = WHILE_OPS | IF_OPS | CASE_OPS | CALL_OPS

# A loop whose condition stays true this long is taken for a runaway (a model's loops run over
# sequence steps or decoded tokens, far fewer); the cap turns a hang into an error within seconds.
MAX_LOOP_ITERATIONS = 100_000
MAX_CALL_DEPTH = 64     # calls inside calls: deeper than any traced model is a function calling itself


# ---- how a body names its tensors ----

def output_ports(node: pb.NodeDef, functions: Mapping[str, pb.FunctionDef], where: str) -> dict[str, int]:
    """The first port of each output argument of body node `node` (in function `where`), by name."""
    function = functions.get(node.op)       # a direct call names its results
    if function is not None:
        return {arg.name: i for i, arg in enumerate(function.signature.output_arg)}
    op_def = op_registry.get_op(node.op)
    if op_def is None:
        raise GraphError(f"unknown op '{node.op}' in function '{where}'", node=node.name)
    ports, lookup = {}, attr_lookup(node)
    for k, arg in enumerate(op_def.outputs):
        start = op_registry.num_outputs(dataclasses.replace(op_def, outputs=op_def.outputs[:k]), lookup)
        if start is None:
            raise GraphError(f"in function '{where}': cannot count the outputs of op '{node.op}'",
                             node=node.name)
        ports[arg.name] = start
    return ports


def body_tensor(ref: str, ports: Mapping[str, dict[str, int]], where: str) -> tuple[str, int]:
    """Body node and port of `ref` ("node:output_arg:index"), given `output_ports` of each body
    node; GraphError if function `where` does not define it."""
    node, _, rest = ref.partition(":")
    out_arg, _, index = rest.partition(":")
    node_ports = ports.get(node)
    if node_ports is None or out_arg not in node_ports or not (index or "0").isdigit():
        raise GraphError(f"function '{where}' uses '{ref}', which it does not define")
    return node, node_ports[out_arg] + int(index or 0)


def attr_lookup(node: pb.NodeDef):
    """`node`'s decoded attr by name (KeyError if unset), as the op registry asks for it."""
    def lookup(name: str):
        if name not in node.attr:
            raise KeyError(name)
        return decode_attr(node.attr[name])
    return lookup


# ---- running calls ----

@dataclasses.dataclass
class _Prepared:
    evaluator: object          # Evaluator of the body's ret tensors
    args: list[str]            # the Placeholders of the input arguments, in order


class FunctionLibrary:
    """The functions of one graph's library, each prepared for running once and kept.

    `call(node, inputs)` is the kernel of every op that calls a function.
    """

    def __init__(self, library: pb.FunctionDefLibrary):
        self.functions: dict[str, pb.FunctionDef] = {f.signature.name: f for f in library.function}
        self._prepared: dict[tuple[str, bytes], _Prepared] = {}
        self._depth = 0

    def calls(self, node) -> bool:
        """Whether running `node` (a graph Node) calls a function."""
        return node.op in FUNCTION_CALL_OPS or node.op in self.functions

    def call(self, node, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The outputs of call node `node` (a graph Node) on its input values."""
        if self._depth >= MAX_CALL_DEPTH:
            raise EvaluationError(f"function calls nest more than {MAX_CALL_DEPTH} deep (a function "
                                  f"that calls itself?)", node=node.name)
        self._depth += 1
        try:
            return self._dispatch(node, inputs)
        finally:
            self._depth -= 1

    def _dispatch(self, node, inputs: list[np.ndarray]) -> list[np.ndarray]:
        attrs = node.proto.attr
        if node.op in WHILE_OPS:
            return self._loop(node, attrs["cond"].func, attrs["body"].func, inputs)
        if node.op in IF_OPS:
            taken = attrs["then_branch" if _truth(inputs[0]) else "else_branch"].func
            return self._run(node, taken, inputs[1:])
        if node.op in CASE_OPS:
            branches = attrs["branches"].list.func
            if not branches:
                raise EvaluationError("Case has no branches", node=node.name)
            index = int(np.asarray(inputs[0]).reshape(()))
            return self._run(node, branches[index if 0 <= index < len(branches) else -1], inputs[1:])
        if node.op in CALL_OPS:
            return self._run(node, attrs["f"].func, inputs)
        # A direct call: the node's own attrs bind the function's attr placeholders.
        function = pb.NameAttrList(name=node.op)
        for name, value in attrs.items():
            function.attr[name].CopyFrom(value)
        return self._run(node, function, inputs)

    def _loop(self, node, cond: pb.NameAttrList, body: pb.NameAttrList,
              values: list[np.ndarray]) -> list[np.ndarray]:
        for _ in range(MAX_LOOP_ITERATIONS):
            (keep_going, *_) = self._run(node, cond, values)
            if not _truth(keep_going):
                return values
            values = self._run(node, body, values)
        raise EvaluationError(f"{node.op} ran {MAX_LOOP_ITERATIONS:,} iterations and its condition "
                              f"'{cond.name}' is still true: a runaway loop", node=node.name)

    def _run(self, node, function: pb.NameAttrList, inputs: list[np.ndarray]) -> list[np.ndarray]:
        prepared = self._prepare(node, function)
        if len(inputs) != len(prepared.args):
            raise EvaluationError(f"calls function '{function.name}' with {len(inputs)} inputs; it "
                                  f"takes {len(prepared.args)}", node=node.name)
        try:
            return prepared.evaluator.run(dict(zip(prepared.args, inputs)))
        except EvaluationError as error:
            inner = f"node '{error.node}': " if error.node else ""
            raise EvaluationError(f"in function '{function.name}': {inner}{error.message}",
                                  node=node.name) from None

    def _prepare(self, node, function: pb.NameAttrList) -> _Prepared:
        key = (function.name, function.SerializeToString(deterministic=True))
        prepared = self._prepared.get(key)
        if prepared is None:
            from .evaluator import Evaluator     # the evaluator runs calls: it imports this module

            fdef = self.functions.get(function.name)
            if fdef is None:
                raise EvaluationError(f"calls function '{function.name}', which the graph's library "
                                      f"does not define", node=node.name)
            try:
                graph, args, outputs = self._body_graph(fdef, function.attr)
                evaluator = Evaluator(graph, outputs, fed=args, cache_constants=True, functions=self)
            except (GraphError, EvaluationError) as error:
                inner = f"node '{error.node}': " if error.node else ""
                raise EvaluationError(f"in function '{function.name}': {inner}{error.message}",
                                      node=node.name) from None
            prepared = self._prepared[key] = _Prepared(evaluator, args)
        return prepared

    def _body_graph(self, fdef: pb.FunctionDef, bindings: Mapping[str, pb.AttrValue]):
        """Function `fdef` as a Graph: its input arguments are Placeholders of their names,
        attr placeholders take `bindings`. Returns the graph, the arguments and the ret tensors."""
        from .graph import Graph

        fname = fdef.signature.name
        graph_def = pb.GraphDef()
        args = []
        for arg in fdef.signature.input_arg:
            placeholder = graph_def.node.add(name=arg.name, op="Placeholder")
            placeholder.attr["dtype"].type = _arg_type(arg, bindings, fname)
            args.append(arg.name)
        ports = {n.name: output_ports(n, self.functions, fname) for n in fdef.node_def}

        def translate(ref: str) -> str:
            if ref in args:
                return ref
            name, port = body_tensor(ref, ports, fname)
            return name if port == 0 else f"{name}:{port}"

        called = set()
        for body in fdef.node_def:
            node = graph_def.node.add()
            node.CopyFrom(body)
            for name, value in node.attr.items():
                if value.WhichOneof("value") == "placeholder":
                    if value.placeholder not in bindings:
                        raise GraphError(f"attr '{name}' is the placeholder '${value.placeholder}', "
                                         f"which the call does not bind", node=body.name)
                    value.CopyFrom(bindings[value.placeholder])
            node.input[:] = [ref if ref.startswith("^") else translate(ref) for ref in body.input]
            if body.op in self.functions:
                called.add(body.op)
        for name in sorted(called):     # a direct call's outputs are counted from its signature
            graph_def.library.function.add().signature.CopyFrom(self.functions[name].signature)
        outputs = []
        for arg in fdef.signature.output_arg:
            if arg.name not in fdef.ret:
                raise GraphError(f"function '{fname}' does not return '{arg.name}'")
            _arg_type(arg, bindings, fname)
            outputs.append(translate(fdef.ret[arg.name]))
        return Graph(graph_def), args, outputs


def _arg_type(arg: pb.OpDef.ArgDef, bindings: Mapping[str, pb.AttrValue], fname: str) -> int:
    if arg.number_attr or arg.type_list_attr:
        raise GraphError(f"unsupported: argument '{arg.name}' of function '{fname}' is a list of "
                         f"tensors")
    if arg.type_attr:
        if arg.type_attr not in bindings:
            raise GraphError(f"argument '{arg.name}' of function '{fname}' has the type of attr "
                             f"'{arg.type_attr}', which the call does not bind")
        return bindings[arg.type_attr].type
    return arg.type


def _truth(value: np.ndarray) -> bool:
    """A tensor as a condition, as TensorFlow's functional ops read it."""
    value = np.asarray(value)
    if value.ndim:
        return value.size > 0
    item = value.item()
    return len(item) > 0 if isinstance(item, (bytes, str)) else bool(item)
