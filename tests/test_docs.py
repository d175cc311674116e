"""Every ```rules block of docs/language.md is a complete file: it parses, checks, compiles, its
imports resolve, and its test blocks pass."""
from __future__ import annotations

import pathlib
import re

import pytest

from gtt_rules import standard_library
from gtt_rules.grammar.parser import parse
from gtt_rules.rules.compiler import compile_module
from gtt_rules.rules.fixtures import run_file

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "language.md"
FENCE = re.compile(r"^```rules\n(.*?)^```", re.S | re.M)
FILE_HEADER = re.compile(r"^# file: (\S+\.rules)\n")


def doc_blocks() -> list[tuple[str, int, str]]:
    """(file name, line in the doc, text) per ```rules block; `# file: NAME` on the first line
    names the file, so another block can import it."""
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for index, found in enumerate(FENCE.finditer(text)):
        body = found.group(1)
        header = FILE_HEADER.match(body)
        name = header.group(1) if header else f"doc_block_{index:02d}.rules"
        blocks.append((name, text.count("\n", 0, found.start()) + 1, body))
    return blocks


BLOCKS = doc_blocks()


@pytest.fixture(scope="module")
def doc_files(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("doc_rules")
    for name, _, body in BLOCKS:
        (folder / name).write_text(body, encoding="utf-8")
    return folder


def test_doc_has_rules_blocks():
    names = [name for name, _, _ in BLOCKS]
    assert len(BLOCKS) >= 20
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name, line, body", BLOCKS, ids=[f"line{line}" for _, line, _ in BLOCKS])
def test_doc_block_parses_and_compiles(name, line, body):
    compiled = compile_module(parse(body, name))
    assert compiled.rulesets or compiled.pipelines, f"docs/language.md:{line}: the block defines nothing"


@pytest.mark.parametrize("name, line, body", BLOCKS, ids=[f"line{line}" for _, line, _ in BLOCKS])
def test_doc_block_loads_and_its_tests_pass(name, line, body, doc_files):
    results = run_file(doc_files / name, standard_library())
    failed = [f"{r.name}: {r.message}" for r in results if not r.passed]
    assert not failed, f"docs/language.md:{line}: " + "; ".join(failed)
    assert len(results) == len(re.findall(r"^\s*test \S+", body, re.M))


def test_every_documented_function_exists_and_every_function_is_documented():
    from gtt_rules import stdlib_rules
    from gtt_rules.rules.functions import BUILTINS

    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Functions", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_][a-z_0-9]*)\(", section, re.M))
    assert documented == set(BUILTINS.functions) | set(stdlib_rules.REGISTRY.functions)
