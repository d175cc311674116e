"""The one place the command line makes its rich console, and makes user text safe to show.

Names, paths, excerpts and messages come from files anyone can write. Before they reach a terminal,
`plain` makes their control characters visible (an ESC could rewrite the screen, a newline forge a
line), and `markup` also makes rich's markup inert (a node named `x[/bold]` must not style, or
break, the table it is shown in).
"""
from __future__ import annotations


def plain(text: object) -> str:
    """`text` with every unprintable character (controls, line breaks, bidi overrides) escaped."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


LINE_LIMIT = 400   # characters an error line may take; a cut-off .pbtxt could quote kilobytes of it


def capped(line: str, limit: int = LINE_LIMIT) -> str:
    """`line`, or its start and end around a note of how much was left out, when it is too long to read."""
    if len(line) <= limit:
        return line
    head, tail = limit * 2 // 3, limit // 4
    return f"{line[:head]} [... {len(line) - head - tail:,} characters ...] {line[-tail:]}"


def markup(text: object) -> str:
    """`plain(text)`, escaped to show as itself inside rich markup."""
    from rich.markup import escape

    return escape(plain(text))


_BYTE_UNITS = (("B", 1), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9))


def byte_unit(n: float) -> tuple[str, float]:
    """The unit a byte count reads best in, and its size: (MB, 1e6) for 95.8 MB. Powers of 1000,
    as file managers and the issue tracker's numbers show sizes; one unit for every command."""
    for unit, size in _BYTE_UNITS:
        if abs(n) < 999.95 * size or unit == "GB":    # 999,960 B is 1.0 MB, not 1000.0 KB
            return unit, size
    raise AssertionError("unreachable: GB takes every count")


def human_bytes(n: float) -> str:
    """A byte count as people read it: 95.8 MB, 337.3 KB, 512 B."""
    unit, size = byte_unit(n)
    return f"{n:.0f} B" if size == 1 else f"{n / size:.1f} {unit}"


# Off a terminal, the width tables are laid out in: wide enough that no cell is ever cut or folded.
PIPE_WIDTH = 100_000


def console(stderr: bool = False):
    """A rich console that never hard-wraps printed text, and lets a closed pipe end the command.

    Paths and input lists in header lines stay whole when stdout is a pipe or a narrow
    terminal. On a terminal tables fit its width; into a pipe or a file they print in full, as
    plain text (rich assumes 80 columns there, and would cut names short).
    """
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit 1; the reader (`| head`) got what it wanted, and main exits 0.
            self.quiet = True
            raise BrokenPipeError

    out = _Console(stderr=stderr, soft_wrap=True)
    if not out.is_terminal:
        out.width = PIPE_WIDTH
    return out
