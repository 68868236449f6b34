"""One source for each shared fact (issue 13): one edit of the log server's port moves the whole stack.

The edit is `log_server_port: 6515`, set for the `logservers` group only, in a second
inventory source (molecule/default/one_source) given next to inventory/lab in the README's
hand re-converge. No forwarding or firewall variable names the port: both read it from
`log_server_export` (docs/architecture.md, "Exports"). The tests run in order:

1. The run succeeds; the log server's rsyslog listens on 6515 and no longer on 6514.
2. Every forwarder's configuration names 6515, a fresh line from each reaches the log
   server, and each has its RELP session on 6515 (positive).
3. The firewall follows: managed hosts reach 6515 on the log server (positive twin); a
   listener put on the old 6514 is unreachable from them (the log server's inbound rule
   moved) and the worker's attempt is dropped and counted by its own egress filter; the
   outsider still reaches nothing (negatives).
4. AIDE absorbs exactly the files the run changed on each host (the day-2 probe of
   test_80_day2, from conftest).
5. A run without the extra source restores 6514: the same files come back byte for byte,
   logs travel on 6514 again, AIDE absorbs that run's files, every host's scheduled
   check is clean and a signed round trip works.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kit_testlib import address, wait_for

from conftest import (
    CONTROLLER_AIDE,
    FORWARDERS,
    MANAGED,
    assert_absorbed_exactly_the_runs_files,
    can_connect,
    get_host,
    recap,
    round_trip,
    sha256,
    site,
    start_watching,
    wait_for_remote_line,
)

LOGSERVER = "kit-logserver"
OLD_PORT = 6514
NEW_PORT = 6515
# The edit: the second inventory source whose group_vars/logservers.yml sets NEW_PORT.
ONE_EDIT = ("-i", "molecule/default/one_source")
RECEIVER_DROPIN = "/etc/rsyslog.d/10-celery-kit-log-server.conf"
RULESET = "/etc/celery-kit-fw/ruleset.nft"
OLD_LISTENER_UNIT = "kit-one-source-old-port"
TABLE = "nft list table inet celery_kit_fw"
EGRESS_COUNTER = "nft list counter inet celery_kit_fw worker_egress_dropped"

# What the tests hand on to the next one (they run in file order).
STATE: dict[str, Any] = {}


def kit_files() -> dict[str, dict[str, str]]:
    """sha256 of every file the port reaches: forwarders' rsyslog.conf, the receiver, each firewall ruleset."""
    files = {name: {RULESET: sha256(name, RULESET)} for name in MANAGED}
    for name in FORWARDERS:
        files[name]["/etc/rsyslog.conf"] = sha256(name, "/etc/rsyslog.conf")
    files[LOGSERVER][RECEIVER_DROPIN] = sha256(LOGSERVER, RECEIVER_DROPIN)
    return files


def rsyslog_ports() -> set[int]:
    """The TCP ports rsyslogd listens on, on the log server."""
    out = get_host(LOGSERVER).check_output("ss -Htlnp")
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if '"rsyslogd"' in line}


def relp_peers(port: int) -> set[str]:
    """Addresses with an established connection to the log server's port."""
    out = get_host(LOGSERVER).check_output(f"ss -Htn state established '( sport = :{port} )'")
    return {line.split()[-1].rsplit(":", 1)[0].removeprefix("[::ffff:").rstrip("]") for line in out.splitlines()}


def assert_logs_travel_on(port: int) -> None:
    """Positive: a fresh line from every forwarder is stored by the log server, over a session on port."""
    marker = f"kit-one-source-{uuid.uuid4()}"
    for name in FORWARDERS:
        get_host(name).check_output(f"logger -t kit-one-source {marker}-{name}")
    logserver = get_host(LOGSERVER)
    for name in FORWARDERS:
        assert f"{marker}-{name}" in wait_for_remote_line(logserver, f"{marker}-{name}", timeout=180), name
    wanted = {address(name) for name in FORWARDERS}
    peers = wait_for(lambda: relp_peers(port) >= wanted and relp_peers(port), 60, 2)
    assert peers >= wanted, f"sessions on {port}: {peers}, forwarders: {wanted}"


def assert_ruleset_names_only(port: int, other: int) -> None:
    """The live tables name the log server's port where the flows need it, and never the other one."""
    for name in (LOGSERVER, "kit-worker"):
        table = get_host(name).check_output(TABLE)
        assert f"dport {port} " in table, f"{name}: no rule for {port}:\n{table}"
        assert f"dport {other} " not in table, f"{name}: a rule for {other} is left:\n{table}"


