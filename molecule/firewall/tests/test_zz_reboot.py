"""Persistence: after a restart of the container the table is back at boot.

Runs last (file name): the restarted worker may come back with another
address, which other hosts' allowlists would not know.
"""

from __future__ import annotations

import subprocess

from conftest import CHECK, EXIT_OK, TABLE, lab, tcp_reachable, wait_for


def test_table_is_loaded_at_boot():
    subprocess.run(
        ["docker", "restart", "-t", "3", "fw-worker"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    host = lab("fw-worker")
    # Right after the start systemd may not answer on its bus yet.
    state = wait_for(
        lambda: host.run("systemctl is-system-running --wait").stdout.strip(),  # noqa: PLW0108
        90,
    )
    assert state in ("running", "degraded"), host.run("systemctl --failed --no-pager").stdout
    assert (
        host.service("celery-kit-fw.service").is_running
        or host.run("systemctl is-active celery-kit-fw.service").stdout.strip() == "active"
    )
    assert "worker_egress_dropped" in host.check_output(f"nft -s list table {TABLE}")
    assert host.run(CHECK + " --no-syslog").rc == EXIT_OK
    # Egress is still filtered (the outsider's listener does not depend on the worker).
    assert tcp_reachable("fw-client", "fw-outsider", 8080)
    assert not tcp_reachable("fw-worker", "fw-outsider", 8080)
