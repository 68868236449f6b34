"""Send one signed task through the hardened reports app and print its result.

Usage: ``reports-send TASK [ARG ...] [--timeout SECONDS]``. Arguments are JSON
when they parse as JSON, strings otherwise. Exit status 0 with the result as
JSON on stdout, 1 when the task failed or no result came back in time.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``reports-send``."""
    parser = argparse.ArgumentParser(prog="reports-send", description=__doc__.splitlines()[0])
    parser.add_argument("task", help="registered task name, e.g. reports.tasks.total")
    parser.add_argument("args", nargs="*", help="positional arguments (JSON or text)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    options = parser.parse_args(argv)

    from reports.app import app  # the import hardens the app (or fails closed)

    result = app.send_task(options.task, args=[_arg(a) for a in options.args])
    try:
        value = result.get(timeout=options.timeout)
    except Exception as exc:  # noqa: BLE001 - report any failure as exit 1
        print(json.dumps({"id": result.id, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps({"id": result.id, "result": value}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
