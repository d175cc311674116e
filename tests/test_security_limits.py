"""Small files that describe huge work (issue #12): each bomb is built here and must end with a
one-line error and exit 2, or, where the work is legitimate but too big, be skipped and reported.
No timing assertions: where a bomb cost time, the test counts the work done instead."""
from __future__ import annotations

import numpy as np
import pytest

from gtt_rules.cli import main
from gtt_rules.engine import shapes
from gtt_rules.engine.graph import Graph, TensorRef
from gtt_rules.engine.kernels import KERNELS, load_all
from gtt_rules.engine.limits import format_size, parse_size

FLOAT = 'attr { key: "T" value { type: DT_FLOAT } }'


def placeholder(name: str, dims=None) -> str:
    shape = "" if dims is None else \
        'attr { key: "shape" value { shape { ' + " ".join(f"dim {{ size: {d} }}" for d in dims) + " } } }"
    return f'node {{ name: "{name}" op: "Placeholder" attr {{ key: "dtype" value {{ type: DT_FLOAT }} }} {shape} }}'


def const(name: str, dims, value=1.0) -> str:
    """A float Const that gives its shape and one value: it decodes to the whole shape filled with it."""
    shape = " ".join(f"dim {{ size: {d} }}" for d in dims)
    return (f'node {{ name: "{name}" op: "Const" attr {{ key: "dtype" value {{ type: DT_FLOAT }} }} '
            f'attr {{ key: "value" value {{ tensor {{ dtype: DT_FLOAT tensor_shape {{ {shape} }} '
            f'float_val: {value} }} }} }} }}')


def ints(name: str, values) -> str:
    vals = " ".join(f"int_val: {v}" for v in values)
    return (f'node {{ name: "{name}" op: "Const" attr {{ key: "dtype" value {{ type: DT_INT32 }} }} '
            f'attr {{ key: "value" value {{ tensor {{ dtype: DT_INT32 tensor_shape {{ dim {{ size: '
            f'{len(values)} }} }} {vals} }} }} }} }}')


def op(name: str, op_name: str, *inputs: str) -> str:
    return f'node {{ name: "{name}" op: "{op_name}" ' + " ".join(f'input: "{i}"' for i in inputs) + f" {FLOAT} }}"


def fill(name: str, dims) -> list[str]:
    return [ints(f"{name}_dims", dims), const(f"{name}_value", []),
            op(name, "Fill", f"{name}_dims", f"{name}_value")]


def write(tmp_path, name: str, lines: list[str]):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def nested_adds(folder, levels: int = 20):
    """A rule of `levels` nested AddV2 under a Sqrt, and an 81-node graph where every node has two
    AddV2 inputs and none is a Sqrt: each pattern node fails at each graph node. Returns the
    graph's and the rules' paths."""
    pattern = "Sqrt(x0)"
    for i in range(1, levels + 1):
        pattern = f"AddV2({pattern}, x{i})"
    rules = folder / "deep.rules"
    rules.write_text(f"rule deep:\n    n = {pattern}\n    => n -> Identity(x1)\n")
    lines = [placeholder("p"), placeholder("q"), op("a0", "AddV2", "p", "q"), op("b0", "AddV2", "q", "p")]
    for i in range(1, 39):
        lines += [op(f"a{i}", "AddV2", f"a{i-1}", f"b{i-1}"), op(f"b{i}", "AddV2", f"b{i-1}", f"a{i-1}")]
    lines.append(op("out", "AddV2", "a38", "b38"))
    return write(folder, "adds.pbtxt", lines), rules


def shape_chain(folder, n: int):
    """y_i = Reshape(y_{i-1}, Shape(y_{i-1})) for i up to n: every Shape folds to [2, 3]."""
    lines = [placeholder("y0", [2, 3])]
    for i in range(1, n + 1):
        lines += [f'node {{ name: "s{i}" op: "Shape" input: "y{i-1}" {FLOAT} }}',
                  f'node {{ name: "y{i}" op: "Reshape" input: "y{i-1}" input: "s{i}" {FLOAT} }}']
    return write(folder, f"chain{n}.pbtxt", lines)


