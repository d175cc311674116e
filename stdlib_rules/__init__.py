"""The standard library: the .rules files in this folder (`DIRECTORY`), and the whole-graph
passes and the one Python function they call (`REGISTRY`), which a Library is given explicitly.
Its other functions are rules (`define`s in the .rules files)."""
from __future__ import annotations

import pathlib

from gtt_rules.rules.registry import Registry

from . import functions, passes

DIRECTORY = pathlib.Path(__file__).resolve().parent
REGISTRY = Registry(functions.REGISTRY, passes.REGISTRY)
