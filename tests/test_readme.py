"""The README's quick-start commands run as written, in a fresh folder, and do what it says."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from gtt_rules.engine import memmapped
from gtt_rules.engine.graph import Graph

REPO = pathlib.Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
QUICK_START = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
SH_BLOCKS = re.findall(r"^```sh\n(.*?)^```", QUICK_START, re.S | re.M)


def gtt_commands(block: str) -> list[list[str]]:
    """Each `gtt-rules ...` command of a block (`&&` chains split; `pip install` left out: the
    package is installed already)."""
    commands = []
    for line in block.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part)
            if words and words[0] == "gtt-rules":
                commands.append(words[1:])
    return commands


def run(words: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    words = [str(REPO / w) if w.startswith("examples/") else w for w in words]
    return subprocess.run([sys.executable, "-m", "gtt_rules", *words], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "GTT_RULES_CACHE_DIR": ""})


@pytest.mark.parametrize("index", range(2), ids=["frozen graph", "SavedModel to memmapped eight-bit"])
def test_quick_start_commands_run(index, tmp_path):
    commands = gtt_commands(SH_BLOCKS[index])
    assert commands, SH_BLOCKS[index]
    for words in commands:
        result = run(words, tmp_path)
        assert result.returncode == 0, f"gtt-rules {shlex.join(words)}\n{result.stderr}"
        assert "Traceback" not in result.stderr


def test_the_tf2_path_ends_in_an_eight_bit_memory_mapped_model(tmp_path):
    for words in gtt_commands(SH_BLOCKS[1]):
        assert run(words, tmp_path).returncode == 0
    package = tmp_path / "model.8bit.mmpb"
    regions = memmapped.read_directory(memoryview(package.read_bytes()))
    assert regions and len(regions) >= 2, regions      # the graph and at least one weight
    ops = {node.op for node in Graph.load(package)}
    assert {"QuantizedConv2D", "Dequantize"} <= ops or {"QuantizedConv2DWithBias", "Dequantize"} <= ops, ops
    assert not ops & {"Min", "Max", "RequantizationRange"}     # calibrated: no range computed at run time
