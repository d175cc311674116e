"""The pages of `diff --html` and `apply --report` in a real browser: headless Chromium draws the
before and after pictures, and the page holds the numbers.

CI installs Chromium from Debian (.ci/run); without it these tests fail rather than skip.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import fixture_path
from test_per_layer_browser import chromium, hex_colour

from gtt_rules.cli import main
from gtt_rules.engine.graph import Graph
from gtt_rules.picture import COLOURS

WIDTH, HEIGHT = 1200, 1400


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """The tiny Keras MobileNet through optimize_for_inference, with its --report page and the
    JSON of the same run."""
    folder = tmp_path_factory.mktemp("report_browser")
    out, page = folder / "out.pb", folder / "report.html"
    assert main(["apply", str(fixture_path("keras_mobilenet_tiny")), "-o", str(out),
                 "--pipeline", "optimize_for_inference", "--report", str(page)]) == 0
    return out, page


def screenshot(tmp_path, page):
    from PIL import Image      # scikit-image's dependency, in the test extra

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    return pixels


def boxes(pixels: np.ndarray, kind: str) -> list[np.ndarray]:
    """The solid boxes the page fills with the colour of nodes of `kind`: for each, the (row,
    column) of its pixels. The legend's 12 x 12 swatches are too small to count."""
    from scipy import ndimage        # scikit-learn's dependency, in the test extra

    labels, count = ndimage.label(np.all(pixels == hex_colour(COLOURS[kind][0]), axis=-1))
    found = [np.argwhere(labels == i) for i in range(1, count + 1)]
    return [box for box in found if len(box) > 12 * 12]


def assert_pictures(pixels: np.ndarray) -> None:
    """Removed nodes drawn only in the left picture (before), added ones only in the right one
    (after), changed nodes in both."""
    removed, added, changed = boxes(pixels, "removed"), boxes(pixels, "added"), boxes(pixels, "changed")
    assert len(removed) >= 3 and len(added) >= 2 and len(changed) >= 2
    split = max(box[:, 1].max() for box in removed)      # the right edge of the "before" picture's boxes
    assert min(box[:, 1].min() for box in added) > split
    assert any(box[:, 1].max() <= split for box in changed) and any(box[:, 1].min() > split for box in changed)


def test_apply_report_draws_both_pictures_and_holds_the_numbers(applied, tmp_path, capsys):
    out, page = applied
    pixels = screenshot(tmp_path, page)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50      # not a blank page
    assert_pictures(pixels)

    capsys.readouterr()
    source = fixture_path("keras_mobilenet_tiny")
    assert main(["apply", str(source), "-o", str(tmp_path / "again.pb"), "--pipeline", "optimize_for_inference",
                 "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    before, after = len(Graph.load(source)), len(Graph.load(out))
    assert f"{before:,} -&gt; {after:,} nodes" in dom
    assert f'<td class="num">{before:,}</td><td class="num">{after:,}</td>' in dom
    assert dom.count("<tr><td>") >= len(stages)
    for i, stage in enumerate(stages, 1):
        assert (f'<tr><td>{i}</td><td>{stage["name"]}</td><td class="num">{stage["nodes_before"]:,} '
                f'→ {stage["nodes_after"]:,}</td>') in dom
        for rule, row in stage["rules"].items():
            if row["fires"]:
                assert f"{rule} ×{row['fires']:,}" in dom


def test_diff_page_draws_both_pictures_and_holds_the_numbers(applied, tmp_path, capsys):
    out, _ = applied
    source = fixture_path("keras_mobilenet_tiny")
    page = tmp_path / "diff.html"
    assert main(["diff", str(source), str(out), "--html", str(page)]) == 0
    capsys.readouterr()
    assert main(["diff", str(source), str(out), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    pixels = screenshot(tmp_path, page)
    assert_pictures(pixels)
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert (f"{diff['before']['nodes']:,} -&gt; {diff['after']['nodes']:,} nodes: {len(diff['added']):,} added, "
            f"{len(diff['removed']):,} removed, {len(diff['changed']):,} changed") in dom
    before, after = diff["before"]["parameters"], diff["after"]["parameters"]
    assert f'<td class="num">{before:,}</td><td class="num">{after:,}</td>' in dom
    for op, row in diff["ops"].items():
        assert f'<tr><td>{op}</td><td class="num">{row["before"]:,}</td><td class="num">{row["after"]:,}</td>' in dom
    removed = len(diff["removed"])
    assert removed > 500 and f"Removed: {removed:,} nodes (first 500 of {removed:,})" in dom     # --json has all
    assert dom.count('<tr class="removed">') == 500 and dom.count('<tr class="added">') == len(diff["added"])
