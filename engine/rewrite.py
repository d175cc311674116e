"""The all-or-nothing rewriter: it builds what a rule's actions (engine/rule.py) describe.

A rewrite first computes everything (constant values, attrs, names) without touching the graph,
then makes its edits through the graph-edit core (engine/graph.py) inside a transaction, so a
failure at any step leaves the graph as it was. Semantics (DESIGN.md, "Engine semantics"):
- the node that takes over a replaced node's outputs (its heir) takes the old node's name; helper
  nodes are named `<root>/<rule>/<op>`, made unique with `_1`, `_2`, ..., after the root's
  `Graph.origin`, so names do not nest with each rewrite, or as the rule names them (taken once
  the node that has the name is gone, if the rewrite removes it);
- control edges follow `Graph.hand_over` and `Graph.sweep`: a removed node's go to its heir, or
  else to the consumers rerouted away from it, but those that order nothing
  (`Graph.orders_nothing`); a node with control consumers and no heir is kept;
- protected nodes (graph inputs and outputs) are never removed or renamed, only replaced by an
  heir that takes their name: the replacement's root, never a copy nested inside it; only a graph
  input without data inputs (what is fed) hands its name to its copy, so an input can be changed
  in place (a float Placeholder becoming an eight-bit one);
- nodes left without consumers are swept; a rewrite that leaves the graph as it was (new nodes
  nothing reads, a node replaced by its own likeness) is no change;
- the nodes a rewrite makes or changes pass the loader's checks (op arity, attrs, dtypes, no
  cycle), or the rewrite fails as the rule's error and leaves the graph as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gtt_rules.errors import GraphError, GttRulesError, RewriteError

from . import op_registry
from .graph import Graph, Node, TensorRef, const_array, const_node_def
from .pattern import MatchContext
from .proto import graph_def_pb2 as pb
from .rule import (DELETE, EACH, Action, Bind, Bound, ConstNode, Each, Edit, Expand, NewNode, Producer, Remove,
                   Reroute, Template, TensorOf)


@dataclass
class RewriteResult:
    """What one rewrite did, for the report, the trace and the driver's worklist."""

    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    removed_ops: dict[str, str] = field(default_factory=dict)  # for the trace
    touched: set[str] = field(default_factory=set)  # nodes whose inputs changed, and their producers
    # Existing nodes that read other tensors now, with the positions to check: `_same_dtype`.
    changed: dict[str, set[int]] = field(default_factory=dict)
    # The attrs of each created node that its checks look at (None: all; see `_Planned.checked`).
    checked: dict[str, tuple[str, ...] | None] = field(default_factory=dict)


@dataclass
class _Planned:
    """A node the rewrite will create, before it exists."""

    name: str
    op: str
    inputs: list[Any]  # TensorRef or (_Planned, port)
    attrs: dict[str, Any]  # computed and inferred attr values
    copied: dict[str, None] = field(default_factory=dict)  # attrs that come from the matched node
    control_inputs: list[str] = field(default_factory=list)
    device: str = ""
    dtypes: list[int] | None = None
    source: Node | None = None  # the matched node this is a copy of
    proto: pb.NodeDef | None = None  # the attrs, encoded: the new node takes this NodeDef over
    # The attrs the checks look at: those computed here, when the others come from a node of the
    # same op (they passed the checks there), None for all; a Const encoded here is not checked.
    checked: tuple[str, ...] | None = None


