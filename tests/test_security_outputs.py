"""What the tool writes, and what it prints: one output writer for every file (devices, FIFOs,
symlinks and `-` as what they are; modes kept; no input overwritten; nothing left behind on errors
and signals), and user text that cannot break or rewrite the terminal (issue 12)."""
from __future__ import annotations

import io
import json
import os
import resource
import signal
import stat
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib

import numpy as np
import pytest

from conftest import fixture_path
from gtt_rules.cli import main
from gtt_rules.cli_run import summarize_array
from gtt_rules.engine.graph import Graph
from gtt_rules.engine.proto import graph_def_pb2 as pb

GRAPH = fixture_path("tf1_conv_bn")
EIGHT_BIT = fixture_path("quantized_ops")
IS_ROOT = os.geteuid() == 0


def cli(*args: str, cwd=None, env_extra=None, **popen) -> subprocess.CompletedProcess:
    """The command line in a child process, as a user runs it (bytes out, text err)."""
    env = {**os.environ, "GTT_RULES_CACHE_DIR": "", **(env_extra or {})}
    result = subprocess.run([sys.executable, "-m", "gtt_rules", *map(str, args)], capture_output=True,
                            cwd=cwd, env=env, **popen)
    result.stderr = result.stderr.decode("utf-8", "replace")
    return result


def one_error_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gtt-rules: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def expected_bytes() -> bytes:
    return Graph.load(GRAPH).to_bytes()


# ---- devices, FIFOs, symlinks and `-` -----------------------------------------------------------

def _device(tmp_path, name: str, minor: int) -> str:
    """A character device to write to: our own node of /dev/<name> as root (replacing it must not
    touch the machine's), else /dev/<name> itself."""
    if not IS_ROOT:
        return f"/dev/{name}"
    path = tmp_path / name
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    return str(path)


def test_a_device_is_written_to_and_stays_a_device(tmp_path):
    null = _device(tmp_path, "null", 3)
    before = listing(tmp_path)
    assert main(["apply", str(GRAPH), "-o", null, "--transforms", "remove_device"]) == 0
    assert stat.S_ISCHR(os.stat(null).st_mode)
    assert listing(tmp_path) == before      # no temp file beside it


def test_a_full_device_is_one_error_line(tmp_path, capsys):
    full = _device(tmp_path, "full", 7)
    assert main(["apply", str(GRAPH), "-o", full, "--transforms", "remove_device"]) == 2
    one_error_line(capsys.readouterr().err, f"{full}: cannot write: No space left on device")
    assert stat.S_ISCHR(os.stat(full).st_mode)


def test_a_fifo_gets_the_bytes(tmp_path):
    fifo = tmp_path / "graph.fifo"
    os.mkfifo(fifo)
    received = []

    def read():
        with open(fifo, "rb") as f:
            received.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert main(["apply", str(GRAPH), "-o", str(fifo), "--transforms", "remove_device"]) == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received == [expected_bytes()]
    assert listing(tmp_path) == ["graph.fifo"]


def test_summarize_reads_a_fifo_once(tmp_path, capsys):
    """Telling a package from a plain graph must not open the FIFO: its writer's bytes are for `load`."""
    fifo = tmp_path / "graph.fifo"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "wb") as f:     # blocks until a reader opens it
            f.write(GRAPH.read_bytes())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert main(["summarize", str(fifo), "--json"]) == 0
    writer.join(timeout=30)
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "binary" and summary["nodes"] == len(Graph.load(GRAPH))


def test_a_symlink_is_followed_and_kept(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.pb"
    target.write_bytes(b"old")
    target.chmod(0o644)
    link = tmp_path / "link.pb"
    link.symlink_to(os.path.join("real", "model.pb"))
    assert main(["apply", str(GRAPH), "-o", str(link), "--transforms", "remove_device"]) == 0
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "model.pb")
    assert target.read_bytes() == expected_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert listing(tmp_path) == ["link.pb", "real"] and listing(tmp_path / "real") == ["model.pb"]


