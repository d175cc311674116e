"""The parser: every construct parses to the AST it should, and syntax errors say where and what."""
from __future__ import annotations

import pytest

from gtt_rules.errors import RulesSyntaxError
from gtt_rules.grammar import ast
from gtt_rules.grammar.parser import SYNTAX_HINTS, parse

HINT_CASES = [(message, example) for message, examples in SYNTAX_HINTS.items() for example in examples]


@pytest.mark.parametrize("message, example", HINT_CASES)
def test_every_hint_example_fails_with_its_message(message, example):
    with pytest.raises(RulesSyntaxError) as caught:
        parse(example, "hint.rules")
    assert caught.value.message == message


@pytest.mark.parametrize("text, message", [
    # The same mistakes as the table, written differently: the hints generalise.
    ("rule other:\n    a = Relu(b)\n    where uses(b) == 2\n", "a rule needs a replacement line starting with '=>'"),
    ("rule x\n    a = Relu(b)\n    => a -> b\n", "missing ':' at the end of the header line"),
    ("rule x:\n    a = Relu(b\n    => a -> b\n", "unclosed bracket"),
])
def test_hints_cover_variants_of_the_examples(text, message):
    with pytest.raises(RulesSyntaxError) as caught:
        parse(text, "v.rules")
    assert caught.value.message == message


def test_syntax_error_names_file_line_column_and_shows_a_caret():
    text = "rule ok:\n    n = Identity(x)\n    => n -> x\n\nrule bad:\n    n = Relu(x) %\n    => n -> x\n"
    with pytest.raises(RulesSyntaxError) as caught:
        parse(text, "my.rules")
    error = caught.value
    assert (error.path, error.line, error.column) == ("my.rules", 6, 17)
    assert str(error).startswith("my.rules:6:17: ")
    assert error.excerpt.splitlines() == ["        n = Relu(x) %", "                    ^"]


@pytest.mark.parametrize("literal", [r'"a\x"', r'"\N{no such name}"', r'"\u12"'])
def test_a_bad_escape_in_a_string_is_a_located_syntax_error(literal):
    text = f"rule r:\n    n = Identity(x)\n    where op(n) == {literal}\n    => n -> x\n"
    with pytest.raises(RulesSyntaxError) as caught:
        parse(text, "esc.rules")
    error = caught.value
    assert (error.path, error.line, error.column) == ("esc.rules", 3, 20)
    assert error.message.startswith("bad string literal: ") and "\n" not in error.message
    assert error.excerpt.splitlines()[1] == " " * 23 + "^"


def test_a_rule_parses_to_positions_and_parts():
    module = parse(
        "# header\n"
        "rule fold priority 3:\n"
        "    conv = Conv2D|MatMul(x, w: Const) {padding: p}\n"
        "    out = Mul(conv, 2.0)\n"
        "    where uses(conv) == 1 and not is_output(out)\n"
        "    let scale = w * 2\n"
        "    => out -> conv(x, Const(scale)), out:1 -> x\n"
        "    => remove conv\n", "f.rules")
    (rule,) = module.rules
    assert (rule.name, rule.priority, rule.pos) == ("fold", 3, ast.Pos(2, 6))
    conv, out = rule.patterns
    assert conv.node.ops == ("Conv2D", "MatMul")
    assert conv.node.args[1] == ast.ArgBound("w", ast.NodePatternExpr(("Const",), None, (), ast.Pos(3, 32)), ast.Pos(3, 29))
    assert conv.node.attrs[0].key == "padding" and conv.node.attrs[0].value == ast.Var("p", ast.Pos(3, 49))
    assert out.node.args[1] == ast.ArgLiteral(2.0, ast.Pos(4, 21))
    where, let = rule.clauses
    assert isinstance(where, ast.Where) and where.expr.op == "and"
    assert isinstance(let, ast.Let) and let.name == "scale"
    first, second, third = rule.actions
    assert first.target == ast.Target("out", None, False, ast.Pos(7, 8))
    assert second.target.port == 1 and isinstance(third, ast.RemoveStmt)


def test_rulesets_pipelines_imports_and_tests_parse():
    module = parse(
        'import "other.rules"\n'
        "import cleanup\n"
        "ruleset shrink(limit: int = 4, ops: [str] = [\"A\"]):\n"
        "    rule r:\n"
        "        n = *(xs...: Const)\n"
        "        => n:* -> Const(1.0)\n"
        "pipeline all:\n"
        "    shrink(limit=2)\n"
        "    cleanup\n"
        "test t using shrink(limit=1):\n"
        "    given:\n"
        "        a = Const(1.0)\n"
        "        b = Neg(a)\n"
        "    expect:\n"
        "        b = Const(-1.0)\n"
        "    outputs: b\n", "m.rules")
    assert [(i.target, i.is_path) for i in module.imports] == [("other.rules", True), ("cleanup", False)]
    (ruleset,) = module.rulesets
    assert [(p.name, p.type, p.is_list) for p in ruleset.params] == [("limit", "int", False), ("ops", "str", True)]
    node = ruleset.rules[0].patterns[0].node
    assert node.ops is None and isinstance(node.args[0], ast.ArgVariadic)
    assert ruleset.rules[0].actions[0].target.all_ports
    (pipeline,) = module.pipelines
    assert [s.name for s in pipeline.stages] == ["shrink", "cleanup"]
    (test,) = module.tests
    assert test.using.name == "shrink" and test.outputs == ("b",) and len(test.given) == 2


def test_expression_precedence():
    module = parse("rule r:\n    n = Relu(x)\n    where 1 + 2 * 3 ** 2 == 19 or not -1 < 0 and x in [1]\n    => n -> x\n")
    expr = module.rules[0].clauses[0].expr
    assert expr.op == "or"
    left = expr.items[0]
    assert left.op == "==" and left.left.op == "+" and left.left.right.op == "*"
    assert left.left.right.right.op == "**"
    assert expr.items[1].op == "and" and isinstance(expr.items[1].items[0], ast.Unary)


def test_test_block_without_expect_is_an_error():
    with pytest.raises(RulesSyntaxError) as caught:
        parse("test t:\n    given:\n        a = Const(1.0)\n", "t.rules")
    assert caught.value.message == "a test needs a 'given:' block and an 'expect:' block"
    assert caught.value.line == 1


def test_expression_positions():
    # An operation starts where its left operand starts, at its "(" if it has one; keywords, signs
    # and brackets give their own position.
    module = parse("rule r:\n    n = *(x)\n"
                   "    where (a + b) * c > [1][0] and not -x or true\n"
                   "    => remove n\n")
    (rule,) = module.rules
    where = rule.clauses[0]
    assert where.pos == ast.Pos(3, 5) and rule.patterns[0].node.pos == ast.Pos(2, 9)
    either = where.expr
    both, true = either.items
    compare, negation = both.items
    assert (either.pos, both.pos, compare.pos) == (ast.Pos(3, 11),) * 3
    product = compare.left
    assert product.pos == ast.Pos(3, 11) and product.left.pos == ast.Pos(3, 12)
    assert compare.right.pos == compare.right.target.pos == ast.Pos(3, 25)
    assert negation.pos == ast.Pos(3, 36) and negation.operand.pos == ast.Pos(3, 40)
    assert true == ast.Bool(True, ast.Pos(3, 46))
    assert rule.actions[0].pos == ast.Pos(4, 8)
