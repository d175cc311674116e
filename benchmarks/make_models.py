"""Generate the large frozen Keras models the benchmarks run (git-ignored, built on demand).

    python benchmarks/make_models.py [--only inception_v3] [--out DIR] [--force]

A thin CLI over tests/keras_models.py, the builder the tests use too: keras.applications networks
with random weights and random, non-trivial batch-norm statistics, frozen without Grappler. Writes
NAME.pb and a NAME.json sidecar in the fixtures' format. Existing files are kept unless --force.
Needs tensorflow (test extra).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from keras_models import MODELS, build, write  # noqa: E402

from gtt_rules.engine.proto import graph_def_pb2  # noqa: E402

MODELS_DIR = HERE / "models"
DEFAULT = ["inception_v3", "mobilenet_v2"]      # resnet50 is built only when asked for


def _describe(path: pathlib.Path) -> str:
    nodes = len(graph_def_pb2.GraphDef.FromString(path.read_bytes()).node)
    return f"{path.stem:14s} {path.stat().st_size / 1e6:8.1f} MB {nodes:6d} nodes"


def make(name: str, out: pathlib.Path, force: bool) -> None:
    path = out / f"{name}.pb"
    if path.exists() and not force:
        print(f"{_describe(path)}  (exists, kept; --force rebuilds)")
        return
    start = time.perf_counter()
    write(build(name), out)
    print(f"{_describe(path)}  built in {time.perf_counter() - start:.1f} s -> {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(MODELS),
                        help=f"build only this model (repeatable; default: {', '.join(DEFAULT)})")
    parser.add_argument("--out", type=pathlib.Path, default=MODELS_DIR,
                        help=f"output directory (default: {MODELS_DIR})")
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    args = parser.parse_args(argv)
    for name in args.only or DEFAULT:
        make(name, args.out, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
