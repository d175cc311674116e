"""pytest plugin: every `test` block in a collected .rules file is a test item.

Registered through the `pytest11` entry point, so `pytest stdlib_rules/` (or any folder with
.rules files) runs the fixtures next to the rules they test.
"""
from __future__ import annotations

import pytest

from gtt_rules.errors import GttRulesError


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".rules":
        return RulesFile.from_parent(parent, path=file_path)
    return None


class RulesFileError(Exception):
    pass


class RulesFile(pytest.File):
    def collect(self):
        from .fixtures import run_test
        from .library import Library

        library = Library()
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
