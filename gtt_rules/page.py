"""The self-contained HTML pages the tool writes (`diff --html`, `apply --report`,
`compare --per-layer --html`): templates of this package, with one shared stylesheet."""
from __future__ import annotations

import re
from importlib import resources


def fill(template: str, values: dict[str, str]) -> str:
    """Page template `template` with its `{{name}}` slots filled from `values` (HTML, escaped by
    the caller); `{{style}}` is the stylesheet every page shares."""
    files = resources.files("gtt_rules")
    values = {"style": files.joinpath("page.css").read_text(encoding="utf-8").rstrip("\n"), **values}
    text = files.joinpath(template).read_text(encoding="utf-8")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)
