"""The expiry alarm: a daily timer that logs expiring and expired kit certificates to syslog.

The real certificates are never touched: certificates made on the host with
chosen end dates are handed to the same check the timer runs. Each alarm has
its positive twin (a healthy certificate logs no alarm, the real run passes).
"""

from __future__ import annotations

import uuid

import pytest
import testinfra
from kit_testlib import Case, assert_verdict, lab, probe_certificate, run_preflight_cases

CHECK = "/usr/local/sbin/celery-kit-cert-expiry"
UNIT = "celery-kit-cert-expiry"
TAG = "celery-kit-pki"

@pytest.fixture(scope="module")
def host() -> testinfra.host.Host:
    return lab("pki-worker")


def _journal(host: testinfra.host.Host, priority: str, needle: str) -> list[str]:
    out = host.check_output(f"journalctl -t {TAG} -p {priority} --no-pager -o cat")
    return [line for line in out.splitlines() if needle in line]


def test_timer_is_enabled_and_scheduled(host):
    assert host.service(f"{UNIT}.timer").is_enabled
    assert host.service(f"{UNIT}.timer").is_running
    assert host.file(CHECK).mode == 0o755 and host.file(CHECK).user == "root"


def test_the_real_certificates_pass_the_scheduled_check(host):
    """Positive twin: the unit itself runs on the host's real certificates and reports them checked."""
    host.check_output(f"systemctl start {UNIT}.service")
    assert host.run(f"systemctl is-failed {UNIT}.service").stdout.strip() != "failed"
    lines = _journal(host, "info", "certificate files checked:")
    assert lines and lines[-1].endswith("failed=0"), lines
    # Every certificate the role lists on the host, plus the CA bundle.
    listed = set(host.file("/etc/ssl/celery-kit-certificates.list").content_string.split())
    assert len(listed) >= 2, listed
    assert f"files={len(listed | {'/etc/ssl/certs/celery-kit-ca.pem'})}" in lines[-1], (lines[-1], listed)
    assert not _journal(host, "warning", "certificate expire")


def test_a_certificate_expiring_within_the_window_logs_a_warning(host):
    path, cn = probe_certificate(host, 2.5)
    result = host.run(f"{CHECK} {path}")
    assert result.rc == 0, result.stderr
    lines = _journal(host, "warning", f"path={path}")
    assert len(lines) == 1 and lines[0].startswith("certificate expires soon:"), lines
    assert f"CN={cn}" in lines[0] and "days_left=2" in lines[0]
    # A warning, not an error.
    assert not _journal(host, "err", f"path={path}")


def test_a_certificate_outside_the_window_logs_nothing(host):
    """Positive twin of the warning: the probe certificate type itself is fine when far from its end."""
    path, _ = probe_certificate(host, 200)
    assert host.run(f"{CHECK} {path}").rc == 0
    assert not _journal(host, "warning", f"path={path}")


def test_an_expired_certificate_logs_an_error_and_fails_the_check(host):
    path, cn = probe_certificate(host, -3)
    result = host.run(f"{CHECK} {path}")
    assert result.rc == 1
    lines = _journal(host, "err", f"path={path}")
    assert len(lines) == 1 and lines[0].startswith("certificate expired:") and f"CN={cn}" in lines[0], lines


def test_an_unreadable_certificate_logs_an_error(host):
    path = f"/tmp/not-a-cert-{uuid.uuid4().hex[:8]}.pem"
    host.check_output(f"echo garbage > {path}")
    assert host.run(f"{CHECK} {path}").rc == 1
    assert _journal(host, "err", f"certificate unreadable: path={path}")


ALARM_CASES = [
    Case("alarm-good", "pki", "pki-broker", {"pki_expiry_alarm_on_calendar": "*-*-* 03:00:00"}, None),
    Case("alarm-bad-calendar", "pki", "pki-broker", {"pki_expiry_alarm_on_calendar": "every tuesday-ish"},
         'pki_expiry_alarm_on_calendar "every tuesday-ish" must be a valid systemd OnCalendar expression'),
    Case("alarm-zero-window", "pki", "pki-broker", {"pki_expiry_warning_days": 0},
         "pki_expiry_warning_days (0) a positive number of days"),
]


@pytest.fixture(scope="module")
def alarm_verdicts():
    return run_preflight_cases(ALARM_CASES)


@pytest.mark.parametrize("case", ALARM_CASES, ids=lambda c: c.name)
def test_alarm_settings_are_checked_before_anything_changes(case, alarm_verdicts):
    assert_verdict(case, alarm_verdicts[case.name])
