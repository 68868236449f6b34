"""Reports tasks: one harmless, one with a side effect the lab's tests watch."""

from __future__ import annotations

import os
from pathlib import Path

from reports.app import app

#: Where ``mark`` leaves its trace (the app's home: the worker's only writable place).
MARK_PATH = Path(os.environ.get("REPORTS_MARK_PATH", "/var/lib/celery-kit/reports/marks"))


@app.task(name="reports.tasks.total")
def total(numbers: list[int]) -> int:
    """Return the sum of ``numbers``."""
    return sum(numbers)


@app.task(name="reports.tasks.mark")
def mark(marker: str) -> str:
    """Append ``marker`` to :data:`MARK_PATH`."""
    with MARK_PATH.open("a", encoding="utf-8") as out:
        out.write(f"{marker}\n")
    return str(MARK_PATH)
