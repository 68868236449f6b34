"""Demo tasks: one harmless, one with a side effect an attacker would want."""

from __future__ import annotations

import os
from pathlib import Path

from demo.app import app

#: Where ``dangerous`` leaves its trace; the lab's tests watch this file.
DANGEROUS_PATH = Path(os.environ.get("DEMO_DANGEROUS_PATH", "/var/lib/celery-kit/demo/dangerous-ran"))


@app.task(name="demo.tasks.add")
def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y


@app.task(name="demo.tasks.dangerous")
def dangerous(marker: str, suffix: str = "") -> str:
    """Append ``marker + suffix`` to :data:`DANGEROUS_PATH`: stands for any task with side effects.

    It takes the same arguments as :func:`add` on purpose: a message for
    ``add`` re-targeted to ``dangerous`` would run if nothing stopped it.
    """
    with DANGEROUS_PATH.open("a", encoding="utf-8") as out:
        out.write(f"{marker}{suffix}\n")
    return str(DANGEROUS_PATH)
