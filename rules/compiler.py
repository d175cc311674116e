"""Check a parsed .rules file and compile its rules, replacements and templates into rule sets
of engine Rules (expressions: rules/expressions.py; parameters: rules/params.py).

Static checks report `file:line:col`, the source line with a caret and, where one helps, a hint:
unknown ops and attrs and wrong input counts (against the op registry), unbound and doubly bound
names, unknown functions and wrong argument counts, type errors in expressions, duplicate names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from gtt_rules.engine import op_registry
from gtt_rules.engine import rule as engine  # its replacement classes share names with the AST's
from gtt_rules.engine.rule import AttrPattern, InputPattern, NodePattern, Pattern, Rule
from gtt_rules.errors import RulesCheckError
from gtt_rules.grammar import ast

from .expressions import ExpressionCompiler, Scope, dtype_constant, make_guard, must_be_known
from .functions import stored_attr, tensor_value
from .params import PARAM_TYPES, Param, RuleSet, StageCall, coerce_param, param_kind
from .registry import Registry

# Ops whose two inputs commute although TensorFlow's registry does not flag them (Add also
# concatenates strings, which is not commutative, but rules match numeric graphs).
EXTRA_COMMUTATIVE = frozenset({"Add", "Maximum", "Minimum"})


@dataclass
class PipelineDef:
    name: str
    stages: tuple[StageCall, ...]
    path: str
    line: int


@dataclass
class CompiledFile:
    path: str
    rulesets: dict[str, RuleSet] = field(default_factory=dict)
    pipelines: dict[str, PipelineDef] = field(default_factory=dict)
    imports: list[ast.Import] = field(default_factory=list)
    tests: list[tuple[ast.Test, str]] = field(default_factory=list)  # (test, owning rule set)
    defines: dict[str, ast.TemplateDecl] = field(default_factory=dict)  # its own and imported, for importers


class Compiler(ExpressionCompiler):
    """Compiles one module; collects every check error instead of stopping at the first."""

    def __init__(self, module: ast.Module, registry: Registry | None = None,
                 imported: dict[str, ast.TemplateDecl] | None = None):
        super().__init__(module, registry)
        self.compiled_templates: dict[str, engine.Template | None] = {}
        self.compiling: set[str] = set()  # templates being compiled: calling one again is recursion
        for template in module.templates:
            if template.name in self.templates:
                self.error(template.pos, f"duplicate template name '{template.name}'")
            self.templates.setdefault(template.name, template)
        for name, template in (imported or {}).items():  # the file's own define of a name wins
            self.templates.setdefault(name, template)

    # -- files --

    def compile(self) -> CompiledFile:
        out = CompiledFile(self.module.path, imports=list(self.module.imports), defines=self.templates)
        stem = self.module.path.rsplit("/", 1)[-1].rsplit(".", 1)[0] if self.module.path else "rules"
        seen_rules: dict[str, ast.Pos] = {}
        if self.module.rules:
            rules = tuple(r for decl in self.module.rules for r in self._rules(decl, Scope, seen_rules))
            # The file's top-level rules are described by the comment that opens the file.
            opening = next((i for i, text in enumerate(self.module.source.splitlines(), 1)
                            if not text.lstrip().startswith("#")), 1)
            out.rulesets[stem] = RuleSet(stem, (), tuple(r for r in rules if r), tuple(self.module.tests),
                                         self.module.path, self.module.rules[0].pos.line,
                                         _comment_above(self.module.source, opening))
        for test in self.module.tests:
            out.tests.append((test, stem))
        for block in self.module.rulesets:
            if block.name in out.rulesets:
                self.error(block.pos, f"duplicate rule set name '{block.name}'")
                continue
            params = self._params(block)
            scope_params = {p.name: param_kind(p) for p in params}
            local_seen: dict[str, ast.Pos] = {}
            rules = []
            for rule in block.rules:
                for compiled in self._rules(rule, lambda: Scope(params=dict(scope_params)), local_seen):
                    if compiled:
                        rules.append(compiled.with_params({p.name: p.default for p in params}))
            for include in block.includes:
                included = out.rulesets.get(include.name)
                if included is None:
                    self.error(include.pos, f"no rule set '{include.name}' before this line in this file",
                               self._suggest(include.name, out.rulesets))
                elif included.params:
                    self.error(include.pos, f"rule set '{include.name}' has parameters, so it cannot be "
                                            f"included; list it as a pipeline stage instead")
                else:
                    rules += [r.with_params({p.name: p.default for p in params}) for r in included.rules]
            out.rulesets[block.name] = RuleSet(block.name, params, tuple(rules), block.tests,
                                               self.module.path, block.pos.line,
                                               _comment_above(self.module.source, block.pos.line))
            for test in block.tests:
                out.tests.append((test, block.name))
        for pipeline in self.module.pipelines:
            if pipeline.name in out.pipelines or pipeline.name in out.rulesets:
                self.error(pipeline.pos, f"duplicate name '{pipeline.name}'")
                continue
            stages = tuple(self._stage(s) for s in pipeline.stages)
            out.pipelines[pipeline.name] = PipelineDef(pipeline.name, stages, self.module.path, pipeline.pos.line)
        self._pipeline_cycles()
        for definition in self.module.templates:
            self._template(definition.name)
        test_names: dict[str, ast.Pos] = {}
        for test, _ in out.tests:
            if test.name in test_names:
                self.error(test.pos, f"duplicate test name '{test.name}' (first at line {test_names[test.name].line})")
            test_names.setdefault(test.name, test.pos)
        return out

    def _pipeline_cycles(self) -> None:
        """A pipeline that reaches itself through this file's pipelines would never finish: report
        the stage that leads back (cycles through other files are caught when a pipeline runs)."""
        pipelines = {p.name: p for p in self.module.pipelines}
        for pipeline in pipelines.values():
            for stage in pipeline.stages:
                seen, pending = set(), [stage.name]
                while pending and pipeline.name not in seen:
                    name = pending.pop()
                    if name not in seen and name in pipelines:
                        seen.add(name)
                        pending += [s.name for s in pipelines[name].stages]
                if pipeline.name in seen:
                    through = "" if stage.name == pipeline.name else f" (through '{stage.name}')"
                    self.error(stage.pos, f"pipeline '{pipeline.name}' calls itself{through}")
                    break

    def _params(self, block: ast.Ruleset) -> tuple[Param, ...]:
        params = []
        for p in block.params:
            if p.type not in PARAM_TYPES:
                self.error(p.pos, f"unknown parameter type '{p.type}'",
                           f"use one of {', '.join(PARAM_TYPES)}, or [type] for a list")
                continue
            default = None
            if p.default is not None:
                value = self.constant(p.default)
                try:
                    default = coerce_param(Param(p.name, p.type, p.is_list, None), value)
                except RulesCheckError as error:
                    self.error(p.default.pos, error.message)
            elif p.is_list:
                default = []
            params.append(Param(p.name, p.type, p.is_list, default))
        return tuple(params)

    def _stage(self, stage: ast.StageRef) -> StageCall:
        args = {}
        for key, expr in stage.kwargs:
            if key in args:
                value = args[key]
                args[key] = (value if isinstance(value, list) else [value]) + [self.constant(expr)]
            else:
                args[key] = self.constant(expr)
        return StageCall(stage.name, args, f"{self.module.path}:{stage.pos.line}:{stage.pos.column}")
    # -- rules --

    def _rules(self, rule: ast.RuleDecl, new_scope, seen: dict[str, ast.Pos]) -> Iterator[Rule | None]:
        """The rule, or one rule per branch where a replacement is a conditional (see `_branches`)."""
        count = math.prod(_leaves(getattr(a, "expr", None)) for a in rule.actions)
        if count > MAX_BRANCHES:  # branches multiply across actions: a few lines could make millions
            self.error(rule.pos, f"rule '{rule.name}': its conditional replacements make {count:,} rules "
                                 f"(at most {MAX_BRANCHES})", "split it into rules of their own")
            return
        for k, branch in enumerate(_branches(rule)):
            yield self._rule(branch, new_scope(), seen if k == 0 else {})

    def _rule(self, rule: ast.RuleDecl, scope: Scope, seen: dict[str, ast.Pos]) -> Rule | None:
        errors_before = len(self.errors)
        if rule.name in seen:
            self.error(rule.pos, f"duplicate rule name '{rule.name}' (first at line {seen[rule.name].line})")
        seen.setdefault(rule.name, rule.pos)
        pattern = self._pattern(rule, scope)
        steps = []
        for clause in rule.clauses:
            if isinstance(clause, ast.Where):
                fn, kind = self.value(clause.expr, scope)
                steps.append(("where", None, fn, clause.pos))
            else:
                if scope.kind_of(clause.name) is not None:
                    self.error(clause.pos, f"'{clause.name}' is already bound")
                fn, kind = self.value(clause.expr, scope)
                scope.lets[clause.name] = kind
                steps.append(("let", clause.name, fn, clause.pos))
        if all(isinstance(a, ast.BindStmt) and a.name not in scope.statements for a in rule.actions):
            self.error(rule.actions[0].pos, "a replacement needs at least one 'n -> SOURCE', 'remove n' "
                                            "or 'n {changes}'")
        self._bindings(rule.actions, scope)
        edited: set[str] = set()
        for action in rule.actions:
            if isinstance(action, ast.EditStmt) and action.name in edited:
                self.error(action.pos, f"'{action.name}' is edited twice", "put every change in one block")
            edited.add(action.name if isinstance(action, ast.EditStmt) else None)
        actions = tuple(a for a in (self._action(a, scope) for a in rule.actions) if a is not None)
        if len(self.errors) > errors_before or pattern is None:
            return None
        location = f"{self.module.path}:{rule.pos.line}"
        guard = make_guard(rule.name, location, pattern.root_var, steps) if steps else None
        op_filter = _op_filter(rule.clauses, pattern, scope)
        return Rule(rule.name, pattern, guard, actions, rule.priority, location, op_filter=op_filter)

    def _pattern(self, rule: ast.RuleDecl, scope: Scope) -> Pattern | None:
        for stmt in rule.patterns:
            if stmt.var in scope.statements:
                self.error(stmt.pos, f"'{stmt.var}' is already bound (line {scope.statements[stmt.var].pos.line})")
            elif stmt.var in scope.params:
                self.error(stmt.pos, f"'{stmt.var}' is a parameter of the rule set; pick another name")
            scope.statements.setdefault(stmt.var, stmt)
            if stmt.node.repeat:
                self.error(stmt.node.pos, "a chain stands in an input ('Relu(Identity*(x))'), not as a pattern line")
        referenced: set[str] = set()
        for stmt in rule.patterns:
            self._collect(stmt.node, scope, referenced)
        roots = [s.var for s in rule.patterns if s.var not in referenced]
        if not roots:
            self.error(rule.patterns[0].pos, "a pattern needs a root, a line no other line reads; here "
                                             "the pattern lines form a loop")
            return None
        further = self._further_roots(roots, scope)
        # An inner node the replacement reads stays in the graph anyway: others may read it too.
        scope.kept = set().union(*(_tensor_sources(a, self.functions) for a in rule.actions))
        for root in (scope.statements[r].node for r in roots):
            if root.shared or any(a.shared for a in root.alternatives):
                self.error(root.pos, "a root is what the rule replaces: it cannot be 'shared'")
        statements = {s.var: self._node_pattern(s.node, scope, s.var in scope.kept) for s in rule.patterns}
        # A rule that only reroutes to tensors the match has computes nothing twice.
        builds = any(isinstance(a, ast.BindStmt) or
                     (isinstance(a, ast.RerouteStmt) and not isinstance(a.expr, (ast.Var, ast.Port)))
                     for a in rule.actions)
        return Pattern(roots[0], statements, private=builds, further=further)

    def _further_roots(self, roots: list[str], scope: Scope) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each root after the first with the names it reads that the lines before it bind: the
        matcher looks for it among their readers, so it must read one."""
        def reach(var: str, seen: set[str]) -> set[str]:
            seen.add(var)
            for name in _mentioned(scope.statements[var].node) - seen:
                if name in scope.statements:
                    reach(name, seen)
                else:
                    seen.add(name)
            return seen
        bound, further = reach(roots[0], set()), []
        for var in roots[1:]:
            node = scope.statements[var].node
            reads = set.intersection(*({a.name for a in n.args or () if hasattr(a, "name")}
                                       for n in node.alternatives or (node,)))
            joins = tuple(sorted(reads & bound))
            if not joins:
                self.error(node.pos, f"'{var}' is a second root, and none of its inputs is a tensor the "
                                     f"lines before it bind: it is looked for among their readers",
                           "give it an input in common with the lines above, or read it from the others")
            further.append((var, joins))
            bound |= reach(var, set())
        return tuple(further)

    def _collect(self, node: ast.NodePatternExpr, scope: Scope, referenced: set[str]) -> None:
        """First pass: record tensor, list and attr names, so later uses resolve in any order."""
        if node.alternatives:
            first = _mentioned(node.alternatives[0])
            for alternative in node.alternatives:
                if alternative.repeat:
                    self.error(alternative.pos, "a chain cannot be one of alternatives: it may match no node")
                if _mentioned(alternative) != first:
                    self.error(alternative.pos, "each alternative must name the same names (a name "
                                                "only some of them bind would be unbound after the others)")
                self._collect(alternative, scope, referenced)
            return
        self._check_ops(node)
        if node.repeat and (len(node.args) != 1 or isinstance(node.args[0], ast.ArgVariadic)):
            self.error(node.pos, "a chain reads one input, where it ends: 'Op*(x)'")
        for arg in node.args or ():
            if isinstance(arg, (ast.ArgVar, ast.ArgPort)) and arg.name in scope.statements:
                referenced.add(arg.name)
            elif isinstance(arg, ast.ArgVar):
                if arg.name in scope.lists:
                    self.error(arg.pos, f"'{arg.name}' is already bound to a list of inputs")
                scope.tensors.setdefault(arg.name, arg.pos)
            elif isinstance(arg, ast.ArgPort):
                self.error(arg.pos, f"'{arg.name}:{arg.port}' needs '{arg.name}' to be a pattern line",
                           f"add a line '{arg.name} = Op(...)' to the pattern")
            elif isinstance(arg, ast.ArgBound):
                if arg.name in scope.statements:
                    self.error(arg.pos, f"'{arg.name}' is already bound by a pattern line")
                (scope.lists if arg.node.repeat else scope.tensors).setdefault(arg.name, arg.pos)
                self._collect(arg.node, scope, referenced)
            elif isinstance(arg, ast.ArgVariadic):
                if arg.name in scope.tensors or arg.name in scope.statements:  # a list twice: the same list
                    self.error(arg.pos, f"'{arg.name}' is already bound")
                scope.lists.setdefault(arg.name, arg.pos)
                if arg.node and arg.node.repeat:
                    self.error(arg.node.pos, "a chain cannot be a variadic input's pattern: it may match no node")
                if arg.node:
                    self._collect(arg.node, scope, referenced)
            elif isinstance(arg, ast.ArgNested):
                self._collect(arg.node, scope, referenced)
        variadic = [a for a in node.args or () if isinstance(a, ast.ArgVariadic)]
        if len(variadic) > 1:
            self.error(variadic[1].pos, "only one input of a pattern can be variadic ('xs...')")
        for item in node.attrs:
            if isinstance(item.value, ast.Var) and self._is_attr_binding(item.value.name, scope):
                scope.attrs.setdefault(item.value.name, item.pos)

    def _is_attr_binding(self, name: str, scope: Scope) -> bool:
        kind = scope.kind_of(name)
        return (kind is None or name in scope.attrs) and dtype_constant(name) is None

    def _check_ops(self, node: ast.NodePatternExpr) -> None:
        for op in node.ops or ():
            op_def = op_registry.get_op(op)
            if op_def is None:
                self.error(node.pos, f"unknown op '{op}'", self._suggest(op, op_registry.all_op_names()))
                continue
            self._check_attrs(op, op_def, node.attrs)
            if node.args is not None and not node.repeat and not any(isinstance(a, ast.ArgVariadic) for a in node.args):
                self._check_input_count(op, op_def, len(node.args), node.pos)

    def _check_attrs(self, op: str, op_def, attrs) -> None:
        seen: set[str] = set()
        for item in attrs:
            if item.key is None:
                continue  # a computed name: reported by the caller
            if item.key in seen:
                self.error(item.pos, f"attr '{item.key}' is given twice")
            seen.add(item.key)
            if item.key not in op_def.attrs and not item.key.startswith("_"):
                self.error(item.pos, f"op '{op}' has no attr '{item.key}'",
                           self._suggest(item.key, op_def.attrs) or
                           f"its attrs: {', '.join(op_def.attrs) or 'none'}")

    def _check_input_count(self, op: str, op_def, count: int, pos: ast.Pos) -> None:
        if any(arg.number_attr or arg.type_list_attr for arg in op_def.inputs):
            minimum = 0
            for arg in op_def.inputs:
                length_attr = op_def.attrs.get(arg.number_attr or arg.type_list_attr or "")
                minimum += (length_attr.minimum or 0) if length_attr else 1
            if count < minimum:
                self.error(pos, f"op '{op}' takes at least {minimum} inputs, not {count}")
            return
        expected = len(op_def.inputs)
        if count != expected:
            names = ", ".join(arg.name for arg in op_def.inputs) or "none"
            self.error(pos, f"op '{op}' takes {expected} input{'s' if expected != 1 else ''} ({names}), not {count}")

    def _node_pattern(self, node: ast.NodePatternExpr, scope: Scope, kept: bool = False) -> NodePattern:
        if node.alternatives:
            return NodePattern(None, alternatives=tuple(self._node_pattern(a, scope, kept) for a in node.alternatives))
        ops = frozenset(node.ops) if node.ops is not None else None
        attrs = []
        for item in node.attrs:
            if item.key is None:
                self.error(item.pos, "a pattern names its attrs: '(EXPR): value' is for a copy or an edit")
            elif isinstance(item.value, ast.Var) and item.value.name in scope.attrs:
                attrs.append(AttrPattern(item.key, var=item.value.name))
            else:
                fn, _ = self.value(item.value, scope)
                attrs.append(AttrPattern(item.key, expected=fn))
        inputs = None
        variadic = None
        if node.args is not None:
            inputs = tuple(self._input_pattern(arg, scope) for arg in node.args)
            variadic = next((i for i, a in enumerate(node.args) if isinstance(a, ast.ArgVariadic)), None)
        commutative = frozenset()
        if ops and inputs is not None and len(inputs) == 2 and variadic is None:
            # Decided per op: `Add|Sub(x, c)` swaps inputs for an Add, never for a Sub.
            commutative = frozenset(op for op in ops if op in EXTRA_COMMUTATIVE or
                                    (op_registry.get_op(op) and op_registry.get_op(op).is_commutative))
        return NodePattern(ops, inputs, tuple(attrs), commutative, variadic, node.shared or kept, repeat=node.repeat)

    def _input_pattern(self, arg, scope: Scope) -> InputPattern:
        if isinstance(arg, ast.ArgVar):
            if arg.name in scope.statements:
                return InputPattern(node_var=arg.name, port=0)
            return InputPattern(var=arg.name)
        if isinstance(arg, ast.ArgPort):
            return InputPattern(node_var=arg.name, port=arg.port)
        if isinstance(arg, ast.ArgBound):
            node = self._node_pattern(arg.node, scope, arg.name in scope.kept)
            if node.repeat:  # the name is the chain's nodes
                return InputPattern(node=replace(node, chain_var=arg.name))
            return InputPattern(var=arg.name, node=node)
        if isinstance(arg, ast.ArgVariadic):
            return InputPattern(var=arg.name, node=self._node_pattern(arg.node, scope) if arg.node else None)
        if isinstance(arg, ast.ArgNested):
            return InputPattern(node=self._node_pattern(arg.node, scope))
        return InputPattern(literal=arg.value)

    # -- replacements --

    def _bindings(self, statements, scope: Scope, result: ast.Expr | None = None) -> None:
        """Declare the nodes a replacement (or a template) names, so any action can read them."""
        named = {}
        for stmt in statements:
            if not isinstance(stmt, (ast.BindStmt, ast.NodeStmt)):
                continue
            name = stmt.name if isinstance(stmt, ast.BindStmt) else stmt.var
            if name in scope.statements:
                self.error(stmt.pos, f"'{name}' is a node of the pattern, so it cannot be bound again",
                           f"to replace it, write '{name} -> ...'")
            elif scope.kind_of(name) is not None:
                self.error(stmt.pos, f"'{name}' is already bound")
            else:
                scope.built[name] = "nodes" if self._is_list(stmt.expr, scope) else "node"
                named[name] = stmt
        reads = _names_in(result) if result is not None else set()
        for stmt in statements:
            reads |= _names_in(stmt.expr) if isinstance(stmt, (ast.BindStmt, ast.NodeStmt)) else _names_in(stmt)
        for name, stmt in named.items():
            if name not in reads:
                self.error(stmt.pos, f"'{name}' is built but never used")
            elif self._builds_itself(name, named):
                self.error(stmt.pos, f"'{name}' is built from itself")

    @staticmethod
    def _builds_itself(name: str, named: dict) -> bool:
        seen, stack = set(), [name]
        while stack:
            for read in _names_in(named[stack.pop()].expr) & named.keys():
                if read == name:
                    return True
                if read not in seen:
                    seen.add(read)
                    stack.append(read)
        return False

    def _action(self, action, scope: Scope):
        if isinstance(action, ast.BindStmt):
            source = self.producer(action.expr, scope)
            return engine.Bind(action.name, source) if source is not None else None
        if isinstance(action, (ast.RemoveStmt, ast.EditStmt)) and scope.kind_of(action.name) != "tensor":
            self.error(action.pos, f"'{action.name}' is not a node of the pattern",
                       self._suggest(action.name, scope.statements))
            return None
        if isinstance(action, ast.RemoveStmt):
            return engine.Remove(action.name)
        if isinstance(action, ast.EditStmt):  # `n {changes}`: n changed where it stands
            attrs, fields = self._changes(action.attrs, scope, edit=True)
            return engine.Edit(action.name, engine.NewNode(None, None, attrs, copy_of=action.name, fields=fields))
        target = action.target
        if scope.kind_of(target.name) != "tensor":
            self.error(target.pos, f"'{target.name}' is not a node of the pattern",
                       self._suggest(target.name, scope.statements))
            return None
        source = self.producer(action.expr, scope)
        if source is None:
            return None
        return engine.Reroute(target.name, target.port, target.all_ports, source)

    def producer(self, expr: ast.Expr, scope: Scope):
        """Compile a replacement expression into what the rewriter builds or reuses."""
        if isinstance(expr, ast.Var) and scope.kind_of(expr.name) in ("tensor", "list"):
            return engine.TensorOf(expr.name)
        if isinstance(expr, (ast.Var, ast.Port)) and expr.name in scope.built:
            return engine.Bound(expr.name, expr.port if isinstance(expr, ast.Port) else None)
        if isinstance(expr, ast.Call) and expr.func in self.templates and not self.templates[expr.func].function:
            return self._expand(expr, scope)
        if isinstance(expr, ast.Spread):
            self.error(expr.pos, f"'{expr.name}...' can only be an argument of a template call")
            return None
        if isinstance(expr, ast.Port):
            if scope.kind_of(expr.name) != "tensor":
                self.error(expr.pos, f"'{expr.name}' is not a node of the pattern")
                return None
            return engine.TensorOf(expr.name, expr.port)
        if isinstance(expr, ast.NewNodeExpr):
            return self._new_node(expr, scope)
        if isinstance(expr, ast.CopyNode) or (isinstance(expr, ast.Call) and scope.kind_of(expr.func) == "tensor"):
            var = expr.var if isinstance(expr, ast.CopyNode) else expr.func
            if scope.kind_of(var) != "tensor":
                self.error(expr.pos, f"'{var}' is not a node of the pattern, so it cannot be copied")
                return None
            args = expr.args
            inputs = None if args is None else tuple(p for p in (self.producer(a, scope) for a in args) if p)
            attrs, fields = self._changes(getattr(expr, "attrs", ()), scope)
            return engine.NewNode(None, inputs, attrs, copy_of=var, fields=fields)
        if isinstance(expr, ast.Comprehension) and (isinstance(expr.item, (ast.NewNodeExpr, ast.CopyNode)) or
                                                    isinstance(expr.item, ast.Call) and expr.item.func == expr.var):
            return self._each(expr, scope)
        fn, kind = self.value(expr, scope)
        if kind in ("string", "dtype"):
            self.error(expr.pos, f"a {kind} cannot be a tensor here")
            return None
        return engine.ConstNode(must_be_known(fn))

    def _each(self, expr: ast.Comprehension, scope: Scope):
        """`[SOURCE for x in xs if c]` where SOURCE builds nodes: one SOURCE per element kept; `x` is
        a node of the match where SOURCE copies it (`[x(...) for x in xs]`)."""
        item, element = expr.item, []
        copies = getattr(item, "var", None) == expr.var or getattr(item, "func", None) == expr.var
        kept = self.loop(expr.var, expr.items, expr.condition, expr.pos, scope,
                         lambda: element.append(self.producer(item, scope)) or (lambda ctx: ctx.bindings[expr.var]),
                         var_kind="tensor" if copies else "any")
        return engine.Each(expr.var, must_be_known(kept), element[0]) if element[0] is not None else None

    def _changes(self, items, scope: Scope, edit: bool = False) -> tuple[tuple, tuple]:
        """What a copy or an edit changes: its attrs, and its node fields (`op`, `device`, and for an
        edit `control_inputs`). An attr's name may be computed (`(EXPR): value`), and `none`
        deletes the attr; `(EXPR): value for x in xs` gives one such attr per element."""
        attrs, fields = [], []
        for item in items:
            if item.each is not None:
                loop = item.each
                pairs = self.loop(loop.var, loop.items, loop.condition, loop.pos, scope,
                                  lambda: self._attr_pair(item, scope))
                attrs.append((engine.EACH, must_be_known(pairs)))
                continue
            if isinstance(item.value, ast.NoneValue) and item.key in engine.NODE_FIELDS:
                self.error(item.value.pos, f"'none' deletes an attr; a node's {item.key} is not one",
                           "write \"\" for no device" if item.key == "device" else None)
                continue
            fn, kind = self._change_value(item.value, scope)
            if item.key == "control_inputs":
                if not edit:
                    self.error(item.pos, "a copy takes over the control edges of the node it replaces",
                               "to change what a node waits on, edit it: 'n {control_inputs: [...]}'")
                elif kind not in ("list", "any"):
                    self.error(item.value.pos, f"type error: a node's control_inputs are a list of names, "
                                               f"not a {kind}")
                fields.append((item.key, fn))
                continue
            if item.key == "name" and edit:
                self.error(item.pos, "an edit keeps its node's name", "a copy or a new node can be named")
                continue
            if item.key in engine.NODE_FIELDS:  # a copy as another op, on another device, or named
                if kind not in ("string", "any"):
                    self.error(item.value.pos, f"type error: a node's {item.key} is a string, not a {kind}")
                fields.append((item.key, fn))
                continue
            attrs.append((item.key if item.key is not None else self._attr_name(item.key_expr, scope), fn))
        return tuple(attrs), tuple(fields)

    def _attr_name(self, expr: ast.Expr, scope: Scope):
        """A computed attr name (`(EXPR): value`), checked to be a string."""
        fn, kind = self.value(expr, scope)
        if kind not in ("string", "any"):
            self.error(expr.pos, f"type error: an attr's name is a string, not a {kind}")
        return must_be_known(fn)

    def _change_value(self, expr: ast.Expr, scope: Scope):
        """A copy's or an edit's value for an attr or field, and its kind; `none` is DELETE."""
        if isinstance(expr, ast.NoneValue):
            return (lambda ctx: engine.DELETE), "none"
        if isinstance(expr, ast.Conditional):  # `v if c else none`: set where c holds, deleted where not
            fn, kind = self._conditional(expr, scope, self._change_value)
            return must_be_known(fn), kind
        fn, kind = self._attr_value(expr, scope)
        return must_be_known(fn), kind

    def _attr_pair(self, item: ast.AttrItem, scope: Scope):
        """One element's (name, value) of `(EXPR): value for x in xs`."""
        name, value = self._attr_name(item.key_expr, scope), self._change_value(item.value, scope)[0]
        return lambda ctx: (name(ctx), value(ctx))

    def _attr_value(self, expr: ast.Expr, scope: Scope):
        """An attr value and its kind; `attr(m, name)` is the attr as m stores it, copied exactly
        (decoded and encoded again, a dtype would be an int under a name its op does not declare)."""
        errors = len(self.errors)
        fn, kind = self.value(expr, scope)
        if not (isinstance(expr, ast.Call) and expr.func == "attr" and len(expr.args) == 2) \
                or len(self.errors) > errors:
            return fn, kind
        node, name = (self.value(arg, scope)[0] for arg in expr.args)
        return (lambda ctx: stored_attr(ctx, node(ctx), name(ctx))), kind

    def _is_list(self, expr: ast.Expr, scope: Scope) -> bool:
        """True if an input expression spreads into several inputs (a list binding or result)."""
        if isinstance(expr, ast.Comprehension):
            return True
        if isinstance(expr, ast.Slice):
            return self._is_list(expr.target, scope)
        if isinstance(expr, ast.BinOp) and expr.op == "+":
            return self._is_list(expr.left, scope) and self._is_list(expr.right, scope)
        if isinstance(expr, (ast.Var, ast.Port)):
            return scope.kind_of(expr.name) in ("list", "nodes")
        if isinstance(expr, ast.Call) and expr.func in self.templates:
            return any(isinstance(a, ast.Spread) for a in expr.args)
        function = self.functions.get(expr.func) if isinstance(expr, ast.Call) else None
        return function is not None and function.returns == "list"

    # -- templates --

    def _expand(self, call: ast.Call, scope: Scope):
        template = self._template(call.func)
        definition = self.templates[call.func]
        if len(call.args) != len(definition.params):
            self.error(call.pos, f"template '{call.func}' takes {len(definition.params)} argument"
                                 f"{'s' if len(definition.params) != 1 else ''}, not {len(call.args)}")
            return None
        spreads = [i for i, a in enumerate(call.args) if isinstance(a, ast.Spread)]
        if len(spreads) > 1:
            self.error(call.args[spreads[1]].pos, "only one argument of a template call can be spread")
        args = []
        for arg in call.args:
            if isinstance(arg, ast.Spread):
                if scope.kind_of(arg.name) not in ("list", "nodes"):
                    self.error(arg.pos, f"'{arg.name}...' needs '{arg.name}' to be a list of tensors")
                    return None
                args.append(engine.Bound(arg.name) if arg.name in scope.built else engine.TensorOf(arg.name))
            else:
                args.append(self.producer(arg, scope))
        if template is None or None in args:
            return None
        return engine.Expand(template, tuple(args), spreads[0] if spreads else None)

    def _template(self, name: str) -> engine.Template | None:
        """Compile a template once."""
        definition = self.templates[name]
        if name in self.compiling:
            self.error(definition.pos, f"template '{name}' calls itself")
            return None
        if name in self.compiled_templates:
            return self.compiled_templates[name]
        if len(set(definition.params)) != len(definition.params):
            self.error(definition.pos, f"'{name}' names a parameter twice")
        if definition.function:  # checked for any kinds of arguments; each call is checked for its own
            self.compiled_templates[name] = None
            self.inlining.append(name)
            self.value(definition.result, Scope(lets=dict.fromkeys(definition.params, "any")))
            self.inlining.pop()
            return None
        self.compiling.add(name)
        scope = Scope(built={param: "node" for param in definition.params})
        errors_before = len(self.errors)
        self._bindings(definition.bindings, scope, definition.result)
        bindings = tuple((b.var, self.producer(b.expr, scope)) for b in definition.bindings)
        result = self.producer(definition.result, scope)
        compiled = None
        if len(self.errors) == errors_before and result is not None:
            compiled = engine.Template(name, definition.params, bindings, result)
        self.compiling.discard(name)
        self.compiled_templates[name] = compiled
        return compiled

    def _new_node(self, expr: ast.NewNodeExpr, scope: Scope):
        op_def = op_registry.get_op(expr.op)
        if op_def is None:
            self.error(expr.pos, f"unknown op '{expr.op}'", self._suggest(expr.op, op_registry.all_op_names()))
            return None
        for item in expr.attrs:
            if item.key is None:
                self.error(item.pos, f"a new {expr.op} names its attrs: '(EXPR): value' is for a copy or an edit")
        named = [item for item in expr.attrs if item.key == "name"]
        if named:  # the node's name, not an attr
            expr = replace(expr, attrs=tuple(item for item in expr.attrs if item.key != "name"))
            fields = self._changes(named, scope)[1]
        else:
            fields = ()
        attr_items = {item.key: item for item in expr.attrs}
        if expr.op == "Const":
            if not expr.args or len(expr.args) > 2:
                self.error(expr.pos, "Const takes its value, and optionally a dtype: Const(value[, dtype])")
                return None
            value_fn, kind = self.value(expr.args[0], scope)
            value_fn = (lambda f: lambda ctx: tensor_value(ctx, f(ctx)))(value_fn)  # Const(w): w's value
            if kind in ("string", "dtype"):
                self.error(expr.args[0].pos, f"type error: a Const value cannot be a {kind}")
            dtype_expr = expr.args[1] if len(expr.args) == 2 else \
                (attr_items["dtype"].value if "dtype" in attr_items else None)
            dtype_fn = self.value(dtype_expr, scope)[0] if dtype_expr is not None else None
            return engine.ConstNode(must_be_known(value_fn), dtype_fn and must_be_known(dtype_fn),
                                    fields[0][1] if fields else None)
        self._check_attrs(expr.op, op_def, expr.attrs)
        inputs = ()
        if expr.args is not None:
            if not any(self._is_list(a, scope) for a in expr.args):
                self._check_input_count(expr.op, op_def, len(expr.args), expr.pos)
            inputs = tuple(p for p in (self.producer(a, scope) for a in expr.args) if p)
        elif op_def.inputs:
            self._check_input_count(expr.op, op_def, 0, expr.pos)
        attrs = tuple((item.key, must_be_known(self.value(item.value, scope)[0])) for item in expr.attrs
                      if item.key is not None)
        return engine.NewNode(expr.op, inputs, attrs, fields=fields)


