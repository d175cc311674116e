"""The standard library's whole-graph passes (what no pattern can express)."""
from __future__ import annotations