def test_dash_is_stdout(tmp_path):
    result = cli("apply", GRAPH, "-o", "-", "--transforms", "remove_device", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_bytes()
    assert json.loads(result.stderr)["output"] == "-"     # the report steps aside, to stderr
    assert listing(tmp_path) == []


def on_a_terminal(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, bytes]:
    """Run the command line with stdout a terminal (a pty); its result and what the terminal showed."""
    import pty
    leader, follower = pty.openpty()
    shown = bytearray()

    def drain():   # a terminal that nobody reads would block the writer
        while True:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            shown.extend(chunk)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = subprocess.run([sys.executable, "-m", "gtt_rules", *args], stdout=follower, stderr=subprocess.PIPE,
                                text=True, cwd=cwd, env={**os.environ, "GTT_RULES_CACHE_DIR": ""}, timeout=120)
    finally:
        os.close(follower)
        reader.join(10)
        os.close(leader)
    return result, bytes(shown)


@pytest.mark.parametrize("command", [["apply", str(GRAPH), "-o", "-", "--transforms", "remove_nodes(op=Identity)"],
                                     ["memmap", str(GRAPH), "-o", "-"]])
def test_a_binary_graph_is_not_written_to_a_terminal(tmp_path, command):
    result, shown = on_a_terminal(command, tmp_path)
    assert result.returncode == 2
    one_error_line(result.stderr, "refusing to write a binary graph to a terminal")
    assert shown == b"" and listing(tmp_path) == []


def test_run_saves_to_stdout_and_summarizes_on_stderr(tmp_path):
    result = cli("run", GRAPH, "--save", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = np.load(io.BytesIO(result.stdout))
    assert list(saved) == [n.name for n in Graph.load(GRAPH).sinks()]
    assert "saved 1 array to -" in result.stderr
    assert listing(tmp_path) == []


# ---- modes and owners ---------------------------------------------------------------------------

def test_a_new_file_follows_the_umask(tmp_path):
    out = tmp_path / "out.pb"
    old = os.umask(0o027)
    try:
        assert main(["apply", str(GRAPH), "-o", str(out), "--transforms", "remove_device"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_a_replaced_file_keeps_its_mode_and_owner(tmp_path):
    out = tmp_path / "out.pb"
    out.write_bytes(b"old")
    out.chmod(0o644)
    if IS_ROOT:
        os.chown(out, 65534, 65534)
    owner = out.stat().st_uid, out.stat().st_gid
    old = os.umask(0o077)
    try:
        assert main(["apply", str(GRAPH), "-o", str(out), "--transforms", "remove_device"]) == 0
    finally:
        os.umask(old)
    assert out.read_bytes() == expected_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert (out.stat().st_uid, out.stat().st_gid) == owner


# ---- no input overwritten -----------------------------------------------------------------------

RULES = """\
# Identity of an Identity is the inner one.
rule collapse:
    a = Identity(x)
    b = Identity(a)
    => b -> a
"""


def _refused(capsys, args, target, tmp_path, *names):
    before = {name: (tmp_path / name).read_bytes() for name in names}
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, f"{target}: refusing to write over", "--overwrite")
    assert {name: (tmp_path / name).read_bytes() for name in names} == before
    assert listing(tmp_path) == sorted(names)


def test_rules_files_and_the_graph_are_not_overwritten(tmp_path, capsys):
    (tmp_path / "shared.rules").write_text(RULES)
    (tmp_path / "mine.rules").write_text('import "shared.rules"\n')
    (tmp_path / "model.pb").write_bytes(GRAPH.read_bytes())
    (tmp_path / "link.pb").symlink_to("model.pb")
    files = "link.pb", "mine.rules", "model.pb", "shared.rules"
    for out in ("mine.rules", "shared.rules", "link.pb"):      # named, imported, the graph
        args = ["apply", str(tmp_path / "model.pb"), "-o", str(tmp_path / out), "--rules", str(tmp_path / "mine.rules")]
        _refused(capsys, args, tmp_path / out, tmp_path, *files)
    assert main(args[:-2] + ["--rules", str(tmp_path / "shared.rules"), "--overwrite"]) == 0
    assert len(Graph.load(tmp_path / "model.pb")) == len(Graph.load(GRAPH)) - 1   # one Identity less
    assert (tmp_path / "link.pb").is_symlink()


def test_a_min_max_log_is_not_overwritten(tmp_path, capsys):
    log = tmp_path / "ranges.log"
    assert main(["calibrate", str(EIGHT_BIT), "-o", str(tmp_path / "calibrated.pb"), "--random", "1",
                 "--log", str(log)]) == 0
    (tmp_path / "calibrated.pb").unlink()
    capsys.readouterr()
    _refused(capsys, ["apply", str(EIGHT_BIT), "-o", str(log), "--transforms",
                      f"freeze_requantization_ranges(min_max_log_file={log})"], log, tmp_path, "ranges.log")


def test_a_sample_is_not_overwritten(tmp_path, capsys):
    samples = tmp_path / "samples"
    samples.mkdir()
    spec = Graph.load(EIGHT_BIT).placeholders()[0]
    shape = [max(size, 1) for size in spec.get_attr("shape")]
    sample = samples / "a.npz"
    np.savez(sample, **{spec.name: np.zeros(shape, np.float32)})
    before = sample.read_bytes()
    out = str(tmp_path / "out.pb")
    for outputs in (["-o", str(sample)], ["-o", out, "--log", str(sample)]):
        assert main(["calibrate", str(EIGHT_BIT), "--feed-dir", str(samples), *outputs]) == 2
        one_error_line(capsys.readouterr().err, f"{sample}: refusing to write over {sample}")
        assert sample.read_bytes() == before
        assert listing(tmp_path) == ["samples"] and listing(samples) == ["a.npz"]


# ---- signals and OS errors leave nothing behind -------------------------------------------------

_SLOW_SAVE = """
import sys, time
from gtt_rules.engine import graph_io
from gtt_rules.engine.graph import Graph

def slow(graph, f):
    f.write(b"x" * 4096)
    f.flush()
    print("writing", flush=True)
    while True:
        time.sleep(0.05)

graph = Graph.load(sys.argv[1])
graph_io.write_binary = slow
graph.save(sys.argv[2])
"""


def _signals_as_in_a_terminal():
    # A test run started in the background (`cmd &` in a script) ignores SIGINT, and so would the
    # child, which keeps an ignored signal ignored: the child starts as a terminal would start it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


def test_a_signal_mid_write_leaves_no_temp_file(tmp_path):
    out = tmp_path / "out.pb"
    for signum in (signal.SIGTERM, signal.SIGINT):      # what `timeout` and Ctrl-C send
        child = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(GRAPH), str(out)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=_signals_as_in_a_terminal)
        try:
            assert child.stdout.readline() == b"writing\n"
            assert len(listing(tmp_path)) == 1      # the temp file, mid-write
            child.send_signal(signum)
            child.wait(timeout=60)
        finally:
            child.kill()
            child.wait()
        assert child.returncode == -signum      # the signal still ends the process, as it would have
        assert listing(tmp_path) == []


def _limited_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))


