"""The matcher: where a rule's pattern (its left-hand side, engine/rule.py) matches the graph.

Matching starts at a root node (the driver dispatches by its op) and walks up the inputs, binding
names to tensors; a name bound twice must be the same tensor, and one inside a variadic element
pattern is one tensor for every element (`AddN(ms...: Mul(x, *))`). Commutative binary ops also try
their inputs swapped. Where a commutative pattern node can be tried again at one root, one that
failed at a graph node under the same bindings of its own names is not tried there again (k nested
commutative nodes cost the distinct pairs, not 2^k tries), and past `MAX_COMMUTATIVE_TRIES` at one
root it is an error. A literal matches only a Const whose broadcast cannot change what its node
computes. An alternative (`A or B`) matches what each of its alternatives matches, in turn; a chain
(`Op*(x)`) its longest run first. Further roots are readers of a tensor the match has bound.

Inner nodes (matched through their inputs, other than the root) are private when the rule builds
nodes: a match whose private inner node is a graph output, or is read from outside the match, is
no match, since the rewrite would leave that node computing beside its replacement.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from gtt_rules.errors import RewriteError

from .graph import Graph, Node, TensorRef
from .rule import InputPattern, NodePattern, Pattern
from .shapes import infer_shape

MAX_COMMUTATIVE_TRIES = 10_000


class MatchLimitError(RewriteError):
    """A pattern's commutative nodes could match one root in too many ways to try them all."""


class NotApplicable(Exception):
    """An expression asked something this match cannot answer (e.g. the value of a non-Const):
    the answer is unknown, so a guard that rests on it does not fire; no error is reported."""


_NESTED = "\0nested:"  # binding keys of anonymous nodes whose attrs are checked after the match
_INNER = "\0inner"     # binding key of the inner nodes matched: a chain (name, is private, rest)


class MatchContext:
    """What guards and computed values see: the graph, the bindings so far, the rule set's parameters,
    and `notes`, where a guard may say why it left a node as it was (node name -> reason)."""

    __slots__ = ("graph", "params", "protected", "notes", "bindings")  # one per try: a plain class

    def __init__(self, graph: Graph, params: dict[str, Any], protected, notes: dict[str, str] | None = None):
        self.graph, self.params, self.protected = graph, params, protected
        self.notes, self.bindings = {} if notes is None else notes, {}


def match(pattern: Pattern, graph: Graph, root: Node, ctx: MatchContext) -> Iterator[dict[str, Any]]:
    """Yield each set of bindings under which `pattern` matches at `root`."""
    start = {pattern.root_var: TensorRef(root.name, 0)}
    if pattern.searches:
        start[_SEARCH] = _Search(root.name)
    found = _match_node(pattern, pattern.statements[pattern.root_var], root, start, graph)
    if pattern.further:
        found = (more for bindings in found for more in _match_roots(pattern, 0, bindings, graph))
    for bindings in found:
        if pattern.checks_attrs:
            ctx.bindings = bindings
            try:
                if not all(_deferred_checks(pattern, bindings, graph, ctx)):
                    continue
            except NotApplicable:
                continue
        if pattern.checks_privacy and not _private(pattern, root.name, bindings, graph, ctx.protected):
            continue
        yield bindings


def _match_roots(pattern: Pattern, at: int, bindings: dict, graph: Graph) -> Iterator[dict]:
    """The roots after the first, from `at` on: each is one of the readers of a tensor it shares
    with the match so far (of the one with the fewest readers), and a node the match has not."""
    if at == len(pattern.further):
        yield bindings
        return
    var, joins = pattern.further[at]
    sources = [r.node for n in joins for r in (bindings[n] if isinstance(bindings[n], list) else [bindings[n]])]
    source = min(sources, key=lambda name: len(graph.consumer_names(name)), default=None)  # None: no readers
    taken = {bindings[v].node for v in pattern.statements if v in bindings}
    for reader in graph.consumers(source):
        if reader.name not in taken:
            start = {**bindings, var: TensorRef(reader.name, 0)}
            for extended in _match_node(pattern, pattern.statements[var], reader, start, graph):
                yield from _match_roots(pattern, at + 1, extended, graph)


