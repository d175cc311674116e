"""An on-disk cache of what is slow to rebuild from .rules text: the parser tables and parsed files.

Entries hold plain data (JSON), never code: an entry that is damaged or not of our making is a miss.
Without the cache, building the parser tables takes ~60 ms and parsing the standard library
~120 ms; from here they take ~8 ms and ~20 ms. Each entry is named by a hash of its input and of
everything else that shapes it: the sources of this package's grammar, parser, syntax tree and
cache, lark's version and Python's. That is stricter than the package version (an editable
install keeps its version while the code changes), so an entry is never stale.

The folder is used only when the current user owns it and nobody else can write to it, as pip and
ssh demand of theirs; otherwise, once per process, a one-line warning says why nothing is cached.
Entries are written atomically and never through a symlink. $GTT_RULES_CACHE_DIR (an absolute
path) picks the folder; empty turns caching off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import secrets
import stat
import sys

from lark import Lark, __version__ as lark_version
from lark.grammar import Rule
from lark.lexer import TerminalDef

from . import ast

FORMAT = 1  # the layout of an entry; bump it when that changes
_SOURCES = ("rules.lark", "parser.py", "ast.py", "cache.py")
_MAX_ENTRY_BYTES = 64 << 20  # far above any real entry: a bigger file is not ours


def directory() -> pathlib.Path | None:
    """Where entries live, or None when caching is off."""
    configured = os.environ.get("GTT_RULES_CACHE_DIR")
    if configured is not None:
        if configured and not os.path.isabs(configured):  # it would follow the working directory
            _warn(f"GTT_RULES_CACHE_DIR={configured!r} is not an absolute path; not caching")
            return None
        return pathlib.Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = pathlib.Path(base) / "gtt-rules"
    return folder if folder.is_absolute() else None  # no home directory: keep the working one clean


@functools.lru_cache(maxsize=None)
def _warn(message: str) -> None:
    """Print a warning once per process."""
    print(f"gtt-rules: warning: {message}", file=sys.stderr)


@functools.lru_cache(maxsize=1)
def _fingerprint() -> bytes | None:
    digest = hashlib.sha256(f"{FORMAT} {lark_version} {sys.version_info[:2]}".encode())
    try:
        for name in _SOURCES:
            digest.update(pathlib.Path(__file__).with_name(name).read_bytes())
    except OSError:  # sources not installed: no way to tell an entry is current, so no caching
        return None
    return digest.digest()


def entry_name(kind: str, text: str) -> str | None:
    """The file name of the entry for `text`, or None when caching is off."""
    fingerprint = _fingerprint()
    if fingerprint is None or directory() is None:
        return None
    return f"{kind}-{hashlib.sha256(fingerprint + text.encode('utf-8')).hexdigest()}.json"


@contextlib.contextmanager
def _folder():
    """A descriptor of the cache folder, once it is known to be safe to use, or None. Entries are
    opened relative to it, so the folder checked is the folder used."""
    folder = directory()
    descriptor = None
    if folder is not None:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # missing and not creatable, or not readable: that only costs speed
            descriptor = None
    if descriptor is not None:
        info = os.fstat(descriptor)
        if info.st_uid != os.geteuid():
            problem = "it is not owned by the current user"
        elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problem = "it is writable by other users (chmod go-w it)"
        else:
            problem = None
        if problem:
            os.close(descriptor)
            descriptor = None
            _warn(f"not caching in {folder}: {problem}")
    try:
        yield descriptor
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _read(name: str | None, object_pairs_hook=None):
    """The JSON value of an entry, or None when there is none or it is not a sound entry."""
    if name is None:
        return None
    with _folder() as folder:
        if folder is None:
            return None
        try:  # a symlink or a FIFO planted as an entry is refused, without waiting for a writer
            entry = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        except OSError:
            return None
        try:
            info = os.fstat(entry)
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_ENTRY_BYTES:
                return None
            with os.fdopen(entry, "rb", closefd=False) as f:
                document = json.loads(f.read(), object_pairs_hook=object_pairs_hook)
            version, value = document
            return value if version == FORMAT else None
        except Exception:  # damaged, or not an entry of ours: rebuild it
            return None
        finally:
            os.close(entry)


def _write(name: str | None, value) -> None:
    """Write an entry atomically (no reader sees half of it) into a fresh file, so that no
    symlink is followed; then rename it over whatever has the entry's name."""
    if name is None:
        return
    try:
        data = json.dumps([FORMAT, value], default=_encode_syntax,
                          separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError):  # not plain data: nothing to cache
        return
    with _folder() as folder:
        if folder is None:
            return
        temporary = f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            entry = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                            dir_fd=folder)
            with os.fdopen(entry, "wb") as f:
                f.write(data)
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError:
            pass  # a read-only or full disk only costs speed
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)


# ---- parsed files: an entry is [FORMAT, items], each syntax tree node {"ClassName": [fields]} ----

_SYNTAX_TYPES = {cls.__name__: cls for cls in vars(ast).values()
                 if dataclasses.is_dataclass(cls) and cls is not ast.Module}


def _encode_syntax(node) -> dict:
    if type(node).__name__ not in _SYNTAX_TYPES:
        raise TypeError(f"not a syntax tree node: {type(node).__name__}")
    return {type(node).__name__: [getattr(node, f.name) for f in dataclasses.fields(node)]}


def _decode_syntax(pairs: list) -> object:
    ((name, fields),) = pairs  # anything else is not an entry of ours: a miss
    if not isinstance(fields, list):
        raise ValueError(f"bad fields for {name}")
    return _SYNTAX_TYPES[name](*(_tuples(value) for value in fields))


def _tuples(value):
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def load_syntax(name: str | None) -> list | None:
    """The top-level items of a parsed file, as stored by store_syntax, or None."""
    items = _read(name, _decode_syntax)
    return list(items) if isinstance(items, list) else None


def store_syntax(name: str | None, items: list) -> None:
    """Cache the top-level items of a parsed file."""
    _write(name, items)


# ---- parser tables, in lark's own plain-data form (the one its standalone parsers embed) ----

# Options that hold code or objects: given again on each load, not stored.
_RUNTIME_OPTIONS = ("postlex", "transformer", "lexer_callbacks", "tree_class", "_plugins")


def _integer_keys(pairs: list) -> dict:
    # JSON keys are strings; lark's tables number their states and memo entries.
    return {int(key) if key.isdigit() else key: value for key, value in pairs}


def lark(grammar: str, **options) -> Lark:
    """A Lark LALR parser for `grammar`, its tables loaded from the cache when there."""
    name = entry_name("parser", grammar)
    runtime = {key: value for key, value in options.items() if key in _RUNTIME_OPTIONS}
    tables = _read(name, _integer_keys)
    if tables is not None:
        try:
            return Lark._load_from_dict(tables["data"], tables["memo"], **runtime)
        except Exception:  # tables of another shape: build them again
            pass
    parser = Lark(grammar, **options)
    data, memo = parser.memo_serialize([TerminalDef, Rule])
    data["options"] = {key: value for key, value in data["options"].items() if key not in _RUNTIME_OPTIONS}
    _write(name, {"data": data, "memo": memo})
    return parser
