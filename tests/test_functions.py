"""Function calls in the evaluator (engine/functions.py) on hand-made libraries: what TensorFlow
does with a non-boolean condition and a polymorphic function, and the clear errors for a runaway
loop, a function that calls itself, a loop that outgrows the memory budget and a missing function."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tf_run
from gtt_rules import cli as cli_module
from gtt_rules.engine import dtypes, functions
from gtt_rules.engine.attrs import encode_attr
from gtt_rules.engine.evaluator import evaluate
from gtt_rules.engine.graph import Graph
from gtt_rules.engine.limits import memory_budget
from gtt_rules.engine.proto import graph_def_pb2 as pb
from gtt_rules.errors import EvaluationError

F32, I32, BOOL = dtypes.DT_FLOAT, dtypes.DT_INT32, dtypes.DT_BOOL


def node(container, name, op, inputs=(), **attrs) -> pb.NodeDef:
    """A NodeDef added to a GraphDef's or FunctionDef's nodes; attrs by encode_attr, or AttrValues."""
    made = (container.node if isinstance(container, pb.GraphDef) else container.node_def).add(
        name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        if key == "value":
            value = np.asarray(value)       # a Const's value is a tensor, a scalar too
        made.attr[key].CopyFrom(value if isinstance(value, pb.AttrValue) else encode_attr(value))
    return made


def type_attr(dt: int) -> pb.AttrValue:
    return encode_attr(dt, "type")


def types_attr(*dts: int) -> pb.AttrValue:
    return encode_attr(list(dts), "list(type)")


def func(name: str) -> pb.AttrValue:
    return encode_attr(name, "func")


def function(graph_def: pb.GraphDef, name: str, inputs, outputs, ret) -> pb.FunctionDef:
    """A FunctionDef in `graph_def`'s library: `inputs`/`outputs` are (name, dtype) pairs."""
    made = graph_def.library.function.add()
    made.signature.name = name
    for arg, dt in inputs:
        made.signature.input_arg.add(name=arg, type=dt)
    for arg, dt in outputs:
        made.signature.output_arg.add(name=arg, type=dt)
    made.ret.update(ret)
    return made


def counting_loop() -> pb.GraphDef:
    """While (i, keep): i + 1 while `keep`, which the loop passes on unchanged: fed true, it never ends."""
    graph_def = pb.GraphDef()
    cond = function(graph_def, "cond", [("i", I32), ("keep", BOOL)], [("go", BOOL)], {"go": "same:output:0"})
    node(cond, "same", "Identity", ["keep"], T=type_attr(BOOL))
    body = function(graph_def, "body", [("i", I32), ("keep", BOOL)], [("next", I32), ("still", BOOL)],
                    {"next": "add:z:0", "still": "keep"})
    node(body, "one", "Const", dtype=type_attr(I32), value=np.int32(1))
    node(body, "add", "AddV2", ["i", "one:output:0"], T=type_attr(I32))
    node(graph_def, "keep", "Placeholder", dtype=type_attr(BOOL), shape=encode_attr([], "shape"))
    node(graph_def, "start", "Const", dtype=type_attr(I32), value=np.int32(0))
    node(graph_def, "loop", "While", ["start", "keep"], T=types_attr(I32, BOOL), cond=func("cond"),
         body=func("body"), parallel_iterations=10)
    return graph_def


def test_a_loop_whose_condition_is_false_at_once_returns_its_inputs():
    graph_def = counting_loop()
    feeds = {"keep": np.bool_(False)}
    ours = evaluate(Graph(graph_def), feeds, ["loop:0", "loop:1"])
    theirs = tf_run(graph_def.SerializeToString(), feeds, ["loop:0", "loop:1"])
    assert [o.tolist() for o in ours] == [np.asarray(t).tolist() for t in theirs] == [0, False]


def test_a_runaway_loop_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(functions, "MAX_LOOP_ITERATIONS", 100)
    with pytest.raises(EvaluationError) as error:
        evaluate(Graph(counting_loop()), {"keep": np.bool_(True)}, ["loop:0"])
    assert str(error.value) == ("node 'loop': While ran 100 iterations and its condition 'cond' is "
                                "still true: a runaway loop")