def rewrite(graph: Graph, rule_name: str, actions: tuple[Action, ...], ctx: MatchContext,
            root: Node) -> RewriteResult | None:
    """Apply `actions` under the bindings in `ctx`; None if they would change nothing (the graph
    is then left as it was)."""
    try:
        planner = _Planner(graph, rule_name, ctx, root)
        reroutes, heirs, removals = planner.plan(actions)
    except GttRulesError:
        raise
    except Exception as error:  # a computed value failed: report it against the rule, change nothing
        raise RewriteError(f"rule '{rule_name}' failed at node '{root.name}' while computing its "
                           f"replacement: {type(error).__name__}: {error}") from error
    if _replaces_with_itself(graph, planner, reroutes, heirs, removals):
        return None
    with graph.transaction() as edits:
        edited = {}  # node -> (its op before, the attrs its checks look at: None for all)
        for target, planned in planner.edits:
            op = graph[target].op
            changed = graph.edit_node(target, planned.op, planned.device, planned.proto.attr,
                                      planned.copied, planned.control_inputs)
            if changed is not None:
                edited[target] = (op, changed if planned.op == op else None)
        # An edit alone sweeps nothing: the node it changed may be one nothing reads.
        result = _execute(graph, planner, reroutes, heirs, removals, ctx.protected) \
            if reroutes or removals or planner.planned else RewriteResult()
        _drop_unread(graph, result, ctx.protected)
        for name, (op, checked) in edited.items():  # an edited node is replaced: same name, new node
            if name in graph:
                result.created.append(name)
                result.removed.append(name)
                result.removed_ops[name] = op
                # A new device or fewer control edges is nothing the checks see; another op or
                # other attrs are checked, and so is what reads the node (its outputs may differ).
                if checked != ():
                    result.checked[name] = checked
                    for consumer in graph.consumers(name):
                        result.changed.setdefault(consumer.name, set()).update(
                            i for i, ref in enumerate(consumer.inputs) if ref.node == name)
        if not (result.created or result.removed or result.touched):
            edits.undo()
            return None
        _check(graph, result, rule_name, root, reroutes, planner)
    return result


def _drop_unread(graph: Graph, result: RewriteResult, protected) -> None:
    """Remove the new nodes nothing reads: what a reroute of consumers that are gone (a port
    rerouted before) built. A rewrite that only builds such nodes changes nothing."""
    for name in reversed(list(result.created)):
        if name not in protected and not graph.consumer_names(name):
            graph.remove_node(name)
            result.created.remove(name)


def _replaces_with_itself(graph: Graph, planner: "_Planner", reroutes, heirs, removals) -> bool:
    """True if the rewrite would put in a node's place one exactly like it (`n -> n(a, b)` with
    n's own inputs, a commutative swap of equal inputs): the graph would stay as it was."""
    if removals or len(planner.planned) != 1 or len(heirs) != 1:
        return False
    (target, planned), = heirs.items()
    node = graph[target]
    if planned.source not in (None, node) or planned.op != node.op or planned.device != node.device \
            or [_resolve(r) for r in planned.inputs] != node.inputs \
            or planned.control_inputs != node.control_inputs \
            or any(old.node != target or _resolve(new) != TensorRef(planned.name, old.port) for old, new in reroutes):
        return False
    theirs, ours = node.proto.attr, planned.proto.attr  # a copy's other attrs are the node's own
    return set(theirs) == set(ours) | set(planned.copied) and all(theirs[k] == v for k, v in ours.items())


def _check(graph: Graph, result: RewriteResult, rule_name: str, root: Node, reroutes, planner) -> None:
    """The loader's checks on the nodes the rewrite made or changed, and no new cycle."""
    try:
        graph.check_nodes({name: result.checked[name] for name in result.created if name in result.checked},
                          result.changed)
        if not _only_upstream(root, reroutes, planner):
            graph.check_acyclic(list(dict.fromkeys(result.created + sorted(result.changed))))
    except GraphError as error:
        raise RewriteError(f"rule '{rule_name}' at '{root.name}' would write an invalid graph: "
                           f"{'node ' + repr(error.node) + ': ' if error.node else ''}{error.message}") from None


