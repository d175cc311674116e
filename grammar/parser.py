"""Parse .rules text into the syntax tree of grammar/ast.py.

Syntax errors name the file, line and column, show the line with a caret, and, for the common
mistakes listed in SYNTAX_HINTS, say what is wrong in plain words.
"""
from __future__ import annotations

import ast as python_ast
import functools
import pathlib
import threading

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.indenter import DedentError, Indenter

from gtt_rules.errors import RulesSyntaxError

from . import ast, cache

GRAMMAR = pathlib.Path(__file__).with_name("rules.lark")


class _RulesIndenter(Indenter):
    NL_type = "_NL"
    OPEN_PAREN_types = ["LPAR", "LSQB", "LBRACE"]
    CLOSE_PAREN_types = ["RPAR", "RSQB", "RBRACE"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 4

    def handle_NL(self, token: Token):
        # lark's DedentError names no line: report where the badly indented line starts.
        try:
            yield from super().handle_NL(token)
        except DedentError:
            column = len(token.rsplit("\n", 1)[1]) + 1
            raise _Problem("unindent does not match any outer indentation level",
                           token.end_line, column) from None


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    # The LALR parser calls _ToAst as it reduces, so no parse tree is built and walked again, and
    # positions come from tokens: lark's propagate_positions alone cost 40% of the parse.
    return cache.lark(GRAMMAR.read_text(), parser="lalr", postlex=_RulesIndenter(), transformer=_to_ast,
                      maybe_placeholders=False)


# Friendly messages for common mistakes: each is shown when a parse fails the way its examples do.
# tests/test_grammar.py checks that every example fails and gets exactly its message.
SYNTAX_HINTS: dict[str, list[str]] = {
    "a rule needs a replacement line starting with '=>'": [
        "rule r:\n    n = Identity(x)\n",
        "rule r:\n    n = Identity(x)\n    where uses(x) == 1\n",
    ],
    "a rule needs a name: 'rule NAME:'": [
        "rule:\n    n = Identity(x)\n    => n -> x\n",
    ],
    "missing ':' at the end of the header line": [
        "rule r\n    n = Identity(x)\n    => n -> x\n",
        "ruleset s\n    rule r:\n        n = Identity(x)\n        => n -> x\n",
    ],
    "a pattern line is 'name = Op(inputs)'; op names start with an uppercase letter": [
        "rule r:\n    n = identity(x)\n    => n -> x\n",
    ],
    "the body of a block must be indented": [
        "rule r:\nn = Identity(x)\n=> n -> x\n",
    ],
    "use '->' to say what replaces a node: 'n -> x'": [
        "rule r:\n    n = Identity(x)\n    => n => x\n",
    ],
    "unclosed bracket": [
        "rule r:\n    n = Identity(x\n    => n -> x\n",
    ],
}


def parse(text: str, path: str = "<string>") -> ast.Module:
    """Parse .rules source text; raises RulesSyntaxError with the position of the problem."""
    text = _with_final_newline(text)
    return _module(path, text, _parse_items(text, path))


def parse_file(path: str | pathlib.Path) -> ast.Module:
    """Read and parse a .rules file (from the on-disk cache when it was parsed before)."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RulesSyntaxError("no such rules file", path=str(path)) from None
    except OSError as error:
        raise RulesSyntaxError(f"cannot read rules file: {error.strerror or error}", path=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        # Located like a syntax error: the line and column of the first byte that is not UTF-8.
        before = data[:error.start]
        line = before.count(b"\n") + 1
        column = len(before.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")) + 1
        raise RulesSyntaxError(f"not UTF-8 text: byte 0x{data[error.start]:02x} cannot be decoded",
                               path=str(path), line=line, column=column) from None
    text = _with_final_newline(text)
    entry = cache.entry_name("module", text)
    items = cache.load_syntax(entry)
    if items is None:
        items = _parse_items(text, str(path))
        cache.store_syntax(entry, items)
    return _module(str(path), text, items)


def _with_final_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


_parsing = threading.Lock()  # _ToAst keeps state for one parse at a time

# Deeper syntax trees overflow Python's stack in what reads them (the compiler, the cache's JSON,
# compiled guards), so the parser refuses them; no hand-written rule comes near.
MAX_NESTING = 100


class _Problem(Exception):
    """Bad input found while parsing (a string that does not decode, a bad priority, a bad
    indentation), raised from inside lark and made a located RulesSyntaxError by _parse_items."""

    def __init__(self, message: str, line: int, column: int):
        super().__init__(message)
        self.line, self.column = line, column


def _string_value(token) -> str:
    """The value of a STRING token, written with Python's escapes."""
    try:
        return python_ast.literal_eval(str(token))
    except (SyntaxError, ValueError) as error:
        reason = str(getattr(error, "msg", error)).removeprefix("(unicode error) ")
        raise _Problem(f"bad string literal: {reason}", token.line, token.column) from None


def _parse_items(text: str, path: str) -> list:
    """The top-level items of a file, in order."""
    parser = _parser()
    with _parsing:
        try:
            items = parser.parse(text)
        except UnexpectedInput as error:
            raise _syntax_error(error, text, path) from None
        except _Problem as error:
            raise _located(str(error), text, path, error.line, error.column) from None
        finally:
            _to_ast.parens.clear()
    deep = _too_deep(items)
    if deep is not None:
        raise _located(f"nested more than {MAX_NESTING} levels deep; split it up (with 'let', or "
                       f"more pattern lines)", text, path, deep.line, deep.column)
    tests = [test for item in items for test in (item.tests if isinstance(item, ast.Ruleset) else [item])
             if isinstance(test, ast.Test)]
    for test in sorted(tests, key=lambda test: (test.pos.line, test.pos.column)):
        if not test.given or not test.expect:
            raise RulesSyntaxError("a test needs a 'given:' block and an 'expect:' block",
                                   path=path, line=test.pos.line, column=test.pos.column)
    return items


def _located(message: str, text: str, path: str, line: int, column: int) -> RulesSyntaxError:
    return RulesSyntaxError(message, path=path, line=line, column=column, source=text)


def _too_deep(items: list) -> ast.Pos | None:
    """Where a construct nested more than MAX_NESTING levels starts, if one is (walked with a
    stack of its own, since the tree may be too deep for recursion)."""
    stack = [(item, 0) for item in reversed(items)]
    while stack:  # children are pushed last first, so the first one found is the leftmost
        node, depth = stack.pop()
        if isinstance(node, tuple):
            stack += [(child, depth) for child in reversed(node)]
        elif hasattr(node, "__dataclass_fields__") and not isinstance(node, ast.Pos):
            if depth > MAX_NESTING:
                return node.pos
            stack += [(child, depth + 1) for child in reversed(vars(node).values())]
    return None


def _module(path: str, source: str, items: list) -> ast.Module:
    module = ast.Module(path, source)
    groups = {ast.Import: module.imports, ast.RuleDecl: module.rules, ast.Ruleset: module.rulesets,
              ast.Pipeline: module.pipelines, ast.TemplateDecl: module.templates, ast.Test: module.tests}
    for item in items:
        groups[type(item)].append(item)
    return module


def _syntax_error(error: UnexpectedInput, text: str, path: str) -> RulesSyntaxError:
    hint = None
    try:
        hint = error.match_examples(_parser().parse, SYNTAX_HINTS, use_accepts=True)
    except Exception:  # matching is best effort; the raw message is still useful
        hint = None
    line, column = getattr(error, "line", None), getattr(error, "column", None)
    if isinstance(error, UnexpectedEOF) or line in (None, -1):
        lines = text.rstrip("\n").splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    message = hint or _describe(error)
    return RulesSyntaxError(message, path=path, line=line, column=column, source=text)


def _describe(error: UnexpectedInput) -> str:
    if isinstance(error, UnexpectedCharacters):
        return f"unexpected character {error.char!r}"
    if isinstance(error, UnexpectedToken):
        token = error.token
        if token.type == "$END":
            return "unexpected end of file"
        if token.type in ("_NL", "_INDENT", "_DEDENT"):
            what = {"_NL": "end of line", "_INDENT": "indentation", "_DEDENT": "end of block"}[token.type]
            return f"unexpected {what}"
        expected = sorted(error.accepts or error.expected)
        shown = ", ".join(_token_label(e) for e in expected[:6])
        return f"unexpected {token.value!r}; expected {shown}"
    if isinstance(error, UnexpectedEOF):
        return "unexpected end of file"
    return str(error).splitlines()[0]


def _token_label(name: str) -> str:
    labels = {"VAR": "a name", "OP": "an op name", "NUMBER": "a number", "STRING": "a string",
              "RULE_NAME": "a rule name", "_NL": "end of line", "PORT_REF": "name:port",
              "COLON": "':'", "LPAR": "'('", "RPAR": "')'", "COMMA": "','", "EQUAL": "'='"}
    return labels.get(name, name.lower() if name.isupper() and not name.startswith("_") else name)


def _tok_pos(token: Token) -> ast.Pos:
    return ast.Pos(token.line, token.column)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _split_port(token: Token) -> tuple[str, int]:
    name, port = str(token).split(":")
    return name, int(port)


class _ToAst(Transformer):
    """Lark rule callbacks: each gets the children of a rule and returns grammar.ast objects.

    A construct's position is that of its first token (keywords and brackets are named tokens in
    the grammar so that they are kept). A binary operation starts at its left operand's "(" when
    that operand is parenthesized, while the operand keeps its own position: `parens` records those
    "(" during one parse (the object is kept too, so that its id stays unique).
    """

    def __init__(self):
        super().__init__()
        self.parens: dict[int, tuple[object, ast.Pos]] = {}

    def _start(self, operand) -> ast.Pos:
        paren = self.parens.get(id(operand))
        return paren[1] if paren else operand.pos

    # files
    def start(self, children):
        return children

    def import_(self, children):
        keyword, token = children
        if token.type == "STRING":
            return ast.Import(_string_value(token), True, _tok_pos(keyword))
        return ast.Import(str(token), False, _tok_pos(keyword))

    def rule(self, children):
        name = children[0]
        priority = children[1] if len(children) == 3 else 0
        body = children[-1]
        return ast.RuleDecl(str(name), priority, *body, pos=_tok_pos(name))

    def priority(self, children):
        number = children[-1]
        value = _number(str(number))
        if not isinstance(value, int):
            raise _Problem(f"a priority is a whole number, not {number}", number.line, number.column)
        return -value if len(children) == 2 or str(children[0]) == "-" else value

    def rule_body(self, children):
        patterns = tuple(c for c in children if isinstance(c, ast.PatternStmt))
        clauses = []
        for c in children:
            if isinstance(c, ast.Where):
                clauses.append(c)
            elif isinstance(c, list):
                clauses.extend(c)
        actions = tuple(a for c in children if isinstance(c, tuple) and c and c[0] == "actions" for a in c[1])
        return patterns, tuple(clauses), actions

    def ruleset(self, children):
        name = children[0]
        params = children[1] if len(children) > 1 and isinstance(children[1], tuple) else ()
        rules = tuple(c for c in children if isinstance(c, ast.RuleDecl))
        tests = tuple(c for c in children if isinstance(c, ast.Test))
        includes = tuple(c for c in children if isinstance(c, ast.Include))
        return ast.Ruleset(str(name), params, rules, tests, _tok_pos(name), includes)

    def include(self, children):
        return ast.Include(str(children[0]), _tok_pos(children[0]))

    def params(self, children):
        return tuple(children)

    def param(self, children):
        name, (type_name, is_list) = children[0], children[1]
        default = children[2] if len(children) > 2 else None
        return ast.ParamDecl(str(name), type_name, is_list, default, _tok_pos(name))

    def scalar_type(self, children):
        return str(children[0]), False

    def list_type(self, children):
        return str(children[0]), True

    def pipeline(self, children):
        return ast.Pipeline(str(children[0]), tuple(children[1:]), _tok_pos(children[0]))

    def call_stage(self, children):
        return ast.StageRef(str(children[0]), tuple(children[1:]), _tok_pos(children[0]))

    def kwarg(self, children):
        return str(children[0]), children[1]

    def template(self, children):
        name, *rest = children
        params = tuple(str(c) for c in rest if isinstance(c, Token) and c.type == "VAR")
        bindings = tuple(c for c in rest if isinstance(c, ast.NodeStmt))
        function = any(isinstance(c, Token) and c.type == "DEFINE_EQ" for c in rest)
        return ast.TemplateDecl(str(name), params, bindings, rest[-1], _tok_pos(name), function)

    # patterns
    def pattern_stmt(self, children):
        return ast.PatternStmt(str(children[0]), children[1], _tok_pos(children[0]))

    def node_pattern(self, children):
        shared = isinstance(children[0], Token) and children[0].type == "SHARED"
        children = children[1:] if shared else children
        ops = children[0]  # the OP tokens, or the "*" token for any op
        names, first = (None, ops) if isinstance(ops, Token) else (tuple(str(op) for op in ops), ops[0])
        args = next((c for c in children[1:] if isinstance(c, tuple) and c and c[0] == "args"), None)
        attrs = next((c for c in children[1:] if isinstance(c, list)), [])
        repeat = next((str(c) for c in children[1:] if isinstance(c, Token) and c.type == "REPEAT"), None)
        return ast.NodePatternExpr(names, None if args is None else args[1], tuple(attrs), _tok_pos(first), shared,
                                   repeat=repeat)

    def alternatives(self, children):
        return ast.NodePatternExpr(None, None, (), children[0].pos, alternatives=tuple(children))

    def ops(self, children):
        return tuple(children)

    def any_op(self, children):
        return children[0]

    def pattern_args(self, children):
        return ("args", tuple(children))

    def arg_var(self, children):
        return ast.ArgVar(str(children[0]), _tok_pos(children[0]))

    def arg_port(self, children):
        name, port = _split_port(children[0])
        return ast.ArgPort(name, port, _tok_pos(children[0]))

    def arg_bound(self, children):
        return ast.ArgBound(str(children[0]), children[1], _tok_pos(children[0]))

    def arg_variadic(self, children):
        return ast.ArgVariadic(str(children[0]), children[1] if len(children) > 1 else None, _tok_pos(children[0]))

    def arg_nested(self, children):
        return ast.ArgNested(children[0], children[0].pos)

    def arg_literal(self, children):
        if children[-1].type in ("TRUE", "FALSE"):
            return ast.ArgLiteral(children[-1].type == "TRUE", _tok_pos(children[0]))
        value = _number(str(children[-1]))
        return ast.ArgLiteral(-value if len(children) == 2 else value, _tok_pos(children[0]))

    def attr_block(self, children):
        return list(children)

    def attr_item(self, children):
        return ast.AttrItem(str(children[0]), children[1], _tok_pos(children[0]))

    def computed_attr_item(self, children):
        bracket, key, value = children
        return ast.AttrItem(None, value, _tok_pos(bracket), key_expr=key)

    def computed_attr_items(self, children):
        bracket, key, value, var, items, *condition = children
        loop = ast.AttrLoop(str(var), items, condition[0] if condition else None, _tok_pos(var))
        return ast.AttrItem(None, value, _tok_pos(bracket), key_expr=key, each=loop)

    def where(self, children):
        return ast.Where(children[1], _tok_pos(children[0]))

    def let(self, children):
        return list(children)

    def binding(self, children):
        return ast.Let(str(children[0]), children[1], _tok_pos(children[0]))

    # replacements
    def action_line(self, children):
        return ("actions", tuple(children))

    def reroute(self, children):
        return ast.RerouteStmt(children[0], children[1], children[0].pos)

    def remove(self, children):
        return ast.RemoveStmt(str(children[1]), _tok_pos(children[0]))

    def bind(self, children):
        return ast.BindStmt(str(children[0]), children[1], _tok_pos(children[0]))

    def edit(self, children):
        return ast.EditStmt(str(children[0]), tuple(children[1]), _tok_pos(children[0]))

    def target_node(self, children):
        return ast.Target(str(children[0]), None, False, _tok_pos(children[0]))

    def target_port(self, children):
        name, port = _split_port(children[0])
        return ast.Target(name, port, False, _tok_pos(children[0]))

    def target_all(self, children):
        return ast.Target(str(children[0]).split(":")[0], None, True, _tok_pos(children[0]))

    # fixtures
    def test(self, children):
        # A test without given or expect is reported once the whole file has parsed (_parse_items),
        # so that a syntax error anywhere in the file is reported first.
        name = children[0]
        using = next((c for c in children if isinstance(c, ast.StageRef)), None)
        parts = [c for c in children[1:] if isinstance(c, tuple)]
        given = next((p[1] for p in parts if p[0] == "given"), ())
        expect = next((p[1] for p in parts if p[0] == "expect"), ())
        outputs = next((p[1] for p in parts if p[0] == "outputs"), ())
        return ast.Test(str(name), using, given, expect, outputs, _tok_pos(name))

    def using(self, children):
        return children[0]

    def given(self, children):
        return ("given", tuple(children))

    def expect(self, children):
        return ("expect", tuple(children))

    def outputs(self, children):
        return ("outputs", tuple(str(c) for c in children))

    def node_stmt(self, children):
        return ast.NodeStmt(str(children[0]), children[1], _tok_pos(children[0]))

    # expressions
    def or_(self, children):
        return self._bool_op("or", children)

    def and_(self, children):
        return self._bool_op("and", children)

    def _bool_op(self, op, children):
        left, right = children
        items = left.items if isinstance(left, ast.BoolOp) and left.op == op else (left,)
        return ast.BoolOp(op, items + (right,), self._start(left))

    def not_(self, children):
        return ast.Unary("not", children[1], _tok_pos(children[0]))

    def compare(self, children):
        left, op, right = children
        return ast.BinOp(" ".join(str(op).split()), left, right, self._start(left))

    def arith(self, children):
        result, pos = children[0], self._start(children[0])
        for op, operand in zip(children[1::2], children[2::2]):
            result = ast.BinOp(str(op), result, operand, pos)
        return result

    def neg(self, children):
        sign, operand = children
        if isinstance(operand, ast.Number):
            return ast.Number(-operand.value, _tok_pos(sign))
        return ast.Unary("-", operand, _tok_pos(sign))

    def pow_(self, children):
        return ast.BinOp("**", children[0], children[1], self._start(children[0]))

    def index(self, children):
        return ast.Index(children[0], children[1], self._start(children[0]))

    def slice(self, children):
        target, *bounds = children
        colon = next(i for i, c in enumerate(bounds) if isinstance(c, Token) and c.type == "SLICE")
        start = bounds[0] if colon == 1 else None
        stop = bounds[colon + 1] if colon + 1 < len(bounds) else None
        return ast.Slice(target, start, stop, self._start(target))

    def conditional(self, children):
        then, condition, otherwise = children
        return ast.Conditional(then, condition, otherwise, self._start(then))

    def comprehension(self, children):
        bracket, item, var, items, *condition = children
        return ast.Comprehension(item, str(var), items, condition[0] if condition else None, _tok_pos(bracket))

    def map_(self, children):
        return ast.MapExpr(tuple(children[1:]), _tok_pos(children[0]))

    def map_item(self, children):
        return children[0], children[1]

    def paren(self, children):
        bracket, expr = children
        self.parens[id(expr)] = (expr, _tok_pos(bracket))
        return expr

    def var(self, children):
        return ast.Var(str(children[0]), _tok_pos(children[0]))

    def port(self, children):
        name, port = _split_port(children[0])
        return ast.Port(name, port, _tok_pos(children[0]))

    def call(self, children):
        return ast.Call(str(children[0]), children[1], _tok_pos(children[0]))

    def copy_node(self, children):
        args = children[1] if len(children) == 3 else None
        return ast.CopyNode(str(children[0]), args, tuple(children[-1]), _tok_pos(children[0]))

    def new_node(self, children):
        args = next((c for c in children[1:] if isinstance(c, tuple)), None)
        attrs = next((c for c in children[1:] if isinstance(c, list)), [])
        return ast.NewNodeExpr(str(children[0]), args, tuple(attrs), _tok_pos(children[0]))

    def call_args(self, children):
        return tuple(children)

    def spread(self, children):
        return ast.Spread(str(children[0]), _tok_pos(children[0]))

    def list_(self, children):
        return ast.ListExpr(tuple(children[1:]), _tok_pos(children[0]))

    def number(self, children):
        return ast.Number(_number(str(children[0])), _tok_pos(children[0]))

    def string(self, children):
        return ast.String(_string_value(children[0]), _tok_pos(children[0]))

    def true(self, children):
        return ast.Bool(True, _tok_pos(children[0]))

    def false(self, children):
        return ast.Bool(False, _tok_pos(children[0]))

    def none(self, children):
        return ast.NoneValue(_tok_pos(children[0]))


_to_ast = _ToAst()
