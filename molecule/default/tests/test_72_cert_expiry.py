"""The pki role's expiry alarm reaches the log server (issue 14).

A probe certificate made on the worker with a chosen end date is handed to
the same check the daily timer runs; the warning or error line must arrive
on the log server. Positive twin: the timer's own run over the worker's real
certificates logs its summary there with nothing failed.
"""

from __future__ import annotations

from kit_testlib import probe_certificate

from conftest import get_host, wait_for_remote_line

CHECK = "/usr/local/sbin/celery-kit-cert-expiry"
UNIT = "celery-kit-cert-expiry"


def _remote_lines(logserver, needle: str) -> list[str]:
    return wait_for_remote_line(logserver, needle).splitlines()


def test_the_scheduled_check_of_the_real_certificates_reaches_the_log_server(logserver):
    worker = get_host("kit-worker")
    since = worker.check_output("date +%s")
    worker.check_output(f"systemctl start {UNIT}.service")
    local = worker.check_output(f"journalctl -t celery-kit-pki --since @{since} --no-pager -o cat")
    summary = [line for line in local.splitlines() if line.startswith("certificate files checked:")]
    assert summary and summary[-1].endswith("failed=0"), local
    assert "certificate expire" not in local, local
    assert any("failed=0" in line for line in _remote_lines(logserver, summary[-1]))


def test_an_expiring_certificate_warns_on_the_log_server(logserver):
    worker = get_host("kit-worker")
    path, cn = probe_certificate(worker, 3.5)
    assert worker.run(f"{CHECK} {path}").rc == 0
    lines = _remote_lines(logserver, f"CN={cn}")
    assert any("certificate expires soon:" in line and "days_left=3" in line for line in lines), lines


def test_an_expired_certificate_is_an_error_on_the_log_server(logserver):
    worker = get_host("kit-worker")
    path, cn = probe_certificate(worker, -1)
    assert worker.run(f"{CHECK} {path}").rc == 1
    lines = _remote_lines(logserver, f"CN={cn}")
    assert any("certificate expired:" in line for line in lines), lines
