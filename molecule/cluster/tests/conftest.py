"""Puts molecule/shared on sys.path (kit_testlib), stops the worker for raw-AMQP probes, and prints the failure figures."""

import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))

from kit_testlib import lab  # noqa: E402 - needs the path above

WORKER_UNIT = "celery-worker@demo"

#: One line per failure test (sent / ran / lost / duplicates / send errors), for the issue's note.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures even when pytest captures the tests' output (molecule verify)."""
    if FIGURES:
        terminalreporter.section("cluster failure figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def worker_stopped() -> Iterator[None]:
    """Stop the demo worker while raw-AMQP probes use its queue, start it again after.

    The probes publish unsigned bodies to the app's queue and read them back;
    a running worker would take (and refuse) them first.
    """
    worker = lab("clu-worker")
    worker.check_output(f"systemctl stop {WORKER_UNIT}")
    yield
    worker.check_output(f"systemctl start {WORKER_UNIT}")
