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


def markup(text: object) -> str:
    """`plain(text)`, escaped to show as itself inside rich markup."""
    from rich.markup import escape

    return escape(plain(text))


def console(stderr: bool = False):
    """A rich console that never hard-wraps printed text, and lets a closed pipe end the command.

    Paths and input lists in header lines stay whole when stdout is a pipe or a narrow
    terminal (rich assumes 80 columns off a terminal); tables still fit the width.
    """
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit 1; the reader (`| head`) got what it wanted, and main exits 0.
            self.quiet = True
            raise BrokenPipeError

    return _Console(stderr=stderr, soft_wrap=True)
