"""Puts molecule/shared on sys.path so the tests import the kit's test helpers (kit_testlib)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
