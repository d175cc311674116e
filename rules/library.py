"""Find, load and instantiate rule sets: from .rules files, or by name from the standard library.

A rule spec is a path (`my.rules`: the file's top-level rules), a name (`cleanup`, a rule set
or pipeline of the standard library or of an imported file), or a name with arguments
(`quantize_weights(minimum_size=16)`). Each spec becomes one or more stages; each stage is a list
of rules that runs to its own fixed point.
"""
from __future__ import annotations

import functools
import pathlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from gtt_rules.engine.driver import Limits, apply_rules
from gtt_rules.engine.graph import Graph
from gtt_rules.engine.report import Report, StopReason
from gtt_rules.engine.rule import Rule
from gtt_rules.errors import RulesCheckError, RulesSyntaxError, UsageError, did_you_mean
from gtt_rules.grammar import ast
from gtt_rules.grammar.parser import parse, parse_file

from .compiler import CompiledFile, PipelineDef, compile_module
from .params import RuleSet, StageCall
from .functions import LANGUAGE
from .passes import PassContext
from .registry import GraphPass, Registry


@dataclass
class Stage:
    """One step of a run: rules that go together to a fixed point, or a whole-graph pass."""

    name: str
    rules: list[Rule] | None = None
    graph_pass: GraphPass | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def run(self, graph: Graph, *, inputs: Iterable[str], outputs: Iterable[str],
            limits: Limits | None = None, trace: bool = False, on_apply=None) -> Report:
        """Apply this stage to `graph` in place; inputs and outputs are never removed or renamed."""
        inputs, outputs = tuple(inputs), tuple(outputs)
        missing = [name for name in inputs + outputs if name not in graph]
        if missing:
            raise UsageError(f"{self.name}: no node named '{missing[0]}' (given in --inputs/--outputs; "
                             f"renamed or removed by an earlier step?)")
        if self.rules is not None:
            # A rule's arithmetic gives inf or nan as TensorFlow's would, silently; numpy would
            # print a warning for it mid-run.
            with np.errstate(all="ignore"):
                return apply_rules(graph, self.rules, protected=inputs + outputs, limits=limits,
                                   trace=trace, on_apply=on_apply)
        report = Report(nodes_before=len(graph))
        started = time.perf_counter()
        context = PassContext(self.params, inputs, outputs)
        self.graph_pass.fn(graph, context)
        report.notes = context.notes
        report.seconds[self.name] = time.perf_counter() - started
        report.nodes_after = len(graph)
        report.stop_reason = StopReason.PASS_DONE
        return report


class Library:
    """Loaded .rules files, with imports resolved, and name lookup for rule sets, pipelines and passes.

    Its rules call the functions of `registry` and its passes are `registry`'s (default: the
    language's own and those registered with register_function / register_pass). `stdlib` is the
    folder of .rules files that `import NAME` and names no loaded file defines are looked up in
    (default: none). gtt_rules.standard_library() gives both the standard library's.
    """

    def __init__(self, registry: Registry | None = None, stdlib: pathlib.Path | None = None):
        self.registry = registry if registry is not None else LANGUAGE
        self.stdlib = stdlib
        self.files: dict[str, CompiledFile] = {}
        self._stdlib_loaded = False

    def load_file(self, path: str | pathlib.Path) -> CompiledFile:
        """Parse, check and compile a .rules file and (recursively) what it imports."""
        return self._load(pathlib.Path(path), imported=False)

    def _load(self, path: pathlib.Path, imported: bool) -> CompiledFile:
        key = str(path.resolve())
        if key in self.files:
            return self.files[key]
        try:
            module = parse_file(path)
        except RulesSyntaxError as error:
            if imported:  # reached through someone else's import, and not rules source: show none of it
                error.excerpt = None
            raise
        # Imports first, for their `define`s; a file that imports one being loaded (a cycle) gets none of its.
        self.files[key] = CompiledFile(str(path))
        defines: dict[str, ast.TemplateDecl] = {}
        try:
            for item in module.imports:
                defines.update(self._load(self._resolve_import(item, path, module), imported=True).defines)
            compiled = compile_module(module, self.registry, defines)
        except BaseException:
            del self.files[key]
            raise
        self.files[key] = compiled
        return compiled

    def _resolve_import(self, item: ast.Import, importer: pathlib.Path, module: ast.Module) -> pathlib.Path:
        stdlib = self.stdlib if self.stdlib is not None else pathlib.Path()
        candidate = (importer.parent / item.target) if item.is_path else stdlib / f"{item.target}.rules"
        if not item.is_path and self.stdlib is None:
            problem = "this library has no standard library"
        elif not (candidate.suffix == ".rules" and _resolved(candidate).suffix == ".rules"):
            # Only rules source is read, so an import cannot show a line of a secret or a device.
            problem = "only .rules files can be imported"
        elif not _is_file(candidate):
            problem = f"no file {candidate}" if item.is_path else \
                f"no standard library file '{item.target}' (have: {', '.join(stdlib_names(self.stdlib))})"
        else:
            return candidate
        raise RulesCheckError(f"cannot import '{item.target}': {problem}", path=module.path,
                              line=item.pos.line, column=item.pos.column, source=module.source)

    def load_stdlib(self) -> None:
        """Load every file of the standard library (if this library has one)."""
        self._stdlib_loaded = True
        for path in sorted(self.stdlib.glob("*.rules")) if self.stdlib is not None else ():
            self.load_file(path)

    def find(self, name: str) -> RuleSet | PipelineDef | GraphPass | None:
        """A rule set, pipeline or pass by name: loaded files first, then the standard library
        (only the file that defines the name, and what it imports)."""
        for compiled in self.files.values():
            if name in compiled.rulesets:
                return compiled.rulesets[name]
            if name in compiled.pipelines:
                return compiled.pipelines[name]
        if name in self.registry.passes:
            return self.registry.passes[name]
        path = _stdlib_index(self.stdlib).get(name) if self.stdlib is not None else None
        if path is not None and str(path.resolve()) not in self.files:
            self.load_file(path)
            return self.find(name)
        if not self._stdlib_loaded:
            self.load_stdlib()
            return self.find(name)
        return None

    def names(self) -> list[str]:
        found = list(self.registry.passes)
        for compiled in self.files.values():
            found += list(compiled.rulesets) + list(compiled.pipelines)
        return sorted(set(found))

    def stages(self, spec: str) -> list[Stage]:
        """The stages a rule spec stands for (a file path, a name, or `name(key=value, ...)`)."""
        path = pathlib.Path(spec)
        if spec.endswith(".rules") or _is_file(path):
            if not _is_file(path):
                raise UsageError(f"{spec}: no such rules file")
            compiled = self.load_file(path)
            stem = path.stem
            if stem in compiled.rulesets:
                return [Stage(stem, compiled.rulesets[stem].instantiate())]
            return [Stage(name, rules=rs.instantiate()) for name, rs in compiled.rulesets.items()]
        name, args = parse_call(spec, self.registry)
        return self.call(StageCall(name, args, "command line"))

    def call(self, call: StageCall, depth: int = 0) -> list[Stage]:
        if depth > 20:
            raise RulesCheckError(f"{call.location}: pipelines nest too deeply (a pipeline calls itself?)")
        # A call from a file (a pipeline stage, a test's `using`) is located at file:line:column.
        where = "" if call.location == "command line" else f"{call.location}: "
        target = self.find(call.name)
        if target is None:
            raise UsageError(f"{where}unknown rule set or pipeline "
                             f"'{call.name}'{did_you_mean(call.name, self.names())} "
                             f"(`gtt-rules list` shows them all)")
        if isinstance(target, RuleSet):
            return [Stage(call.name, target.instantiate(call.args, where=where))]
        if isinstance(target, GraphPass):
            return [Stage(call.name, graph_pass=target, params=target.bind(call.args, where=where))]
        if call.args:
            raise UsageError(f"{where}pipeline '{call.name}' takes no arguments")
        stages = []
        for stage in target.stages:
            stages += self.call(stage, depth + 1)
        return stages


