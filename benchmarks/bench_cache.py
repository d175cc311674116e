"""Does the rules cache pay for itself? Whole commands with no cache, a cold cache and a warm one.

    python benchmarks/bench_cache.py [--repeat N]

Each repeat runs every variant once, interleaved, as a fresh `gtt-rules` process; the table gives
the median wall time and the median CPU time (user + system, which the shared machines disturb
less), and each variant's ratio to "no cache" of the same command.
  no cache    GTT_RULES_CACHE_DIR= (parser tables built and every file parsed, each run)
  cold cache  an empty cache folder each run (the same work, plus writing the entries)
  warm cache  a folder filled by an earlier run (tables and syntax trees read back)
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAM = [sys.executable, "-m", "gtt_rules"]


def commands(scratch: pathlib.Path) -> dict[str, list[str]]:
    return {
        "check stdlib_rules/*.rules": ["check", *map(str, sorted((ROOT / "stdlib_rules").glob("*.rules")))],
        "apply optimize_for_inference": ["apply", str(ROOT / "examples" / "mobilenet_tiny.pb"), "-o",
                                         str(scratch / "out.pb"), "--overwrite", "--pipeline",
                                         "optimize_for_inference"],
    }


def timed(arguments: list[str], cache_dir: str) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(PROGRAM + arguments, env={**os.environ, "GTT_RULES_CACHE_DIR": cache_dir},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--repeat", type=int, default=7)
    repeat = options.parse_args().repeat
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        warm, cold = scratch / "warm", scratch / "cold"
        for name, arguments in commands(scratch).items():
            timed(arguments, str(warm))  # fills the warm cache
            samples: dict[str, list[tuple[float, float]]] = {"no cache": [], "cold cache": [], "warm cache": []}
            for _ in range(repeat):
                samples["no cache"].append(timed(arguments, ""))
                shutil.rmtree(cold, ignore_errors=True)
                samples["cold cache"].append(timed(arguments, str(cold)))
                samples["warm cache"].append(timed(arguments, str(warm)))
            base_wall = statistics.median(w for w, _ in samples["no cache"])
            base_cpu = statistics.median(c for _, c in samples["no cache"])
            print(f"\n{name} (median of {repeat})")
            print(f"{'variant':<12} {'wall s':>8} {'ratio':>6} {'cpu s':>8} {'ratio':>6}")
            for variant, runs in samples.items():
                wall = statistics.median(w for w, _ in runs)
                cpu = statistics.median(c for _, c in runs)
                print(f"{variant:<12} {wall:8.3f} {wall / base_wall:6.2f} {cpu:8.3f} {cpu / base_cpu:6.2f}")


if __name__ == "__main__":
    main()
