"""The converged host: AIDE installed, baseline protected, a clean check."""

from __future__ import annotations

import hashlib

from conftest import (
    CONFIG,
    CONTROLLER_DB,
    DB,
    KEY,
    MODULE,
    RECORD,
    TAG,
    UNIT,
    controller_record,
    in_auth_log,
    lab,
    run_scheduled_check,
    sha256,
)


def test_aide_comes_from_debian_without_debian_daily_job():
    host = lab()
    assert host.package("aide").is_installed
    assert host.run("systemctl is-enabled dailyaidecheck.timer").stdout.strip() == "masked"


def test_config_is_root_only_and_accepted_by_aide():
    host = lab()
    conf = host.file(CONFIG)
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o600)
    assert host.run(f"aide --config-check --config {CONFIG}").rc == 0
    # Only strong hashes: no md5/sha1/tiger etc. in the rules.
    for weak in ("md5", "sha1", "rmd160", "tiger", "crc32", "haval", "whirlpool", "gost"):
        assert weak not in conf.content_string


def test_rules_cover_the_kit_and_skip_what_changes_legitimately():
    host = lab()
    for path in (MODULE, KEY, "/etc/systemd/system/celery-worker@.service", "/opt/celery-kit/bin/python3",
                 "/usr/bin/python3", "/etc/rsyslog.d/60-celery-kit-forward.conf", "/etc/nftables.conf",
                 "/etc/rabbitmq/rabbitmq.conf"):
        out = host.check_output(f"aide --config {CONFIG} --path-check=f:{path}")
        # AIDE 0.18 (Debian 12) marks a matched path "[X]", 0.19 (Debian 13) "[x]".
        assert out[:3] in ("[X]", "[x]"), out
    for path in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/var/log/syslog", "/var/lib/rabbitmq/x",
                 "/var/spool/rsyslog/q", "/opt/celery-kit/var/x", "/etc/celery-kit-evil/x", "/etc/sslx"):
        # --path-check exits 1 for an unmatched path.
        out = host.run(f"aide --config {CONFIG} --path-check=f:{path}").stdout
        assert out.startswith("[ ]"), out


def test_database_is_read_only_immutable_and_recorded_on_host_and_controller():
    host = lab()
    db = host.file(DB)
    assert (db.user, db.group, db.mode) == ("root", "root", 0o400)
    assert host.file(RECORD).mode == 0o400
    assert host.file("/var/lib/celery-kit-aide").mode == 0o700
    assert "i" in host.check_output(f"lsattr -d {DB}").split()[0]
    assert "i" in host.check_output(f"lsattr -d {RECORD}").split()[0]
    live = sha256(DB)
    assert host.file(RECORD).content_string.split()[0] == live
    assert controller_record() == live
    with open(CONTROLLER_DB, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == live


def test_database_holds_the_key_owned_by_another_user():
    # The check reads keys owned by celery: the baseline has their hashes.
    out = lab().check_output(f"zcat {DB} | grep -c '^{KEY} '")
    assert out.strip() == "1"


def test_timer_is_enabled_and_scheduled():
    host = lab()
    timer = host.service("celery-kit-aide-check.timer")
    assert timer.is_enabled
    assert timer.is_running
    assert host.check_output("systemctl show -P Persistent celery-kit-aide-check.timer") == "yes"


def test_check_after_converge_reports_no_changes():
    report = run_scheduled_check()
    assert report.exit == 0, report.lines
    assert report.summary == {"changed": 0, "added": 0, "removed": 0, "exit": 0, "context": "scheduled",
                              "files": []}
    assert in_auth_log(f"{TAG}"), "the check's line did not reach syslog (/var/log/auth.log)"


def test_check_runs_sandboxed_without_dac_override():
    host = lab()
    props = host.check_output(f"systemctl show -P CapabilityBoundingSet {UNIT}")
    assert props.split() == ["cap_dac_read_search"]
    assert host.check_output(f"systemctl show -P ProtectSystem {UNIT}") == "strict"