def _private(pattern: Pattern, root: str, bindings: dict, graph: Graph, protected) -> bool:
    """True if no private inner node of the match is a graph output or read from outside the match."""
    roots = {root, *(bindings[var].node for var, _ in pattern.further)} if pattern.further else (root,)
    matched, private, link = set(roots), [], bindings.get(_INNER)
    while link is not None:
        name, is_private, link = link
        matched.add(name)
        if is_private and name not in roots:
            private.append(name)
    for name in private:  # plain loops: this runs on every match
        if name in protected:
            return False
        for consumer in graph.consumer_names(name):
            if consumer not in matched and any(ref.node == name for ref in graph[consumer].inputs):
                return False
    return True


def _deferred_checks(pattern: Pattern, bindings: dict, graph: Graph, ctx: MatchContext) -> Iterator[bool]:
    # Attr values given as expressions (`{T: dtype(x)}`) may use names bound anywhere in the
    # pattern, so they are checked once the whole pattern has matched.
    checked = [(n, bindings[var].node) for var, n in pattern.statements.items() if var in bindings]
    checked += [value for key, value in bindings.items() if key.startswith(_NESTED)]
    for node_pattern, name in checked:
        for attr in node_pattern.attrs:
            if attr.expected is not None:
                yield _values_equal(graph[name].get_attr(attr.key, _NO_ATTR), attr.expected(ctx))


_NO_ATTR = object()


def _values_equal(a: Any, b: Any) -> bool:
    if a is _NO_ATTR or b is _NO_ATTR:
        return False
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bytes) and isinstance(b, str):
        return a == b.encode()
    return a == b


def _match_node(pattern: Pattern, node_pattern: NodePattern, node: Node, bindings: dict,
                graph: Graph) -> Iterator[dict]:
    if node_pattern.alternatives:
        for alternative in node_pattern.alternatives:
            yield from _match_node(pattern, alternative, node, bindings, graph)
        return
    if node_pattern.ops is not None and node.op not in node_pattern.ops:
        return
    if node_pattern.inputs is not None and pattern.checks_privacy and node.name != bindings[pattern.root_var].node:
        bindings = {**bindings, _INNER: (node.name, not node_pattern.shared, bindings.get(_INNER))}
    for attr in node_pattern.attrs:
        if attr.var is not None:
            value = node.get_attr(attr.key, _NO_ATTR)
            if value is _NO_ATTR:
                return
            if attr.var not in bindings:
                bindings = {**bindings, attr.var: value}
            elif not _values_equal(bindings[attr.var], value):
                return
        elif attr.expected is not None and node.attr_value(attr.key) is None \
                and node.get_attr(attr.key, _NO_ATTR) is _NO_ATTR:  # unset, and no default
            return
    if node_pattern.inputs is None:
        yield bindings
        return
    inputs, wanted = node.inputs, node_pattern.inputs
    if node_pattern.variadic is not None:
        yield from _match_variadic(pattern, wanted, node_pattern.variadic, inputs, bindings, graph)
        return
    if len(inputs) != len(wanted):
        return
    if node.op in node_pattern.commutative and len(inputs) == 2 and inputs[0] != inputs[1]:
        if _SEARCH in bindings:
            yield from _match_commutative(pattern, node_pattern, node, bindings, graph)
            return
        # Tried once per root, or matched apart from one (a variadic run's): no memo.
        yield from _match_inputs(pattern, wanted, inputs, 0, bindings, graph)
        inputs = [inputs[1], inputs[0]]
    yield from _match_inputs(pattern, wanted, inputs, 0, bindings, graph)


# The bindings key of the commutative search at one root, shared by every copy of the bindings.
_SEARCH = "\0search"


class _Search:
    """(pattern node, graph node, bindings it depends on) that failed, and how many tries so far."""

    __slots__ = ("root", "failed", "tries")

    def __init__(self, root: str):
        self.root, self.failed, self.tries = root, set(), 0


