"""Tampering with the baseline database itself is detected."""

from __future__ import annotations

from conftest import (
    DB,
    EXIT_BASELINE,
    MODULE,
    RECORD,
    controller_record,
    converge,
    in_auth_log,
    lab,
    run_scheduled_check,
    said,
    sha256,
)


def test_database_cannot_be_written_while_immutable():
    res = lab().run(f"echo junk >> {DB}")
    assert res.rc != 0
    assert "Operation not permitted" in res.stderr


def test_modified_database_is_refused_by_the_scheduled_check():
    host = lab()
    good = sha256(DB)
    host.check_output(f"chattr -i {DB} && cp -p {DB} /root/db.bak && printf junk >> {DB}")
    try:
        report = run_scheduled_check()
        assert report.exit == EXIT_BASELINE, report.lines
        assert any("FAILED" in line and "does not match the recorded sha256" in line for line in report.lines)
        assert in_auth_log("nothing was checked")
    finally:
        host.check_output(f"cp -p /root/db.bak {DB} && chattr +i {DB}")
    assert sha256(DB) == good


def test_rebuilt_database_with_forged_host_record_is_caught_by_the_controller():
    """Root on the host hides a change by rebuilding the database and its record."""
    host = lab()
    good = controller_record()
    host.check_output(
        f"cp -p {DB} /root/db.bak && chattr -i {DB} {RECORD}"
        f" && echo 'import os  # backdoor' >> {MODULE}"
        f" && aide --init --config /etc/aide/celery-kit.conf >/dev/null"
        f" && mv /var/lib/celery-kit-aide/celery-kit.db.new {DB}"
        f" && sha256sum {DB} > {RECORD}")
    # The host alone is fooled: that is why the controller keeps a record.
    assert run_scheduled_check().exit == 0
    proc = converge("--tags", "aide_run")
    assert proc.returncode != 0
    assert said(proc, f"differs from the controller record {good}")
    assert said(proc, "cannot be trusted")
    assert controller_record() == good


def test_deleted_database_is_not_a_first_run():
    host = lab()
    host.check_output(f"chattr -i {DB}; rm -f {DB}")
    proc = converge()
    assert proc.returncode != 0
    assert said(proc, "is missing")
    assert not host.file(DB).exists


def test_operator_restores_trust_explicitly():
    proc = converge("-e", "aide_update_baseline=true")
    assert proc.returncode == 0
    assert sha256(DB) == controller_record()
    assert run_scheduled_check().exit == 0
    assert in_auth_log("reasons=aide_update_baseline is true")