def _names_in(node: Any) -> set[str]:
    """Every name an AST node reads (variables, `name:port`, `name...`)."""
    if isinstance(node, (ast.Var, ast.Port, ast.Spread)):
        return {node.name}
    names: set[str] = set()
    for key in getattr(node, "__dataclass_fields__", ()):
        if key in ("pos", "name", "var"):
            continue
        value = getattr(node, key)
        for item in value if isinstance(value, tuple) else (value,):
            names |= _names_in(item)
    return names


def _mentioned(node: ast.NodePatternExpr) -> set[str]:
    """Every name a node pattern mentions: its inputs' names and its attrs' bare names."""
    names = {item.value.name for item in node.attrs if isinstance(item.value, ast.Var)}
    for arg in node.args or ():
        names |= {arg.name} if hasattr(arg, "name") else set()
        nested = getattr(arg, "node", None)
        names |= _mentioned(nested) if nested is not None else set()
    for alternative in node.alternatives:
        names |= _mentioned(alternative)
    return names


MAX_BRANCHES = 64  # rules one rule's conditional replacements may make


def _leaves(expr) -> int:
    """How many replacements a conditional chooses from (1 for any other expression)."""
    return _leaves(expr.then) + _leaves(expr.otherwise) if isinstance(expr, ast.Conditional) else 1


