"""The wheel: one `gtt_rules` namespace, with the grammar, rule files and op data inside."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Source folder -> its place in the installed namespace (pyproject.toml's package-dir table).
DATA_FILES = {
    "grammar": ("gtt_rules/grammar", "*.lark"),
    "stdlib_rules": ("gtt_rules/stdlib_rules", "*.rules"),
    "engine/data": ("gtt_rules/engine/data", "*"),
    "engine/proto": ("gtt_rules/engine/proto", "*.proto"),
    "gtt_rules": ("gtt_rules", "*.html"),      # the per-layer report page
}


def test_wheel_holds_one_namespace_and_every_data_file(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "models"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"gtt_rules"}

    expected = set()
    for folder, (installed, pattern) in DATA_FILES.items():
        expected |= {f"{installed}/{p.name}" for p in (ROOT / folder).glob(pattern) if p.is_file()}
    assert "gtt_rules/engine/data/ops.json" in expected
    assert expected <= names, sorted(expected - names)
    assert "gtt_rules/engine/proto/graph_def_pb2.py" in names
    assert "gtt_rules/cli.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gtt-rules = gtt_rules.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_runtime_does_not_import_tensorflow():
    code = ("import sys, gtt_rules.cli, gtt_rules.engine.graph, gtt_rules.summary;"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported at run time'")
    subprocess.run([sys.executable, "-c", code], check=True)
