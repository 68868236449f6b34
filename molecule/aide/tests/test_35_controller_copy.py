"""The controller's copy of the database: a missing or stale copy is reported and fetched again."""

from __future__ import annotations

import hashlib
import os

from conftest import CONTROLLER_DB, DB, converge, said, sha256


def controller_copy_sha256() -> str:
    with open(CONTROLLER_DB, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_controller_copy_matches_the_host_database():
    """Positive twin: after a clean converge the copy is the host's database, byte for byte."""
    assert controller_copy_sha256() == sha256(DB)


def test_missing_controller_copy_is_reported_and_fetched_again():
    os.remove(CONTROLLER_DB)
    proc = converge()
    assert proc.returncode == 0
    assert said(proc, "is missing; fetching it again from the host")
    assert controller_copy_sha256() == sha256(DB)


def test_stale_controller_copy_is_reported_and_fetched_again():
    with open(CONTROLLER_DB, "ab") as handle:
        handle.write(b"stale")
    proc = converge()
    assert proc.returncode == 0
    assert said(proc, "not the recorded")
    assert controller_copy_sha256() == sha256(DB)


def test_intact_controller_copy_is_left_alone():
    """Negative twin of the repair: nothing is reported or fetched when the copy is right."""
    before = os.stat(CONTROLLER_DB).st_mtime_ns
    proc = converge()
    assert proc.returncode == 0
    assert not said(proc, "fetching it again from the host")
    assert os.stat(CONTROLLER_DB).st_mtime_ns == before
