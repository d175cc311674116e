"""The on-disk cache of parsed .rules files and parser tables (plain JSON): used when current, never stale."""
from __future__ import annotations

import json

import pytest

from gtt_rules.errors import RulesCheckError, RulesSyntaxError
from gtt_rules.grammar import cache, parser
from gtt_rules.grammar.parser import parse, parse_file

RULES = "rule r:\n    n = Relu(x)\n    where (a + b) * 2 > 1\n    => n -> x\n"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GTT_RULES_CACHE_DIR", str(folder))
    return folder


def _entries(folder):
    return sorted(p.name for p in folder.glob("module-*")) if folder.is_dir() else []


def _no_parsing(monkeypatch):
    def fail(text, path):
        raise AssertionError("parsed, though the cache had the file")
    monkeypatch.setattr(parser, "_parse_items", fail)


def test_a_parsed_file_is_loaded_from_the_cache_the_second_time(cache_dir, tmp_path, monkeypatch):
    path = tmp_path / "a.rules"
    path.write_text(RULES)
    first = parse_file(path)
    assert first == parse(RULES, str(path))
    assert len(_entries(cache_dir)) == 1
    _no_parsing(monkeypatch)
    assert parse_file(path) == first
    # The same text under another name: the module names the file it was read from.
    other = tmp_path / "b.rules"
    other.write_text(RULES)
    assert parse_file(other).path == str(other)


def test_a_changed_file_is_parsed_again(cache_dir, tmp_path):
    path = tmp_path / "a.rules"
    path.write_text(RULES)
    parse_file(path)
    path.write_text(RULES.replace("Relu", "Tanh"))
    assert parse_file(path).rules[0].patterns[0].node.ops == ("Tanh",)
    assert len(_entries(cache_dir)) == 2


def test_entries_depend_on_the_parser_sources(cache_dir, monkeypatch):
    name = cache.entry_name("module", RULES)
    monkeypatch.setattr(cache, "_fingerprint", lambda: b"other parser")
    assert cache.entry_name("module", RULES) != name


def test_a_damaged_entry_is_rebuilt(cache_dir, tmp_path):
    path = tmp_path / "a.rules"
    path.write_text(RULES)
    expected = parse_file(path)
    (entry,) = cache_dir.glob("module-*")
    entry.write_bytes(b"not a pickle")
    assert parse_file(path) == expected
    assert entry.read_bytes() != b"not a pickle"


def test_syntax_errors_are_not_cached(cache_dir, tmp_path):
    path = tmp_path / "bad.rules"
    path.write_text("rule r:\n    n = Relu(x) %\n    => n -> x\n")
    for _ in range(2):
        with pytest.raises(RulesSyntaxError) as caught:
            parse_file(path)
        assert (caught.value.line, caught.value.column) == (2, 17)
    assert _entries(cache_dir) == []


@pytest.mark.parametrize("setting", ["", "file"])
def test_no_cache_when_off_or_not_writable(tmp_path, monkeypatch, setting):
    if setting == "file":  # a directory that cannot be created, even by root
        (tmp_path / "file").write_text("")
        setting = str(tmp_path / "file" / "cache")
    monkeypatch.setenv("GTT_RULES_CACHE_DIR", setting)
    path = tmp_path / "a.rules"
    path.write_text(RULES)
    assert parse_file(path) == parse(RULES, str(path))
    assert parse_file(path) == parse(RULES, str(path))
    assert cache.lark(parser.GRAMMAR.read_text(), parser="lalr") is not None


def test_parser_tables_are_cached(cache_dir):
    grammar = parser.GRAMMAR.read_text()
    options = dict(parser="lalr", postlex=parser._RulesIndenter(), transformer=parser._to_ast,
                   maybe_placeholders=False)
    built = cache.lark(grammar, **options)
    (entry,) = cache_dir.glob("parser-*")
    assert list(cache_dir.glob(".*")) == []  # no temporary file left behind
    loaded = cache.lark(grammar, **options)
    assert loaded.parse(RULES) == built.parse(RULES)
    parser._to_ast.parens.clear()


def test_entries_are_plain_json(cache_dir, tmp_path):
    path = tmp_path / "a.rules"
    path.write_text(RULES)
    parse_file(path)
    cache.lark(parser.GRAMMAR.read_text(), parser="lalr", postlex=parser._RulesIndenter(),
               maybe_placeholders=False)
    entries = sorted(cache_dir.iterdir())
    assert [entry.name.split("-")[0] for entry in entries] == ["module", "parser"]
    for entry in entries:
        assert json.loads(entry.read_bytes())[0] == cache.FORMAT


class _NoBuilding(cache.Lark):
    def __init__(self, *args, **kwargs):
        raise AssertionError("built the parser tables, though the cache had them")


def test_parser_tables_from_the_cache_report_the_same_syntax_errors(cache_dir, monkeypatch):
    def messages():
        found = []
        for examples in parser.SYNTAX_HINTS.values():
            for text in examples + ["rule r:\n    n = Relu(x) %\n    => n -> x\n"]:
                with pytest.raises(RulesSyntaxError) as caught:
                    parse(text)
                found.append((str(caught.value), caught.value.excerpt))
        return found

    parser._parser.cache_clear()
    try:
        built = messages()  # with tables built here, and stored
        parser._parser.cache_clear()
        monkeypatch.setattr(cache, "Lark", _NoBuilding)  # the tables must now come from the cache
        assert messages() == built
    finally:
        parser._parser.cache_clear()


def test_an_attr_comprehension_comes_back_from_the_cache_as_parsed(cache_dir, tmp_path, monkeypatch):
    path = tmp_path / "a.rules"
    path.write_text("rule r:\n    n = Relu(x)\n    => n {(k): none for k in attrs(n) if k != \"T\", _a: 1}\n")
    first = parse_file(path)
    _no_parsing(monkeypatch)
    again = parse_file(path)
    assert again == first
    (edit,) = again.rules[0].actions
    loop = edit.attrs[0].each
    assert (loop.var, loop.items.func, loop.condition.op) == ("k", "attrs", "!=")
    assert edit.attrs[1].each is None


def test_an_entry_holds_no_function_table(cache_dir, tmp_path, monkeypatch):
    # What a call in a rule means is decided when a Library compiles the file, by the registry
    # it was given, not by what was imported or registered when the entry was written.
    from gtt_rules.rules.functions import LANGUAGE
    from gtt_rules.rules.library import Library
    from gtt_rules.rules.registry import Registry

    path = tmp_path / "a.rules"
    path.write_text("rule r:\n    n = Relu(x)\n    where test_cache_known(x)\n    => n -> x\n")
    with pytest.raises(RulesCheckError, match="unknown function 'test_cache_known'"):
        Library().load_file(path)
    assert len(_entries(cache_dir)) == 1
    _no_parsing(monkeypatch)
    registry = Registry(LANGUAGE)
    registry.function("test_cache_known", args=("tensor",), returns="bool")(lambda x: True)
    assert [rule.name for rule in Library(registry).load_file(path).rulesets["a"].rules] == ["r"]
    with pytest.raises(RulesCheckError, match="unknown function 'test_cache_known'"):
        Library().load_file(path)
