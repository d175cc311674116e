"""The standard library: the .rules files in this folder (`DIRECTORY`), and the Python functions
and whole-graph passes they call (`REGISTRY`), which a Library is given explicitly."""
from __future__ import annotations

import pathlib

from gtt_rules.rules.registry import Registry

from . import functions, passes

DIRECTORY = pathlib.Path(__file__).resolve().parent
REGISTRY = Registry(functions.REGISTRY, passes.REGISTRY)