def test_a_file_too_large_for_its_limit_is_one_error_line(tmp_path):
    """A full disk, as far as the writer can tell: write() fails midway (EFBIG past RLIMIT_FSIZE;
    Python ignores SIGXFSZ)."""
    out = tmp_path / "out.pb"
    result = cli("apply", GRAPH, "-o", out, "--transforms", "remove_device", preexec_fn=_limited_file_size)
    assert result.returncode == 2
    one_error_line(result.stderr, f"{out}: cannot write: File too large")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("where", ["parent is a file", "folder nobody may write"])
def test_an_unwritable_place_is_one_error_line(tmp_path, capsys, where):
    if where == "parent is a file":
        (tmp_path / "file").write_bytes(b"")
        out, message = tmp_path / "file" / "out.pb", "is not a folder"
    else:
        out, message = "/sys/out.pb", "cannot write: Permission denied"   # even root may not
    assert main(["apply", str(GRAPH), "-o", str(out), "--transforms", "remove_device"]) == 2
    one_error_line(capsys.readouterr().err, f"{out}: ", message)
    assert not os.path.exists(out)
    assert listing(tmp_path) == (["file"] if where == "parent is a file" else [])


def test_an_unwritable_place_fails_before_the_work(monkeypatch, capsys):
    """Even as root, whom permission bits do not stop: the folder is probed before loading."""
    def no_work(*args, **kwargs):
        raise AssertionError("the graph was loaded before the output was checked")
    monkeypatch.setattr(Graph, "load", no_work)
    assert main(["apply", str(GRAPH), "-o", "/sys/out.pb", "--transforms", "remove_nodes(op=Identity)"]) == 2
    one_error_line(capsys.readouterr().err, "/sys/out.pb: cannot write: Permission denied")
    assert not [name for name in os.listdir("/sys") if name.startswith(".gtt-rules-probe")]


