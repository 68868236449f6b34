"""Right after converge, before any test touches a file: the firewall's
tamper check and AIDE's scheduled check both report a clean host."""

from __future__ import annotations

import pytest

from conftest import MANAGED, get_host


@pytest.mark.parametrize("name", MANAGED)
def test_firewall_and_aide_report_a_clean_host(name):
    host = get_host(name)
    assert host.run("/usr/local/sbin/celery-kit-fw-status").rc == 0
    check = host.run("systemctl start celery-kit-aide-check.service")
    assert check.rc == 0, host.check_output("journalctl -u celery-kit-aide-check -n 20 --no-pager")
