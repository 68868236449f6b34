"""Lab-only tool for the two-app tests: sign with one app, publish with another.

Runs on a lab client with an app's venv and config module on PYTHONPATH
(``/etc/celery-kit/<app>``), as that app's user. It reuses attack.py's
message builder and raw publisher (same directory).

    crossapp.py build MODULE TASK ARG...   sign TASK(ARG...) with MODULE's app (this app's
                                           signing key); print the message as one JSON line
    crossapp.py publish MODULE             publish the message read on stdin, unchanged, to
                                           the first queue of MODULE's app, with its broker
                                           credentials; print {"ids": [id]}
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from attack import build, publish


def _app(module: str) -> Any:
    return importlib.import_module(module).app  # hardens the app with this host's identity


def main(argv: list[str]) -> int:
    command, module, *rest = argv
    if command == "build":
        print(json.dumps(build(_app(module), rest[0], [json.loads(a) for a in rest[1:]]), default=str))
        return 0
    if command == "publish":
        import celery_kit_config

        app = _app(module)
        message = json.loads(sys.stdin.read())
        queue = celery_kit_config.QUEUES[0]
        message["exchange"] = message["routing_key"] = queue
        publish(app, message)
        print(json.dumps({"ids": [message["id"]]}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
