"""Bad .rules files, rule specs and transform strings: one located line, exit 2, no traceback.

Each case here once crashed with a Python exception or gave an error without its position.
"""
from __future__ import annotations

import pathlib

import pytest
from test_cli import run_cli

from gtt_rules.cli import main

GRAPH = str(pathlib.Path(__file__).resolve().parent.parent / "examples" / "mobilenet_tiny.pb")

IDENTITY_RULE = "rule r:\n    n = Identity(x)\n    => n -> x\n"


def _bad_input(capsys, argv: list[str]) -> str:
    """Run the CLI on bad input; the first error line (`check` prints one per problem, each
    followed by its source line and caret)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("gtt-rules: error: "), err
    return err.splitlines()[0]


def _argv(command: str, path, tmp_path) -> list[str]:
    if command == "apply":
        return ["apply", GRAPH, "-o", str(tmp_path / "out.pb"), "--rules", str(path)]
    return [command, str(path)]


def _assert_located(capsys, tmp_path, text: str | bytes, command: str, line: int, column: int,
                    message: str) -> None:
    path = tmp_path / "bad.rules"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    error = _bad_input(capsys, _argv(command, path, tmp_path))
    assert error.startswith(f"gtt-rules: error: {path}:{line}:{column}: {message}"), error
    assert not (tmp_path / "out.pb").exists()


COMMANDS = ["check", "test", "apply"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("priority, column", [("1e999", 17), ("-1e999", 18), ("1.5", 17)])
def test_a_priority_that_is_not_a_whole_number_is_located(capsys, tmp_path, command, priority, column):
    # int(1e999) raised OverflowError from inside the parser.
    text = f"rule r priority {priority}:\n    n = Identity(x)\n    => n -> x\n"
    _assert_located(capsys, tmp_path, text, command, 1, column, "a priority is a whole number")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unindent_to_no_outer_level_is_located(capsys, tmp_path, command):
    # lark's DedentError carried no position: the message named the file only.
    text = ("rule r:\n    n = Identity(x)\n    => n -> x\n"
            "test t:\n    given:\n        x = Placeholder {dtype: float}\n      n = Identity(x)\n"
            "    expect:\n        x = Placeholder {dtype: float}\n")
    _assert_located(capsys, tmp_path, text, command, 7, 7,
                    "unindent does not match any outer indentation level")


DEEP = {
    "not": ("rule r:\n    n = Identity(x)\n    where " + "not " * 3000 + "true\n    => n -> x\n", 3, 407),
    "lists": ("rule r:\n    n = Identity(x)\n    where 1 in " + "[" * 3000 + "]" * 3000 + "\n    => n -> x\n",
              3, 114),
    "patterns": ("rule r:\n    n = " + "Identity(" * 2000 + "x" + ")" * 2000 + "\n    => n -> x\n", 2, 459),
    "a long sum": ("rule r:\n    n = Identity(x)\n    where " + " + ".join(["1"] * 5000) + " > 0\n    => n -> x\n",
                   3, 11),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("shape", DEEP)
def test_nesting_too_deep_for_python_is_located(capsys, tmp_path, command, shape):
    # The compiler and the parse cache's pickle recursed until RecursionError.
    text, line, column = DEEP[shape]
    _assert_located(capsys, tmp_path, text, command, line, column, "nested more than 100 levels deep")


def test_nesting_just_under_the_limit_still_compiles_and_runs(capsys, tmp_path):
    path = tmp_path / "deep.rules"
    path.write_text("rule r:\n    n = Identity(x)\n    where " + "not " * 96 + "false\n    => n -> x\n"
                    "rule s:\n    n = Relu(" + "Identity(" * 48 + "x" + ")" * 48 + ")\n    => n -> x\n")
    assert main(["apply", GRAPH, "-o", str(tmp_path / "out.pb"), "--rules", str(path)]) == 0
    assert (tmp_path / "out.pb").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_that_is_not_utf8_is_located_at_the_bad_byte(capsys, tmp_path, command):
    text = b"rule r:\n    n = Identity(x)  # caf\xe9\n    => n -> x\n"
    _assert_located(capsys, tmp_path, text, command, 2, 27, "not UTF-8 text: byte 0xe9")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_import_name_too_long_for_the_system_is_located(capsys, tmp_path, command):
    # Path.is_file raised OSError (File name too long).
    text = 'import "' + "a" * 5000 + '.rules"\n' + IDENTITY_RULE
    _assert_located(capsys, tmp_path, text, command, 1, 1, "cannot import")


@pytest.mark.parametrize("command", ["check", "test"])
@pytest.mark.parametrize("stages, line, message", [
    ("pipeline p:\n    cleanup\n    p\n", 3, "pipeline 'p' calls itself"),
    ("pipeline p:\n    q\npipeline q:\n    p\n", 2, "pipeline 'p' calls itself (through 'q')"),
])
def test_a_pipeline_that_calls_itself_is_a_check_error(capsys, tmp_path, command, stages, line, message):
    # check said ok; running it recursed 20 levels and named the file and line, not the column.
    _assert_located(capsys, tmp_path, stages + IDENTITY_RULE, command, line, 5, message)


FIXTURE = """rule r:
    n = Identity(x)
    => n -> x
test t:
    given:
        x = Placeholder {{dtype: float, shape: [2]}}
        w = {const}
        n = Identity(x)
    expect:
        x = Placeholder {{dtype: float, shape: [2]}}
