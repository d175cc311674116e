"""The one output writer: every file gtt-rules writes (graphs, saved outputs, logs) goes through
`write_output`.

- A regular file, or a new path, is written to a temp file in its folder, flushed, fsynced and
  renamed over it. The temp file is removed on any error, and on SIGTERM, SIGINT or SIGHUP.
- A symlink is followed: its target is replaced, and the link stays.
- A character device or a FIFO is written to directly; `-` means stdout.
- A new file's mode follows the umask; a replaced file keeps its mode (and, as root, its owner).
- Inside `inputs_protected()`, a file the command has read is never written, unless allowed.
- Every OS error is an OutputError naming the path.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import signal
import stat
import sys
import threading
from typing import BinaryIO, Callable

from gtt_rules.errors import OutputError, UsageError

STDOUT = "-"
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


def write_output(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` to write `path` (see the module docstring); complete, or not at all."""
    shown = os.fspath(path)
    if shown == STDOUT:
        stream = sys.stdout.buffer
        write(stream)
        stream.flush()
        return
    target = os.path.realpath(path)
    try:
        try:
            existing = os.stat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            _refuse_inputs(shown, existing)
        if existing is None or stat.S_ISREG(existing.st_mode):
            _replace(target, existing, write)
        elif stat.S_ISCHR(existing.st_mode) or stat.S_ISFIFO(existing.st_mode):
            with open(target, "wb") as f:
                write(f)
        elif stat.S_ISDIR(existing.st_mode):
            raise OutputError("is a directory; give a file name", path=shown)
        else:
            raise OutputError("is not a regular file, a character device or a FIFO", path=shown)
    except OSError as error:
        raise OutputError(f"cannot write: {error.strerror or error}", path=shown) from None


def check_output(text: str, *inputs: str, refusal: str | None = None) -> str:
    """`text`, checked before any work, as `write_output` will check it: not a folder, in a folder
    that exists, and not one of `inputs` or of the files read so far (`refusal` is the message
    for an explicit input). Returns `text`."""
    if text == STDOUT:
        return text
    target = pathlib.Path(os.path.realpath(text))
    if target.is_dir():
        raise UsageError("is a directory; give a file name", path=text)
    if not target.parent.is_dir():
        parent = pathlib.Path(text).parent
        raise UsageError(f"{parent} is not a folder" if target.parent.exists() else
                         f"the folder {parent} does not exist", path=text)
    if target.exists():
        _refuse_inputs(text, target.stat(), inputs, refusal, UsageError)
    if target.exists() and not target.is_file():
        if not os.access(target, os.W_OK):        # a device or a FIFO, opened in place later
            raise UsageError("cannot write: Permission denied", path=text)
    else:
        _probe_folder(target.parent, text)
    return text


def _probe_folder(folder: pathlib.Path, shown: str) -> None:
    """Create and remove a file in `folder`, as the writer's temp file will be: permissions, a
    read-only or full file system fail now, before the work, rather than after it."""
    probe = folder / f".gtt-rules-probe-{secrets.token_hex(6)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except OSError as error:
        raise UsageError(f"cannot write: {error.strerror or error}", path=shown) from None
    probe.unlink()


# ---- inputs -------------------------------------------------------------------------------------

class _Guard:
    """The files one thread opened for reading while a command ran."""

    def __init__(self, allow: bool):
        self.allow = allow
        self.thread = threading.get_ident()
        self.paths: dict[str | bytes, None] = {}


_guard: _Guard | None = None
_hooked = False


@contextlib.contextmanager
def inputs_protected(allow: bool = False):
    """Within: every file this thread opens for reading is an input that no output may replace,
    unless `allow` (the command's --overwrite).

    An audit hook sees each open, so every reader (graphs, .rules files and their imports, logs,
    feeds, samples) is covered without having to report what it reads.
    """
    global _guard, _hooked
    if not _hooked:
        sys.addaudithook(_on_audit_event)   # there is no removing a hook: it idles when no guard
        _hooked = True
    outer, _guard = _guard, _Guard(allow)
    try:
        yield
    finally:
        _guard = outer


def _on_audit_event(event: str, args: tuple) -> None:
    guard = _guard
    if event != "open" or guard is None or guard.thread != threading.get_ident():
        return
    path, _, flags = args
    # Opens that create (our own temp files) or only write are outputs, not inputs.
    if isinstance(path, (str, bytes)) and not flags & (os.O_CREAT | os.O_WRONLY):
        guard.paths[path] = None


def _refuse_inputs(shown: str, existing: os.stat_result, inputs=(), refusal: str | None = None,
                   error=OutputError) -> None:
    """Raise `error` if `existing` is the same file as one of `inputs` (said with `refusal`) or of
    the files read so far, unless the command allows it."""
    if _guard is not None and _guard.allow:
        return
    for source in [*inputs, *(_guard.paths if _guard is not None else ())]:
        try:
            read = os.stat(source)
        except OSError:
            continue
        if (read.st_dev, read.st_ino) == (existing.st_dev, existing.st_ino):
            raise error(refusal if refusal and source in inputs else
                        f"refusing to write over {os.fsdecode(source)}, an input of this command; pass "
                        f"--overwrite to allow it", path=shown)


# ---- the atomic replace -------------------------------------------------------------------------

def _replace(target: str, existing: os.stat_result | None, write: Callable[[BinaryIO], None]) -> None:
    folder, name = os.path.split(target)
    with _signals_raised():
        # A new file gets 0666 less the umask from the kernel; a replaced one starts private and
        # takes the old file's owner and mode before any byte is written.
        fd, temp = _create_temp(folder, name, 0o666 if existing is None else 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                if existing is not None:
                    if os.geteuid() == 0:
                        with contextlib.suppress(PermissionError):  # root squashed on NFS
                            os.fchown(f.fileno(), existing.st_uid, existing.st_gid)
                    os.fchmod(f.fileno(), stat.S_IMODE(existing.st_mode))
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    _sync_folder(folder)


def _create_temp(folder: str, name: str, mode: int) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        temp = os.path.join(folder, f".{name[:100]}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temp, flags, mode), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name in {folder}")


def _sync_folder(folder: str) -> None:
    """Make the rename durable; some file systems cannot sync a folder, which costs nothing."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Signalled(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raised():
    """Within: SIGTERM, SIGINT and SIGHUP raise an exception, so that the cleanup above runs. On
    the way out the signal goes to the handler that was in place, as if it came after the cleanup:
    by default SIGTERM still ends the process, and SIGINT still raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield      # only the main thread may set handlers; its own handlers stay
        return
    received: list[int] = []

    def raise_once(signum, frame):
        received.append(signum)
        if len(received) == 1:      # a second signal must not cut the cleanup short
            raise _Signalled(signum)

    previous = {}
    for signum in _SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None and handler != signal.SIG_IGN:   # an ignored signal stays ignored
            previous[signum] = signal.signal(signum, raise_once)
    try:
        yield
    except _Signalled as signalled:
        _restore(previous)
        previous = {}
        signal.raise_signal(signalled.signum)
        # The handler in place returned: the write was still cut short.
        raise OutputError(f"interrupted by signal {signalled.signum}; nothing written") from None
    finally:
        _restore(previous)


def _restore(handlers: dict) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
