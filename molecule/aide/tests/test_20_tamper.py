"""Tampering with protected files is reported, never absorbed; kit changes are."""

from __future__ import annotations

import json

from conftest import (
    CERT,
    DB,
    MODULE,
    controller_record,
    converge,
    in_auth_log,
    lab,
    playbook,
    run_scheduled_check,
    said,
    sha256,
    unchanged,
)

NEW_MODULE = json.dumps({"kit_change_content": 'broker_url = "amqps://kit-broker:5671//v2"\n'})


def test_appended_config_module_is_reported_exactly():
    lab().check_output(f"echo 'broker_url = \"amqp://evil//\"' >> {MODULE}")
    report = run_scheduled_check()
    assert report.exit == 4, report.lines
    summary = report.summary
    assert (summary["changed"], summary["added"], summary["removed"]) == (1, 0, 0)
    assert summary["files"] == [MODULE]
    line = f"AIDE check: changed=1 added=0 removed=0 exit=4 context=scheduled files: {MODULE}"
    assert line in report.lines
    assert f"AIDE check: changed: {MODULE}" in " ".join(report.lines)
    assert in_auth_log(line), "the report line is not in syslog (/var/log/auth.log)"


def test_converge_does_not_absorb_tampering():
    before = sha256(DB)
    proc = converge()
    assert proc.returncode != 0
    assert said(proc, "no kit role made in this run")
    assert said(proc, MODULE)
    assert sha256(DB) == before == controller_record()


def test_converge_that_changes_a_protected_file_rebuilds_the_baseline():
    before = sha256(DB)
    proc = playbook("kit_change.yml", "-e", NEW_MODULE)
    assert proc.returncode == 0
    after = sha256(DB)
    assert after != before
    assert controller_record() == after
    # The rebuild leaves an audit trail of what it accepted and why.
    assert in_auth_log(
        f"AIDE check: changed=1 added=0 removed=0 exit=4 context=accepted-by-kit-run files: {MODULE}")
    assert in_auth_log("AIDE baseline rebuilt by celery-kit: sha256=" + after)
    assert run_scheduled_check().summary["changed"] == 0


def test_same_kit_change_again_does_not_rebuild():
    before = sha256(DB)
    proc = playbook("kit_change.yml", "-e", NEW_MODULE)
    assert proc.returncode == 0
    assert unchanged(proc), "a converge without changes must change nothing"
    assert sha256(DB) == before


def test_replaced_certificate_is_reported_exactly():
    host = lab()
    host.check_output(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=evil"
        " -keyout /tmp/evil.key -out /tmp/evil.pem 2>/dev/null"
        f" && mv /tmp/evil.pem {CERT}")
    report = run_scheduled_check()
    assert report.exit == 4, report.lines
    assert report.summary["files"] == [CERT]
    assert (report.summary["changed"], report.summary["added"], report.summary["removed"]) == (1, 0, 0)
    assert in_auth_log(f"files: {CERT}")


def test_added_binary_removed_file_and_loosened_directory_are_reported():
    host = lab()
    host.check_output("cp /usr/bin/true /usr/local/bin/evil && rm /etc/rsyslog.d/60-celery-kit-forward.conf"
                      " && chmod 0755 /etc/ssl/private")
    # Legitimate churn below an exclusion is not reported.
    host.check_output("mkdir -p /opt/celery-kit/var && date > /opt/celery-kit/var/state")
    report = run_scheduled_check()
    # AIDE sums its exit bits: 1 added + 2 removed + 4 changed.
    assert report.exit == 7, report.lines
    summary = report.summary
    assert summary["files"] == sorted(
        [CERT, "/etc/ssl/private", "/usr/local/bin/evil", "/etc/rsyslog.d/60-celery-kit-forward.conf"])
    assert (summary["changed"], summary["added"], summary["removed"]) == (2, 1, 1)
    assert in_auth_log("AIDE check: added: /usr/local/bin/evil")


def test_operator_accepts_the_current_files_explicitly():
    host = lab()
    host.check_output("rm /usr/local/bin/evil && chmod 0700 /etc/ssl/private"
                      " && echo '# stand-in for the log_forwarding role'"
                      " > /etc/rsyslog.d/60-celery-kit-forward.conf")
    before = sha256(DB)
    proc = converge("-e", "aide_update_baseline=true")
    assert proc.returncode == 0
    assert said(proc, "aide_update_baseline is true")
    after = sha256(DB)
    assert after != before
    assert controller_record() == after
    assert run_scheduled_check().exit == 0
    # And the next plain converge is quiet again.
    proc = converge()
    assert proc.returncode == 0 and unchanged(proc)
