"""Where things are, for every test and kit: the repository, tests/data, the HEASoft stand-in, the kits.

Tests live one folder below tests/ (by layer), kits in tests/kit/: nothing else
computes these paths from its own location.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DATA = TESTS / "data"
STANDIN = TESTS / "heasoft_standin"
KIT = TESTS / "kit"
