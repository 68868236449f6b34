"""Send signed demo.tasks.record tasks with known ids through the hardened demo app.

Run on the client as the app user, with the app's venv and config module::

    runuser -u celery-demo -- env PYTHONPATH=/etc/celery-kit/demo \\
        /opt/celery-kit/demo/venv/bin/python /usr/local/lib/cluster_send.py \\
        --count 2000 --tag T --out /tmp/sent.json

Each task's id is ``<tag>-<n>`` (n from 0). The app publishes with confirms
(``confirm_publish``): a send returns once the broker confirmed the message,
or raises. A send that raised is counted and sent again with the same id
(a copy the broker did confirm after all is refused by the worker's replay
check, so it cannot run twice). Prints and writes JSON: ids confirmed, the
sends that raised (and how many of each error), the last error, the wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between sends")
    parser.add_argument("--seconds", type=float, default=0.0, help="how long each task sleeps")
    parser.add_argument("--slow-every", type=int, default=0, help="only every Nth task sleeps (0: all)")
    parser.add_argument("--countdown", type=float, default=0.0, help="countdown of each task (eta)")
    parser.add_argument("--max-errors", type=int, default=200)
    options = parser.parse_args(argv)

    from demo.app import app  # the import hardens the app (or fails closed)

    confirmed: list[str] = []
    errors = 0
    last_error = ""
    kinds: collections.Counter[str] = collections.Counter()
    start = time.monotonic()
    for n in range(options.count):
        task_id = f"{options.tag}-{n}"
        slow = options.slow_every == 0 or n % options.slow_every == 0
        extra = {"countdown": options.countdown} if options.countdown else {}
        while True:
            try:
                app.send_task(
                    "demo.tasks.record",
                    args=[options.seconds if slow else 0.0],
                    task_id=task_id,
                    ignore_result=True,
                    **extra,
                )
            except Exception as exc:  # noqa: BLE001 - every failure is counted and the send retried
                errors += 1
                last_error = f"{type(exc).__name__}: {exc}"
                kinds[last_error[:160]] += 1
                if errors > options.max_errors:
                    break
                time.sleep(0.5)
                continue
            confirmed.append(task_id)
            break
        if errors > options.max_errors:
            break
        if options.pace:
            time.sleep(options.pace)
    report = {
        "confirmed": len(confirmed),
        "errors": errors,
        "last_error": last_error,
        "error_kinds": dict(kinds),
        "seconds": round(time.monotonic() - start, 1),
        "ids": confirmed,
    }
    with open(options.out, "w", encoding="utf-8") as out:
        json.dump(report, out)
    print(json.dumps({k: v for k, v in report.items() if k != "ids"}))
    return 0 if len(confirmed) == options.count else 1


if __name__ == "__main__":
    sys.exit(main())
