"""Bad input stops the play before anything changes, with a clear message."""

from __future__ import annotations

import pytest

from conftest import CONFIG, DB, converge, lab, said, sha256


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('{"aide_extra_paths": ["etc/relative"]}', "is not a usable path"),
        ('{"aide_extra_paths": ["/etc/../root"]}', "is not a usable path"),
        ('{"aide_extra_excluded_paths": ["/var/log/*"]}', "is not a usable path"),
        ('{"aide_database_dir": "/etc/celery-kit/db"}', "neither below nor above the protected path"),
        ('{"aide_check_on_calendar": "every tuesday-ish"}', "not a valid systemd OnCalendar expression"),
        ('{"celery_kit_protected_files_changed": "yes"}', "must be true or false"),
        ('{"aide_syslog_facility": "kern"}', "aide_syslog_facility"),
        ('{"aide_report_max_files": 0}', "aide_report_max_files must be at least 1"),
    ],
)
def test_bad_input_is_refused_before_any_change(extra, message):
    host = lab()
    config_before, db_before = sha256(CONFIG), sha256(DB)
    proc = converge("-e", extra)
    assert proc.returncode != 0
    assert said(proc, message)
    assert said(proc, "changed=0")
    assert (sha256(CONFIG), sha256(DB)) == (config_before, db_before)
    assert host.file(CONFIG).exists