"""


@pytest.mark.parametrize("const, column, message", [
    ('Const("abc")', 13, "bad fixture Const: a computed constant must be numbers"),
    ("Const(99999999999999999999999)", 13, "bad fixture Const"),
    ('Const(1, "nodtype")', 13, "bad fixture Const"),
    ("Const(1, 9999)", 13, "bad fixture Const"),
    ("Const([[1], [1, 2]])", 13, "bad fixture Const"),
    ("Identity(-y)", 23, "unbound name 'y'"),
])
def test_a_fixture_value_that_cannot_be_built_is_located(capsys, tmp_path, const, column, message):
    # TypeError, ValueError and OverflowError escaped from building the fixture graph.
    _assert_located(capsys, tmp_path, FIXTURE.format(const=const), "test", 7, column, message)


def test_a_fixture_attr_out_of_range_is_located(capsys, tmp_path):
    text = FIXTURE.format(const="Const(1.0)").replace("shape: [2]", "shape: [1e999]", 1)
    _assert_located(capsys, tmp_path, text, "test", 6, 40, "bad value for attr 'shape'")


@pytest.mark.parametrize("using, message", [
    ("nosuch", "unknown rule set or pipeline 'nosuch'"),
    ('cleanup(a=1)', "'cleanup' has no parameter 'a'"),
])
def test_a_bad_using_is_bad_input_located_at_the_call(capsys, tmp_path, using, message):
    # Reported as a failing test (exit 1), and an unknown name without any position.
    text = FIXTURE.format(const="Const(1.0)").replace("test t:", f"test t using {using}:")
    _assert_located(capsys, tmp_path, text, "test", 4, 14, message)


def test_a_guard_that_fails_at_run_time_names_line_and_column(capsys, tmp_path):
    # The guard's error named file:line only.
    path = tmp_path / "guard.rules"
    path.write_text('rule r:\n    n = Identity(x)\n    where "abc"[1e999] == 1\n    => n -> x\n')
    error = _bad_input(capsys, _argv("apply", path, tmp_path))
    assert error.startswith(f"gtt-rules: error: {path}:3:5: rule 'r' at node ")
    assert "where failed: OverflowError" in error
    assert not (tmp_path / "out.pb").exists()


def test_numpy_warnings_do_not_reach_stderr(tmp_path):
    # A child process, as pytest would catch the warning: stderr began with numpy's
    # "RuntimeWarning: invalid value encountered in subtract" and the line of source it quotes.
    path = tmp_path / "nan.rules"
    path.write_text("ruleset s(a: int = 1e999 - 1e999):\n" + "".join("    " + line + "\n" for line in
                                                                     IDENTITY_RULE.splitlines()))
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"gtt-rules: error: {path}:1:20: parameter 'a' wants int"), result.stderr
    assert "Warning" not in result.stderr


# ---- rule specs and transform strings: no file, so no position, but the same one line ----

@pytest.mark.parametrize("option, spec, message", [
    ("--rules", "a" * 5000, "unknown rule set or pipeline"),  # Path.is_file raised OSError
    ("--rules", "cleanup\n    cleanup", "a rule spec is one line"),  # ValueError unpacking one stage
    ("--rules", "cleanup\nrule r:\n    n = Identity(x)\n    => n -> x", "a rule spec is one line"),
    ("--rules", "cleanup(a=" + "not " * 300 + "true)", "nested more than 100 levels deep"),
    ("--rules", 'strip_unused_nodes(shape="99999999999999999999")', "bad shape"),  # ValueError from protobuf
    ("--transforms", 'strip_unused_nodes(shape="1,99999999999999999999")', "bad shape"),
    ("--transforms", 'strip_unused_nodes(shape="1,-5")', "bad shape"),
])
def test_bad_rule_specs_and_transforms_are_one_line_errors(capsys, tmp_path, option, spec, message):
    out = tmp_path / "out.pb"
    error = _bad_input(capsys, ["apply", GRAPH, "-o", str(out), option, spec])
    assert message in error
    assert not out.exists()


def test_overflow_in_a_rule_expression_prints_no_numpy_warning(tmp_path):
    # value(c) * 1e38 overflows float32 to inf: that is the computed value, not a warning on stderr.
    rules = tmp_path / "big.rules"
    rules.write_text("rule big:\n    n = Mul(x, c: Const)\n    where value(c) < 1e30\n"
                     "    => n -> Mul(x, Const(value(c) * 1e38))\n")
    graph = tmp_path / "g.pbtxt"
    graph.write_text(
        'node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }\n'
        'node { name: "c" op: "Const" attr { key: "dtype" value { type: DT_FLOAT } } attr { key: "value" '
        'value { tensor { dtype: DT_FLOAT tensor_shape { } float_val: 1e10 } } } }\n'
        'node { name: "m" op: "Mul" input: "x" input: "c" attr { key: "T" value { type: DT_FLOAT } } }\n'
        'node { name: "out" op: "Identity" input: "m" attr { key: "T" value { type: DT_FLOAT } } }\n')
    done = run_cli("apply", str(graph), "--rules", str(rules), "-o", str(tmp_path / "out.pb"))
    assert done.returncode == 0, done.stderr
    # (the temporary folder is named after this test: the closing line's path says "overflow")
    assert "overflow encountered" not in done.stderr and "Warning" not in done.stderr, done.stderr