def one_line(capsys, kind: str, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"gtt-rules: {kind}: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def forbidden_kernel(monkeypatch):
    """Make the kernel of an op fail the test if it runs: a skipped fold must not be computed."""
    load_all()

    def forbid(op_name: str):
        def kernel(node, inputs):
            raise AssertionError(f"the {op_name} kernel ran")
        monkeypatch.setitem(KERNELS, op_name, kernel)
    return forbid


# ---- the memory budget of an evaluation ----

def test_run_stops_before_the_tensors_live_at_once_pass_the_budget(tmp_path, capsys):
    # Three 8 MB tensors live at once: b is refused before its kernel runs, naming b.
    path = write(tmp_path, "wide.pbtxt", fill("f", [2_000_000]) + [
        op("a", "AddV2", "f", "f"), op("b", "AddV2", "a", "f"), op("c", "AddV2", "b", "a")])
    assert main(["run", str(path), "--max-memory", "20MB"]) == 2
    one_line(capsys, "error", "wide.pbtxt", "node 'b'", "AddV2", "memory budget of 19.1 MiB",
             "--max-memory")
    assert main(["run", str(path), "--max-memory", "64MB", "--json"]) == 0


def test_a_tiny_graph_asking_for_gigabytes_is_refused_before_allocating(tmp_path, capsys,
                                                                        forbidden_kernel):
    forbidden_kernel("Fill")
    path = write(tmp_path, "fill.pbtxt", fill("f", [2**30]) + [op("r", "Relu", "f")])
    assert main(["run", str(path)]) == 2
    one_line(capsys, "error", "node 'f'", "Fill needs 4 GiB", "memory budget of 1 GiB")


def test_random_inputs_count_against_the_budget(tmp_path, capsys):
    path = write(tmp_path, "big_input.pbtxt", [placeholder("x", [500_000_000]), op("r", "Relu", "x")])
    assert main(["run", str(path)]) == 2
    one_line(capsys, "error", "node 'x'", "random value for placeholder 'x'", "--max-memory")


def test_max_memory_must_be_a_size(tmp_path, capsys):
    path = write(tmp_path, "g.pbtxt", [placeholder("x", [2]), op("r", "Relu", "x")])
    assert main(["run", str(path), "--max-memory", "lots"]) == 2
    one_line(capsys, "error", "--max-memory", "expected a size")


def test_sizes_read_and_print_in_the_units_people_write():
    assert parse_size("4GB") == 4 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5g") == 3 * 2**29
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError):
        parse_size("-1GB")
    assert format_size(4 * 2**30) == "4 GiB"
    assert format_size(10) == "10 bytes"


# ---- folds: size and cost checked before anything is computed ----