def _resolved(path: pathlib.Path) -> pathlib.Path:
    """The file a path leads to through symlinks (the path itself when that cannot be worked out)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def _is_file(path: pathlib.Path) -> bool:
    """Path.is_file, but False for a name the system refuses (too long, say) instead of OSError."""
    try:
        return path.is_file()
    except OSError:
        return False


_DEFINITION = re.compile(r"^\s*(?:ruleset|pipeline)\s+([a-z][A-Za-z0-9_]*)", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _stdlib_index(stdlib: pathlib.Path) -> dict[str, pathlib.Path]:
    """Which standard library file defines each name, read without parsing (parsing every file
    would be most of a short command's time); a file's top-level rule set is named after it."""
    index: dict[str, pathlib.Path] = {}
    for path in sorted(stdlib.glob("*.rules")):
        index.setdefault(path.stem, path)
        for name in _DEFINITION.findall(path.read_text(encoding="utf-8")):
            index.setdefault(name, path)
    return index


def stdlib_names(stdlib: pathlib.Path) -> list[str]:
    return sorted(p.stem for p in stdlib.glob("*.rules"))


_NAME = re.compile(r"[a-z][A-Za-z0-9_]*")


def parse_call(spec: str, registry: Registry | None = None) -> tuple[str, dict[str, Any]]:
    """`name` or `name(key=value, ...)` with values written as in .rules files (calling the
    functions of `registry`, by default the language's)."""
    spec = spec.strip()
    if _NAME.fullmatch(spec):  # a plain name: no need to load the parser
        return spec, {}
    if "\n" in spec or "\r" in spec:  # it is parsed as one line of a pipeline; more would be more stages
        raise UsageError(f"cannot read rule spec {spec!r}: a rule spec is one line")
    text = f"pipeline command_line:\n    {spec}\n"
    try:
        module = parse(text, "<command line>")
    except RulesCheckError:
        raise
    except Exception as error:
        raise UsageError(f"cannot read rule spec '{spec}': {getattr(error, 'message', error)}") from None
    (stage,) = module.pipelines[0].stages
    from .compiler import Compiler
    compiler = Compiler(module, registry)
    call = compiler._stage(stage)
    if compiler.errors:
        raise UsageError(f"cannot read rule spec '{spec}': {compiler.errors[0].message}")
    return call.name, call.args


def load_rules(specs: Iterable[str] | str, library: Library) -> list[Stage]:
    """The stages for rule specs (paths, names or calls) in `library`, in order."""
    if isinstance(specs, str):
        specs = [specs]
    stages = []
    for spec in specs:
        stages += library.stages(spec)
    return stages