def _only_upstream(root: Node, reroutes, planner: "_Planner") -> bool:
    """True if the rewrite cannot close a cycle: it reroutes only the root's consumers, and what
    it reads besides its new nodes is bound by the match (all above the root, as the matcher
    walks up from it). Other rewrites are checked by a walk over the graph."""
    # Plain loops: this runs once per rewrite, where a generator's setup costs more than its work.
    root_name, read = root.name, set()
    if planner.grew:  # an edit added a control edge
        return False
    for old, new in reroutes:
        if old.node != root_name:
            return False
        if isinstance(new, TensorRef):
            read.add(new.node)
    for planned in planner.planned:
        for ref in planned.inputs:
            if isinstance(ref, TensorRef):
                read.add(ref.node)
    read.discard(root_name)
    for value in planner.ctx.bindings.values():
        if not read:
            break
        if type(value) is TensorRef:
            read.discard(value.node)
        elif type(value) is list:
            read.difference_update([ref.node for ref in value if type(ref) is TensorRef])
    return not read


class _Planner:
    def __init__(self, graph: Graph, rule_name: str, ctx: MatchContext, root: Node):
        self.graph = graph
        self.rule_name = rule_name
        self.ctx = ctx
        self.root = root
        self.planned: list[_Planned] = []
        self.taken: set[str] = set()
        self.wished: dict[str, str] = {}  # planned name -> the name the rule gives it, taken as yet
        self.values: dict[int, Any] = {}
        # The replacement's named nodes (a template call's, in the call), built when first read;
        # once built, and a template's parameters: TensorRef | (_Planned, port) | a list of them.
        self.lazy: dict[str, Producer] = {}
        self.named: dict[str, Any] = {}
        self.pure: dict[str, bool] = {}  # `Graph.orders_nothing` answers, as of the match
        self.edits: list[tuple[str, _Planned]] = []  # edited node -> what it becomes
        self.grew = False  # an edit gave a node a control input it did not have

    def plan(self, actions):
        reroutes: list[tuple[TensorRef, Any]] = []  # old tensor -> TensorRef | (_Planned, port)
        heirs: dict[str, _Planned] = {}
        removals: list[str] = []
        self.lazy.update((a.name, a.source) for a in actions if isinstance(a, Bind))
        for action in actions:
            if isinstance(action, Remove):
                removals.append(self._bound_node(action.var))
            elif isinstance(action, Edit):
                self.edits.append((self._bound_node(action.var), self._node(action.change, in_place=True)))
            if not isinstance(action, Reroute):  # a Bind is built where it is read
                continue
            target = self._bound_node(action.var)
            node = self.graph[target]
            sources = self._sources(action.source, all_ports=action.all_ports, target=node)
            if isinstance(sources, _Planned) and action.port is None:  # `n -> Op(...)`, `n:* -> Op(...)`
                # An op the registry does not know has as many outputs as its readers read.
                count = self.graph.num_outputs(node) or 1 + max(
                    (r.port for c in self.graph.consumers(target) for r in c.inputs if r.node == target), default=0)
                reroutes += [(TensorRef(target, i), (sources, i)) for i in range(count)]
                heirs.setdefault(target, sources)
            elif isinstance(sources, list):  # one Const per output
                reroutes += [(TensorRef(target, i), (s, 0)) for i, s in enumerate(sources)]
                heirs.setdefault(target, sources[0])
            else:  # one output (`n:1 -> ...`), or a node's output 0
                source = (sources, 0) if isinstance(sources, _Planned) else sources
                reroutes.append((TensorRef(target, action.port or 0), source))
                if not isinstance(source, TensorRef) and not action.port and source[1] == 0:
                    heirs.setdefault(target, source[0])
        # A protected node's name goes to the node that computes what it computed: the
        # replacement's root. Only a graph input (what is fed: a placeholder, or a node without
        # data inputs) hands its name to its copy, so that an input can be retyped in place.
        for target in heirs:
            node = self.graph[target]
            if target in self.ctx.protected and (not node.inputs or node.op == "PlaceholderWithDefault"):
                heirs[target] = next((p for p in self.planned if p.source is node), heirs[target])
        return reroutes, heirs, removals

    def _error(self, problem: str) -> RewriteError:
        return RewriteError(f"rule '{self.rule_name}' at '{self.root.name}': {problem}")

    def _bound_node(self, var: str) -> str:
        value = self.ctx.bindings.get(var)
        if not isinstance(value, TensorRef):
            raise RewriteError(f"'{var}' is not bound to a node")
        return value.node

    def _value(self, producer: ConstNode) -> Any:
        """A computed value, computed once however often the plan looks at it."""
        if id(producer) not in self.values:
            self.values[id(producer)] = producer.value(self.ctx)
        return self.values[id(producer)]

    def _picked(self, producer: Producer) -> TensorRef | list[TensorRef] | None:
        """The existing tensors an expression picks (`xs[0]`, `xs[:-1]`), not a constant to build."""
        if not isinstance(producer, ConstNode) or producer.dtype is not None:
            return None
        value = self._value(producer)
        if isinstance(value, TensorRef) or isinstance(value, list) and value and \
                all(isinstance(v, TensorRef) for v in value):
            return value
        return None

    def _sources(self, producer: Producer, *, all_ports: bool, target: Node | None = None):
        """What an action reroutes to: a node built for it (each of its outputs, `n -> Op(...)`),
        one Const per output (`n:* -> [...]`), or one TensorRef | (_Planned, port)."""
        if not isinstance(producer, (NewNode, ConstNode)) or self._picked(producer) is not None:
            value = self._build(producer)
            if isinstance(value, list):
                raise RewriteError(f"'{self.rule_name}' replaces one node with a list of nodes")
            if all_ports and not isinstance(value, TensorRef) and value[1] == 0:
                return value[0]         # `n:* -> q`: every output of the node q names
            return value
        if isinstance(producer, ConstNode) and all_ports and producer.dtype is None:
            # A Const that takes over an output has that output's dtype (quint8 stays quint8,
            # not the uint8 that holds its codes).
            value = self._value(producer)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            dtypes = self.graph.output_dtypes(target) or [None] * len(values)
            if len(dtypes) != len(values):
                raise RewriteError(f"'{target.name}' has {len(dtypes)} outputs, but the replacement "
                                   f"gives {len(values)} values")
            return [self._const(v, dt) for v, dt in zip(values, dtypes)]
        return self._node(producer)

    def _input(self, producer: Producer) -> list[Any]:
        value = self._build(producer)
        return value if isinstance(value, list) else [value]  # a list spreads into several inputs

    def _node(self, producer: Producer, in_place: bool = False) -> _Planned:
        """The node a producer builds; `in_place`: what an edited node becomes (not built)."""
        if isinstance(producer, ConstNode):
            dtype = producer.dtype(self.ctx) if producer.dtype is not None else None
            return self._const(self._value(producer), dtype, producer.name and producer.name(self.ctx))
        source = self.graph[self._bound_node(producer.copy_of)] if producer.copy_of else None
        fields = {key: expression(self.ctx) for key, expression in producer.fields} if producer.fields else {}
        op = fields.get("op") or producer.op or source.op
        if not isinstance(op, str) or not op:
            raise self._error(f"{op!r} is not an op name")
        if producer.inputs is not None:
            inputs = [item for p in producer.inputs for item in self._input(p)]
        else:
            inputs = list(source.inputs) if source is not None else []
        # An edited node keeps its name; a copy gets a fresh one (the heir renames it later).
        name = source.name if in_place else self._name(op, fields.get("name"))
        planned = _Planned(name, op, inputs, {}, device=self.root.device)
        if source is not None:
            planned.source = source
            op_def = op_registry.get_op(op) if op != source.op else None
            planned.copied = dict.fromkeys(key for key in source.header.attr
                                           if op_def is None or key in op_def.attrs or key.startswith("_"))
            planned.control_inputs = list(source.control_inputs) if in_place else \
                self.graph.ordering(source.control_inputs, self.pure)
            planned.device = source.device
        planned.device = fields.get("device", planned.device)
        if not isinstance(planned.device, str):
            raise self._error(f"{planned.device!r} is not a device name")
        if "control_inputs" in fields:
            control = fields["control_inputs"]
            if not isinstance(control, list) or not all(isinstance(c, str) and c in self.graph for c in control):
                raise self._error(f"control_inputs {control!r} is not a list of names of nodes")
            planned.control_inputs = list(dict.fromkeys(control))
            self.grew |= in_place and not set(control) <= set(source.control_inputs)  # a cycle, maybe
        deleted = set()
        for key, expression in producer.attrs:
            if key is EACH:
                pairs = expression(self.ctx)
            else:
                pairs = ((key if isinstance(key, str) else key(self.ctx), expression(self.ctx)),)
            for key, value in pairs:
                if not isinstance(key, str) or not key:
                    raise self._error(f"{key!r} is not an attr name")
                planned.copied.pop(key, None)
                if value is DELETE:
                    deleted.add(key)
                    planned.attrs.pop(key, None)
                else:
                    deleted.discard(key)
                    planned.attrs[key] = value
        if not (in_place and op == source.op):  # an edit keeps the type attrs its node has
            self._infer_type_attrs(planned)
        for key in deleted:  # deleted even where the inputs would imply it
            planned.attrs.pop(key, None)
        if source is not None and op == source.op:
            planned.checked = tuple(planned.attrs)
        planned.proto = _node_def(planned)
        if not in_place:
            self.planned.append(planned)
        return planned

    def _build(self, producer: Producer) -> Any:
        """What a producer stands for, built: TensorRef | (_Planned, port) | a list of them (a
        variadic binding, existing tensors an expression picks (`xs[1:]`), nodes built per element)."""
        if isinstance(producer, TensorOf):
            value = self.ctx.bindings.get(producer.var)
            if isinstance(value, list):
                return list(value)
            if not isinstance(value, TensorRef):
                raise RewriteError(f"'{producer.var}' is not bound to a tensor")
            return value if producer.port is None else TensorRef(value.node, producer.port)
        if isinstance(producer, Bound):
            if producer.name not in self.named:
                self.named[producer.name] = self._build(self.lazy[producer.name])
            return _at_port(self.named[producer.name], producer.port)
        if isinstance(producer, Expand):
            args = [self._build(a) for a in producer.args]
            if producer.spread is None:
                return self._instantiate(producer.template, args)
            at = producer.spread
            return [self._instantiate(producer.template, [*args[:at], item, *args[at + 1:]]) for item in args[at]]
        if isinstance(producer, Each):  # each element's nodes are its own: its values are computed anew
            values, built = self.values, []
            try:
                for item in producer.items(self.ctx):
                    self.ctx.bindings[producer.var], self.values = item, {}
                    built += self._input(producer.element)
            finally:
                self.values = values
                self.ctx.bindings.pop(producer.var, None)
            return built
        picked = self._picked(producer)
        if picked is not None:
            return list(picked) if isinstance(picked, list) else picked
        return self._node(producer), 0

    def _instantiate(self, template: Template, args: list[Any]) -> Any:
        caller = self.lazy, self.named
        self.lazy, self.named = dict(template.bindings), dict(zip(template.params, args))
        try:
            return self._build(template.result)
        finally:
            self.lazy, self.named = caller

    def _const(self, value: Any, dtype: int | None, wanted: str | None = None) -> _Planned:
        proto = const_node_def(const_array(value, dtype), dtype)
        dt = proto.attr["dtype"].type
        planned = _Planned(self._name("Const", wanted), "Const", [], {"dtype": dt}, device=self.root.device,
                           dtypes=[dt], proto=proto, checked=())
        self.planned.append(planned)
        return planned

    def _name(self, op: str, wanted: Any = None) -> str:
        """A fresh name: the one the rule gives (`{name: ...}`), else `<root>/<rule>/<op>`. A name
        some node has gets a fresh variant, and is taken after all if the rewrite removes that node."""
        if wanted is not None and (not isinstance(wanted, str) or not wanted):
            raise self._error(f"{wanted!r} is not a node name")
        origin = self.graph.origin(self.root.name)
        name = self.graph.fresh_name(wanted or f"{origin}/{self.rule_name}/{op}", self.taken,
                                     None if wanted else origin)
        if wanted and name != wanted:
            self.wished[name] = wanted
        self.taken.add(name)
        return name

    def _infer_type_attrs(self, planned: _Planned) -> None:
        """Fill the attrs the rule left out that the inputs imply (`T`, `N`, ...)."""
        op_def = op_registry.get_op(planned.op)
        if op_def is None or all(key in planned.attrs or key in planned.copied for arg in op_def.inputs
                                 for key in (arg.type_attr, arg.number_attr, arg.type_list_attr) if key):
            return  # nothing left for the inputs to imply
        # The values of the attrs that size list arguments; for the rest, only whether they are set.
        given = dict.fromkeys((*planned.attrs, *planned.copied))
        for key in (key for arg in op_def.inputs for key in (arg.number_attr, arg.type_list_attr)):
            if key in given:
                given[key] = planned.attrs[key] if key in planned.attrs else planned.source.get_attr(key)
        dtypes = [self._dtype_of(source) for source in planned.inputs]
        try:
            planned.attrs.update(self.graph.implied_attrs(planned.op, dtypes, given))
        except op_registry.AmbiguousInputs as error:
            raise RewriteError(f"rule '{self.rule_name}' at '{self.root.name}' builds a {planned.op} "
                               f"node: {error}") from None

    def _dtype_of(self, source: Any) -> int | None:
        if isinstance(source, TensorRef):
            return self.graph.dtype_of(source)
        planned, port = source
        if planned.dtypes is None:
            op_def = op_registry.get_op(planned.op)
            # A copy's type attrs are mostly the matched node's own, not in `attrs`: read as asked.
            attrs = planned.attrs if planned.source is None else lambda key: planned.attrs[key] \
                if key in planned.attrs or key not in planned.copied else planned.source.get_attr(key)
            planned.dtypes = op_registry.output_dtypes(op_def, attrs) if op_def else None
        return planned.dtypes[port] if planned.dtypes and port < len(planned.dtypes) else None


