"""``python -m security_lib audit --app module:app [--json]``."""

from __future__ import annotations

import sys

from .audit import main


def _run(argv: list[str]) -> int:
    if not argv or argv[0] != "audit":
        print("usage: python -m security_lib audit --app module:app [--json]", file=sys.stderr)  # noqa: T201
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_run(sys.argv[1:]))
