"""Puts molecule/shared on sys.path so the tests import the kit's test helpers (kit_testlib)."""

import pathlib
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))

from kit_testlib import lab  # noqa: E402 - needs the path above

WORKER_UNIT = "celery-worker@demo"


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
