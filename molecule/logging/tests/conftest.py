"""Helpers of the logging scenario: lab hosts, numbered senders, counting on the server."""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import time
import uuid

# The kit's shared test helpers (molecule/shared/kit_testlib.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from kit_testlib import lab, quote, wait_for  # noqa: E402  (re-exported for the tests)

SERVER = "logging-server"
CLIENT = "logging-client"
REMOTE_FILES = "/var/log/remote/*/syslog.log"

# Delivery figures (sent/received/lost/duplicates) of every delivery test,
# printed at the end of the run and kept in the scenario's ephemeral dir.
FIGURES: dict[str, dict[str, int]] = {}


def marker(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def send_numbered(tag: str, count: int, host: str = CLIENT) -> None:
    """Log COUNT numbered lines through journald (logger -> /dev/log), as services do."""
    lab(host).check_output(f"seq -f 'seq=%06g' 1 {count} | logger -t {tag}")


def received_numbers(tag: str) -> list[int]:
    # imjournal writes the tag as "<tag>[<pid>]:"; rotated files count too.
    out = lab(SERVER).run(f"grep -h -o '{tag}\\[[0-9]*\\]: seq=[0-9]*' {REMOTE_FILES}*").stdout
    return [int(m) for m in re.findall(r"seq=(\d+)", out)]


def wait_for_numbers(tag: str, count: int, timeout: float = 240, settle: float = 5) -> list[int]:
    """Poll the server until every number arrived (or the timeout), then let late duplicates land."""
    wait_for(lambda: len(set(received_numbers(tag))) >= count, timeout, interval=3)
    time.sleep(settle)
    return received_numbers(tag)


def record(name: str, sent: int, numbers: list[int]) -> dict[str, int]:
    distinct = set(numbers)
    figures = {
        "sent": sent,
        "received": len(numbers),
        "distinct": len(distinct),
        "lost": len(set(range(1, sent + 1)) - distinct),
        "duplicates": len(numbers) - len(distinct),
        "out_of_range": len(distinct - set(range(1, sent + 1))),
    }
    FIGURES[name] = figures
    return figures


def found_on_server(text: str, timeout: float = 60, path: str = REMOTE_FILES) -> bool:
    return wait_for(
        lambda: lab(SERVER).run(f"grep -rqF --exclude-dir=journal -e {quote(text)} {path}").rc == 0,
        timeout, interval=2)


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("logging delivery figures")
    for name, figures in FIGURES.items():
        terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    directory = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if directory:
        with open(os.path.join(directory, "delivery-figures.json"), "w", encoding="utf-8") as handle:
            json.dump(FIGURES, handle, indent=2)
