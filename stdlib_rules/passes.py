"""The standard library's whole-graph passes: what no pattern can express.

Each keeps the Graph Transform Tool's name and parameters, so GTT command lines run unchanged.
They go into this module's `REGISTRY`, part of the standard library's (gtt_rules.stdlib_rules).
"""
from __future__ import annotations

import numpy as np

from gtt_rules.engine.functions import body_tensor, output_ports
from gtt_rules.engine.dtypes import DT_FLOAT, DT_INT32, DT_INT64
from gtt_rules.engine.graph import Graph, TensorRef
from gtt_rules.errors import UsageError
from gtt_rules.rules.params import Param
from gtt_rules.rules.passes import PassContext
from gtt_rules.rules.registry import Registry

REGISTRY = Registry()


def _list_param(name: str, kind: str) -> Param:
    return Param(name, kind, True, [])


@REGISTRY.pass_("strip_unused_nodes", Param("type", "dtype", False, DT_FLOAT), Param("shape", "str", False, ""),
               _list_param("name", "str"), _list_param("type_for_name", "dtype"), _list_param("shape_for_name", "str"))
def strip_unused_nodes(graph: Graph, ctx: PassContext) -> None:
    """Keep only what the outputs need; the inputs become Placeholders of the given type and shape.

    A node the outputs reach only through control edges that order nothing (from Consts and
    other nodes without side effects: frozen Keras graphs hang every weight on such a NoOp) is
    not needed, and those edges go.

    Not a rule: what the outputs need is a reachability walk over the whole graph.
    """
    if not ctx.outputs:
        raise UsageError("strip_unused_nodes needs the graph's outputs (--outputs)")
    settings = _placeholder_settings(ctx)
    inputs = set(ctx.inputs)
    needed = graph.live_nodes(ctx.outputs, inputs) | inputs  # every graph input stays, as in GTT
    for node in graph:
        if node.name in needed and node.name not in inputs and any(c not in needed for c in node.control_inputs):
            graph.set_inputs(node, node.inputs, [c for c in node.control_inputs if c in needed])
    order = [node.name for node in graph]
    for name in ctx.inputs:
        node = graph[name]
        dtype, shape = settings.get(name, settings[None])
        if node.op != "Placeholder" or node.inputs or node.control_inputs:
            _replace_with_placeholder(graph, name, dtype, shape)
        else:
            node.set_attr("dtype", node.get_attr("dtype", dtype))
            if shape is not None:
                node.set_attr("shape", shape)
    graph.remove_nodes([n.name for n in graph if n.name not in needed])
    graph.reorder([name for name in order if name in graph])


def _placeholder_settings(ctx: PassContext) -> dict:
    params = ctx.params
    default_shape = _parse_shape(params["shape"])
    settings = {None: (params["type"], default_shape)}
    names, types, shapes = params["name"], params["type_for_name"], params["shape_for_name"]
    if len(types) not in (0, len(names)) or len(shapes) not in (0, len(names)):
        raise UsageError("strip_unused_nodes: give one type_for_name and shape_for_name per name")
    for i, name in enumerate(names):
        settings[name] = (types[i] if types else params["type"],
                          _parse_shape(shapes[i]) if shapes else default_shape)
    return settings


def _parse_shape(text: str):
    if not text:
        return None
    try:
        shape = [int(d) for d in text.split(",")]
    except ValueError:
        shape = None
    # A TensorShapeProto holds int64 sizes, and -1 is the only negative one (unknown).
    if shape is None or not all(-1 <= d < 2 ** 63 for d in shape):
        raise UsageError(f"bad shape '{text}': write comma-separated sizes, like \"1,224,224,3\" "
                         f"(-1 for an unknown size)")
    return shape


def _replace_with_placeholder(graph: Graph, name: str, dtype: int, shape) -> None:
    with graph.transaction():
        temp = graph.add_node(graph.fresh_name(f"{name}/placeholder"), "Placeholder", attrs={"dtype": dtype})
        if shape is not None:
            temp.set_attr("shape", shape)
        # Every output read goes to the one the Placeholder has.
        for port in {r.port for c in graph.consumers(name) for r in c.inputs if r.node == name}:
            graph.reroute(TensorRef(name, port), TensorRef(temp.name))
        graph.set_inputs(graph[name], [], [])  # what is fed waits on nothing
        graph.succeed(name, temp.name)


