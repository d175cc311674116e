"""An on-disk cache of what is slow to rebuild from .rules text: the parser tables and parsed files.

Parsing the standard library takes ~0.2 s (pure-Python LALR over ~17,000 tokens) and building the
parser tables ~0.13 s; loading them from here takes ~25 ms and ~10 ms. Each entry is named by a
hash of its input and of everything else that shapes it: the sources of this package's grammar,
parser and syntax tree, lark's version and Python's. That is stricter than the package version (an
editable install keeps its version while the code changes), so an entry is never stale. Entries
are written atomically; when the directory cannot be written, nothing is cached.
$GTT_RULES_CACHE_DIR picks the directory; empty turns caching off.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pathlib
import pickle
import secrets
import sys

from lark import Lark, __version__ as lark_version

_SOURCES = ("rules.lark", "parser.py", "ast.py", "cache.py")


def directory() -> pathlib.Path | None:
    """Where entries live, or None when caching is off."""
    configured = os.environ.get("GTT_RULES_CACHE_DIR")
    if configured is not None:
        return pathlib.Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = pathlib.Path(base) / "gtt-rules"
    return folder if folder.is_absolute() else None  # no home directory: keep the working one clean


@functools.lru_cache(maxsize=1)
def _fingerprint() -> bytes | None:
    digest = hashlib.sha256(f"{lark_version} {sys.version_info[:2]}".encode())
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
    return f"{kind}-{hashlib.sha256(fingerprint + text.encode('utf-8')).hexdigest()}"


def load(name: str | None):
    """The cached value, or None."""
    folder = directory()
    if name is None or folder is None:
        return None
    try:
        with open(folder / name, "rb") as f:
            return pickle.load(f)
    except Exception:  # missing or unreadable: rebuild it
        return None


def store(name: str | None, value) -> None:
    """Write an entry atomically (no reader sees half of it)."""
    folder = directory()
    if name is None or folder is None:
        return
    temporary = _temporary(folder / name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, folder / name)
    except OSError:
        pass  # a read-only or full disk only costs speed
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def lark(grammar: str, **options) -> Lark:
    """A Lark parser for `grammar`, its tables loaded from the cache when there."""
    name = entry_name("parser", grammar)
    if name is None:
        return Lark(grammar, **options)
    path = directory() / name
    if path.is_file():  # lark checks the grammar hash it stored, and rebuilds on a mismatch
        return Lark(grammar, cache=str(path), **options)
    # Lark writes its cache file in place: have it write a private file, then move that into place.
    temporary = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Lark(grammar, **options)
    parser = Lark(grammar, cache=str(temporary), **options)  # lark skips the write if it fails
    try:
        os.replace(temporary, path)
    except OSError:
        pass
    return parser


def _temporary(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
