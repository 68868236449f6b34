"""Lab-only load for rotation tests: one batch of signed demo.tasks.add with known ids.

Run as the app user with the app's venv and config module:
    rotation_load.py PREFIX BATCH COUNT [TIMEOUT]
Each call is a new producer process (it loads the signing key the host has
now), sends COUNT tasks with ids PREFIX-BATCH-N, waits for every result and
prints one line per task: "ok ID", or "fail ID ERROR".
"""

from __future__ import annotations

import sys


def main() -> int:
    prefix, batch, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0  # noqa: PLR2004
    from demo.app import app  # hardens the app with the host's current key (or fails closed)

    results = []
    for n in range(count):
        task_id = f"{prefix}-{batch}-{n}"
        results.append((task_id, app.send_task("demo.tasks.add", args=[batch, n], task_id=task_id)))
    for task_id, result in results:
        try:
            result.get(timeout=timeout)
            print(f"ok {task_id}", flush=True)
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            print(f"fail {task_id} {type(exc).__name__}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