def _branches(rule: ast.RuleDecl) -> list[ast.RuleDecl]:
    """A replacement `n -> A if c else B` (or `y = ...`) is two rules of one name and pattern: one
    guarded by `c` that builds A, one by `not c` that builds B, so the branches may build nodes of
    different shapes; where `c` is unknown, neither fires, as for any guard."""
    for i, action in enumerate(rule.actions):
        expr = getattr(action, "expr", None)
        if isinstance(action, (ast.RerouteStmt, ast.BindStmt)) and isinstance(expr, ast.Conditional):
            negated = ast.Unary("not", expr.condition, expr.pos)
            return [branch for guard, chosen in ((expr.condition, expr.then), (negated, expr.otherwise))
                    for branch in _branches(replace(rule, clauses=rule.clauses + (ast.Where(guard, expr.pos),),
                                                    actions=rule.actions[:i] + (replace(action, expr=chosen),)
                                                    + rule.actions[i + 1:]))]
    return [rule]


def _tensor_sources(node: Any, functions) -> set[str]:
    """The names a replacement reads as tensors (`n -> x`, `Relu(conv:1)`), not as values or as
    nodes to copy: the nodes it keeps."""
    if isinstance(node, (ast.Var, ast.Port, ast.Spread)):
        return {node.name}
    if isinstance(node, (ast.RerouteStmt, ast.BindStmt)):
        return _tensor_sources(node.expr, functions)
    if isinstance(node, ast.EditStmt):  # an edited node stays where it is
        return {node.name}
    function = functions.get(node.func) if isinstance(node, ast.Call) else None
    if function is not None and function.returns not in ("tensor", "list", "any"):
        return set()  # a value computed from the match
    if isinstance(node, (ast.NewNodeExpr, ast.CopyNode, ast.Call)):
        names = set().union(*(_tensor_sources(a, functions) for a in node.args or ()))
        return names if not isinstance(node, ast.NewNodeExpr) or node.op != "Const" else set()
    if isinstance(node, (ast.ListExpr, ast.Comprehension, ast.Index, ast.Slice)):
        return _names_in(node)
    return set()