@REGISTRY.pass_("sort_by_execution_order")
def sort_by_execution_order(graph: Graph, ctx: PassContext) -> None:
    """Order the nodes so that each comes after its inputs.

    Not a rule: an order is a property of the whole graph, not of one node.
    """
    graph.reorder([node.name for node in graph.topological_order()])


@REGISTRY.pass_("rename_node", Param("old_node_name", "str", False, ""), Param("new_node_name", "str", False, ""))
def rename_node(graph: Graph, ctx: PassContext) -> None:
    """Rename one node, and every input that names it.

    Not a rule: a rule's nodes keep their names or take the one of the node they replace.
    """
    old, new = ctx.params["old_node_name"], ctx.params["new_node_name"]
    if old not in graph:
        raise UsageError(f"rename_node: no node named '{old}'")
    graph.rename_nodes({old: new})


@REGISTRY.pass_("obfuscate_names")
def obfuscate_names(graph: Graph, ctx: PassContext) -> None:
    """Give every node but the inputs and outputs a short meaningless name.

    Not a rule: it renames every node, in the graph's order.
    """
    _shorten(graph, [node.name for node in graph if node.name not in ctx.protected], ctx.protected)


@REGISTRY.pass_("compact_names")
def compact_names(graph: Graph, ctx: PassContext) -> None:
    """Give the helper nodes that this run's rewrites made short names, as a shipped model wants
    (on fer's eight-bit model, their long derived names were a fifth of the file). An eight-bit op
    whose layer's float node is gone takes that node's name, so the layer keeps its name and
    `compare --per-layer` finds it.

    Not a rule: it renames nodes across the whole graph, in the graph's order.
    """
    made = [node for node in graph if graph.origin(node.name) != node.name and node.name not in ctx.protected]
    renames: dict[str, str] = {}
    for node in made:
        origin = graph.origin(node.name)
        if node.op.startswith("Quantized") and origin not in graph and origin not in renames.values():
            renames[node.name] = origin
    _shorten(graph, [node.name for node in made if node.name not in renames], ctx.protected | set(renames.values()))
    graph.rename_nodes(renames)


def _shorten(graph: Graph, names: list[str], keep) -> None:
    """Rename `names`, in order, to a, b, ..., aa, ...: to the first that no node outside `names`
    has, nor `keep`."""
    everything = [node.name for node in graph]
    stay = (set(everything) - set(names)) | set(keep)
    renames: dict[str, str] = {}
    counter = 0
    for name in names:
        # Like the GTT, avoid only the names that stay: a second run then names every node as
        # the first did and changes nothing.
        while True:
            counter += 1
            short = _short_name(counter)
            if short not in stay:
                break
        if short != name:
            renames[name] = short
    # A new name may still be an old one, renamed later: go by a name no node has first.
    if set(renames.values()) & set(names):
        suffix = "_"
        while any(name.endswith(suffix) for name in everything):
            suffix += "_"
        graph.rename_nodes({old: new + suffix for old, new in renames.items()})
        renames = {new + suffix: new for new in renames.values()}
    graph.rename_nodes(renames)