def _node_def(planned: _Planned) -> pb.NodeDef:
    """A NodeDef holding a planned node's computed attrs (a copy shares the matched node's
    others: `Graph.copy_attrs`)."""
    proto = pb.NodeDef(op=planned.op)
    node = Node(proto) if planned.attrs else None
    for key, value in planned.attrs.items():
        node.set_attr(key, value)
    return proto


def _at_port(value: Any, port: int | None) -> Any:
    """Output `port` of the node(s) behind `value`; None keeps the output it names."""
    if port is None:
        return value
    if isinstance(value, list):
        return [_at_port(v, port) for v in value]
    return TensorRef(value.node, port) if isinstance(value, TensorRef) else (value[0], port)


def _resolve(ref: Any) -> TensorRef:
    return ref if isinstance(ref, TensorRef) else TensorRef(ref[0].name, ref[1])


def _execute(graph: Graph, planner: _Planner, reroutes, heirs, removals, protected) -> RewriteResult:
    result = RewriteResult()
    for planned in planner.planned:
        node = graph.add_node(planned.name, planned.op, [_resolve(r) for r in planned.inputs],
                              planned.control_inputs, device=planned.device, proto=planned.proto)
        if planned.source is not None:
            graph.copy_attrs(node, planned.source, planned.copied)
        result.created.append(planned.name)
        if planned.source is not None or planned.checked != ():  # a Const encoded here is valid as made
            result.checked[planned.name] = planned.checked
    rerouted_consumers: dict[str, set[str]] = {}
    created = set(result.created)
    in_place = _in_place_target(graph, reroutes, heirs, removals, created)
    for old, new in reroutes:
        new_ref = _resolve(new)
        if new_ref == old:
            continue
        if in_place is None:
            rerouted = graph.reroute(old, new_ref, exclude=created)
        else:  # the consumers are left as they are: the heir takes the target's place below
            rerouted = {c.name: [i for i, r in enumerate(c.inputs) if r == old]
                        for c in graph.consumers(in_place) if old in c.inputs}
        same = rerouted and _same_dtype(graph, old, new_ref)
        for consumer, positions in rerouted.items():
            result.touched.add(consumer)
            result.changed.setdefault(consumer, set()).update(() if same else positions)
            rerouted_consumers.setdefault(old.node, set()).add(consumer)
    for name in removals:
        if graph.is_read(name):
            raise RewriteError(f"cannot remove '{name}': its outputs are still used")
    # Heirs take over the replaced nodes, and their names, before anything is swept.
    renamed_to = set()
    for target, planned in heirs.items():
        if target != in_place and graph.is_read(target):
            continue  # some output of the target is still read: it stays, and keeps its name
        replaced = graph[target]
        producers = {r.node for r in replaced.inputs} | set(replaced.control_inputs)
        for waiting in graph.succeed(target, planned.name, in_place=target == in_place, memo=planner.pure):
            result.touched.add(waiting)
            result.changed.setdefault(waiting, set())
        result.removed_ops[target] = replaced.op
        result.removed.append(target)
        result.touched.update(p for p in producers if p in graph)
        _rename_created(result, planned.name, target)
        renamed_to.add(target)
    # Sweep what the rewrite left unused, walking up from the nodes it touched.
    seeds = removals + list(rerouted_consumers) + [
        v.node for v in planner.ctx.bindings.values() if isinstance(v, TensorRef)]
    # Producers of the nodes heirs replaced (anonymous nested nodes, variadic lists) are seeds too.
    seeds += sorted(result.touched)
    # A swept interior node's control inputs go to what replaced the match.
    fallback = sorted(renamed_to) or sorted({c for cs in rerouted_consumers.values() for c in cs})
    removed, touched = graph.sweep(seeds, protected, set(result.created) | renamed_to, rerouted_consumers, fallback)
    result.removed += removed
    result.removed_ops.update(removed)
    result.touched |= touched
    for name, wanted in planner.wished.items():  # a name that a node the rewrite removed had
        if name in graph and wanted not in graph:
            graph.rename_node(name, wanted)
            _rename_created(result, name, wanted)
    return result


