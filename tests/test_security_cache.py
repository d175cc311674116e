"""Attacks on the rules cache, on imports and through the pytest plugin (issue 12), each reproduced.

A cache entry is read as data, never run, and never written through a symlink; a cache folder that
someone else owns or can write to is refused with one warning; imports read only .rules files; the
pytest plugin leaves other projects' .rules files alone.
"""
from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys

import pytest

from gtt_rules.cli import main
from gtt_rules.grammar import cache, parser

pytest_plugins = ["pytester"]

RULES = "rule r:\n    n = Identity(x)\n    => n -> x\n"
WARNING = "gtt-rules: warning:"


def _parser_options() -> dict:
    return dict(parser="lalr", postlex=parser._RulesIndenter(), transformer=parser._to_ast,
                maybe_placeholders=False)


class _Payload:
    """Unpickling it creates a folder: proof that the cache ran code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "a.rules"
    path.write_text(RULES)
    return path


@pytest.mark.parametrize("mode", [0o700, 0o1777], ids=["own folder", "shared folder"])
def test_a_planted_pickle_runs_nothing(tmp_path, monkeypatch, rules_file, mode):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(mode)
    monkeypatch.setenv("GTT_RULES_CACHE_DIR", str(folder))
    marker = tmp_path / "pwned"
    for name in (cache.entry_name("module", RULES), cache.entry_name("parser", parser.GRAMMAR.read_text())):
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    assert parser.parse_file(rules_file) == parser.parse(RULES, str(rules_file))
    assert cache.lark(parser.GRAMMAR.read_text(), **_parser_options()).parse(RULES)
    parser._to_ast.parens.clear()
    assert not marker.exists()


@pytest.mark.parametrize("mode", [0o700, 0o1777], ids=["own folder", "shared folder"])
def test_a_planted_symlink_does_not_write_through(tmp_path, monkeypatch, rules_file, mode):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(mode)
    monkeypatch.setenv("GTT_RULES_CACHE_DIR", str(folder))
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    for name in (cache.entry_name("module", RULES), cache.entry_name("parser", parser.GRAMMAR.read_text())):
        (folder / name).symlink_to(victim)
    assert parser.parse_file(rules_file) == parser.parse(RULES, str(rules_file))
    assert cache.lark(parser.GRAMMAR.read_text(), **_parser_options()).parse(RULES)
    parser._to_ast.parens.clear()
    assert victim.read_bytes() == b"precious\n"
    assert victim.stat().st_mode & 0o777 == 0o600


def test_an_entry_that_is_a_symlink_is_not_read(tmp_path, monkeypatch, rules_file):
    # A good entry elsewhere, linked in under the entry's name: read as a miss, and replaced.
    folder = tmp_path / "cache"
    monkeypatch.setenv("GTT_RULES_CACHE_DIR", str(folder))
    parser.parse_file(rules_file)
    (entry,) = folder.glob("module-*")
    elsewhere = tmp_path / "elsewhere"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    monkeypatch.setattr(parser, "_parse_items", lambda text, path: [])  # what a parse gives here
    assert parser.parse_file(rules_file).rules == []
    assert not entry.is_symlink()


def _other_owned(folder: pathlib.Path) -> pathlib.Path:
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
        return folder
    return pathlib.Path(os.sep)  # owned by root


def _forget_warnings() -> None:
    if hasattr(cache, "_warn"):  # each warning is printed once per process
        cache._warn.cache_clear()


def _check_both(capsys, monkeypatch, cache_dir: str, *paths) -> list[str]:
    """Check files in one fresh process's worth of warnings; the warnings it printed."""
    monkeypatch.setenv("GTT_RULES_CACHE_DIR", cache_dir)
    _forget_warnings()
    try:
        assert main(["check", *map(str, paths)]) == 0
    finally:
        _forget_warnings()
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(WARNING)]


@pytest.mark.parametrize("unsafe", ["group-writable", "other-writable", "other-owned"])
def test_an_unsafe_folder_is_refused_with_one_warning(tmp_path, capsys, monkeypatch, rules_file, unsafe):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    if unsafe == "other-owned":
        folder = _other_owned(folder)
        before = sorted(os.listdir(folder))
    else:
        folder.chmod(0o770 if unsafe == "group-writable" else 0o707)
        before = []
    other = tmp_path / "b.rules"
    other.write_text(RULES.replace("Identity", "Relu"))
    warnings = _check_both(capsys, monkeypatch, str(folder), rules_file, other)
    assert len(warnings) == 1
    assert str(folder) in warnings[0] and "not caching" in warnings[0]
    assert sorted(os.listdir(folder)) == before


