"""Demo tasks: one harmless, one with a side effect an attacker would want, one that records its id."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

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


#: Where ``record`` appends the id of each task it ran; the cluster scenario
#: counts executions per id there (lost and duplicated tasks).
RECORD_PATH = Path(os.environ.get("DEMO_RECORD_PATH", "/var/lib/celery-kit/demo/executions"))


@app.task(name="demo.tasks.record", bind=True)
def record(self: Any, seconds: float = 0.0) -> str:
    """Sleep ``seconds``, then append this task's id to :data:`RECORD_PATH`; return the id.

    The id is written once the work is done: a worker killed mid-task leaves
    no line, and a task run twice leaves two. One short ``O_APPEND`` write per
    line keeps the lines of concurrent child processes whole.
    """
    if seconds > 0:
        time.sleep(min(float(seconds), 60.0))
    task_id = str(self.request.id)
    fd = os.open(RECORD_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, f"{task_id}\n".encode())
    finally:
        os.close(fd)
    return task_id
