"""Every error gtt-rules raises on bad input derives from GttRulesError.

Each error can carry a location (a file, and a line and column or a node name) so that the CLI
prints one line that tells the user where the problem is.
"""
from __future__ import annotations

import difflib
from typing import Iterable

from gtt_rules.console import plain


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the choice closest to a mistyped `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def source_excerpt(source: str, line: int, column: int) -> str:
    """The source line and a caret under `column`, for error messages."""
    lines = source.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    text = lines[line - 1].rstrip()
    return f"    {text}\n    {' ' * max(column - 1, 0)}^"


class GttRulesError(Exception):
    """Base class: a problem with the user's input, reported without a traceback.

    Fields: `path`, `line`, `column` and `node` locate it; `excerpt` is the source line with a
    caret under the column (made from `source`, the text of a file that parsed as rules source:
    an error never quotes a file that is not); `hint` says how to fix it."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: int | None = None, node: str | None = None, source: str | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.node = node
        self.excerpt = source_excerpt(source, line, column or 1) if source is not None and line else None
        self.hint = hint

    def located(self, path: str) -> "GttRulesError":
        """Return self with `path` filled in if no file was known where it was raised."""
        if self.path is None:
            self.path = str(path)
        return self

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        if self.node is not None:
            where += f"node '{self.node}': "
        # Names read from a broken file can hold any character; the error must stay one line
        # that cannot rewrite the terminal.
        return plain(where + self.message)


class RulesSyntaxError(GttRulesError):
    """A .rules file does not parse."""


class RulesCheckError(GttRulesError):
    """A .rules file parses but fails a static check (unknown op, unbound name, ...)."""


class GraphError(GttRulesError):
    """A graph file cannot be read or is not a valid graph."""


class RewriteError(GttRulesError):
    """Applying a rule failed; the graph was left as it was before that rewrite. A run stopped at a
    limit carries its `report` (fires and stop reason so far)."""

    def __init__(self, message: str, *, report=None, **location):
        super().__init__(message, **location)
        self.report = report


class EvaluationError(GttRulesError):
    """Running a graph failed (unknown op, bad feed, kernel error)."""


class MemoryBudgetError(EvaluationError):
    """Running a graph would hold more tensors at once than the memory budget allows."""


class UsageError(GttRulesError):
    """The command line is wrong."""


class OutputError(GttRulesError):
    """An output cannot be written, or writing it would destroy an input."""


class GttRulesWarning(UserWarning):
    """Something in the input that works, but likely not as the user expects; shown on one line."""


class UnknownOpWarning(GttRulesWarning):
    """A graph uses ops that TensorFlow's op registry does not have."""
