"""What progress display costs `apply`: the same command on a terminal (progress drawn) and piped.

    python benchmarks/bench_progress.py [--model benchmarks/models/inception_v3.pb] [--repeat 5]

The terminal is a pseudo-terminal made by util-linux's `script`; piped, stderr is a pipe and
nothing is drawn. Runs alternate, so both see the same machine load; the table gives each run's
wall time and CPU time (user + system, of the command and its children: steadier than wall time
on a shared machine) and the median ratios (target: at most 1.02). Needs the model from
make_models.py.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent


def run(command: list[str], terminal: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    text = shlex.join(command)
    if terminal:
        argv = ["script", "-q", "-e", "-c", text, "/dev/null"]
    else:
        argv = ["sh", "-c", f"{text} 2>&1 | cat > /dev/null"]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   env={**os.environ, "GTT_RULES_CACHE_DIR": ""})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=pathlib.Path, default=HERE / "models" / "inception_v3.pb")
    parser.add_argument("--pipeline", default="optimize_for_inference")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.model.exists():
        sys.exit(f"{args.model}: missing; build it with benchmarks/make_models.py --only inception_v3")
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "gtt_rules", "apply", str(args.model), "-o", f"{folder}/out.pb",
                   "--overwrite", "--pipeline", args.pipeline]
        run(command, False)     # warm the page cache
        times = {True: [], False: []}
        for _ in range(args.repeat):
            for terminal in (True, False):
                times[terminal].append(run(command, terminal))
    print(f"{'run':>4} {'terminal wall s':>16} {'piped wall s':>13} {'terminal CPU s':>15} {'piped CPU s':>12}")
    for i, (a, b) in enumerate(zip(times[True], times[False]), 1):
        print(f"{i:>4} {a[0]:>16.2f} {b[0]:>13.2f} {a[1]:>15.2f} {b[1]:>12.2f}")
    for label, k in (("wall", 0), ("CPU", 1)):
        ratio = statistics.median(t[k] for t in times[True]) / statistics.median(t[k] for t in times[False])
        print(f"median {label} time, terminal / piped: {ratio:.3f} (target <= 1.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