def test_a_relative_cache_dir_is_refused(tmp_path, capsys, monkeypatch, rules_file):
    monkeypatch.chdir(tmp_path)
    warnings = _check_both(capsys, monkeypatch, "relative-cache", rules_file, rules_file)
    assert len(warnings) == 1 and "not an absolute path" in warnings[0]
    assert not (tmp_path / "relative-cache").exists()


def test_the_warning_is_one_line_once_per_process(tmp_path, rules_file):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    other = tmp_path / "b.rules"
    other.write_text(RULES.replace("Identity", "Relu"))
    result = subprocess.run([sys.executable, "-m", "gtt_rules", "check", str(rules_file), str(other)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "GTT_RULES_CACHE_DIR": str(folder)})
    assert result.returncode == 0
    assert result.stderr.splitlines() == [f"{WARNING} not caching in {folder}: it is writable by other users "
                                          f"(chmod go-w it)"]
    assert os.listdir(folder) == []


def test_a_new_cache_folder_is_private(tmp_path, monkeypatch, rules_file):
    folder = tmp_path / "new" / "cache"
    monkeypatch.setenv("GTT_RULES_CACHE_DIR", str(folder))
    parser.parse_file(rules_file)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert [entry.stat().st_mode & 0o777 for entry in folder.iterdir()] == [0o600]


# ---- imports ----

def _check(capsys, path) -> tuple[int, str]:
    code = main(["check", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("target", ["/proc/self/environ", "../secret.txt", "evil.rules"])
def test_an_import_reads_only_rules_files(tmp_path, capsys, target):
    project = tmp_path / "project"
    project.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=hunter2 and more\n")
    (project / "evil.rules").symlink_to(secret)  # named .rules, leads to the secret
    path = project / "main.rules"
    path.write_text(f'import "{target}"\n' + RULES)
    code, output = _check(capsys, path)
    assert code == 2
    assert output.splitlines()[0] == (f"gtt-rules: error: {path}:1:1: cannot import '{target}': "
                                      f"only .rules files can be imported")
    assert "hunter2" not in output and "PATH=" not in output


def test_an_imported_file_that_does_not_parse_shows_none_of_its_lines(tmp_path, capsys):
    (tmp_path / "other.rules").write_text("API_KEY=hunter2 and more\n")
    path = tmp_path / "main.rules"
    path.write_text('import "other.rules"\n' + RULES)
    code, output = _check(capsys, path)
    assert code == 2
    assert output.splitlines()[0].startswith(f"gtt-rules: error: {tmp_path / 'other.rules'}:1:")
    assert "hunter2" not in output


# ---- the pytest plugin ----

FIRESTORE_RULES = """rules_version = '2';
service cloud.firestore {
  match /databases/{database}/documents {
    allow read, write: if false;
  }
}
"""


def test_an_unrelated_project_with_firestore_rules_still_collects(pytester):
    pytester.makeini("[pytest]\n")
    pytester.path.joinpath("firestore.rules").write_text(FIRESTORE_RULES)
    pytester.makepyfile(test_app="def test_app():\n    assert 1 + 1 == 2\n")
    pytester.runpytest_inprocess("-p", "no:hypothesispytest").assert_outcomes(passed=1)


def test_rules_files_under_the_configured_paths_are_collected(pytester):
    pytester.makeini("[pytest]\ngtt_rules_paths = rules\n")
    pytester.path.joinpath("firestore.rules").write_text(FIRESTORE_RULES)
    pytester.mkdir("rules")
    pytester.path.joinpath("rules", "mine.rules").write_text(
        RULES + "test drops-identity:\n    given:\n        x = Placeholder {dtype: float, shape: [2]}\n"
                "        n = Identity(x)\n        out = Relu(n)\n"
                "    expect:\n        x = Placeholder {dtype: float, shape: [2]}\n        out = Relu(x)\n")
    result = pytester.runpytest_inprocess("-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*mine.rules*"])
