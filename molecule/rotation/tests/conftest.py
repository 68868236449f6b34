"""Puts molecule/shared on sys.path (kit_testlib) and prints the rotation figures at the end of the run."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))

#: One line per rotation: tasks sent / run / rejected and the time it took (for the lead's note).
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures even when pytest captures the tests' output (molecule verify)."""
    if FIGURES:
        terminalreporter.section("rotation figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