def test_a_fill_too_big_to_keep_is_not_computed(tmp_path, capsys, forbidden_kernel):
    forbidden_kernel("Fill")
    path = write(tmp_path, "fill.pbtxt", fill("f", [1_000_000_000]))
    out = tmp_path / "out.pb"
    assert main(["apply", str(path), "--rules", "fold_constants", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: 'f' (Fill) is not folded: its output would take 3.73 GiB, over the limit of " \
           "10 MiB" in err
    assert Graph.load(out)["f"].op == "Fill"


def test_a_fold_of_huge_inputs_is_not_decoded(tmp_path, capsys, forbidden_kernel):
    # Two 16384x16384 weights written as one value each: a 1 GiB product, never computed.
    forbidden_kernel("MatMul")
    path = write(tmp_path, "matmul.pbtxt", [const("a", [16384, 16384]), const("b", [16384, 16384]),
                                            op("m", "MatMul", "a", "b")])
    out = tmp_path / "out.pb"
    assert main(["apply", str(path), "--rules", "fold_constants", "-o", str(out)]) == 0
    assert "'m' (MatMul) is not folded: its output would take 1 GiB" in capsys.readouterr().err
    assert Graph.load(out)["m"].op == "MatMul"


def test_a_fold_that_costs_too_much_is_skipped_and_reported(tmp_path, capsys, forbidden_kernel):
    # A small result (1 MiB) that would take 512 x 512 x 65536 multiply-adds.
    forbidden_kernel("MatMul")
    path = write(tmp_path, "matmul.pbtxt", [const("a", [512, 65536]), const("b", [65536, 512]),
                                            op("m", "MatMul", "a", "b")])
    out = tmp_path / "out.pb"
    assert main(["apply", str(path), "--rules", "fold_constants", "-o", str(out)]) == 0
    assert "'m' (MatMul) is not folded: it would take about 1.7e+10 operations" in capsys.readouterr().err
    assert Graph.load(out)["m"].op == "MatMul"


def test_a_fold_within_the_limits_still_happens(tmp_path, capsys):
    path = write(tmp_path, "small.pbtxt", [const("a", [4, 8], 2), const("b", [8, 3], 3),
                                           op("m", "MatMul", "a", "b"), placeholder("x", [4, 3]),
                                           op("out", "AddV2", "x", "m")])
    out = tmp_path / "out.pb"
    assert main(["apply", str(path), "--rules", "fold_constants", "-o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    graph = Graph.load(out)
    folded = graph[graph["out"].inputs[1].node]
    assert folded.op == "Const"
    np.testing.assert_array_equal(folded.get_attr("value"), np.full((4, 3), 48, np.float32))


# ---- commutative matching ----

def test_nested_commutative_patterns_cost_pairs_not_powers_of_two(tmp_path, capsys):
    # 20 nested AddV2 against a graph where every node has two AddV2 inputs: each pattern node
    # fails at each graph node, and swapping inputs doubled the tries per level (2^20 per root).
    path, rules = nested_adds(tmp_path)
    out = tmp_path / "out.pb"
    with _CountedMatching(limit=81 * 21 * 4):   # (pattern node, graph node) pairs, not 2^20
        assert main(["apply", str(path), "--rules", str(rules), "-o", str(out)]) == 0
    assert len(Graph.load(out)) == 81


def test_a_pattern_matching_in_exponentially_many_ways_is_capped_naming_the_rule(tmp_path, capsys):
    # Fresh names at every level: each of 2^20 ways to pair the inputs is a match, and the guard
    # refuses each one. Remembering failures cannot help; the search is capped.
    pattern = "AddV2(x0, y0)"
    for i in range(1, 21):
        pattern = f"AddV2({pattern}, x{i})"
    rules = tmp_path / "many.rules"
    rules.write_text(f"rule many:\n    n = {pattern}\n    where uses(x1) == 99\n    => n -> Identity(x1)\n")
    lines = [placeholder("p"), placeholder("q"), op("a0", "AddV2", "p", "q"), op("b0", "AddV2", "q", "p")]
    for i in range(1, 21):
        lines += [op(f"a{i}", "AddV2", f"a{i-1}", f"b{i-1}"), op(f"b{i}", "AddV2", f"b{i-1}", f"a{i-1}")]
    path = write(tmp_path, "adds.pbtxt", lines)
    out = tmp_path / "out.pb"
    assert main(["apply", str(path), "--rules", str(rules), "-o", str(out)]) == 2
    one_line(capsys, "error", "many.rules:1: rule 'many': matching at node ", "more than 10,000 tries")
    assert not out.exists()


def test_commutative_matching_still_finds_swapped_inputs(tmp_path, capsys):
    rules = tmp_path / "swap.rules"
    rules.write_text("rule swap:\n    n = AddV2(AddV2(Sqrt(x), y), z)\n    => n -> Identity(x)\n")
    path = write(tmp_path, "g.pbtxt", [placeholder("p", [2]), op("s", "Sqrt", "p"),
                                       op("i", "AddV2", "p", "s"), op("o", "AddV2", "p", "i"),
                                       op("out", "Relu", "o")])
    out = tmp_path / "out.pb"
    assert main(["apply", str(path), "--rules", str(rules), "-o", str(out)]) == 0
    graph = Graph.load(out)
    assert graph["o"].op == "Identity" and graph["o"].inputs == [TensorRef("p", 0)]


class _CountedMatching:
    """Count how many input lists the matcher tries while the block runs; fail past `limit`
    (an exponential search would otherwise run for minutes before failing)."""

    def __init__(self, limit: int):
        from gtt_rules.engine import pattern
        self.module, self.count, self.limit = pattern, 0, limit

    def __enter__(self):
        self.original = self.module._match_inputs

        def counted(*args):
            self.count += 1
            assert self.count <= self.limit, "the matcher tried too many input lists"
            return self.original(*args)
        self.module._match_inputs = counted
        return self

    def __exit__(self, *exc):
        self.module._match_inputs = self.original


# ---- shape inference is linear ----

def test_folding_a_chain_of_shapes_checks_each_node_a_bounded_number_of_times(tmp_path, monkeypatch):
    # y_i = Reshape(y_{i-1}, Shape(y_{i-1})): each Shape fold asked about the whole chain above it.
    n = 400
    path = shape_chain(tmp_path, n)
    checked = []
    original = shapes._stamp
    monkeypatch.setattr(shapes, "_stamp", lambda node: checked.append(node.name) or original(node))
    out = tmp_path / "out.pb"
    assert main(["apply", str(path), "--rules", "fold_constants", "-o", str(out)]) == 0
    assert len(checked) < 10 * n, len(checked)     # it was n^2: 160,000
    graph = Graph.load(out)
    assert all(graph[f"s{i}"].op == "Const" for i in range(1, n + 1))
    np.testing.assert_array_equal(graph[f"s{n}"].get_attr("value"), [2, 3])


def test_shapes_follow_edits_upstream_after_a_query():
    graph = Graph.from_bytes("\n".join([placeholder("x", [2, 3]), op("r", "Relu", "x"),
                                        op("t", "Tanh", "r")]).encode(), text=True)
    assert shapes.infer_shape(graph, "t") == (2, 3)
    graph["x"].set_attr("shape", [5, 7])
    assert shapes.infer_shape(graph, "t") == (5, 7)
    graph.add_node("z", "Placeholder", attrs={"dtype": 1, "shape": [4]})
    graph.set_inputs(graph["r"], [TensorRef("z", 0)])
    assert shapes.infer_shape(graph, "t") == (4,)
    graph.set_inputs(graph["r"], [TensorRef("x", 0)])
    graph.remove_node("z")
    graph.add_node("z", "Placeholder", attrs={"dtype": 1, "shape": [9]})
    graph.set_inputs(graph["r"], [TensorRef("z", 0)])
    assert shapes.infer_shape(graph, "t") == (9,)


# ---- tracebacks that are one-line errors ----

def test_a_placeholder_of_rank_65_is_refused_clearly(tmp_path, capsys):
    path = write(tmp_path, "rank.pbtxt", [placeholder("x", [1] * 65), op("r", "Relu", "x")])
    assert main(["run", str(path)]) == 2
    one_line(capsys, "error", "rank.pbtxt", "placeholder 'x' has rank 65", "at most 64")


def test_pbtxt_nested_200_deep_is_refused_clearly(tmp_path, capsys):
    inner = 'func { name: "f" }'
    for _ in range(200):
        inner = f'func {{ name: "f" attr {{ key: "a" value {{ {inner} }} }} }}'
    path = write(tmp_path, "deep.pbtxt", [f'node {{ name: "n" op: "NoOp" attr {{ key: "g" value {{ {inner} }} }} }}'])
    assert main(["summarize", str(path)]) == 2
    one_line(capsys, "error", "deep.pbtxt", "nested more than 100 levels deep")
    # Braces in strings and comments open nothing.
    braces = "{" * 150
    path = write(tmp_path, "braces.pbtxt", [f"# {braces}", placeholder("x", [2]),
                                            f'node {{ name: "n" op: "NoOp" attr {{ key: "s" value {{ s: "{braces}\\"}}\'" }} }} }}'])
    assert main(["summarize", str(path), "--json"]) == 0


# ---- limits inside rule fixtures -----------------------------------------------------------------

_LIMITED_FIXTURE = """
test {name} using fold_constants(max_constant_size_in_bytes=4):
    given:
        a   = Const([1.0, 4.0])
        out = Sqrt(a)
    expect:
        out = {expected}
"""


@pytest.mark.parametrize("expected, passes", [("Sqrt(a)", True), ("Const([1.0, 2.0])", False)])
def test_a_fixture_keeps_the_limits_it_hits_to_itself(tmp_path, expected, passes):
    """A limit a test sets on purpose is not a warning of the run; a failing test shows it."""
    import warnings
    from gtt_rules import standard_library
    from gtt_rules.rules.fixtures import run_file
    path = tmp_path / "limited.rules"
    path.write_text(_LIMITED_FIXTURE.format(name="kept", expected=expected))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (result,) = run_file(path, standard_library())
    assert result.passed is passes
    if not passes:
        assert "'out' (Sqrt) is not folded" in result.message