def _match_commutative(pattern, node_pattern, node, bindings, graph) -> Iterator[dict]:
    search = bindings[_SEARCH]
    search.tries += 1
    if search.tries > MAX_COMMUTATIVE_TRIES:
        raise MatchLimitError(f"matching at node '{search.root}' took more than "
                              f"{MAX_COMMUTATIVE_TRIES:,} tries of commutative inputs; the pattern "
                              f"matches in too many ways")
    failed, names = search.failed, node_pattern.memo_names
    key = None if names is None else (id(node_pattern), node.name, *(bindings.get(n) for n in names))
    try:
        if key in failed:
            return
    except TypeError:   # a bound attr value that is a list or an array: not remembered
        key = None
    found = False
    for ordered in (node.inputs, node.inputs[::-1]):
        for extended in _match_inputs(pattern, node_pattern.inputs, ordered, 0, bindings, graph):
            found = True
            yield extended
    if not found and key is not None:
        failed.add(key)


def _match_variadic(pattern, wanted, at, inputs, bindings, graph) -> Iterator[dict]:
    # wanted = before + [rest...] + after: `before` and `after` take the first and last inputs.
    if len(inputs) < len(wanted) - 1:
        return
    rest, end = wanted[at], len(inputs) - (len(wanted) - at - 1)
    fixed_wanted, fixed_inputs = wanted[:at] + wanted[at + 1:], inputs[:at] + inputs[end:]
    tail = inputs[at:end]
    for head in _match_inputs(pattern, fixed_wanted, fixed_inputs, 0, bindings, graph, inputs):
        states = [head] if rest.node is None else _match_elements(pattern, rest.node, tail, head, graph)
        for state in states:
            if rest.var is None or state.get(rest.var, tail) == tail:  # a list bound twice: the same tensors
                yield {**state, rest.var: list(tail)} if rest.var else state


def _match_elements(pattern: Pattern, element: NodePattern, tail, bindings: dict, graph: Graph) -> list[dict]:
    """Every way all of `tail` matches `element` under one set of bindings: a name in the element
    pattern is the same tensor in every element. Duplicates are dropped, so once the first element
    has bound the names, each further element can only confirm or drop a way: never multiply them."""
    if element.inputs is None and not element.attrs and not element.alternatives:  # ops alone: nothing to bind
        matched = element.ops is None or all(graph[ref.node].op in element.ops for ref in tail)
        return [bindings] if matched else []
    if not tail:  # no element binds the names: a match would leave them unbound
        return [bindings] if element.bound_names <= bindings.keys() else []
    states = [bindings]
    for ref in tail:
        producer = graph.get(ref.node)
        found: list[dict] = []
        for state in states if producer is not None else ():
            if element.checks_attrs:
                state = {**state, f"{_NESTED}{id(element)}:{ref.node}": (element, ref.node)}
            for extended in _match_node(pattern, element, producer, state, graph):
                if not any(_same_bindings(extended, other) for other in found):
                    found.append(extended)
        states = found
        if not states:
            break
    return states


def _same_bindings(a: dict, b: dict) -> bool:
    # Ways that differ only in which anonymous nodes still owe an attr check count as one (the
    # first is kept): a rare pattern may then miss a match, never take a wrong one, and the ways
    # stay as few as the first element allows.
    names = [k for k in a if not k.startswith("\0")]
    return (len(names) == sum(1 for k in b if not k.startswith("\0"))
            and all(k in b and (a[k] is b[k] or _values_equal(a[k], b[k])) for k in names))


def _match_inputs(pattern: Pattern, wanted, inputs, index: int, bindings: dict, graph: Graph,
                  operands=None) -> Iterator[dict]:
    # `operands`: all the node's inputs, when `inputs` are some of them (beside a variadic run).
    if index == len(wanted):
        yield bindings
        return
    for extended in _match_input(pattern, wanted[index], inputs[index], bindings, graph, operands or inputs):
        yield from _match_inputs(pattern, wanted, inputs, index + 1, extended, graph, operands)


