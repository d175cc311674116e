"""Registries: the Python functions and passes a rule library may call, by name.

A registry is a plain value handed to whoever needs it, never filled as an import side effect: the
language's builtins are one (`rules.functions.BUILTINS`), the standard library's another
(`gtt_rules.stdlib_rules.REGISTRY`), and a `Library` compiles its rules against the registry it
is given. A registry made from others looks names up in itself first, then in each of them in
order; later registrations into any of them are seen at once.

    tools = Registry()

    @tools.function("halve", args=("value",), returns="value")
    def halve(x):
        return x / 2

    library = Library(Registry(tools, BUILTINS))
"""
from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Callable

from .params import Param, bind_params

KINDS = ("tensor", "value", "string", "bool", "dtype", "list", "any")


@dataclass(frozen=True)
class Function:
    """A Python function a rule expression can call, with the kinds of its arguments and result."""

    name: str
    impl: Callable[..., Any]
    args: tuple[str, ...]          # kinds of the positional arguments
    optional: int                  # how many trailing args may be left out
    returns: str
    needs_context: bool
    doc: str
    accepts_unknown: bool = False  # called with unknown arguments too (else: unknown without a call)

    @property
    def arity(self) -> tuple[int, int]:
        return len(self.args) - self.optional, len(self.args)


@dataclass(frozen=True)
class GraphPass:
    """A whole-graph transform, `fn(graph, ctx)`, called by name with typed parameters."""

    name: str
    fn: Callable[..., None]
    params: tuple[Param, ...]
    doc: str
    path: str = "<python>"

    def bind(self, args: dict[str, Any], *, where: str = "") -> dict[str, Any]:
        return bind_params(self, args, where=where)  # type: ignore[arg-type]


def _summary(fn: Callable) -> str:
    """The first line of fn's docstring: its description in listings."""
    return fn.__doc__.strip().splitlines()[0] if fn.__doc__ and fn.__doc__.strip() else ""


class Registry:
    """Functions and passes by name; `Registry(a, b)` also finds what a and b hold (its own first)."""

    def __init__(self, *parts: Registry):
        self.functions: ChainMap[str, Function] = ChainMap({}, *(part.functions for part in parts))
        self.passes: ChainMap[str, GraphPass] = ChainMap({}, *(part.passes for part in parts))

    def function(self, name: str | None = None, *, args: tuple[str, ...] = (), returns: str = "any",
                 optional: int = 0, needs_context: bool = False, accepts_unknown: bool = False):
        """Decorator: make a Python function callable from .rules expressions as `name(...)`.

        `args` and `returns` are kinds (see rules/functions.py). With `needs_context`, the
        function receives the MatchContext (graph, bindings, parameters) as its first argument.
        With `accepts_unknown`, it is called even when an argument is (or holds) `UNKNOWN`.
        """
        for kind in (*args, returns):
            if kind not in KINDS:
                raise ValueError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}")

        def decorate(impl: Callable[..., Any]) -> Callable[..., Any]:
            fname = name or impl.__name__
            self.functions[fname] = Function(fname, impl, tuple(args), optional, returns, needs_context,
                                             _summary(impl), accepts_unknown)
            return impl
        return decorate

    def pass_(self, name: str, *params: Param):
        """Decorator: register `fn(graph, ctx)` as the whole-graph pass `name` with these parameters."""
        def decorate(fn: Callable[..., None]) -> Callable[..., None]:
            self.passes[name] = GraphPass(name, fn, tuple(params), _summary(fn))
            return fn
        return decorate


# What the user's own code registers with `register_function` / `register_pass`: the command line
# and the Python API compile rules against it too (gtt_rules.standard_registry()).
REGISTERED = Registry()
