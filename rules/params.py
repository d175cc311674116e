"""Rule-set parameters: their declared types, and binding and coercing the arguments a rule set
(or a pipeline stage calling one) is given."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gtt_rules.engine.dtypes import parse_dtype
from gtt_rules.engine.rule import Rule
from gtt_rules.errors import RulesCheckError, did_you_mean
from gtt_rules.grammar import ast

PARAM_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "dtype": int}


@dataclass(frozen=True)
class Param:
    """A typed rule-set parameter with its default."""

    name: str
    type: str
    is_list: bool
    default: Any

    def describe(self) -> str:
        kind = f"[{self.type}]" if self.is_list else self.type
        return f"{self.name}: {kind} " + ("(required)" if self.default is None else f"= {self.default!r}")


@dataclass
class RuleSet:
    """Named rules sharing parameters: a file's top-level rules, or a `ruleset` block."""

    name: str
    params: tuple[Param, ...]
    rules: tuple[Rule, ...]
    tests: tuple[ast.Test, ...]
    path: str
    line: int
    doc: str = ""  # the first sentence of the comment right above the `ruleset` line

    def instantiate(self, args: dict[str, Any] | None = None, *, where: str = "") -> list[Rule]:
        """The rules with parameter values: defaults overridden by `args` (checked against types)."""
        values = bind_params(self, args or {}, where=where)
        return [rule.with_params(values) for rule in self.rules]


@dataclass(frozen=True)
class StageCall:
    """One stage of a pipeline: a rule set (or pipeline) name with arguments."""

    name: str
    args: dict[str, Any]
    location: str



def bind_params(ruleset: RuleSet, args: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """Defaults overridden by `args`; unknown names and wrong types raise RulesCheckError."""
    known = {p.name: p for p in ruleset.params}
    values = {p.name: p.default for p in ruleset.params}
    for key, value in args.items():
        param = known.get(key)
        if param is None:
            valid = ", ".join(known) or "none"
            raise RulesCheckError(f"{where}'{ruleset.name}' has no parameter '{key}'{did_you_mean(key, known)} "
                                  f"(parameters: {valid})")
        values[key] = coerce_param(param, value, where=where)
    missing = [p.name for p in ruleset.params if p.default is None and p.name not in args]
    if missing:
        raise RulesCheckError(f"{where}'{ruleset.name}' needs {', '.join(repr(m) for m in missing)}: "
                              f"a parameter without a default must be given")
    return values


def coerce_param(param: Param, value: Any, *, where: str = "") -> Any:
    """Check and convert one argument to the parameter's declared type."""
    def one(v):
        if param.type == "dtype":
            if isinstance(v, str):
                try:
                    return parse_dtype(v)
                except ValueError as error:
                    raise RulesCheckError(f"{where}parameter '{param.name}': {error}") from None
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                return int(v)
        elif param.type == "bool":
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.lower() in ("true", "false", "1", "0"):
                return v.lower() in ("true", "1")
        elif param.type in ("int", "float"):
            number = int if param.type == "int" else float
            numeric = (int, np.integer) if number is int else (int, float, np.number)  # no float as int
            if isinstance(v, numeric) and not isinstance(v, bool):
                return number(v)
            if isinstance(v, str):
                try:
                    return number(v)
                except ValueError:
                    pass
        elif param.type == "str":
            if isinstance(v, str):
                return v
            if isinstance(v, (int, float)):
                return str(v)
        raise RulesCheckError(f"{where}parameter '{param.name}' wants {param.type}, got {v!r}")
    if param.is_list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [one(v) for v in items]
    return one(value)


def param_kind(param: Param) -> str:
    if param.is_list:
        return "list"
    return {"int": "value", "float": "value", "str": "string", "bool": "bool", "dtype": "dtype"}[param.type]
