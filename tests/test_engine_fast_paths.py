"""The engine's fast paths give exactly what the plain ones give: decoded attrs kept per node, attrs
shared between a node and its copy, a heir put in its target's place, Consts encoded in place,
saving node by node, and dispatch narrowed by a rule's first `op(n) in [...]` test."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import fixture_names, fixture_path
from gtt_rules.engine import validation
from gtt_rules.engine.graph import Graph, TensorRef
from gtt_rules.engine.pattern import MatchContext, match
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.engine.tensors import encode_tensor, encode_tensor_into
from gtt_rules.errors import GraphError
from gtt_rules.grammar.parser import parse
from gtt_rules.rules.compiler import compile_module

FLOAT = 1

CONST = """
node { name: "c" op: "Const" attr { key: "dtype" value { type: DT_FLOAT } }
       attr { key: "value" value { tensor { dtype: DT_FLOAT tensor_shape { dim { size: 2 } }
                                            tensor_content: "\\000\\000\\200?\\000\\000\\000@" } } } }
"""


def _graph(text: str) -> Graph:
    return Graph(text_format.Parse(text, pb.GraphDef()))


def _value(values) -> np.ndarray:
    return np.array(values, np.float32)


# ---- decoded attrs ----

def test_decoded_value_is_kept_read_only_until_the_attr_changes():
    node = _graph(CONST)["c"]
    value = node.get_attr("value")
    assert node.get_attr("value") is value
    assert not value.flags.writeable
    np.testing.assert_array_equal(value, [1.0, 2.0])
    node.set_attr("value", _value([3, 4]))
    np.testing.assert_array_equal(node.get_attr("value"), [3.0, 4.0])
    node.attr["value"].tensor.tensor_content = _value([5, 6]).tobytes()  # an edit through `attr`
    np.testing.assert_array_equal(node.get_attr("value"), [5.0, 6.0])


def test_list_attrs_are_decoded_afresh():
    graph = _graph('node { name: "p" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } '
                   'attr { key: "_output_shapes" value { list { shape { dim { size: 2 } } } } } }')
    shapes = graph["p"].get_attr("_output_shapes")
    shapes.append(None)  # the caller's own list
    assert graph["p"].get_attr("_output_shapes") == [(2,)]


# ---- attrs shared by a copy ----

def test_copied_attrs_are_shared_until_either_node_changes():
    graph = _graph(CONST)
    source = graph["c"]
    copy = graph.add_node("k", "Const")
    graph.copy_attrs(copy, source, ["dtype", "value"])
    np.testing.assert_array_equal(copy.get_attr("value"), [1.0, 2.0])
    source.set_attr("value", _value([7, 8]))
    np.testing.assert_array_equal(copy.get_attr("value"), [1.0, 2.0])
    np.testing.assert_array_equal(source.get_attr("value"), [7.0, 8.0])


def test_lender_edit_gives_the_copy_its_own_attrs():
    graph = _graph(CONST)
    copy = graph.add_node("k", "Const")
    graph.copy_attrs(copy, graph["c"], ["dtype", "value"])
    graph["c"].attr["value"].tensor.tensor_content = _value([9, 9]).tobytes()
    np.testing.assert_array_equal(copy.get_attr("value"), [1.0, 2.0])


def test_copy_written_out_holds_the_shared_attrs():
    graph = _graph(CONST)
    copy = graph.add_node("k", "Const")
    graph.copy_attrs(copy, graph["c"], ["dtype", "value"])
    graph.remove_node("c")
    saved = pb.GraphDef.FromString(graph.to_bytes())
    assert [n.name for n in saved.node] == ["k"]
    assert saved.node[0].attr == text_format.Parse(CONST, pb.GraphDef()).node[0].attr


def test_copying_attrs_is_undone_with_the_transaction():
    graph = _graph(CONST + 'node { name: "k" op: "Const" }')
    with pytest.raises(RuntimeError):
        with graph.transaction():
            graph.copy_attrs(graph["k"], graph["c"], ["dtype", "value"])
            raise RuntimeError
    assert "value" not in graph["k"].proto.attr


# ---- a heir put in its target's place ----

REPLACE = """
node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }
node { name: "z" op: "NoOp" }
node { name: "a" op: "Neg" input: "x" input: "^z" attr { key: "T" value { type: DT_FLOAT } } }
node { name: "b" op: "Relu" input: "a:0" input: "^z" input: "^z" attr { key: "T" value { type: DT_FLOAT } } }
node { name: "c" op: "NoOp" input: "^a" input: "^z" input: "^a" }
node { name: "d" op: "AddV2" input: "a" input: "b" attr { key: "T" value { type: DT_FLOAT } } }
"""


def _add_heir(graph: Graph):
    return graph.add_node("h", "Neg", ["x"], attrs={"T": FLOAT})


def _reroute_and_rename(graph: Graph) -> None:
    """What a rewrite did before `replace_node`: reroute the readers, move the waiters, rename."""
    old, new = TensorRef("a"), TensorRef("h")
    for consumer in graph.consumers("a"):
        if old in consumer.inputs:
            graph.set_inputs(consumer, [new if r == old else r for r in consumer.inputs])
    for consumer in [c for c in graph.consumers("a") if "a" in c.control_inputs]:
        graph.set_inputs(consumer, consumer.inputs, ["h" if c == "a" else c for c in consumer.control_inputs])
    graph.remove_node("a")
    graph.rename_node("h", "a")


def test_replace_node_gives_the_bytes_of_reroute_and_rename():
    plain, fast = _graph(REPLACE), _graph(REPLACE)
    _add_heir(plain)
    _reroute_and_rename(plain)
    _add_heir(fast)
    fast.replace_node("a", "h")
    assert fast.to_bytes() == plain.to_bytes()
    assert [n.name for n in fast] == [n.name for n in plain]
    assert [n.name for n in fast.consumers("a")] == [n.name for n in plain.consumers("a")]
    validation.validate(fast)


def test_replace_node_is_undone_with_the_transaction():
    plain, fast = _graph(REPLACE), _graph(REPLACE)
    for graph, edit in ((plain, _reroute_and_rename), (fast, lambda g: g.replace_node("a", "h"))):
        with pytest.raises(RuntimeError):
            with graph.transaction():
                _add_heir(graph)
                edit(graph)
                raise RuntimeError
    assert fast.to_bytes() == plain.to_bytes()
    assert [n.name for n in fast.consumers("a")] == ["b", "c", "d"]
    validation.validate(fast)


def test_replace_node_refuses_a_heir_that_is_read():
    graph = _graph(REPLACE)
    _add_heir(graph)
    graph.add_node("r", "Relu", ["h"], attrs={"T": FLOAT})
    with pytest.raises(Exception, match="already used"):
        graph.replace_node("a", "h")


# ---- encoding and saving ----

@pytest.mark.parametrize("array, dtype", [
    (np.arange(6, dtype=np.float32).reshape(2, 3), None),
    (np.array([1, -2, 3], np.int8), None),
    (np.array(2.5, np.float32), None),
    (np.zeros((0, 3), np.float32), None),
    (np.array([True, False]), None),
    (np.array([0.1, 0.2], np.float32), 14),  # bfloat16
    (np.array([b"a", b"bc"], dtype=object), None),
])
def test_encode_into_a_node_gives_the_proto_of_encode(array, dtype):
    node = pb.NodeDef()
    encode_tensor_into(node.attr["value"].tensor, array, dtype)
    assert node.attr["value"].tensor == encode_tensor(array, dtype)


def test_save_writes_the_bytes_of_to_bytes(tmp_path):
    graph = _graph(REPLACE)
    graph.add_node("k", "Const", attrs={"dtype": FLOAT, "value": _value([1, 2])})
    graph.remove_node("c")
    graph.save(tmp_path / "g.pb")
    assert (tmp_path / "g.pb").read_bytes() == graph.to_bytes()


# ---- the commutative memo ----

COMMUTATIVE_GRAPH = """
node { name: "a" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }
node { name: "b" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }
node { name: "r" op: "Relu" input: "a" attr { key: "T" value { type: DT_FLOAT } } }
node { name: "m" op: "Mul" input: "b" input: "r" attr { key: "T" value { type: DT_FLOAT } } }
node { name: "s" op: "AddV2" input: "m" input: "b" attr { key: "T" value { type: DT_FLOAT } } }
"""


@pytest.mark.parametrize("lhs, searches", [
    ("n = Mul(Relu(x), y)", False),                     # one commutative node: tried once per root
    ("n = AddV2(Mul(Relu(x), y), z)", True),            # nested: the inner one is tried per order
    ("n = AddV2(Mul(Relu(x), y) or Sub(x, y), z)", True),
])
def test_skipping_the_commutative_memo_finds_what_the_memo_finds(lhs, searches):
    (rule,) = _rules(f"""
        ruleset t():
            rule r:
                {lhs}
                => n -> x
        """)
    assert rule.pattern.searches is searches
    graph = _graph(COMMUTATIVE_GRAPH)

    def found(search: bool) -> list:
        object.__setattr__(rule.pattern, "searches", search)
        return [sorted((k, str(v)) for k, v in b.items() if not k.startswith("\0"))
                for n in graph for b in match(rule.pattern, graph, n, MatchContext(graph, {}, frozenset()))]
    plain = found(True)
    assert plain and found(False) == plain


# ---- dispatch ----

def _rules(text: str, args: dict | None = None):
    return compile_module(parse(textwrap.dedent(text), "t.rules")).rulesets["t"].instantiate(args)


def test_first_op_test_narrows_dispatch_to_its_ops():
    text = """
        ruleset t(op: [str] = []):
            rule by-param:
                n = *(x, rest...)
                where op(n) in op and len(rest) == 0
                => n -> x
            rule by-list:
                n = *(x)
                where op(n) in ["Neg", "Relu"]
                => n -> x
            rule test-not-first:
                n = *(x)
                where len([x]) == 1 and op(n) in ["Neg"]
                => n -> x
        """
    by_param, by_list, not_first = _rules(text, {"op": ["Identity", "StopGradient"]})
    assert by_param.root_ops == {"Identity", "StopGradient"}
    assert by_list.root_ops == {"Neg", "Relu"}
    assert not_first.root_ops is None


def test_pattern_that_checks_attrs_is_not_narrowed():
    # Its attr check runs before the guard and could fail on a node the op test would reject.
    text = """
        ruleset t():
            rule r:
                n = *(x) {T: dtype(x)}
                where op(n) in ["Neg"]
                => n -> x
        """
    (rule,) = _rules(text)
    assert rule.root_ops is None


# ---- loading ----

@pytest.mark.parametrize("name", fixture_names())
def test_loading_node_by_node_gives_the_graph_a_whole_parse_gives(name):
    path = fixture_path(name)
    mapped, whole = Graph.load(path), Graph.from_bytes(path.read_bytes())
    assert [n.proto for n in mapped] == [n.proto for n in whole]
    assert mapped.to_bytes() == whole.to_bytes()


def test_unknown_fields_survive_loading_node_by_node(tmp_path):
    graph_def = text_format.Parse(CONST, pb.GraphDef())
    graph_def.versions.producer = 7
    data = graph_def.SerializeToString() + b"\xf8\x3e\x05"  # field 999, varint 5: unknown
    (tmp_path / "g.pb").write_bytes(data)
    graph = Graph.load(tmp_path / "g.pb")
    assert graph.versions.producer == 7
    assert graph.to_bytes() == Graph.from_bytes(data).to_bytes()
    graph.save(tmp_path / "out.pb")
    assert (tmp_path / "out.pb").read_bytes() == Graph.from_bytes(data).to_bytes()


@pytest.mark.parametrize("data, message", [
    (b"", "file is empty"),
    (b"\x0a\x05\x0a\x01", "truncated or is not a protobuf"),
    (b'node { name: "a" op: "NoOp" }', None),  # text under a binary name still loads
])
def test_files_that_are_not_plain_binary_graphs_load_as_before(tmp_path, data, message):
    (tmp_path / "g.pb").write_bytes(data)
    if message is None:
        assert [n.name for n in Graph.load(tmp_path / "g.pb")] == ["a"]
    else:
        with pytest.raises(GraphError, match=message):
            Graph.load(tmp_path / "g.pb")