def test_a_graph_that_fails_to_save_leaves_no_min_max_log(tmp_path, capsys, monkeypatch):
    from gtt_rules.errors import GttRulesError
    from gtt_rules.engine import validation
    def refuse(graph):
        raise GttRulesError("the graph is invalid (simulated)")
    monkeypatch.setattr(validation, "check", refuse)
    assert main(["calibrate", str(EIGHT_BIT), "-o", str(tmp_path / "calibrated.pb"), "--random", "1",
                 "--log", str(tmp_path / "ranges.log")]) == 2
    one_error_line(capsys.readouterr().err, "the graph is invalid (simulated)")
    assert listing(tmp_path) == []


def test_the_writer_names_os_errors_itself(tmp_path):
    """Through the API, without the command line's early checks."""
    from gtt_rules.errors import GttRulesError
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(GttRulesError, match="file/out.pb: cannot write: Not a directory"):
        Graph.load(GRAPH).save(tmp_path / "file" / "out.pb")
    assert listing(tmp_path) == ["file"]


# ---- memory --------------------------------------------------------------------------------------

def test_the_run_summary_makes_no_copy_of_an_output():
    value = np.arange(2**22, dtype=np.float32)[::-1]     # 16 MB, and a strided view
    tracemalloc.start()
    try:
        summary = summarize_array("out", value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak
    assert (summary["min"], summary["max"], summary["first"][0]) == (0.0, 2**22 - 1, 2**22 - 1)


def test_out_of_memory_is_one_error_line(capsys, monkeypatch):
    def exhausted(*args):
        raise MemoryError
    monkeypatch.setattr("gtt_rules.cli_run.summarize_array", exhausted)
    assert main(["run", str(GRAPH)]) == 2
    one_error_line(capsys.readouterr().err, "gtt-rules: error: out of memory")


def zip_bomb(path, unpacked: int) -> None:
    """A .npz whose one member, an honest float32 array of `unpacked` bytes of zeros, deflates to
    about a thousandth of that: one compressed MB of zeros, repeated (each block is flushed whole,
    so every copy is the same bytes). Its CRC is left 0: zipfile checks it only after unpacking."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (unpacked // 4,)})
    header = header.getvalue()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    megabyte = bytes(2**20)
    first = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    step = compressor.compress(megabyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    data = first + step * (unpacked // 2**20) + compressor.flush()
    name, size = b"input.npy", len(header) + unpacked
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, 0, len(data), size, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, 0, len(data), size,
                          len(name), 0, 0, 0, 0, 0, 0)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name),
                      len(local) + len(name) + len(data), 0)
    path.write_bytes(local + name + data + central + name + end)


def test_a_zip_bomb_sample_is_refused_before_it_unpacks(tmp_path, capsys):
    samples = tmp_path / "samples"
    samples.mkdir()
    bomb = samples / "bomb.npz"
    zip_bomb(bomb, 5 * 2**28)      # 1.25 GiB of zeros in about 1.3 MB
    assert bomb.stat().st_size < 2 * 2**20
    assert main(["calibrate", str(EIGHT_BIT), "-o", str(tmp_path / "out.pb"), "--feed-dir", str(samples)]) == 2
    one_error_line(capsys.readouterr().err, f"{bomb}: its arrays unpack to 1.25 GiB, over the memory "
                                            f"budget of 1 GiB (--max-memory raises it)")
    assert listing(tmp_path) == ["samples"]


# ---- terminal output ----------------------------------------------------------------------------

HOSTILE = "x[/bold]\x1b[2J\u202e"     # rich markup, a screen-clearing escape, a bidi override
SHOWN = "x[/bold]\\x1b[2J\\u202e"


def _hostile_graph(folder):
    """in -> out, both named with HOSTILE text, in a file whose name opens a markup tag."""
    graph_def = pb.GraphDef()
    source = graph_def.node.add(name="in" + HOSTILE, op="Placeholder")
    source.attr["dtype"].type = 1
    source.attr["shape"].shape.dim.add(size=3)
    sink = graph_def.node.add(name="out" + HOSTILE, op="Identity", input=[source.name])
    sink.attr["T"].type = 1
    path = folder / "g[bold].pb"
    path.write_bytes(graph_def.SerializeToString())
    return path


@pytest.mark.parametrize("command", ["summarize", "run", "compare"])
def test_hostile_names_are_shown_as_text(tmp_path, command):
    graph = _hostile_graph(tmp_path)
    args = [graph, graph] if command == "compare" else [graph]
    result = cli(command, *args, env_extra={"COLUMNS": "300"})   # no name folded over two lines
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "\x1b" not in out and "\u202e" not in out
    assert "g[bold].pb" in out and f"out{SHOWN}" in out


def test_an_error_excerpt_is_shown_as_text(tmp_path):
    rules = tmp_path / "bad.rules"
    rules.write_text("rule r:\n    a = Identity(x) \x1b[2J ]\n    => a -> x\n")
    result = cli("check", rules)
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\\x1b[2J" in result.stderr


# ---- compare and pipes --------------------------------------------------------------------------

def _identity_graph(folder):
    graph_def = pb.GraphDef()
    x = graph_def.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = 1
    x.attr["shape"].shape.dim.add(size=4)
    y = graph_def.node.add(name="y", op="Identity", input=["x"])
    y.attr["T"].type = 1
    path = folder / "identity.pb"
    path.write_bytes(graph_def.SerializeToString())
    return path


def test_compare_equal_infinities_and_nans_agree(tmp_path):
    graph = _identity_graph(tmp_path)
    feed = tmp_path / "x.npy"
    np.save(feed, np.array([np.inf, -np.inf, np.nan, 1.0], np.float32))
    args = ["compare", str(graph), str(graph), "--feed", f"x={feed}", "--json"]
    assert main(args) == 0
    assert main(args + ["--nan-fails"]) == 1


def test_compare_an_infinity_against_a_number_fails():
    from gtt_rules.cli_run import compare_arrays
    inf = np.array([np.inf, 1.0])
    assert not compare_arrays(inf, np.array([1e308, 1.0]), rtol=1.0, atol=1.0)["within_tolerance"]
    assert not compare_arrays(inf, -inf, rtol=1.0, atol=1.0)["within_tolerance"]
    assert not compare_arrays(np.array([np.nan]), np.array([0.0]), 1.0, 1.0)["within_tolerance"]
    assert compare_arrays(inf, inf.copy(), 0.0, 0.0)["within_tolerance"]


def test_a_closed_pipe_ends_quietly():
    for args in (["list"], ["summarize", GRAPH], ["summarize", GRAPH, "--json"]):
        child = subprocess.Popen([sys.executable, "-m", "gtt_rules", *map(str, args)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env={**os.environ, "GTT_RULES_CACHE_DIR": ""})
        child.stdout.close()        # `| head` that has read its line and gone
        err = child.stderr.read()
        assert (child.wait(timeout=120), err) == (0, b""), args