def _match_input(pattern: Pattern, want: InputPattern, ref: TensorRef, bindings: dict, graph: Graph,
                 operands) -> Iterator[dict]:
    if want.port is not None and ref.port != want.port:
        return
    if want.var is not None:
        bound = bindings.get(want.var)
        if bound is None:
            bindings = {**bindings, want.var: ref}
        elif bound != ref:
            return
    producer = graph.get(ref.node)
    if producer is None:
        return
    if want.literal is not None and not _literal_matches(graph, producer, want.literal, ref, operands):
        return
    if want.node_var is not None:
        bound = bindings.get(want.node_var)
        if bound is None:
            start = {**bindings, want.node_var: TensorRef(ref.node, 0)}
            yield from _match_node(pattern, pattern.statements[want.node_var], producer, start, graph)
        elif bound.node == ref.node:  # a shared statement matched already: this input must come from its node
            yield bindings
        return
    if want.node is not None:
        if want.node.repeat:
            yield from _match_chain(pattern, want.node, ref, bindings, graph)
            return
        if want.node.checks_attrs:
            bindings = {**bindings, f"{_NESTED}{id(want.node)}:{ref.node}": (want.node, ref.node)}
        yield from _match_node(pattern, want.node, producer, bindings, graph)
        return
    yield bindings


def _match_chain(pattern: Pattern, chain: NodePattern, ref: TensorRef, bindings: dict, graph: Graph) -> Iterator[dict]:
    """`Op*(end)`: the nodes of the chain from `ref` down, each one's first input the next, and
    `end` matched where the chain stops; the longest chain first, then each shorter one. A node
    met twice (a cycle, in a graph loaded without validation) ends the chain."""
    link, ways, seen = chain.link, [(ref, bindings, [])], set()
    while (node := graph.get(ways[-1][0].node)) is not None and node.inputs and node.name not in seen \
            and (chain.repeat != "?" or len(ways) == 1):
        ref, state, nodes = ways[-1]
        seen.add(node.name)
        if chain.checks_attrs:
            state = {**state, f"{_NESTED}{id(link)}:{node.name}": (link, node.name)}
        state = next(_match_node(pattern, link, node, state, graph), None)
        if state is None:
            break
        if pattern.checks_privacy:
            state = {**state, _INNER: (node.name, not chain.shared, state.get(_INNER))}
        ways.append((node.inputs[0], state, nodes + [ref]))
    for ref, state, nodes in reversed(ways[1:] if chain.repeat == "+" else ways):
        if chain.chain_var is not None and state.get(chain.chain_var, nodes) != nodes:
            continue  # a list bound twice: the same tensors
        state = state if chain.chain_var is None else {**state, chain.chain_var: nodes}
        yield from _match_input(pattern, chain.inputs[0], ref, state, graph, [ref])


def _literal_matches(graph: Graph, node: Node, number: float | bool, ref: TensorRef, operands) -> bool:
    """A literal: a Const (bool for `true` and `false`) all of whose elements are `number`, and whose broadcast
    cannot change what the node computes: a scalar, or one that fits each other input's static shape."""
    if node.op != "Const":
        return False
    try:
        value = node.get_attr("value")
    except Exception:
        return False
    kinds = "b" if type(number) is bool else "iuf"
    if value.size == 0 or value.dtype.kind not in kinds or not np.all(value == number):
        return False
    if value.ndim == 0:
        return True
    others = list(operands)
    others.remove(ref)
    return bool(others) and all(_broadcasts_into(value.shape, infer_shape(graph, other)) for other in others)


def _broadcasts_into(small: tuple[int, ...], shape) -> bool:
    # Each dim, counted from the last, must be 1 or a dim `shape` is known to have.
    if shape is None or len(small) > len(shape):
        return False
    return all(dim == 1 or dim == known for dim, known in zip(reversed(small), reversed(shape)))
