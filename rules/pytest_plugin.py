"""pytest plugin: every `test` block in a collected .rules file is a test item.

Registered through the `pytest11` entry point, so it is active in every pytest run; other tools
use the `.rules` suffix too (Firebase's `firestore.rules`), so it collects only the .rules files
that a project opts in, under the paths of its `gtt_rules_paths` ini option:

    [tool.pytest.ini_options]
    gtt_rules_paths = ["stdlib_rules"]
"""
from __future__ import annotations

import pytest

from gtt_rules.errors import GttRulesError


def pytest_addoption(parser):
    parser.addini("gtt_rules_paths", type="paths", default=[],
                  help="folders (or files) whose .rules files are collected as gtt-rules tests")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".rules" and _opted_in(file_path, parent.config.getini("gtt_rules_paths")):
        return RulesFile.from_parent(parent, path=file_path)
    return None


def _opted_in(path, roots) -> bool:
    return any(path == root or root in path.parents for root in roots)


class RulesFileError(Exception):
    pass


class RulesFile(pytest.File):
    def collect(self):
        from gtt_rules import standard_library  # the top layer: what `gtt-rules test` runs with

        from .fixtures import run_test

        library = standard_library()
        try:
            compiled = library.load_file(self.path)
        except GttRulesError as error:
            raise self.CollectError(str(error)) from None
        source = self.path.read_text(encoding="utf-8")
        for test, owner in compiled.tests:
            yield RulesTestItem.from_parent(self, name=test.name, test=test, owner=owner,
                                            source=source, library=library, run=run_test)


class RulesTestItem(pytest.Item):
    def __init__(self, *, test, owner, source, library, run, **kwargs):
        super().__init__(**kwargs)
        self.test, self.owner, self.source, self.library, self.run = test, owner, source, library, run

    def runtest(self):
        try:  # a malformed test block: its located one-line error, not a traceback
            result = self.run(self.test, self.owner, str(self.path), self.source, self.library)
        except GttRulesError as error:
            raise RulesFileError(str(error)) from None
        if not result.passed:
            raise RulesFileError(f"{result.location}: test '{result.name}' failed: {result.message}")

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, RulesFileError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, self.test.pos.line - 1, f"rules test {self.test.name}"
