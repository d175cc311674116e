"""Import layering: grammar/ and engine/ know nothing of the rule language, and rules/ (the language)
nothing of the standard library, which reaches a Library only as the registry it is given."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"grammar": "gtt_rules.grammar", "engine": "gtt_rules.engine", "rules": "gtt_rules.rules"}
# What each folder must not import. The pytest plugin is the one module of rules/ that pytest (not
# the language) calls, so it takes the standard library from the top layer as the CLI does.
FORBIDDEN = {
    "grammar": ("gtt_rules.rules", "gtt_rules.stdlib_rules", "gtt_rules.cli"),
    "engine": ("gtt_rules.rules", "gtt_rules.stdlib_rules", "gtt_rules.cli"),
    "rules": ("gtt_rules.stdlib_rules", "gtt_rules.cli"),
}


def _imports(source: str, package: str) -> set[str]:
    """Every module a source imports, relative imports resolved; `from a import b` counts as a.b too."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_folder_imports_a_layer_above_it(folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if path.name == "pytest_plugin.py":
            continue
        package = ".".join([PACKAGES[folder], *path.relative_to(ROOT / folder).parent.parts])
        imported = _imports(path.read_text(encoding="utf-8"), package)
        bad += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(imported)
                if name.startswith(FORBIDDEN[folder]) or name in ("gtt_rules", "gtt_rules.standard_library")]
    assert not bad


def test_the_scan_sees_a_relative_import_of_the_stdlib():
    # The check above would pass vacuously if it missed the forms these imports take.
    source = "from .params import Param\nfrom ..stdlib_rules import functions\nimport gtt_rules.stdlib_rules.passes\n"
    assert {"gtt_rules.rules.params.Param", "gtt_rules.stdlib_rules.functions",
            "gtt_rules.stdlib_rules.passes"} <= _imports(source, "gtt_rules.rules")


def test_compiling_and_running_rules_without_the_stdlib_never_loads_it():
    # Nothing is registered as an import side effect: a Library given no standard library
    # compiles and runs rules with the language's builtins alone.
    program = """
import sys, pathlib, tempfile
from gtt_rules.rules import compiler, expressions, fixtures, functions, gtt, library, params, passes, registry
folder = pathlib.Path(tempfile.mkdtemp())
(folder / "t.rules").write_text(
    "rule r:\\n    n = Relu(x)\\n    where len(shape(x)) == 1 and not is_output(n)\\n    => n -> x\\n"
    "test r:\\n    given:\\n        x = Placeholder {dtype: float, shape: [2]}\\n        n = Relu(x)\\n"
    "        out = Neg(n)\\n    expect:\\n        out = Neg(x)\\n")
results = fixtures.run_file(folder / "t.rules", library.Library())
assert [r.passed for r in results] == [True], results
print("gtt_rules.stdlib_rules" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            env={"GTT_RULES_CACHE_DIR": "", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
