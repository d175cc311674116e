"""The per-layer HTML report in a real browser: headless Chromium draws the chart and holds the numbers.

CI installs Chromium from Debian (.ci/run); without it this test fails rather than skips.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from gtt_rules import cli as cli_module
from gtt_rules.per_layer import sqnr_text
from test_per_layer import BROKEN, EXAMPLE, widen_broken_range

WIDTH, HEIGHT = 1200, 1500


def chromium(tmp_path: pathlib.Path, *args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Chromium is needed: apt-get install -y chromium (as .ci/run does)"
    result = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--user-data-dir={tmp_path / 'profile'}", *args],
                            capture_output=True, text=True, timeout=180, check=True)
    return result.stdout


def hex_colour(text: str) -> tuple[int, int, int]:
    return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report page of the example model made eight-bit, with one Relu6's range made far too
    wide (so one bar is red), and the JSON of the same comparison."""
    folder = tmp_path_factory.mktemp("browser")
    eight, bad = folder / "tiny8.pb", folder / "bad.pb"
    assert cli_module.main(["apply", str(EXAMPLE), "-o", str(eight), "--pipeline", "eightbit",
                            "--outputs", "Identity", "--random", "4"]) == 0
    widen_broken_range(eight, bad)
    page = folder / "report.html"
    assert cli_module.main(["compare", str(EXAMPLE), str(bad), "--per-layer", "--html", str(page)]) == 0
    return page, bad


def test_the_page_draws_a_bar_per_layer_and_holds_the_numbers(report, tmp_path, capsys):
    from PIL import Image      # scikit-image's dependency, in the test extra

    page, bad = report
    capsys.readouterr()
    assert cli_module.main(["compare", str(EXAMPLE), str(bad), "--per-layer", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50      # not a blank page

    def count(colour: str) -> int:
        return int(np.count_nonzero(np.all(pixels == hex_colour(colour), axis=-1)))

    from gtt_rules.per_layer import _colour
    worst = next(row for row in rows if row["layer"] == BROKEN)
    healthy = max(rows, key=lambda row: row["sqnr_db"])
    # The broken layer's bar is drawn red, the best one green, each a solid block of pixels.
    assert _colour(worst) == "#c62828" and count(_colour(worst)) > 13 * 20
    assert count(_colour(healthy)) > 13 * 200
    # The bars share one left edge, and the longest is the best layer's.
    red = np.argwhere(np.all(pixels == hex_colour(_colour(worst)), axis=-1))
    green = np.argwhere(np.all(pixels == hex_colour(_colour(healthy)), axis=-1))
    assert red[:, 1].min() == green[:, 1].min()
    assert green[:, 1].max() - green[:, 1].min() > 5 * (red[:, 1].max() - red[:, 1].min())

    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.count("<rect ") == len(rows)
    assert dom.count("<tr") == len(rows) + 1
    for row in rows:
        assert f">{sqnr_text(row)}</td>" in dom and f'title="{row["layer"]}"' in dom
    assert f'<tr class="worst"><td>{[r["layer"] for r in rows].index(BROKEN) + 1}</td>' in dom
    assert "TF_ENABLE_ONEDNN_OPTS=0" in dom