def _op_filter(clauses, pattern: Pattern, scope: Scope) -> tuple[str, ...] | str | None:
    """The ops a rule's first test `where op(root) in LIST [and ...]` (or `op(root) == OP`) lets
    through: the strings, or the name of the parameter that holds them. None if the guard starts otherwise, or if the
    pattern checks attrs against expressions (which could fail on a node the test rejects)."""
    if not clauses or not isinstance(clauses[0], ast.Where) or pattern.checks_attrs:
        return None
    test = clauses[0].expr
    if isinstance(test, ast.BoolOp) and test.op == "and":
        test = test.items[0]
    if not (isinstance(test, ast.BinOp) and test.op in ("in", "==") and isinstance(test.left, ast.Call)
            and test.left.func == "op" and len(test.left.args) == 1
            and isinstance(test.left.args[0], ast.Var) and test.left.args[0].name == pattern.root_var):
        return None
    items = test.right
    if test.op == "==":  # `op(n) == "Relu"`, `op(n) == old_op_name`: a list of one
        if isinstance(items, ast.String):
            return (items.value,)
        return items.name if isinstance(items, ast.Var) and scope.params.get(items.name) == "string" else None
    if isinstance(items, ast.Var) and scope.params.get(items.name) == "list":
        return items.name
    if isinstance(items, ast.ListExpr) and all(isinstance(item, ast.String) for item in items.items):
        return tuple(item.value for item in items.items)
    return None



def _comment_above(source: str, line: int) -> str:
    """The first sentence of the comment right above `line` (a rule set's description), or ""."""
    lines = source.splitlines()[:line - 1]
    block = []
    while lines and lines[-1].lstrip().startswith("#"):
        block.insert(0, lines.pop().lstrip()[1:].strip())
    text = " ".join(block)
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def compile_module(module: ast.Module, registry: Registry | None = None,
                   imported: dict[str, ast.TemplateDecl] | None = None) -> CompiledFile:
    """Compile a module against `registry` (default: the language's own functions and those
    registered with register_function), with the `define`s of the files it imports; raises the
    first check error (all on `.all_errors`)."""
    compiler = Compiler(module, registry, imported)
    compiled = compiler.compile()
    if compiler.errors:
        first = compiler.errors[0]
        first.all_errors = compiler.errors
        raise first
    return compiled