def _short_name(n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while n:
        n, digit = divmod(n - 1, len(letters))
        out = letters[digit] + out
    return out


@REGISTRY.pass_("merge_duplicate_nodes")
def merge_duplicate_nodes(graph: Graph, ctx: PassContext) -> None:
    """Merge nodes with the same op, inputs, attrs and device, until no two are alike.

    Not a rule: it groups every node by its content, in linear time. As rules (several roots:
    docs/language.md), a duplicate is found among the other readers of the node's inputs, pairwise,
    which a tensor read by thousands of nodes makes quadratic; and Consts share no input.
    """
    keep = ctx.protected
    changed = True
    while changed:
        changed = False
        # Nodes are grouped by a cheap key (no tensor contents); only nodes that share one are
        # compared in full, so the weights of a big model are not hashed.
        seen: dict[tuple, list[str]] = {}
        for node in graph.topological_order():
            op_def = graph.op_def_of(node)
            if op_def is None or op_def.is_stateful:
                continue  # unknown ops and library calls may have effects: never merged
            candidates = seen.setdefault(_cheap_key(node), [])
            original = next((c for c in candidates if _same_attrs(graph[c], node)), None)
            if original is None or node.name in keep:
                candidates.append(node.name)
                continue
            count = graph.num_outputs(node) or 1
            for port in range(count):
                graph.reroute(TensorRef(node.name, port), TensorRef(original, port))
            graph.hand_over(node.name, original)
            graph.remove_node(node.name)
            changed = True


def _cheap_key(node) -> tuple:
    attrs = []
    values = node.proto.attr  # read only: `node.attr` would drop the node's decoded values
    for key in sorted(values):
        value = values[key]
        if value.WhichOneof("value") == "tensor":
            tensor = value.tensor
            attrs.append((key, tensor.dtype, tuple(d.size for d in tensor.tensor_shape.dim)))
        else:
            attrs.append((key, value.SerializeToString(deterministic=True)))
    return (node.op, node.device, tuple(node.inputs), tuple(sorted(node.control_inputs)), tuple(attrs))


def _same_attrs(a, b) -> bool:
    ours, theirs = a.proto.attr, b.proto.attr
    return all(ours[key] == theirs[key] for key in ours)


@REGISTRY.pass_("freeze_requantization_ranges", Param("min_max_log_file", "str", False, ""),
               Param("min_percentile", "float", False, 5.0), Param("max_percentile", "float", False, 5.0))
def freeze_requantization_ranges(graph: Graph, ctx: PassContext) -> None:
    """Replace each RequantizationRange (or range-measuring Min or Max) in a GTT-format min/max log
    with Consts of its logged range.

    Not a rule: it reads a log file.
    """
    from gtt_rules import calibration

    log = ctx.params["min_max_log_file"]
    if not log:
        raise UsageError("freeze_requantization_ranges needs min_max_log_file")
    records = calibration.read_min_max_log(log)
    low, high = ctx.params["min_percentile"], ctx.params["max_percentile"]
    calibration.freeze_ranges(graph, {name: calibration.chosen_range(observed, low, high)
                                      for name, observed in records.items()}, protected=ctx.protected)


# ---- GTT's remaining transforms: backport_tensor_array_v3, sparsify_gather ----

# The TensorArray ops whose V3 form only differs from V2 by its handle's type (a resource, not a
# string): the V2 op of the same inputs and attrs reads the V2 handle.
_TENSOR_ARRAY_V3_USERS = ("TensorArrayWriteV3", "TensorArrayReadV3", "TensorArrayGatherV3", "TensorArrayScatterV3",
                          "TensorArrayConcatV3", "TensorArraySplitV3", "TensorArraySizeV3", "TensorArrayCloseV3")


@REGISTRY.pass_("backport_tensor_array_v3")
def backport_tensor_array_v3(graph: Graph, ctx: PassContext) -> None:
    """Turn TensorArray V3 ops into their V2 forms, for runtimes older than TensorFlow 1.0.

    V2 arrays have no flow output: what read a V3 array's flow (output 1) reads a float Const 1.0
    instead, as in GTT (the value is arbitrary; V2 ops only need some float there).

    Not a rule: an array and all its readers change op in one step (a V2 handle is a string, a V3
    one a resource), and a rule edits only the nodes its pattern matched, upstream of its root.
    """
    for node in [n for n in graph if n.op in ("TensorArrayV3", "TensorArrayGradV3")]:
        flow = TensorRef(node.name, 1)
        if graph.uses(flow):
            stand_in = graph.add_node(graph.fresh_name(f"{node.name}/replacement_flow_node"), "Const",
                                      attrs={"dtype": DT_FLOAT, "value": np.float32(1.0)})
            graph.reroute(flow, TensorRef(stand_in.name))
        node.op = node.op[:-1] + "2"
    for node in graph:
        if node.op in _TENSOR_ARRAY_V3_USERS:
            node.op = node.op[:-1] + "2"


@REGISTRY.pass_("sparsify_gather", Param("input_checkpoint", "str", False, ""),
               Param("group_init_node", "str", False, "group_deps"))
def sparsify_gather(graph: Graph, ctx: PassContext) -> None:
    """Replace a Gather from a [N, 1] float embedding (Const -> Identity -> Gather, or GatherV2 on axis
    0) by a lookup in a hash table of its nonzero entries; the tables are filled by running
    `group_init_node` (a NoOp, made if missing) before the graph.

    Entries under 1e-5 in magnitude count as zero, and ids not in the table read 0, as in GTT.

    Not a rule: every table's initializer hangs on one group_init_node, made once for the whole graph.
    """
    tables = []
    for gather in [n for n in graph if n.op in ("Gather", "GatherV2")]:
        weights = _sparsifiable_weights(graph, gather, ctx)
        if weights is None:
            continue
        identity = graph[gather.inputs[0].node]
        value = weights.get_attr("value").reshape(-1)
        keep = np.flatnonzero(np.abs(value) >= 1e-5)
        # TensorFlow's table initializer refuses empty keys and values: one zero entry stands in.
        keys, values = (keep, value[keep]) if keep.size else (np.zeros(1), np.zeros(1))
        ids = gather.inputs[1]
        with graph.transaction():
            def made(name, op, inputs=(), **attrs):
                return graph.add_node(graph.fresh_name(name), op, inputs, attrs=attrs, device=gather.device)

            key_node = made(f"{weights.name}/indices", "Const", dtype=DT_INT64, value=keys.astype(np.int64))
            value_node = made(f"{weights.name}/values", "Const", dtype=DT_FLOAT, value=values.astype(np.float32))
            table = made(f"{weights.name}/HashTable", "HashTable", key_dtype=DT_INT64, value_dtype=DT_FLOAT)
            init = made(f"{weights.name}/InitializeTable", "InitializeTable",
                        [TensorRef(table.name), TensorRef(key_node.name), TensorRef(value_node.name)],
                        Tkey=DT_INT64, Tval=DT_FLOAT)
            if gather.get_attr("Tindices") != DT_INT64:     # the table's keys are int64
                ids = TensorRef(made(f"{gather.name}/ToInt64", "Cast", [ids], SrcT=gather.get_attr("Tindices"),
                                     DstT=DT_INT64).name)
            default = made(f"{gather.name}/Const", "Const", dtype=DT_FLOAT, value=np.float32(0))
            lookup = made(f"{gather.name}/LookupTableFind", "LookupTableFind",
                          [TensorRef(table.name), ids, TensorRef(default.name)], Tin=DT_INT64, Tout=DT_FLOAT)
            axis = made(f"{gather.name}/ExpandDims/Const", "Const", dtype=DT_INT32, value=np.int32(-1))
            expand = made(f"{gather.name}/ExpandDims", "ExpandDims", [TensorRef(lookup.name), TensorRef(axis.name)],
                          T=DT_FLOAT, Tdim=DT_INT32)
            gather_axis = [ref.node for ref in gather.inputs[2:]]
            # The ExpandDims takes the Gather's name, so what read the Gather reads the lookup.
            graph.replace_node(gather.name, expand.name)
            for name in gather_axis + [identity.name, weights.name]:
                if name in graph and not graph.consumers(name) and name not in ctx.protected:
                    graph.remove_node(name)
        tables.append(init.name)
    if not tables:
        return
    group = ctx.params["group_init_node"]
    if group in graph and graph[group].op != "NoOp":
        raise UsageError(f"sparsify_gather: group_init_node '{group}' is a {graph[group].op}, not a NoOp")
    if group not in graph:
        graph.add_node(group, "NoOp")
    node = graph[group]
    graph.set_inputs(node, node.inputs, node.control_inputs + tables)


def _sparsifiable_weights(graph: Graph, gather, ctx: PassContext):
    """The [N, 1] float Const a Gather reads through an Identity (on axis 0), else None (with a note
    for what GTT would have taken but cannot be done here)."""
    identity = graph[gather.inputs[0].node]
    if identity.op != "Identity" or gather.inputs[0].port != 0 or len(identity.inputs) != 1:
        return None
    weights = graph[identity.inputs[0].node]
    if weights.op in ("Variable", "VariableV2"):
        raise UsageError(f"sparsify_gather: '{weights.name}' is a {weights.op}: its values are in a checkpoint, "
                         f"which only TensorFlow's runtime reads (input_checkpoint); freeze the graph first")
    if weights.op != "Const":
        return None
    if gather.op == "GatherV2":
        axis = graph[gather.inputs[2].node]
        if axis.op != "Const" or int(np.asarray(axis.get_attr("value")).reshape(-1)[0]) != 0 \
                or gather.get_attr("batch_dims", 0) != 0:
            ctx.notes.append(f"'{gather.name}': left as it is: only a gather on axis 0 becomes a table lookup")
            return None
    value = weights.get_attr("value")
    if weights.get_attr("dtype") != DT_FLOAT or value.ndim != 2 or value.shape[1] != 1:
        ctx.notes.append(f"'{gather.name}': left as it is: only float weights of shape [N, 1] become a table "
                         f"(found {list(value.shape)})")
        return None
    return weights


@REGISTRY.pass_("inline_partitionedcall")
def inline_partitionedcall(graph: Graph, ctx: PassContext) -> None:
    """Replace each PartitionedCall by the nodes of the library function it calls, named
    `CALL/NODE`; what read the call's outputs reads the function's results.

    The library keeps the function. A call that is a graph input or output stays, with a note.

    Not a rule: it copies a function body from the graph's library, node by node.
    """
    functions = {f.signature.name: f for f in graph.library.function}
    for call in [n for n in graph if n.op == "PartitionedCall"]:
        function = functions.get(call.get_attr("f", None) or "")
        if function is None:
            raise UsageError(f"inline_partitionedcall: '{call.name}' calls a function the graph's library "
                             f"does not have")
        if call.name in ctx.protected:
            ctx.notes.append(f"'{call.name}': left as it is: it is a graph input or output")
            continue
        arguments = {arg.name: ref for arg, ref in zip(function.signature.input_arg, call.inputs)}
        names: dict[str, str] = {}
        for body in function.node_def:     # fresh against the graph and the names taken so far
            names[body.name] = graph.fresh_name(f"{call.name}/{body.name}", taken=names.values())
        fname = function.signature.name
        ports = {body.name: output_ports(body, functions, fname) for body in function.node_def}

        def outside(text: str) -> TensorRef:
            """A tensor a body node names (`arg`, `node:out_arg:index`), in the graph."""
            if text in arguments:
                return arguments[text]
            node, port = body_tensor(text, ports, fname)
            return TensorRef(names[node], port)

        with graph.transaction():
            for body in function.node_def:
                node = graph.add_node(names[body.name], body.op, device=body.device or call.device)
                for key, value in body.attr.items():
                    node.set_attr(key, value)
            for body in function.node_def:
                data = [outside(i) for i in body.input if not i.startswith("^")]
                control = [names.get(i[1:]) or arguments[i[1:]].node for i in body.input if i.startswith("^")]
                graph.set_inputs(graph[names[body.name]], data, control + call.control_inputs)
            for k, arg in enumerate(function.signature.output_arg):
                graph.reroute(TensorRef(call.name, k), outside(function.ret[arg.name]))
            waiting = [c for c in graph.consumers(call.name) if call.name in c.control_inputs]
            for consumer in waiting:   # what waited on the call waits on every node of its body
                graph.set_inputs(consumer, consumer.inputs,
                                 [c for c in consumer.control_inputs if c != call.name] + list(names.values()))
            graph.set_inputs(call, [], [])
            graph.remove_node(call.name)
