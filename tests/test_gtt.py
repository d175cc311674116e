"""The Graph Transform Tool surface: transform strings, GTT command lines, and every whole-graph
pass on graphs real TensorFlow built, with TensorFlow running the result."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import fixture_path, fixture_spec, random_feeds, tf_run
from gtt_rules import standard_library
from gtt_rules.cli import main
from gtt_rules.engine.graph import Graph
from gtt_rules.errors import UsageError
from gtt_rules.rules.gtt import Transform, parse_transforms, transform_stages


# ---- helpers ----

def run_transforms(graph: Graph, text: str, *, inputs=(), outputs=()) -> Graph:
    """Run a GTT transform string on `graph` in place, as `apply --transforms` does."""
    for _, stages in transform_stages(text, standard_library()):
        for stage in stages:
            stage.run(graph, inputs=inputs, outputs=outputs)
    return graph


def fixture_io(name: str) -> tuple[list[str], list[str]]:
    spec = fixture_spec(name)
    return [i["name"] for i in spec["inputs"]], [o.split(":")[0] for o in spec["outputs"]]


def assert_same_outputs(original: bytes, rewritten: bytes, feeds: dict, outputs: list[str],
                        rewritten_outputs: list[str] | None = None, atol: float = 1e-5):
    expected = tf_run(original, feeds, outputs)
    actual = tf_run(rewritten, feeds, rewritten_outputs or outputs)
    for name, e, a in zip(outputs, expected, actual):
        assert a.shape == e.shape, name
        np.testing.assert_allclose(a, e, atol=atol, rtol=0, err_msg=name)


def build_tf_graph(tf, body) -> bytes:
    """Serialized GraphDef of what `body()` builds in a fresh TF1-style graph."""
    with tf.Graph().as_default() as graph:
        body()
    return graph.as_graph_def().SerializeToString()


def producers(node) -> set[str]:
    return {ref.node for ref in node.inputs} | set(node.control_inputs)


def ancestors(graph: Graph, roots, stop=()) -> set[str]:
    seen, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in stop:
            stack.extend(producers(graph[name]))
    return seen


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gtt_rules", *args], capture_output=True, text=True)


# ---- parse_transforms ----

def test_bare_names_and_bare_values():
    assert parse_transforms("  fold_constants   sort_by_execution_order\n") == [
        Transform("fold_constants", {}), Transform("sort_by_execution_order", {})]
    assert parse_transforms("rename_op(old_op_name=Relu, new_op_name=Relu6)") == [
        Transform("rename_op", {"old_op_name": "Relu", "new_op_name": "Relu6"})]
    # GTT's unquoted values include dashes, dots and slashes; an empty "()" is no parameters.
    assert parse_transforms("set_device(device=/device:CPU:0) f()") == [
        Transform("set_device", {"device": "/device:CPU:0"}), Transform("f", {})]


def test_quoted_values_keep_commas_and_spaces():
    (t,) = parse_transforms('strip_unused_nodes(type=float, shape="1,299,299,3", name="a b, c")')
    assert t.args == {"type": "float", "shape": "1,299,299,3", "name": "a b, c"}
    (t,) = parse_transforms('f(a="")')
    assert t.args == {"a": ""}


def test_repeated_parameters_collect_lists_in_order():
    (t,) = parse_transforms("remove_nodes(op=Identity, op=CheckNumerics, op=StopGradient, max_inputs=2)")
    assert t.args == {"op": ["Identity", "CheckNumerics", "StopGradient"], "max_inputs": "2"}
    (t,) = parse_transforms('strip_unused_nodes(name=a, shape_for_name="1,2", name=b, shape_for_name="3")')
    assert t.args == {"name": ["a", "b"], "shape_for_name": ["1,2", "3"]}


@pytest.mark.parametrize("value, expected", [("true", True), ("TRUE", True), ("false", False), ("False", False)])
def test_ignore_errors_is_taken_out_of_the_arguments(value, expected):
    (t,) = parse_transforms(f"fold_constants(ignore_errors={value}, exclude_op=Shape)")
    assert t == Transform("fold_constants", {"exclude_op": "Shape"}, expected)
    assert parse_transforms("fold_constants")[0].ignore_errors is False


def test_several_transforms_with_and_without_spaces_between():
    transforms = parse_transforms('a(x=1)b c(y="2 3")\td')
    assert [(t.name, t.args) for t in transforms] == [("a", {"x": "1"}), ("b", {}), ("c", {"y": "2 3"}), ("d", {})]


@pytest.mark.parametrize("text, column, problem", [
    ("(a=1)", 1, "expected a transform name, found '('"),
    ("fold!", 5, "unexpected '!' after 'fold'"),
    ("f(=1)", 3, "expected 'name=value'"),
    ("f(a 1)", 4, "expected 'name=value'"),
    ("f(a)", 4, "expected 'name=value'"),
    ('f(a="1,2)', 5, "unclosed quote"),
    ("f(a=1)(b=2)", 7, "expected a transform name, found '('"),
    ("f(a=1) ,g", 8, "expected a transform name, found ','"),
])
def test_malformed_strings_name_the_column(text, column, problem):
    with pytest.raises(UsageError) as caught:
        parse_transforms(text)
    assert caught.value.message == f"--transforms, column {column}: {problem}"


def test_unclosed_parenthesis_names_its_column():
    with pytest.raises(UsageError) as caught:
        parse_transforms("fold_constants(exclude_op=Shape")
    assert "column 15" in caught.value.message


def test_bad_ignore_errors_value_is_refused():
    with pytest.raises(UsageError, match="fold_constants: ignore_errors must be true or false"):
        parse_transforms("fold_constants(ignore_errors=maybe)")


def test_transform_stages_check_names_and_parameters():
    library = standard_library()
    with pytest.raises(UsageError) as caught:
        transform_stages("sort_by_execution_order fold_constantz", library)
    assert caught.value.message == ("--transforms: unknown transform 'fold_constantz'; did you mean "
                                    "'fold_constants'? (`gtt-rules list` shows them all)")
    with pytest.raises(UsageError) as caught:
        transform_stages("rename_op(old_op=Relu, new_op_name=Relu6)", library)
    assert caught.value.message == ("--transforms: rename_op has no parameter 'old_op'; did you mean "
                                    "'old_op_name'? (its parameters: new_op_name, old_op_name, and ignore_errors)")
    with pytest.raises(UsageError, match="rename_op: .*old_op_name"):
        transform_stages("rename_op(old_op_name=A, old_op_name=B, new_op_name=C)", library)
    with pytest.raises(UsageError, match="rename_op.* needs 'new_op_name': a parameter without a default"):
        transform_stages("rename_op(old_op_name=Relu)", library)     # as GTT, which demands both


def test_transform_arguments_are_converted_to_parameter_types():
    library = standard_library()
    (_, (stage,)), = transform_stages('strip_unused_nodes(type=int32, shape="2,3", name=a, name=b)', library)
    assert stage.params["type"] == 3 and stage.params["shape"] == "2,3" and stage.params["name"] == ["a", "b"]
    (_, (stage,)), = transform_stages("set_device(device=/cpu:0, if_default=true)", library)
    assert stage.rules[0].params == {"device": "/cpu:0", "if_default": True}   # a rule set: its rules hold them
    with pytest.raises(UsageError, match="if_default"):
        transform_stages("set_device(if_default=sometimes)", library)


# ---- the GTT command line ----

GTT_TRANSFORMS = [
    'strip_unused_nodes(type=float, shape="1,8,8,3") remove_nodes(op=Identity, op=CheckNumerics) '
    'fold_batch_norms sort_by_execution_order',
    'strip_unused_nodes(type=float, shape="1,8,8,3") remove_nodes(op=Identity, op=CheckNumerics) '
    'fold_constants(ignore_errors=true) fold_batch_norms fold_old_batch_norms merge_duplicate_nodes '
    'sort_by_execution_order',
]


@pytest.mark.parametrize("transforms", GTT_TRANSFORMS)
def test_a_gtt_command_line_runs_unchanged_and_keeps_the_answers(tmp_path, transforms):
    source, out = fixture_path("tf1_conv_bn"), tmp_path / "out.pb"
    code = main(["apply", f"--in_graph={source}", f"--out_graph={out}", "--inputs=input", "--outputs=output",
                 f"--transforms={transforms}"])
    assert code == 0
    graph = Graph.load(out)
    ops = Counter(n.op for n in graph)
    assert not {"Identity", "CheckNumerics", "FusedBatchNorm", "FusedBatchNormV3"} & set(ops)
    assert ops["Placeholder"] == 1 and graph["input"].get_attr("shape") == (1, 8, 8, 3)
    position = {n.name: i for i, n in enumerate(graph)}
    assert all(position[p] < position[n.name] for n in graph for p in producers(n))
    spec = fixture_spec("tf1_conv_bn")
    assert_same_outputs(source.read_bytes(), out.read_bytes(), random_feeds(spec, 1), spec["outputs"], atol=1e-5)


def test_output_as_text_writes_text_format(tmp_path, tf):
    from google.protobuf import text_format

    out = tmp_path / "out.pb"
    assert main(["apply", f"--in_graph={fixture_path('tf1_conv_bn')}", f"--out_graph={out}",
                 "--transforms=remove_device", "--output_as_text"]) == 0
    text = out.read_text()
    assert text.lstrip().startswith("node {")
    parsed = text_format.Parse(text, tf.compat.v1.GraphDef())
    expected = tf.compat.v1.GraphDef.FromString(fixture_path("tf1_conv_bn").read_bytes())
    assert parsed.node == expected.node


@pytest.mark.parametrize("value, is_text", [("true", True), ("false", False)])
def test_output_as_text_takes_tensorflow_bool_flag_values(tmp_path, value, is_text):
    out = tmp_path / "out.pb"
    assert main(["apply", f"--in_graph={fixture_path('tf1_conv_bn')}", f"--out_graph={out}",
                 "--transforms=remove_device", f"--output_as_text={value}"]) == 0
    assert out.read_bytes().lstrip().startswith(b"node {") == is_text


def test_unknown_transform_exits_2_with_one_line_naming_the_closest(tmp_path):
    out = tmp_path / "out.pb"
    result = run_cli("apply", f"--in_graph={fixture_path('tf1_conv_bn')}", f"--out_graph={out}",
                     "--transforms=strip_unused_nodes fold_constantz")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "unknown transform 'fold_constantz'; did you mean 'fold_constants'?" in lines[0]
    assert not out.exists()


def test_unknown_parameter_exits_2_listing_the_transforms_parameters(tmp_path):
    out = tmp_path / "out.pb"
    result = run_cli("apply", f"--in_graph={fixture_path('tf1_conv_bn')}", f"--out_graph={out}",
                     "--transforms=set_device(devise=/cpu:0)")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "set_device has no parameter 'devise'; did you mean 'device'? (its parameters: device, if_default" in line
    assert not out.exists()


def test_ignore_errors_skips_a_failing_transform_and_goes_on(tmp_path, capsys):
    source, out = fixture_path("tf1_conv_bn"), tmp_path / "out.pb"
    code = main(["apply", f"--in_graph={source}", f"--out_graph={out}",
                 "--transforms=rename_node(old_node_name=nope, new_node_name=x, ignore_errors=true) "
                 "set_device(device=/cpu:0)"])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: rename_node failed and was skipped (ignore_errors)" in err and "'nope'" in err
    before, after = Graph.load(source), Graph.load(out)
    assert [n.name for n in after] == [n.name for n in before] and "x" not in after
    assert {n.device for n in after} == {"/cpu:0"}  # the transform after the failing one still ran
    for node in after:
        node.device = ""
    assert after.to_graph_def() == before.to_graph_def()


def test_a_failing_transform_without_ignore_errors_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out.pb"
    result = run_cli("apply", f"--in_graph={fixture_path('tf1_conv_bn')}", f"--out_graph={out}",
                     "--transforms=remove_device rename_node(old_node_name=nope, new_node_name=x)")
    assert result.returncode == 2
    assert result.stderr.strip() == "gtt-rules: error: rename_node: no node named 'nope'"
    assert not out.exists()


def test_an_output_renamed_by_an_earlier_transform_is_a_clean_error(tmp_path):
    out = tmp_path / "out.pb"
    code = main(["apply", f"--in_graph={fixture_path('tf1_conv_bn')}", f"--out_graph={out}", "--outputs=output",
                 "--transforms=rename_node(old_node_name=output, new_node_name=probs) strip_unused_nodes"])
    assert code == 2 and not out.exists()


# ---- strip_unused_nodes ----

def test_strip_unused_nodes_on_tf1_conv_bn_sets_the_shape_and_keeps_only_what_output_needs():
    original = fixture_path("tf1_conv_bn").read_bytes()
    graph = Graph.from_bytes(original)
    graph["input"].set_attr("shape", [-1, 8, 8, 3])
    before = {n.name for n in graph}
    needed = ancestors(graph, ["output"])
    run_transforms(graph, 'strip_unused_nodes(type=float, shape="1,8,8,3")', inputs=["input"], outputs=["output"])
    assert {n.name for n in graph} == needed and needed < before
    assert graph["input"].op == "Placeholder" and graph["input"].get_attr("shape") == (1, 8, 8, 3)
    spec = fixture_spec("tf1_conv_bn")
    assert_same_outputs(original, graph.to_bytes(), random_feeds(spec, 2), spec["outputs"])


def _graph_with_unused_branches(tf):
    def body():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        tf.compat.v1.placeholder(tf.float32, [None, 4], name="unused_input")
        w = tf.constant(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), name="w")
        hidden = tf.nn.relu(tf.matmul(x, w), name="hidden")
        tf.nn.softmax(hidden * 2.0, name="out")
        tf.math.tanh(hidden, name="debug_tanh")           # an unused branch off the live path
        tf.reduce_sum(tf.square(x), name="debug_norm")    # another, reading the input
        tf.constant([1.0, 2.0], name="orphan")
    return build_tf_graph(tf, body)


def test_strip_unused_nodes_removes_unused_branches_of_a_tf_graph(tf):
    original = _graph_with_unused_branches(tf)
    graph = Graph.from_bytes(original)
    run_transforms(graph, 'strip_unused_nodes(shape="2,4")', inputs=["x"], outputs=["out"])
    names = {n.name for n in graph}
    assert names == ancestors(Graph.from_bytes(original), ["out"])
    assert not {"debug_tanh", "debug_norm", "orphan", "Square"} & names
    assert graph["x"].get_attr("shape") == (2, 4) and graph["x"].get_attr("dtype") == 1
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)}
    assert_same_outputs(original, graph.to_bytes(), feeds, ["out:0"])


def test_strip_unused_nodes_keeps_every_input(tf):
    graph = Graph.from_bytes(_graph_with_unused_branches(tf))
    run_transforms(graph, "strip_unused_nodes", inputs=["x", "unused_input"], outputs=["out"])
    assert "unused_input" in graph


def test_strip_unused_nodes_turns_an_inner_input_into_a_typed_placeholder(tf):
    original = _graph_with_unused_branches(tf)
    graph = Graph.from_bytes(original)
    run_transforms(graph, 'strip_unused_nodes(name=hidden, type_for_name=float, shape_for_name="5,3")',
                   inputs=["hidden"], outputs=["out"])
    hidden = graph["hidden"]
    assert hidden.op == "Placeholder" and not hidden.inputs
    assert hidden.get_attr("dtype") == 1 and hidden.get_attr("shape") == (5, 3)
    assert {n.name for n in graph} == {"hidden", "out", "mul", "mul/y"}
    # TensorFlow can feed the inner tensor of the original graph: both must agree.
    feeds = {"hidden": np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)}
    assert_same_outputs(original, graph.to_bytes(), feeds, ["out:0"])


def test_strip_unused_nodes_needs_outputs_and_matching_name_lists():
    graph = Graph.load(fixture_path("tf1_conv_bn"))
    with pytest.raises(UsageError, match="needs the graph's outputs"):
        run_transforms(graph, "strip_unused_nodes", inputs=["input"])
    with pytest.raises(UsageError, match="one type_for_name and shape_for_name per name"):
        run_transforms(graph, "strip_unused_nodes(name=a, name=b, type_for_name=float)",
                       inputs=["input"], outputs=["output"])
    with pytest.raises(UsageError, match="bad shape '1,x'"):
        run_transforms(graph, 'strip_unused_nodes(shape="1,x")', inputs=["input"], outputs=["output"])


# ---- sort_by_execution_order ----

@pytest.mark.parametrize("name", ["keras_bn_frozen", "tf1_while_loop"])
def test_sort_by_execution_order_puts_every_node_after_its_inputs(name):
    original = fixture_path(name).read_bytes()
    graph = Graph.from_bytes(original)
    graph.reorder([n.name for n in reversed(list(graph))])  # worst case: consumers first
    run_transforms(graph, "sort_by_execution_order")
    written = Graph.from_bytes(graph.to_bytes())
    position = {n.name: i for i, n in enumerate(written)}
    late = [(p, n.name) for n in written for p in producers(n)
            if position[p] > position[n.name] and written[p].op != "NextIteration"]
    assert late == []
    if name == "tf1_while_loop":  # the loop's back edges are the only edges pointing backwards
        assert any(written[p].op == "NextIteration" for n in written for p in producers(n))
    spec = fixture_spec(name)
    assert_same_outputs(original, graph.to_bytes(), random_feeds(spec, 4), spec["outputs"])


SEMANTICS_PRESERVING = [
    "strip_unused_nodes", "sort_by_execution_order", "remove_device", "set_device(device=/cpu:0)",
    "add_default_attributes", "merge_duplicate_nodes",
    "remove_attribute(attribute_name=_has_manual_control_dependencies)",
]


@pytest.mark.parametrize("transform", SEMANTICS_PRESERVING)
@pytest.mark.parametrize("name", ["tf2_function_library", "tf1_while_loop", "bn_global_norm"])
def test_passes_keep_library_versions_and_control_flow(name, transform):
    original = fixture_path(name).read_bytes()
    graph = Graph.from_bytes(original)
    inputs, outputs = fixture_io(name)
    run_transforms(graph, transform, inputs=inputs, outputs=outputs)
    before = Graph.from_bytes(original).to_graph_def()
    after = graph.to_graph_def()
    assert after.library == before.library and after.versions == before.versions
    spec = fixture_spec(name)
    assert_same_outputs(original, graph.to_bytes(), random_feeds(spec, 17), spec["outputs"])


# ---- control dependencies, devices ----

def test_remove_control_dependencies_on_a_keras_graph():
    original = fixture_path("keras_bn_frozen").read_bytes()
    graph = Graph.from_bytes(original)
    assert sum(len(n.control_inputs) for n in graph) > 0
    run_transforms(graph, "remove_control_dependencies")
    written = graph.to_graph_def()
    assert not any(i.startswith("^") for n in written.node for i in n.input)
    assert len(written.node) == len(Graph.from_bytes(original))
    spec = fixture_spec("keras_bn_frozen")
    assert_same_outputs(original, graph.to_bytes(), random_feeds(spec, 5), spec["outputs"])


def test_set_device_and_remove_device():
    original = fixture_path("keras_bn_frozen").read_bytes()
    graph = Graph.from_bytes(original)
    pinned = [n.name for n in graph][::3]
    for name in pinned:
        graph[name].device = "/device:CPU:0"
    run_transforms(graph, 'set_device(device="/cpu:0", if_default=true)')
    assert {n.name: n.device for n in graph} == {
        n.name: "/device:CPU:0" if n.name in pinned else "/cpu:0" for n in graph}
    spec = fixture_spec("keras_bn_frozen")
    feeds = random_feeds(spec, 6)
    assert_same_outputs(original, graph.to_bytes(), feeds, spec["outputs"])

    run_transforms(graph, "set_device(device=/device:CPU:0)")
    assert {n.device for n in graph} == {"/device:CPU:0"}
    run_transforms(graph, "remove_device")
    assert {n.device for n in graph} == {""}
    assert graph.to_graph_def() == Graph.from_bytes(original).to_graph_def()
    assert_same_outputs(original, graph.to_bytes(), feeds, spec["outputs"])


# ---- renaming ops, nodes and attributes ----

def test_rename_op_relu_to_relu6(tf):
    def body():
        x = tf.compat.v1.placeholder(tf.float32, [2, 5], name="x")
        a = tf.nn.relu(x * 10.0, name="a")
        b = tf.nn.relu(a - 3.0, name="b")
        tf.nn.relu6(b + a, name="out")
    original = build_tf_graph(tf, body)
    graph = Graph.from_bytes(original)
    run_transforms(graph, "rename_op(old_op_name=Relu, new_op_name=Relu6)")
    assert graph["a"].op == graph["b"].op == "Relu6"
    assert Counter(n.op for n in graph)["Relu"] == 0
    x = np.random.default_rng(7).standard_normal((2, 5)).astype(np.float32)
    (out,) = tf_run(graph.to_bytes(), {"x": x}, ["out"])
    a = np.clip(x * 10.0, 0, 6)
    np.testing.assert_allclose(out, np.clip(np.clip(a - 3.0, 0, 6) + a, 0, 6), atol=1e-6)


def test_rename_op_keeps_every_control_edge_and_the_node_order():
    # As GTT's rename_op, which sets the op and nothing else: the wait on a Const stays, though it
    # orders nothing (a replacement would drop it).
    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": 1, "shape": [2]})
    graph.add_node("c", "Const", attrs={"dtype": 1, "value": np.float32(1.0)})
    graph.add_node("a", "Relu", ["x"], ["c"], attrs={"T": 1})
    graph.add_node("out", "Neg", ["a"], attrs={"T": 1})
    run_transforms(graph, "rename_op(old_op_name=Relu, new_op_name=Relu6)", inputs=["x"], outputs=["out"])
    assert [(n.name, n.op, n.control_inputs) for n in graph] == [
        ("x", "Placeholder", []), ("c", "Const", []), ("a", "Relu6", ["c"]), ("out", "Neg", [])]


def test_rename_node_updates_data_and_control_consumers():
    original = fixture_path("keras_bn_frozen").read_bytes()
    graph = Graph.from_bytes(original)
    inputs, (output,) = fixture_io("keras_bn_frozen")
    target = next(n.name for n in graph if graph.has_control_consumers(n.name) and graph.uses(n.name))
    data_users = {c.name for c in graph.consumers(target) if any(r.node == target for r in c.inputs)}
    control_users = {c.name for c in graph.consumers(target) if target in c.control_inputs}
    run_transforms(graph, f"rename_node(old_node_name={target}, new_node_name=renamed_node) "
                          f"rename_node(old_node_name={output}, new_node_name=probabilities)")
    assert target not in graph and output not in graph
    written = graph.to_graph_def()
    assert not any(i.lstrip("^").split(":")[0] in (target, output) for n in written.node for i in n.input)
    assert {c.name for c in graph.consumers("renamed_node") if "renamed_node" in c.control_inputs} == control_users
    assert {c.name for c in graph.consumers("renamed_node")
            if any(r.node == "renamed_node" for r in c.inputs)} == data_users
    spec = fixture_spec("keras_bn_frozen")
    assert_same_outputs(original, graph.to_bytes(), random_feeds(spec, 8), spec["outputs"],
                        rewritten_outputs=["probabilities:0"])


def test_rename_node_refuses_a_name_in_use():
    graph = Graph.load(fixture_path("tf1_conv_bn"))
    with pytest.raises(Exception, match="already exists"):
        run_transforms(graph, "rename_node(old_node_name=input, new_node_name=output)")


def test_remove_and_rename_attribute():
    original = fixture_path("keras_bn_frozen").read_bytes()
    graph = Graph.from_bytes(original)
    key = "_has_manual_control_dependencies"
    marked = {n.name: n.op for n in graph if key in n.attr}
    assert len(set(marked.values())) >= 1 and marked
    op = sorted(marked.values())[0]
    renamed = Graph.from_bytes(original)
    run_transforms(renamed, f"rename_attribute(old_attribute_name={key}, new_attribute_name=_manual_deps, "
                            f"op_name={op})")
    for node in renamed:
        if node.name in marked and node.op == op:
            assert key not in node.attr and node.attr["_manual_deps"] == graph[node.name].attr[key]
        else:
            assert "_manual_deps" not in node.attr and (key in node.attr) == (node.name in marked)

    run_transforms(graph, f"remove_attribute(attribute_name={key}, op_name={op})")
    assert {n.name for n in graph if key in n.attr} == {n for n, o in marked.items() if o != op}
    run_transforms(graph, f"remove_attribute(attribute_name={key})")
    assert not any(key in n.attr for n in graph)
    spec = fixture_spec("keras_bn_frozen")
    feeds = random_feeds(spec, 9)
    assert_same_outputs(original, graph.to_bytes(), feeds, spec["outputs"])
    assert_same_outputs(original, renamed.to_bytes(), feeds, spec["outputs"])


def test_rename_attribute_to_its_own_name_changes_nothing():
    graph = Graph.load(fixture_path("tf1_conv_bn"))
    run_transforms(graph, "rename_attribute(old_attribute_name=T, new_attribute_name=T)")
    assert graph.to_graph_def() == Graph.load(fixture_path("tf1_conv_bn")).to_graph_def()


def _colocated_while_loop() -> tuple[Graph, str]:
    graph = Graph.load(fixture_path("tf1_while_loop"))
    colocated = [n for n in graph if "_class" in n.attr]
    assert colocated  # TF1 while loops colocate each Switch with its Merge: `_class: ["loc:@loop/Merge"]`
    return graph, colocated[0].attr["_class"].list.s[0].decode()[len("loc:@"):]


def test_rename_node_keeps_colocation_attrs_in_step():
    graph, target = _colocated_while_loop()
    run_transforms(graph, f"rename_node(old_node_name={target}, new_node_name=merge_renamed)")
    spec = fixture_spec("tf1_while_loop")
    assert_same_outputs(fixture_path("tf1_while_loop").read_bytes(), graph.to_bytes(), random_feeds(spec, 14),
                        spec["outputs"])


def test_remove_control_dependencies_keeps_tf1_loop_frames_valid():
    original = fixture_path("tf1_while_loop").read_bytes()
    graph = Graph.from_bytes(original)
    run_transforms(graph, "remove_control_dependencies")
    spec = fixture_spec("tf1_while_loop")
    assert_same_outputs(original, graph.to_bytes(), random_feeds(spec, 15), spec["outputs"])


# ---- add_default_attributes ----

def _strip_default_valued_attrs(graph: Graph) -> int:
    """Delete every attr whose value is its op's default, as TF's strip_default_attrs does."""
    from gtt_rules.engine import op_registry
    from gtt_rules.engine.attrs import encode_attr
    removed = 0
    for node in graph:
        op_def = op_registry.get_op(node.op)
        for name, attr in (op_def.attrs.items() if op_def else ()):
            if attr.has_default and name in node.attr and node.attr[name] == encode_attr(attr.default, attr.type):
                del node.attr[name]
                removed += 1
    return removed


def _attrs_tensorflow_adds(tf, data: bytes) -> dict[str, dict]:
    with tf.Graph().as_default() as imported:
        tf.graph_util.import_graph_def(tf.compat.v1.GraphDef.FromString(data), name="")
    return {n.name: {k: v.SerializeToString(deterministic=True) for k, v in n.attr.items()}
            for n in imported.as_graph_def().node}


def _attrs(tf, graph: Graph) -> dict[str, dict]:
    return {n.name: {k: v.SerializeToString(deterministic=True) for k, v in n.attr.items()}
            for n in tf.compat.v1.GraphDef.FromString(graph.to_bytes()).node}


def test_add_default_attributes_writes_the_conv_defaults_tensorflow_adds(tf):
    graph = Graph.load(fixture_path("tf1_conv_bn"))
    for key in ("dilations", "data_format", "explicit_paddings", "use_cudnn_on_gpu"):
        run_transforms(graph, f"remove_attribute(attribute_name={key}, op_name=Conv2D)")
    conv = next(n for n in graph if n.op == "Conv2D")
    assert not {"dilations", "data_format", "explicit_paddings"} & set(conv.attr)
    stripped = graph.to_bytes()
    run_transforms(graph, "add_default_attributes")
    assert {"dilations", "data_format", "explicit_paddings"} <= set(conv.attr)
    assert list(conv.get_attr("dilations")) == [1, 1, 1, 1] and list(conv.get_attr("explicit_paddings")) == []
    assert conv.get_attr("data_format") in ("NHWC", b"NHWC")
    assert _attrs(tf, graph)[conv.name] == _attrs_tensorflow_adds(tf, stripped)[conv.name]


@pytest.mark.parametrize("name", ["keras_bn_frozen", "quantized_ops", "tf1_while_loop"])
def test_add_default_attributes_adds_what_tensorflow_import_adds(tf, name):
    graph = Graph.load(fixture_path(name))
    assert _strip_default_valued_attrs(graph) > 0
    stripped = graph.to_bytes()
    run_transforms(graph, "add_default_attributes")
    ours, theirs = _attrs(tf, graph), _attrs_tensorflow_adds(tf, stripped)
    assert ours == theirs
    spec = fixture_spec(name)
    assert_same_outputs(fixture_path(name).read_bytes(), graph.to_bytes(), random_feeds(spec, 10), spec["outputs"])


def test_add_default_attributes_adds_placeholder_unknown_rank_shape(tf):
    graph = Graph.load(fixture_path("tf1_conv_bn"))
    _strip_default_valued_attrs(graph)
    del graph["input"].attr["shape"]
    stripped = graph.to_bytes()
    run_transforms(graph, "add_default_attributes")
    assert _attrs(tf, graph) == _attrs_tensorflow_adds(tf, stripped)


# ---- obfuscate_names ----

def test_obfuscate_names_renames_all_but_inputs_and_outputs_deterministically():
    original = fixture_path("keras_bn_frozen").read_bytes()
    inputs, outputs = fixture_io("keras_bn_frozen")
    first, second = Graph.from_bytes(original), Graph.from_bytes(original)
    for graph in (first, second):
        run_transforms(graph, "obfuscate_names", inputs=inputs, outputs=outputs)
    assert first.to_bytes() == second.to_bytes()
    old = {n.name for n in Graph.from_bytes(original)}
    new = {n.name for n in first}
    assert len(new) == len(old)
    assert new & old == set(inputs + outputs)
    assert max(len(n) for n in new - old) <= 2  # short names
    spec = fixture_spec("keras_bn_frozen")
    assert_same_outputs(original, first.to_bytes(), random_feeds(spec, 11), spec["outputs"])


def test_obfuscate_names_avoids_names_already_taken(tf):
    def body():
        x = tf.compat.v1.placeholder(tf.float32, [3], name="b")
        c = tf.constant([1.0, 2.0, 3.0], name="c")
        tf.math.tanh(tf.nn.relu(x) * c, name="a")
    original = build_tf_graph(tf, body)
    graph = Graph.from_bytes(original)
    run_transforms(graph, "obfuscate_names", inputs=["b"], outputs=["a"])
    names = [n.name for n in graph]
    assert len(set(names)) == len(names) == len(Graph.from_bytes(original))
    assert {"a", "b"} <= set(names) and graph["a"].op == "Tanh" and graph["b"].op == "Placeholder"
    feeds = {"b": np.array([-1.0, 0.5, 2.0], np.float32)}
    assert_same_outputs(original, graph.to_bytes(), feeds, ["a:0"])


def test_obfuscate_names_keeps_a_tf1_while_loop_running():
    graph, _ = _colocated_while_loop()
    inputs, outputs = fixture_io("tf1_while_loop")
    run_transforms(graph, "obfuscate_names", inputs=inputs, outputs=outputs)
    spec = fixture_spec("tf1_while_loop")
    assert_same_outputs(fixture_path("tf1_while_loop").read_bytes(), graph.to_bytes(), random_feeds(spec, 16),
                        spec["outputs"])


@pytest.mark.parametrize("transform", [
    "obfuscate_names",
    "rename_node(old_node_name=bn_net_1/conv1_1/convolution, new_node_name=conv)",
    'strip_unused_nodes(name=bn_net_1/conv1_1/convolution, shape_for_name="1,16,16,8")',
])
def test_renaming_passes_keep_the_file_order(transform):
    graph = Graph.load(fixture_path("keras_bn_frozen"))
    inputs, outputs = fixture_io("keras_bn_frozen")
    if transform.startswith("strip"):
        inputs = ["bn_net_1/conv1_1/convolution"]
    run_transforms(graph, "sort_by_execution_order", inputs=inputs, outputs=outputs)
    run_transforms(graph, transform, inputs=inputs, outputs=outputs)
    position = {n.name: i for i, n in enumerate(graph)}
    assert [(p, n.name) for n in graph for p in producers(n) if position[p] > position[n.name]] == []


# ---- merge_duplicate_nodes ----

def test_merge_duplicate_nodes_merges_constants_and_repeated_branches(tf):
    def body():
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        two_a = tf.constant(2.0, name="two_a")
        two_b = tf.constant(2.0, name="two_b")          # duplicate of two_a
        three = tf.constant(3.0, name="three")          # same dtype, other value: stays
        a = tf.nn.relu(tf.multiply(x, two_a, name="mul_a"), name="relu_a")
        b = tf.nn.relu(tf.multiply(x, two_b, name="mul_b"), name="relu_b")  # same as a once two_b merges
        c = tf.nn.relu(tf.multiply(x, three, name="mul_c"), name="relu_c")
        tf.add_n([a, b, c], name="out")
    original = build_tf_graph(tf, body)
    graph = Graph.from_bytes(original)
    before = len(graph)
    run_transforms(graph, "merge_duplicate_nodes", inputs=["x"], outputs=["out"])
    assert before - len(graph) == 3
    assert not {"two_b", "mul_b", "relu_b"} & {n.name for n in graph}
    assert [str(r) for r in graph["out"].inputs] == ["relu_a", "relu_a", "relu_c"]
    feeds = {"x": np.random.default_rng(12).standard_normal((2, 3)).astype(np.float32)}
    assert_same_outputs(original, graph.to_bytes(), feeds, ["out:0"])


def test_merge_duplicate_nodes_keeps_outputs_and_stateful_ops(tf):
    def body():
        x = tf.compat.v1.placeholder(tf.float32, [4], name="x")
        tf.nn.relu(x, name="out_a")
        tf.nn.relu(x, name="out_b")                              # a duplicate, but a graph output
        r1 = tf.random.uniform([4], seed=1, name="r1")
        r2 = tf.random.uniform([4], seed=1, name="r2")           # stateful: never merged
        tf.add(r1, r2, name="noise")
    original = build_tf_graph(tf, body)
    graph = Graph.from_bytes(original)
    ops_before = Counter(n.op for n in graph)
    run_transforms(graph, "merge_duplicate_nodes", inputs=["x"], outputs=["out_a", "out_b", "noise"])
    ops = Counter(n.op for n in graph)
    assert "out_a" in graph and "out_b" in graph
    assert ops["RandomUniform"] == ops_before["RandomUniform"] == 2
    assert ops["Const"] < ops_before["Const"]  # the two random ops' shape Consts did merge
    feeds = {"x": np.arange(-2, 2, dtype=np.float32)}
    assert_same_outputs(original, graph.to_bytes(), feeds, ["out_a:0", "out_b:0"])
    tf_run(graph.to_bytes(), feeds, ["noise:0"])


def test_merge_duplicate_nodes_follows_control_edges(tf):
    def body():
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        w1, w2 = tf.no_op(name="w1"), tf.no_op(name="w2")  # duplicates: k1 and k2 then wait on one
        with tf.control_dependencies([w1]):
            k1 = tf.constant(2.0, name="k1")
            m1 = tf.multiply(x, 3.0, name="m1")
        with tf.control_dependencies([w2]):
            k2 = tf.constant(2.0, name="k2")
            m2 = tf.multiply(x, 3.0, name="m2")
        m3 = tf.multiply(x, 3.0, name="m3")  # waits on nothing: not a duplicate of m1
        tf.add_n([k1 * m1, k2 * m2, m3], name="out")
    original = build_tf_graph(tf, body)
    graph = Graph.from_bytes(original)
    run_transforms(graph, "merge_duplicate_nodes", inputs=["x"], outputs=["out"])
    names = {n.name for n in graph}
    assert {"w1", "k1", "m1", "m3"} <= names and not {"w2", "k2", "m2"} & names
    feeds = {"x": np.array([1.0, -2.0], np.float32)}
    assert_same_outputs(original, graph.to_bytes(), feeds, ["out:0"])


def test_merge_duplicate_nodes_needs_the_same_attrs_and_device():
    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": 1, "shape": [2]})
    for name, attrs, device in (("a", {"_tag": 1}, ""), ("b", {"_tag": 2}, ""), ("c", {"_tag": 1}, ""),
                                ("d", {}, "/cpu:0"), ("e", {}, "/gpu:0"), ("f", {}, "/cpu:0")):
        graph.add_node(name, "Identity", ["x"], attrs={"T": 1, **attrs}, device=device)
    graph.add_node("out", "AddN", list("abcdef"), attrs={"T": 1, "N": 6})
    run_transforms(graph, "merge_duplicate_nodes", inputs=["x"], outputs=["out"])
    assert [str(r) for r in graph["out"].inputs] == ["a", "b", "a", "d", "e", "d"]


def test_merge_duplicate_nodes_is_linear_in_the_readers_of_one_tensor(monkeypatch):
    """A tensor read by k nodes that all differ: each node is compared with its own kind only (a
    join through the readers would compare every pair). Counts comparisons, not seconds."""
    from gtt_rules.engine import pattern
    from gtt_rules.stdlib_rules import passes

    k, work = 600, Counter()
    monkeypatch.setattr(passes, "_same_attrs", lambda a, b, f=passes._same_attrs: work.update(["compare"]) or f(a, b))
    monkeypatch.setattr(pattern, "_match_node", lambda *a, f=pattern._match_node: work.update(["match"]) or f(*a))
    graph = Graph()
    graph.add_node("x", "Placeholder", attrs={"dtype": 1, "shape": [2]})
    for i in range(k):
        graph.add_node(f"n{i}", "Identity", ["x"], attrs={"T": 1, "_tag": i % (k // 2)})
    graph.add_node("out", "AddN", [f"n{i}" for i in range(k)], attrs={"T": 1, "N": k})
    run_transforms(graph, "merge_duplicate_nodes", inputs=["x"], outputs=["out"])
    assert len(graph) == 2 + k // 2      # n{i} and n{i + k/2} are alike: half merge
    assert sum(work.values()) <= 4 * k


def test_merge_duplicate_nodes_keeps_a_real_model_running():
    original = fixture_path("keras_mobilenet_tiny").read_bytes()
    inputs, outputs = fixture_io("keras_mobilenet_tiny")
    graph = Graph.from_bytes(original)
    before = len(graph)
    run_transforms(graph, "merge_duplicate_nodes", inputs=inputs, outputs=outputs)
    assert len(graph) < before
    spec = fixture_spec("keras_mobilenet_tiny")
    assert_same_outputs(original, graph.to_bytes(), random_feeds(spec, 13), spec["outputs"], atol=1e-5)
