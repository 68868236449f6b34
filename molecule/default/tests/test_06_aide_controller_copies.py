"""Every host's AIDE database reached the controller intact, though all hosts fetched at once.

The scenario's prepare empties the controller's AIDE folder, and site.yml
converges every managed host in parallel: the race that once stored one
host's database under another's name (or lost it) shows here.
"""

from __future__ import annotations

import hashlib
import pathlib

import pytest

from conftest import MANAGED, get_host

CONTROLLER_AIDE = pathlib.Path.home() / ".local/share/celery-kit/lab/aide"
HOST_DB = "/var/lib/celery-kit-aide/celery-kit.db"


@pytest.mark.parametrize("name", MANAGED)
def test_controller_copy_is_the_hosts_own_database(name: str) -> None:
    copy = CONTROLLER_AIDE / name / "celery-kit.db"
    assert copy.is_file(), f"no controller copy for {name} at {copy}"
    on_host = get_host(name).check_output(f"sha256sum {HOST_DB}").split()[0]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == on_host
    record = (CONTROLLER_AIDE / f"{name}.sha256").read_text().split()[0]
    assert record == on_host


def test_copies_differ_between_hosts() -> None:
    """Positive twin: the hosts' databases are distinct, so a swapped copy would be seen."""
    digests = {hashlib.sha256((CONTROLLER_AIDE / n / "celery-kit.db").read_bytes()).hexdigest() for n in MANAGED}
    assert len(digests) == len(MANAGED)