def test_run_stops_a_runaway_loop_with_exit_code_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(functions, "MAX_LOOP_ITERATIONS", 100)
    path, out, keep = tmp_path / "loop.pb", tmp_path / "out.npz", tmp_path / "keep.npy"
    path.write_bytes(counting_loop().SerializeToString())
    np.save(keep, np.bool_(True))
    assert cli_module.main(["run", str(path), "--outputs", "loop:0", "--feed", f"keep={keep}",
                            "--save", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "loop.pb" in lines[0] and "runaway loop" in lines[0]
    assert not out.exists()


def test_a_function_that_calls_itself_is_a_clear_error():
    graph_def = pb.GraphDef()
    again = function(graph_def, "again", [("x", F32)], [("y", F32)], {"y": "call:output:0"})
    node(again, "call", "PartitionedCall", ["x"], Tin=types_attr(F32), Tout=types_attr(F32), f=func("again"))
    node(graph_def, "x", "Placeholder", dtype=type_attr(F32))
    node(graph_def, "call", "PartitionedCall", ["x"], Tin=types_attr(F32), Tout=types_attr(F32), f=func("again"))
    with pytest.raises(EvaluationError, match="nest more than 64 deep") as error:
        evaluate(Graph(graph_def), {"x": np.float32(1)}, ["call"])
    assert str(error.value).startswith("node 'call': in function 'again': node 'call': in function")
    assert "\n" not in str(error.value)


def test_a_loop_that_outgrows_the_memory_budget_is_a_clear_error():
    """The body doubles its tensor: the budget stops it, though no one step is large."""
    graph_def = pb.GraphDef()
    cond = function(graph_def, "cond", [("x", F32)], [("go", BOOL)], {"go": "yes:output:0"})
    node(cond, "yes", "Const", dtype=type_attr(BOOL), value=np.bool_(True))
    body = function(graph_def, "double", [("x", F32)], [("y", F32)], {"y": "concat:output:0"})
    node(body, "axis", "Const", dtype=type_attr(I32), value=np.int32(0))
    node(body, "concat", "ConcatV2", ["x", "x", "axis:output:0"], T=type_attr(F32), N=2,
         Tidx=type_attr(I32))
    node(graph_def, "x", "Placeholder", dtype=type_attr(F32))
    node(graph_def, "loop", "While", ["x"], T=types_attr(F32), cond=func("cond"), body=func("double"))
    with memory_budget(2**20), pytest.raises(EvaluationError, match="over the memory budget") as error:
        evaluate(Graph(graph_def), {"x": np.zeros(1024, np.float32)}, ["loop"])
    assert str(error.value).startswith("node 'loop': in function 'double': node 'concat': ConcatV2 needs")


def test_a_call_of_a_function_the_library_lacks_names_it():
    graph_def = pb.GraphDef()
    node(graph_def, "x", "Placeholder", dtype=type_attr(F32))
    node(graph_def, "call", "StatefulPartitionedCall", ["x"], Tin=types_attr(F32), Tout=types_attr(F32),
         f=func("nowhere"))
    with pytest.raises(EvaluationError) as error:
        evaluate(Graph(graph_def), {"x": np.float32(1)}, ["call"])
    assert str(error.value) == ("node 'call': calls function 'nowhere', which the graph's library "
                                "does not define")


def branches(graph_def: pb.GraphDef) -> None:
    then = function(graph_def, "then", [("x", F32)], [("y", F32)], {"y": "twice:z:0"})
    node(then, "twice", "AddV2", ["x", "x"], T=type_attr(F32))
    other = function(graph_def, "other", [("x", F32)], [("y", F32)], {"y": "minus:y:0"})
    node(other, "minus", "Neg", ["x"], T=type_attr(F32))


@pytest.mark.parametrize("predicate", [np.int32(0), np.int32(-3), np.float32(0.5),
                                       np.zeros([0], np.int32), np.zeros([2], np.int32)],
                         ids=["zero", "nonzero", "float", "empty", "non-empty zeros"])
def test_if_reads_a_non_boolean_condition_as_tensorflow_does(predicate):
    """A non-zero scalar is true; any other tensor is true when it has elements."""
    graph_def = pb.GraphDef()
    branches(graph_def)
    node(graph_def, "p", "Placeholder", dtype=type_attr(dtypes.dtype_for_array(predicate)))
    node(graph_def, "x", "Placeholder", dtype=type_attr(F32))
    node(graph_def, "if", "If", ["p", "x"], Tcond=type_attr(dtypes.dtype_for_array(predicate)),
         Tin=types_attr(F32), Tout=types_attr(F32), then_branch=func("then"), else_branch=func("other"))
    feeds = {"p": predicate, "x": np.array([1.5, -2.0], np.float32)}
    (ours,) = evaluate(Graph(graph_def), feeds, ["if"])
    (theirs,) = tf_run(graph_def.SerializeToString(), feeds, ["if"])
    np.testing.assert_array_equal(ours, theirs)


def test_a_polymorphic_function_takes_its_types_from_a_direct_call():
    """A node whose op is a library function binds the function's attr placeholders ($T)."""
    graph_def = pb.GraphDef()
    square = graph_def.library.function.add()
    square.signature.name = "square"
    square.signature.attr.add(name="T", type="type")
    square.signature.input_arg.add(name="x", type_attr="T")
    square.signature.output_arg.add(name="y", type_attr="T")
    square.ret["y"] = "mul:z:0"
    placeholder = pb.AttrValue(placeholder="T")
    node(square, "mul", "Mul", ["x", "x"], T=placeholder)
    node(graph_def, "a", "Placeholder", dtype=type_attr(F32))
    node(graph_def, "b", "Placeholder", dtype=type_attr(I32))
    node(graph_def, "fa", "square", ["a"], T=type_attr(F32))
    node(graph_def, "fb", "square", ["b"], T=type_attr(I32))
    a, b = np.array([1.5, -3.0], np.float32), np.array([7, -4], np.int32)
    # TensorFlow's Python importer refuses polymorphic library functions: no oracle to run.
    ours = evaluate(Graph(graph_def), {"a": a, "b": b}, ["fa", "fb"])
    for mine, expected in zip(ours, [a * a, b * b]):
        assert mine.dtype == expected.dtype
        np.testing.assert_array_equal(mine, expected)


def test_a_call_gets_the_budget_its_caller_has_left():
    """`y` stays live across the call, whose body peaks briefly: both together pass the budget,
    though neither does alone."""
    graph_def = pb.GraphDef()
    total = function(graph_def, "total", [("x", F32)], [("s", F32)], {"s": "sum:output:0"})
    node(total, "axis", "Const", dtype=type_attr(I32), value=np.int32(0))
    node(total, "concat", "ConcatV2", ["x", "x", "axis:output:0"], T=type_attr(F32), N=2,
         Tidx=type_attr(I32))
    node(total, "sum", "Sum", ["concat:output:0", "axis:output:0"], T=type_attr(F32), Tidx=type_attr(I32))
    node(graph_def, "x", "Placeholder", dtype=type_attr(F32))
    node(graph_def, "y", "Placeholder", dtype=type_attr(F32))
    node(graph_def, "call", "PartitionedCall", ["x"], Tin=types_attr(F32), Tout=types_attr(F32), f=func("total"))
    node(graph_def, "out", "AddV2", ["call", "y"], T=type_attr(F32))
    x, y = np.ones(2**17, np.float32), np.ones(2**18, np.float32)     # 512 KiB and 1 MiB
    graph = Graph(graph_def)
    with memory_budget(2**21):
        with pytest.raises(EvaluationError) as error:
            evaluate(graph, {"x": x, "y": y}, ["out"])
        (alone,) = evaluate(graph, {"x": x, "y": y[:1]}, ["out"])
    assert str(error.value).startswith("node 'call': in function 'total': node 'concat': ConcatV2 "
                                       "needs 1 MiB for its outputs with 512 KiB of tensors live, "
                                       "over the memory budget of 1 MiB")
    assert alone.tolist() == [2.0**18 + 1]
