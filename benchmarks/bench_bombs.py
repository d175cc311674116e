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
import struct
import subprocess
import sys
import tempfile
import zlib

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from test_security_limits import const, fill, op, placeholder  # noqa: E402  (the tests' builders)


def _write(folder: pathlib.Path, name: str, lines: list[str]) -> str:
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _nested_adds(folder: pathlib.Path, levels: int = 20) -> tuple[str, str]:
    pattern = "Sqrt(x0)"
    for i in range(1, levels + 1):
        pattern = f"AddV2({pattern}, x{i})"
    rules = folder / "deep.rules"
    rules.write_text(f"rule deep:\n    n = {pattern}\n    => n -> Identity(x1)\n")
    lines = [placeholder("p"), placeholder("q"), op("a0", "AddV2", "p", "q"), op("b0", "AddV2", "q", "p")]
    for i in range(1, 39):
        lines += [op(f"a{i}", "AddV2", f"a{i-1}", f"b{i-1}"), op(f"b{i}", "AddV2", f"b{i-1}", f"a{i-1}")]
    lines.append(op("out", "AddV2", "a38", "b38"))
    return _write(folder, "adds.pbtxt", lines), str(rules)


def _shape_chain(folder: pathlib.Path, n: int) -> str:
    float_attr = 'attr { key: "T" value { type: DT_FLOAT } }'
    lines = [placeholder("y0", [2, 3])]
    for i in range(1, n + 1):
        lines += [f'node {{ name: "s{i}" op: "Shape" input: "y{i-1}" {float_attr} }}',
                  f'node {{ name: "y{i}" op: "Reshape" input: "y{i-1}" input: "s{i}" {float_attr} }}']
    return _write(folder, f"chain{n}.pbtxt", lines)


def _nested_funcs(folder: pathlib.Path, depth: int = 200) -> str:
    inner = 'func { name: "f" }'
    for _ in range(depth):
        inner = f'func {{ name: "f" attr {{ key: "a" value {{ {inner} }} }} }}'
    return _write(folder, "deep.pbtxt", [f'node {{ name: "n" op: "NoOp" attr {{ key: "g" value {{ {inner} }} }} }}'])


def _zip_bomb(folder: pathlib.Path, size: int = 5 * 2**28) -> str:
    """A .npz whose one member declares `size` bytes of zeros and deflates to about a thousandth."""
    samples = folder / "samples"
    samples.mkdir()
    header = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + \
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % ((size - 128) // 4)).ljust(117).encode() + b"\n"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(header)
    chunk = bytes(2**20)
    for _ in range((size - len(header)) // len(chunk)):
        data += compressor.compress(chunk)
    data += compressor.compress(bytes((size - len(header)) % len(chunk))) + compressor.flush()
    name = b"x.npy"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, 0, len(data), size, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, 0, len(data), size,
                          len(name), 0, 0, 0, 0, 0, 0)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name),
                      len(local) + len(name) + len(data), 0)
    (samples / "bomb.npz").write_bytes(local + name + data + central + name + end)
    return str(samples)


def bombs(folder: pathlib.Path) -> dict[str, list[str]]:
    """Each bomb's command line (after the program name), its files made in `folder`."""
    eight_bit = str(HERE.parent / "tests" / "fixtures" / "graphs" / "quantized_ops.pb")
    adds, deep_rules = _nested_adds(folder)
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
        "shapes: chain of 2,000 Shape": ["apply", _shape_chain(folder, 2000), "--rules", "fold_constants", "-o", out, "--overwrite"],
        "shapes: chain of 8,000 Shape": ["apply", _shape_chain(folder, 8000), "--rules", "fold_constants", "-o", out, "--overwrite"],
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
        print(f"| bomb | exit | wall s | peak MB | last line |\n|---|---|---:|---:|---|")
        for name, argv in cases.items():
            if args.only and not any(part in name for part in args.only.split(",")):
                continue
            code, wall, peak, said = measure(args.gtt_rules, argv, args.timeout)
            print(f"| {name} | {code} | {wall} | {peak} | {said.replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