def test_one_edit_moves_the_log_servers_port_and_aide_absorbs_exactly_the_runs_files() -> None:
    assert rsyslog_ports() == {OLD_PORT}, "the lab must start on the default port"
    STATE["before"] = kit_files()
    marks = start_watching()
    proc = site(*ONE_EDIT)
    assert proc.returncode == 0
    rows = recap(proc)
    assert set(MANAGED) <= set(rows), rows
    assert all(row["failed"] == 0 and row["unreachable"] == 0 for row in rows.values()), rows
    STATE["moved"] = True
    accepted = assert_absorbed_exactly_the_runs_files(marks)
    # The port reached the receiver, every forwarder and both firewalls that name it.
    assert RECEIVER_DROPIN in accepted[LOGSERVER], accepted[LOGSERVER]
    for name in FORWARDERS:
        assert "/etc/rsyslog.conf" in accepted[name], (name, accepted[name])
    for name in (LOGSERVER, "kit-worker"):
        assert RULESET in accepted[name], (name, accepted[name])
    # Hosts whose firewall has no flow towards or from the log server keep their ruleset.
    for name in ("kit-broker", "kit-client"):
        assert sha256(name, RULESET) == STATE["before"][name][RULESET], name


def test_the_log_server_listens_on_the_new_port_only() -> None:
    assert STATE.get("moved"), "the run with the new port did not succeed"
    assert wait_for(lambda: rsyslog_ports() == {NEW_PORT}, 60, 2), rsyslog_ports()
    assert f'port="{NEW_PORT}"' in get_host(LOGSERVER).file(RECEIVER_DROPIN).content_string


def test_every_forwarder_delivers_a_fresh_line_over_the_new_port() -> None:
    assert STATE.get("moved"), "the run with the new port did not succeed"
    for name in FORWARDERS:
        assert f'port="{NEW_PORT}"' in get_host(name).file("/etc/rsyslog.conf").content_string, name
    assert_logs_travel_on(NEW_PORT)


def test_the_firewall_opens_the_new_port_and_closes_the_old_one() -> None:
    assert STATE.get("moved"), "the run with the new port did not succeed"
    assert_ruleset_names_only(NEW_PORT, OLD_PORT)
    logserver = get_host(LOGSERVER)
    client, worker, outsider = get_host("kit-client"), get_host("kit-worker"), get_host("kit-outsider")
    # Something listens on the old port again, so only the firewall can keep hosts out.
    logserver.check_output(
        f"systemd-run --unit {OLD_LISTENER_UNIT} --collect python3 -m http.server {OLD_PORT} --bind 0.0.0.0"
    )
    try:
        assert wait_for(lambda: can_connect(logserver, "127.0.0.1", OLD_PORT), 30), "the stand-in listener did not start"
        # Positive twins: the same probe reaches the receiver on the new port.
        assert can_connect(client, LOGSERVER, NEW_PORT)
        assert can_connect(worker, LOGSERVER, NEW_PORT)
        # Negatives: the log server's inbound rule for the old port is gone ...
        assert not can_connect(client, LOGSERVER, OLD_PORT), "the client reached the old port"
        # ... and the worker's egress filter drops it (counted) before it leaves the worker.
        before = worker.check_output(EGRESS_COUNTER)
        assert not can_connect(worker, LOGSERVER, OLD_PORT), "the worker reached the old port"
        assert worker.check_output(EGRESS_COUNTER) != before, "the worker's egress filter did not count the drop"
        # The outsider is in no flow: the new port is as closed to it as the old one was.
        assert not can_connect(outsider, LOGSERVER, NEW_PORT), "the outsider reached the new port"
    finally:
        logserver.run(f"systemctl stop {OLD_LISTENER_UNIT}")


def test_a_run_without_the_edit_restores_the_lab_as_it_was() -> None:
    assert STATE.get("before"), "nothing recorded before the change"
    marks = start_watching()
    proc = site()
    assert proc.returncode == 0
    STATE["moved"] = False
    accepted = assert_absorbed_exactly_the_runs_files(marks)
    assert RECEIVER_DROPIN in accepted[LOGSERVER], accepted[LOGSERVER]
    # Byte for byte the files of before the change, on every host.
    assert kit_files() == STATE["before"]
    assert wait_for(lambda: rsyslog_ports() == {OLD_PORT}, 60, 2), rsyslog_ports()
    assert_ruleset_names_only(OLD_PORT, NEW_PORT)
    assert_logs_travel_on(OLD_PORT)
    for name in MANAGED:
        assert get_host(name).run("/usr/local/sbin/celery-kit-aide-check").rc == 0, name
        assert not (CONTROLLER_AIDE / f"{name}.pending").exists(), name
    result = round_trip()
    assert result.get("result") == 5, result


@pytest.fixture(autouse=True, scope="module")
def _lab_back_on_its_own_port() -> Any:
    """Whatever fails above, the tests after this file find the lab on its own port."""
    yield
    get_host(LOGSERVER).run(f"systemctl stop {OLD_LISTENER_UNIT}")
    if STATE.get("moved"):
        site()
