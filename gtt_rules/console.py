"""The one place the command line makes its rich console."""

from __future__ import annotations


def console(stderr: bool = False):
    """A rich console that never hard-wraps printed text.

    Paths and input lists in header lines stay whole when stdout is a pipe or a narrow
    terminal (rich assumes 80 columns off a terminal); tables still fit the width.
    """
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)
