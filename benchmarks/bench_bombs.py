"""Small hostile files against the resource limits (issue #12): each bomb's exit code, wall time and
peak memory, measured with /usr/bin/time -v on the whole command.

    python benchmarks/bench_bombs.py [--gtt-rules PATH] [--timeout SECONDS] [--only NAME,...]

Target (shared/DESIGN.md, Bounded resources): each bomb ends with a one-line error (exit 2), or does
its legitimate work, in under 10 s and 1 GB. `--gtt-rules` runs another install's command (for
example an older checkout's venv) so that before and after can be compared in one run. The bombs
are built with the same pbtxt builders as tests/test_security_limits.py, which asserts their
messages.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from test_security_limits import const, fill, nested_adds, op, placeholder, shape_chain, write  # noqa: E402
from test_security_outputs import zip_bomb  # noqa: E402  (the tests' builders)


def _write(folder: pathlib.Path, name: str, lines: list[str]) -> str:
    return str(write(folder, name, lines))


def _nested_funcs(folder: pathlib.Path, depth: int = 200) -> str:
    inner = 'func { name: "f" }'
    for _ in range(depth):
        inner = f'func {{ name: "f" attr {{ key: "a" value {{ {inner} }} }} }}'
    return _write(folder, "deep.pbtxt", [f'node {{ name: "n" op: "NoOp" attr {{ key: "g" value {{ {inner} }} }} }}'])


def _zip_bomb(folder: pathlib.Path) -> str:
    samples = folder / "samples"
    samples.mkdir()
    zip_bomb(samples / "bomb.npz", 5 * 2**28)
    return str(samples)


def bombs(folder: pathlib.Path) -> dict[str, list[str]]:
    """Each bomb's command line (after the program name), its files made in `folder`."""
    eight_bit = str(HERE.parent / "tests" / "fixtures" / "graphs" / "quantized_ops.pb")
    adds, deep_rules = map(str, nested_adds(folder))
    out = str(folder / "out.pb")
    return {
        "run: Fill of 4 GiB (tiny file)": ["run", _write(folder, "fill.pbtxt", fill("f", [2**30]) + [op("r", "Relu", "f")])],
        "run: 2 GB random placeholder": ["run", _write(folder, "big_input.pbtxt", [placeholder("x", [500_000_000]), op("r", "Relu", "x")])],
        "run: 300 MB tensors adding up": ["run", _write(folder, "wide.pbtxt", fill("f", [75_000_000]) + [
            op("a", "AddV2", "f", "f"), op("b", "AddV2", "a", "f"), op("c", "AddV2", "b", "a"),
            op("d", "AddV2", "c", "f"), op("e", "AddV2", "d", "a")])],
        "fold: Fill of 10^9 floats": ["apply", _write(folder, "fold_fill.pbtxt", fill("f", [1_000_000_000])),
                                      "--rules", "fold_constants", "-o", out, "--overwrite"],
        "fold: 16384^2 MatMul": ["apply", _write(folder, "matmul.pbtxt", [const("a", [16384, 16384]), const("b", [16384, 16384]),
                                                                           op("m", "MatMul", "a", "b")]),
                                 "--rules", "fold_constants", "-o", out, "--overwrite"],
        "match: 20 nested commutative AddV2": ["apply", adds, "--rules", deep_rules, "-o", out, "--overwrite"],
        "shapes: chain of 2,000 Shape": ["apply", str(shape_chain(folder, 2000)), "--rules", "fold_constants", "-o", out, "--overwrite"],
        "shapes: chain of 8,000 Shape": ["apply", str(shape_chain(folder, 8000)), "--rules", "fold_constants", "-o", out, "--overwrite"],
        "pbtxt: func attrs nested 200 deep": ["summarize", _nested_funcs(folder)],
        "run: placeholder of rank 65": ["run", _write(folder, "rank.pbtxt", [placeholder("x", [1] * 65), op("r", "Relu", "x")])],
        "calibrate: 1.3 MB .npz unpacking to 1.25 GiB": ["calibrate", eight_bit, "-o", out, "--overwrite",
                                                         "--feed-dir", _zip_bomb(folder)],
    }


def measure(program: str, argv: list[str], timeout: float) -> tuple[str, str, str, str]:
    """(exit code, wall seconds, peak MB, last stderr line) of one command under /usr/bin/time -v."""
    try:
        done = subprocess.run(["/usr/bin/time", "-v", program, *argv], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed", f"> {timeout:.0f}", "?", ""
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    seconds = (int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))) if wall else float("nan")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    status = re.search(r"Exit status: (\d+)", done.stderr)
    said = [line for line in done.stderr.splitlines() if line.startswith("gtt-rules:") or "Error" in line]
    return (status.group(1) if status else str(done.returncode), f"{seconds:.2f}",
            f"{int(peak.group(1)) / 1024:.0f}" if peak else "?", said[-1][:110] if said else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    beside = pathlib.Path(sys.executable).with_name("gtt-rules")   # this interpreter's install
    parser.add_argument("--gtt-rules", default=str(beside) if beside.exists() else shutil.which("gtt-rules"),
                        help="the command to run (default: this Python's gtt-rules)")
    parser.add_argument("--timeout", type=float, default=150.0, help="kill a bomb after this many seconds")
    parser.add_argument("--only", help="comma-separated bomb names (substrings)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cases = bombs(pathlib.Path(scratch))
        print("| bomb | exit | wall s | peak MB | last line |\n|---|---|---:|---:|---|")
        for name, argv in cases.items():
            if args.only and not any(part in name for part in args.only.split(",")):
                continue
            code, wall, peak, said = measure(args.gtt_rules, argv, args.timeout)
            print(f"| {name} | {code} | {wall} | {peak} | {said.replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
