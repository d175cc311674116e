"""Static checks: each error names the line and column, shows the line, and says what is wrong."""
from __future__ import annotations

import pathlib

import pytest

from gtt_rules import standard_library
from gtt_rules.errors import GttRulesError, RewriteError, RulesCheckError
from gtt_rules.grammar.parser import parse
from gtt_rules.rules.compiler import compile_module

RULE = "rule r:\n    n = Relu(x)\n    => n -> x\n"


def check_errors(text: str) -> list[RulesCheckError]:
    with pytest.raises(RulesCheckError) as caught:
        compile_module(parse(text, "c.rules"))
    return caught.value.all_errors


# (source, line, column, message, hint) — the first error each source must produce.
CASES = {
    "unknown op": (
        "rule r:\n    n = Conv2d(x, w)\n    => n -> x\n",
        2, 9, "unknown op 'Conv2d'", "did you mean 'Conv2D'?"),
    "unknown op in replacement": (
        "rule r:\n    n = Relu(x)\n    => n -> Relu7(x)\n",
        3, 13, "unknown op 'Relu7'", "did you mean 'Relu'?"),
    "unknown attr": (
        'rule r:\n    n = Conv2D(x, w) {paddin: "SAME"}\n    => n -> x\n',
        2, 23, "op 'Conv2D' has no attr 'paddin'", "did you mean 'padding'?"),
    "unknown attr in a new node": (
        'rule r:\n    n = Relu(x)\n    => n -> Relu6(x) {alpha: 1.0}\n',
        3, 23, "op 'Relu6' has no attr 'alpha'", "its attrs: T"),
    "wrong input count": (
        "rule r:\n    n = Relu(x, y)\n    => n -> x\n",
        2, 9, "op 'Relu' takes 1 input (features), not 2", None),
    "too few inputs for a variadic op": (
        "rule r:\n    n = ConcatV2(x)\n    => n -> x\n",
        2, 9, "op 'ConcatV2' takes at least 3 inputs, not 1", None),
    "unbound name": (
        "rule r:\n    n = Relu(x)\n    => n -> Neg(xx)\n",
        3, 17, "unbound name 'xx'", "did you mean 'x'?"),
    "unbound name in a guard": (
        "rule r:\n    n = Relu(x)\n    where uses(y) == 1\n    => n -> x\n",
        3, 16, "unbound name 'y'", None),
    "doubly bound pattern line": (
        "rule r:\n    n = Relu(x)\n    n = Neg(n)\n    => n -> x\n",
        3, 5, "'n' is already bound (line 2)", None),
    "let rebinding a pattern name": (
        "rule r:\n    n = Relu(x)\n    let x = 2\n    => n -> x\n",
        3, 9, "'x' is already bound", None),
    "variadic name reused": (
        "rule r:\n    n = AddN(xs...)\n    m = Mul(n, xs)\n    => m -> n\n",
        3, 16, "'xs' is already bound to a list of inputs", None),
    "unknown function": (
        "rule r:\n    n = Relu(x)\n    where usess(x) == 1\n    => n -> x\n",
        3, 11, "unknown function 'usess'", "did you mean 'uses'?"),
    "wrong argument count": (
        "rule r:\n    n = Relu(x)\n    where uses(x, x) == 1\n    => n -> x\n",
        3, 11, "uses() takes 1 argument, not 2", None),
    "type error: string arithmetic": (
        'rule r:\n    n = Relu(x)\n    where "a" * 2 > 1\n    => n -> x\n',
        3, 11, "type error: '*' needs numbers or tensors, not a string", None),
    "type error: number where a tensor is wanted": (
        "rule r:\n    n = Relu(x)\n    where uses(1) == 1\n    => n -> x\n",
        3, 16, "type error: uses() wants a tensor here, not a value", None),
    "type error: membership in a non-list": (
        "rule r:\n    n = Relu(x)\n    where op(x) in 3\n    => n -> x\n",
        3, 20, "type error: 'in' needs a list on its right, not a value", None),
    "type error: string Const": (
        'rule r:\n    n = Relu(x)\n    => n -> Const("a")\n',
        3, 19, "type error: a Const value cannot be a string", None),
    "duplicate rule name": (
        RULE + RULE,
        4, 6, "duplicate rule name 'r' (first at line 1)", None),
    "a second root with no input in common": (
        "rule r:\n    a = Relu(x)\n    b = Neg(y)\n    => a -> x\n",
        3, 9, "'b' is a second root, and none of its inputs is a tensor the lines before it bind: it is "
              "looked for among their readers",
        "give it an input in common with the lines above, or read it from the others"),
    "a second root joined only through a nested pattern": (
        "rule r:\n    a = Relu(x)\n    b = Neg(Abs(x))\n    => a -> x\n",
        3, 9, "'b' is a second root, and none of its inputs is a tensor the lines before it bind: it is "
              "looked for among their readers",
        "give it an input in common with the lines above, or read it from the others"),
    "a shared second root": (
        "rule r:\n    a = Relu(x)\n    b = shared Neg(x)\n    => a -> x\n",
        3, 16, "a root is what the rule replaces: it cannot be 'shared'", None),
    "a chain as a pattern line": (
        "rule r:\n    a = Identity*(x)\n    => a -> x\n",
        2, 9, "a chain stands in an input ('Relu(Identity*(x))'), not as a pattern line", None),
    "a chain of two inputs": (
        "rule r:\n    a = Relu(Identity*(x, y))\n    => a -> x\n",
        2, 14, "a chain reads one input, where it ends: 'Op*(x)'", None),
    "a chain as an alternative": (
        "rule r:\n    a = Relu(Identity*(x) or Neg(x))\n    => a -> x\n",
        2, 14, "a chain cannot be one of alternatives: it may match no node", None),
    "a chain as a variadic element": (
        "rule r:\n    a = AddN(xs...: Identity*(x))\n    => a -> x\n",
        2, 21, "a chain cannot be a variadic input's pattern: it may match no node", None),
    "pattern lines in a loop": (
        "rule r:\n    a = Relu(b)\n    b = Neg(a)\n    => a -> b\n",
        2, 5, "a pattern needs a root, a line no other line reads; here the pattern lines form a loop", None),
    "reroute of a non-pattern name": (
        "rule r:\n    n = Relu(x)\n    => m -> x\n",
        3, 8, "'m' is not a node of the pattern", None),
    "port of a non-statement": (
        "rule r:\n    n = Relu(x:1)\n    => n -> x\n",
        2, 14, "'x:1' needs 'x' to be a pattern line", "add a line 'x = Op(...)' to the pattern"),
    "two variadic inputs": (
        "rule r:\n    n = ConcatV2(xs..., ys...)\n    => n -> xs\n",
        2, 25, "only one input of a pattern can be variadic ('xs...')", None),
    "node in a guard": (
        "rule r:\n    n = Relu(x)\n    where Neg(x)\n    => n -> x\n",
        3, 11, "a node can only be built in a replacement (after '=>')", None),
    "bad parameter type": (
        "ruleset s(n: integer = 1):\n    rule r:\n        n2 = Relu(x)\n        => n2 -> x\n",
        1, 11, "unknown parameter type 'integer'", "use one of int, float, str, bool, dtype, or [type] for a list"),
    "bad parameter default": (
        'ruleset s(n: int = "a"):\n    rule r:\n        n2 = Relu(x)\n        => n2 -> x\n',
        1, 20, "parameter 'n' wants int, got 'a'", None),
    "duplicate test": (
        "rule r:\n    n = Relu(x)\n    => n -> x\n"
        "test t:\n    given:\n        a = Const(1.0)\n    expect:\n        a = Const(1.0)\n"
        "test t:\n    given:\n        a = Const(1.0)\n    expect:\n        a = Const(1.0)\n",
        9, 6, "duplicate test name 't' (first at line 4)", None),
    "named node never read": (
        "rule r:\n    n = Relu(x)\n    => q = Neg(x), n -> x\n",
        3, 8, "'q' is built but never used", None),
    "named node built from itself": (
        "rule r:\n    n = Relu(x)\n    => q = Neg(q), n -> q\n",
        3, 8, "'q' is built from itself", None),
    "binding a pattern node again": (
        "rule r:\n    n = Relu(x)\n    => n = x\n",
        3, 8, "'n' is a node of the pattern, so it cannot be bound again", "to replace it, write 'n -> ...'"),
    "replacement of bindings only": (
        "rule r:\n    n = Relu(x)\n    => q = Neg(x)\n    => p = Neg(q)\n",
        3, 8, "a replacement needs at least one 'n -> SOURCE', 'remove n' or 'n {changes}'", None),
    "computing with a named node": (
        "rule r:\n    n = Relu(x)\n    => q = Neg(x), n -> Const(value(q))\n",
        3, 37, "'q' is a node the replacement builds: it can be an input of a node, but has no value to "
               "compute with", None),
    "template argument count": (
        "define f(a, b):\n    => AddV2(a, b)\nrule r:\n    n = Relu(x)\n    => n -> f(x)\n",
        5, 13, "template 'f' takes 2 arguments, not 1", None),
    "spread of a tensor": (
        "define f(a):\n    => Neg(a)\nrule r:\n    n = Relu(x)\n    => n -> f(x...)\n",
        5, 15, "'x...' needs 'x' to be a list of tensors", None),
    "spread outside a template call": (
        "rule r:\n    n = AddN(xs...)\n    => n -> Neg(xs...)\n",
        3, 17, "'xs...' can only be an argument of a template call", None),
    "template calling itself": (
        "define f(a):\n    => f(a)\nrule r:\n    n = Relu(x)\n    => n -> f(x)\n",
        1, 8, "template 'f' calls itself", None),
    "template with an unknown op": (
        "define f(a):\n    => Negg(a)\n",
        2, 8, "unknown op 'Negg'", "did you mean 'Neg'?"),
    "template reading a name it lacks": (
        "define f(a):\n    => AddV2(a, b)\n",
        2, 17, "unbound name 'b'", None),
    "include of an unknown rule set": (
        "ruleset s:\n    include t\n",
        2, 13, "no rule set 't' before this line in this file", None),
    "include of a rule set with parameters": (
        "ruleset t(k: int = 1):\n    rule a:\n        n = Relu(x)\n        => n -> x\n"
        "ruleset s:\n    include t\n",
        6, 13, "rule set 't' has parameters, so it cannot be included; list it as a pipeline stage instead",
        None),
    "function that calls itself": (
        "define f(x) = f(x) + 1\n" + RULE,
        1, 15, "'f' calls itself (f -> f): a function cannot be recursive", None),
    "functions that call each other": (
        "define f(x) = g(x)\ndefine g(x) = 2 * f(x)\n" + RULE,
        2, 19, "'f' calls itself (f -> g -> f): a function cannot be recursive", None),
    "function called with the wrong arity": (
        "define wide(x, n) = rank(x) >= n\nrule r:\n    n = Relu(x)\n    where wide(x)\n    => n -> x\n",
        4, 11, "wide() takes 2 arguments, not 1", None),
    "function body reads the caller's names": (
        "define big(n) = size(x) > 4\n" + RULE,
        1, 22, "unbound name 'x'", None),
    "template called in a guard": (
        "define neg(x):\n    => Neg(x)\nrule r:\n    n = Relu(x)\n    where neg(x) == 1\n    => n -> x\n",
        5, 11, "'neg' is a template: it builds nodes, which only a replacement can do",
        "a function is written 'define neg(...) = expression'"),
    "spread argument of a function": (
        "rule r:\n    n = AddN(xs...)\n    where len(xs...) > 1\n    => n -> xs[0]\n",
        3, 15, "'xs...' can only be an argument of a template call", None),
    "function naming a parameter twice": (
        "define f(x, x) = x\n" + RULE,
        1, 8, "'f' names a parameter twice", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_static_check_error_position_and_message(case):
    text, line, column, message, hint = CASES[case]
    error = check_errors(text)[0]
    assert (error.line, error.column, error.message) == (line, column, message)
    assert str(error) == f"c.rules:{line}:{column}: {message}"
    assert error.hint == hint
    source_line = text.splitlines()[line - 1]
    assert error.excerpt.splitlines() == [f"    {source_line.rstrip()}", "    " + " " * (column - 1) + "^"]


def test_all_errors_of_a_file_are_collected():
    errors = check_errors("rule r:\n    n = Conv2d(x)\n    where usess(x)\n    => n -> Neg(y)\n")
    assert [(e.line, e.message) for e in errors] == [
        (2, "unknown op 'Conv2d'"), (3, "unknown function 'usess'"), (4, "unbound name 'y'")]


def test_import_that_does_not_resolve(tmp_path):
    path = tmp_path / "a.rules"
    path.write_text('import "missing.rules"\n' + RULE)
    with pytest.raises(RulesCheckError) as caught:
        standard_library().load_file(path)
    error = caught.value
    assert (error.line, error.column) == (1, 1)
    assert error.message == f"cannot import 'missing.rules': no file {tmp_path / 'missing.rules'}"


def test_import_of_unknown_stdlib_name(tmp_path):
    path = tmp_path / "a.rules"
    path.write_text("\nimport cleanupp\n" + RULE)
    with pytest.raises(RulesCheckError) as caught:
        standard_library().load_file(path)
    assert caught.value.line == 2
    assert caught.value.message.startswith("cannot import 'cleanupp': no standard library file 'cleanupp' (have: ")


def test_parameter_errors_at_instantiation():
    compiled = compile_module(parse("ruleset s(n: int = 1, ops: [str] = []):\n"
                                    "    rule r:\n        m = Relu(x)\n        where n > 0\n        => m -> x\n", "p.rules"))
    ruleset = compiled.rulesets["s"]
    assert ruleset.instantiate({"n": "7"})[0].params == {"n": 7, "ops": []}
    assert ruleset.instantiate({"ops": "Relu"})[0].params == {"n": 1, "ops": ["Relu"]}
    with pytest.raises(RulesCheckError, match=r"'s' has no parameter 'm' \(parameters: n, ops\)"):
        ruleset.instantiate({"m": 1})
    with pytest.raises(RulesCheckError, match="parameter 'n' wants int, got 'seven'"):
        ruleset.instantiate({"n": "seven"})


def test_every_stdlib_file_passes_its_checks():
    library = standard_library()
    library.load_stdlib()
    assert {"cleanup", "batch_norm", "quantization"} <= set(library.names())


def test_stdlib_names_load_only_the_file_that_defines_them():
    everything = standard_library()
    everything.load_stdlib()
    names = {name: str(pathlib.Path(f.path).resolve()) for f in everything.files.values()
             for name in [*f.rulesets, *f.pipelines]}
    for name, path in names.items():
        library = standard_library()
        found = library.find(name)
        assert found is not None and type(found) is type(everything.find(name)), name
        assert path in library.files
    weights = standard_library()
    weights.find("quantize_weights")  # and what weights.rules imports, for its `define`s
    assert sorted(pathlib.Path(p).name for p in weights.files) == ["quantization.rules", "weights.rules"]


@pytest.mark.parametrize("error_class", [GttRulesError, *GttRulesError.__subclasses__()])
def test_every_error_declares_its_fields(error_class):
    """The CLI reads the location, excerpt and hint of any error directly: each class declares them."""
    bare = error_class("m")
    assert (bare.path, bare.line, bare.column, bare.node, bare.excerpt, bare.hint) == (None,) * 6
    assert not isinstance(bare, RewriteError) or bare.report is None
    placed = error_class("m", path="f.rules", line=2, column=3, source="a\nbcd e\n", hint="h")
    assert (str(placed), placed.excerpt, placed.hint) == ("f.rules:2:3: m", "    bcd e\n      ^", "h")