def _rename_created(result: RewriteResult, old: str, new: str) -> None:
    result.created[result.created.index(old)] = new
    if old in result.checked:
        result.checked[new] = result.checked.pop(old)


def _same_dtype(graph: Graph, old: TensorRef, new: TensorRef) -> bool:
    """Whether a reader of `old` may read `new` unchecked: both have one known dtype (so `new`
    exists), and the reader passed its checks reading `old` when the graph was loaded or built."""
    dtype = graph.dtype_of(old)
    return dtype is not None and dtype == graph.dtype_of(new)


def _in_place_target(graph: Graph, reroutes, heirs, removals, created: set[str]) -> str | None:
    """The target of the rewrite's one heir if the heir can simply take its place (see
    `Graph.replace_node`): every reroute sends an output of the target to the same output of the
    heir, every read of the target is rerouted, and no new node reads the target or the heir."""
    if len(heirs) != 1:
        return None
    (target, planned), = heirs.items()
    if target in removals or graph.consumers(planned.name) or any(
            old.node != target or _resolve(new) != TensorRef(planned.name, old.port) for old, new in reroutes):
        return None
    ports = {old.port for old, _ in reroutes}
    for consumer in graph.consumers(target):
        if consumer.name in created or any(r.node == target and r.port not in ports for r in consumer.inputs):
            return None
    return target
