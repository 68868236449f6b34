"""Tamper detection: hand-made changes are reported by the timer's check."""

from __future__ import annotations

from conftest import (
    CHECK,
    EXIT_CHANGED,
    EXIT_MISSING,
    EXIT_OK,
    STATUS,
    TABLE,
    journal_since,
    lab,
    mark_journal,
    wait_for,
)

HOST = "fw-client"


def _check_unit_status() -> int:
    out = lab(HOST).check_output("systemctl show -p ExecMainStatus --value celery-kit-fw-check.service")
    return int(out.strip() or -1)


def _run_check_unit() -> int:
    """Run the check exactly as the timer does, and return its exit code."""
    lab(HOST).run("systemctl start celery-kit-fw-check.service")
    return _check_unit_status()


def _rule_handle(chain: str, needle: str) -> str:
    for line in lab(HOST).check_output(f"nft -a list chain {TABLE} {chain}").splitlines():
        if needle in line and "# handle" in line:
            return line.rsplit("# handle", 1)[1].strip()
    raise AssertionError(f"no rule with {needle!r} in chain {chain}")


def test_clean_table_passes_the_check():
    assert _run_check_unit() == EXIT_OK


def test_deleted_rule_is_reported(restored):
    host = lab(HOST)
    marker = mark_journal(HOST)
    restored.append(HOST)
    handle = _rule_handle("input", 'comment "ssh"')
    host.check_output(f"nft delete rule {TABLE} input handle {handle}")
    assert _run_check_unit() == EXIT_CHANGED
    log = journal_since(HOST, marker)
    assert "TAMPER: table inet celery_kit_fw differs from the applied baseline" in log
    assert 'comment "ssh"' in log  # the removed rule itself travels to syslog
    status = host.run(STATUS)
    assert status.rc == EXIT_CHANGED
    assert "verdict: CHANGED" in status.stdout


def test_added_rule_is_reported(restored):
    host = lab(HOST)
    restored.append(HOST)
    host.check_output(f"nft insert rule {TABLE} input tcp dport 4444 accept")
    assert host.run(CHECK + " --no-syslog").rc == EXIT_CHANGED


def test_deleted_table_is_reported_by_the_timer(restored):
    host = lab(HOST)
    marker = mark_journal(HOST)
    restored.append(HOST)
    host.check_output(f"nft delete table {TABLE}")
    # The lab's timer fires every 10 s: its own next run must report it.
    log = wait_for(
        lambda: "is missing" in journal_since(HOST, marker) and journal_since(HOST, marker),
        45,
    )
    assert log, "the timer's check did not report the missing table within 45 s"
    assert "TAMPER: table inet celery_kit_fw is missing" in log
    assert _check_unit_status() == EXIT_MISSING
    assert host.run(STATUS).rc == EXIT_MISSING
    # Priority err, so it stands out on the log server.
    errors = host.run("journalctl -q --no-pager -t celery-kit-fw -p err -o cat").stdout
    assert "TAMPER: table inet celery_kit_fw is missing" in errors


def test_broken_ruleset_file_never_replaces_the_working_table(restored):
    host = lab(HOST)
    restored.append(HOST)
    path = "/etc/celery-kit-fw/ruleset.nft"
    host.check_output(f"cp -p {path} /root/ruleset.good")
    try:
        broken = "table inet celery_kit_fw\\ndelete table inet celery_kit_fw\\nthis is not nft\\n"
        host.check_output(f"printf '{broken}' > {path}")
        assert host.run("systemctl restart celery-kit-fw.service").rc != 0
        # The old table is still loaded, unchanged, and the baseline was kept.
        assert host.run(CHECK + " --no-syslog").rc == EXIT_OK
        assert 'comment "ssh"' in host.check_output(f"nft list table {TABLE}")
    finally:
        host.check_output(f"cp -p /root/ruleset.good {path}")
