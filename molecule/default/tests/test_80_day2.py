"""Day-2 re-converges by hand, as the README shows: `ansible-playbook -i inventory/lab site.yml`.

The tests run in order against the converged lab and share its state:

1. `--check` right after molecule's converge reports changed=0 on every host: the
   lab inventory (inventory/lab) and molecule's generated one describe the same lab
   (issue 13 point 3), and check mode works on the whole stack.
2. A protected file changed by hand (one changed on the worker, one planted on the
   client) stops the next run at its AIDE start check, naming both; nothing is
   changed or absorbed anywhere. After the planted file is removed and the operator
   accepts the worker's file, runs go on.
3. One run applies the day-2 changes together (molecule/default/day2/changes.yml: a
   third app of the user's own built from a local source folder, a worker egress
   destination, a log-forwarding setting, new RabbitMQ passwords; and the log
   server's port moved by one edit in a second inventory source, one_source/, for
   the logservers group only); the wheelhouse play builds the new app first. The
   run succeeds and AIDE absorbs exactly the files the run changed on each host
   (compared with an independent probe: files whose ctime moved during the run),
   for the reason "another kit role changed protected files".
4. One source for each shared fact (docs/architecture.md, "Exports"): no
   forwarding or firewall variable names the log server's port, yet the receiver
   listens on the new port only, every forwarder delivers over it, and both
   firewalls that name it follow (new port reachable, old one closed and the
   worker's attempt counted, the outsider still refused).
5. The producer and the worker keep working with the new passwords (a signed round
   trip), and the broker refuses the old ones.
6. The added app runs its signed tasks under its own user; it and the demo can use
   neither each other's vhost nor each other's signing key (each refusal with a
   positive twin).
7. The next run without the day-2 file and the second source restores the lab's
   values (passwords, port: the same files byte for byte) and AIDE again absorbs
   exactly that run's files; every host's scheduled check is clean. The added app
   stays deployed (the kit removes no app that leaves the inventory).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from typing import Any

import pytest
from kit_testlib import address, wait_for

from conftest import (
    CONTROLLER_AIDE,
    FORWARDERS,
    HOST_DB,
    LAB_STATE,
    MANAGED,
    REJECTED,
    ROOT,
    amqp,
    assert_absorbed_exactly_the_runs_files,
    can_connect,
    changed_tasks,
    controller_record,
    get_host,
    publish_signed_by_another_app,
    recap,
    round_trip,
    said,
    send_as,
    sha256,
    site,
    start_watching,
    wait_for_app_log,
    wait_for_remote_line,
)

CHANGES = "molecule/default/day2/changes.yml"
SECRETS = LAB_STATE / "secrets"
LAB_USERS = ["demo-producer", "demo-worker", "demo-monitor"]
EGRESS = "192.0.2.10"
HAND_CHANGED = ("kit-worker", "/etc/celery-kit-fw/ruleset.nft")
PLANTED = ("kit-client", "/etc/celery-kit/day2-planted.py")
# The added app (changes.yml) and what it may do.
ADDED = "ledger"
QUEUE = {"demo": "celery", ADDED: "ledger"}

# The one edit: the second inventory source whose group_vars/logservers.yml sets NEW_PORT.
LOGSERVER = "kit-logserver"
OLD_PORT = 6514
NEW_PORT = 6515
ONE_EDIT = ("-i", "molecule/default/one_source")
RECEIVER_DROPIN = "/etc/rsyslog.d/10-celery-kit-log-server.conf"
RULESET = "/etc/celery-kit-fw/ruleset.nft"
OLD_LISTENER_UNIT = "kit-one-source-old-port"
TABLE = "nft list table inet celery_kit_fw"
EGRESS_COUNTER = "nft list counter inet celery_kit_fw worker_egress_dropped"

# What the tests hand on to the next one (they run in file order).
STATE: dict[str, Any] = {}


def lab_password(user: str, prefix: str = "") -> str:
    return (SECRETS / f"{prefix}rabbitmq-{user}").read_text().split()[0]


def broker_accepts(user: str, password: str) -> bool:
    cmd = f"rabbitmqctl -q authenticate_user {shlex.quote(user)} {shlex.quote(password)}"
    return get_host("kit-broker").run(cmd).rc == 0


def lab_command(*argv: str) -> subprocess.CompletedProcess[str]:
    """A command of the README from the repository root, with its ansible.cfg (not molecule's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    proc = subprocess.run(list(argv), cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=1800)
    print(f"$ {shlex.join(argv)}\nrc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return proc


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


def test_check_run_by_hand_right_after_molecules_converge_changes_nothing() -> None:
    proc = site("--check")
    assert proc.returncode == 0
    rows = recap(proc)
    assert set(MANAGED) <= set(rows), rows
    assert all(row["changed"] == 0 and row["failed"] == 0 for row in rows.values()), (rows, changed_tasks(proc))
    for name in MANAGED:
        assert not (CONTROLLER_AIDE / f"{name}.pending").exists(), "--check must write no marker"


def test_hand_changes_between_runs_stop_the_next_run_and_nothing_is_absorbed() -> None:
    worker_name, worker_file = HAND_CHANGED
    client_name, planted = PLANTED
    worker = get_host(worker_name)
    STATE["original"] = worker.file(worker_file).content_string
    rsyslog_before = {name: sha256(name, "/etc/rsyslog.conf") for name in MANAGED}
    dbs = {name: sha256(name, HOST_DB) for name in MANAGED}
    worker.check_output(f"echo '# changed by hand' >> {worker_file}")
    get_host(client_name).check_output(f"echo 'print(1)' > {planted}")
    proc = site("-e", f"@{CHANGES}")
    assert proc.returncode != 0
    assert said(proc, "before this kit run changed anything")
    assert said(proc, worker_file) and said(proc, planted)
    for name in MANAGED:
        # Nothing absorbed, nothing applied (the day-2 values did not arrive), no marker left.
        assert sha256(name, HOST_DB) == dbs[name] == controller_record(name), name
        assert sha256(name, "/etc/rsyslog.conf") == rsyslog_before[name], name
        assert not (CONTROLLER_AIDE / f"{name}.pending").exists(), name
    assert "# changed by hand" in worker.file(worker_file).content_string


def test_after_restoring_and_accepting_the_next_run_goes_on() -> None:
    worker_name, worker_file = HAND_CHANGED
    client_name, planted = PLANTED
    # The planted file goes away without a trace (directories' times are not checked).
    get_host(client_name).check_output(f"rm {planted}")
    # The worker's file gets its content back, but a rewritten file is not the
    # same file to AIDE (its ctime moved): the operator accepts it explicitly.
    worker = get_host(worker_name)
    worker.check_output(f"printf %s {shlex.quote(STATE['original'])} > {worker_file}")
    assert worker.run("/usr/local/sbin/celery-kit-aide-check").rc == 4
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    accept = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            "inventory/lab",
            "playbooks/aide.yml",
            "--limit",
            worker_name,
            "-e",
            "aide_update_baseline=true",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert accept.returncode == 0, accept.stdout[-4000:]
    for name in MANAGED:
        assert get_host(name).run("/usr/local/sbin/celery-kit-aide-check").rc == 0, name


def test_day2_changes_converge_and_aide_absorbs_exactly_the_runs_files() -> None:
    for user in LAB_USERS:
        (SECRETS / f"day2-rabbitmq-{user}").unlink(missing_ok=True)
    assert rsyslog_ports() == {OLD_PORT}, "the lab must start on the default port"
    STATE["before"] = kit_files()
    # The README's order for a new app: the wheelhouse first, then site.yml.
    built = lab_command("ansible-playbook", "-i", "inventory/lab", "playbooks/wheelhouse.yml", "-e", f"@{CHANGES}")
    assert built.returncode == 0
    marks = start_watching()
    proc = site(*ONE_EDIT, "-e", f"@{CHANGES}")
    assert proc.returncode == 0
    rows = recap(proc)
    assert set(MANAGED) <= set(rows), rows
    assert all(row["failed"] == 0 and row["unreachable"] == 0 for row in rows.values()), rows
    STATE["moved"] = True
    accepted = assert_absorbed_exactly_the_runs_files(marks)
    STATE["day2"] = accepted
    # Each change reached its files, and AIDE names them among the accepted ones.
    assert {RULESET, "/etc/celery-kit-fw/baseline.nft"} <= accepted["kit-worker"]
    assert EGRESS in get_host("kit-worker").check_output(TABLE)
    for name in FORWARDERS:
        assert "/etc/rsyslog.conf" in accepted[name], name
        assert 'action.resumeInterval="20"' in get_host(name).file("/etc/rsyslog.conf").content_string
    for name in ("kit-worker", "kit-client"):
        assert any(p.startswith("/etc/celery-kit/") and "secret" in p for p in accepted[name]), accepted[name]
        assert f"/etc/celery-kit/{ADDED}/celery_kit_config.py" in accepted[name], accepted[name]
    # The port reached the receiver, every forwarder and both firewalls that name it.
    assert RECEIVER_DROPIN in accepted[LOGSERVER], accepted[LOGSERVER]
    assert RULESET in accepted[LOGSERVER], accepted[LOGSERVER]
    # Hosts whose firewall has no flow towards or from the log server keep their ruleset.
    for name in ("kit-broker", "kit-client"):
        assert sha256(name, RULESET) == STATE["before"][name][RULESET], name


def test_the_log_server_listens_on_the_new_port_only() -> None:
    assert STATE.get("moved"), "the day-2 run did not succeed"
    assert wait_for(lambda: rsyslog_ports() == {NEW_PORT}, 60, 2), rsyslog_ports()
    assert f'port="{NEW_PORT}"' in get_host(LOGSERVER).file(RECEIVER_DROPIN).content_string


def test_every_forwarder_delivers_a_fresh_line_over_the_new_port() -> None:
    assert STATE.get("moved"), "the day-2 run did not succeed"
    for name in FORWARDERS:
        assert f'port="{NEW_PORT}"' in get_host(name).file("/etc/rsyslog.conf").content_string, name
    assert_logs_travel_on(NEW_PORT)


def test_the_firewall_opens_the_new_port_and_closes_the_old_one() -> None:
    assert STATE.get("moved"), "the day-2 run did not succeed"
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


def test_apps_use_the_new_passwords_and_the_old_ones_are_refused() -> None:
    assert STATE.get("moved"), "the day-2 run did not succeed"
    result = round_trip()
    assert result.get("result") == 5, result
    for user in LAB_USERS:
        assert broker_accepts(user, lab_password(user, "day2-")), user
        assert not broker_accepts(user, lab_password(user)), f"{user}: the old password still works"


def test_added_app_runs_its_signed_tasks_under_its_own_user(client, worker) -> None:
    assert STATE.get("moved"), "the day-2 run did not succeed"
    service = f"celery-worker@{ADDED}.service"
    assert worker.service(service).is_running, worker.run(f"journalctl -u {service} --no-pager -n 50").stdout
    pid = worker.check_output(f"systemctl show -p MainPID --value {service}")
    assert worker.check_output(f"stat -c %U /proc/{pid}") == f"celery-{ADDED}"
    result = send_as(client, ADDED, f"{ADDED}.app", "ledger.tasks.post", "cash", 7)
    assert result.get("result") == "cash:7", result


@pytest.mark.parametrize(("owner", "other"), [("demo", ADDED), (ADDED, "demo")])
def test_added_app_and_the_demo_cannot_publish_into_each_others_vhost(client, owner, other) -> None:
    # Positive twin: the same probe publishes into the owner's own vhost.
    assert amqp(client, owner, "producer", f"/{owner}", op="publish", arg=QUEUE[owner])["allowed"] is True
    result = amqp(client, owner, "producer", f"/{other}", op="publish", arg=QUEUE[other])
    assert result["allowed"] is False, result
    assert re.search(r"ACCESS_REFUSED|NOT_ALLOWED|access to vhost|403|530", result["error"]), result


@pytest.mark.parametrize(("owner", "other"), [("demo", ADDED), (ADDED, "demo")])
def test_added_app_and_the_demo_cannot_consume_each_others_queue(worker, owner, other) -> None:
    assert amqp(worker, owner, "worker", f"/{owner}", op="consume", arg=QUEUE[owner])["allowed"] is True
    assert amqp(worker, owner, "worker", f"/{other}", op="consume", arg=QUEUE[other])["allowed"] is False


@pytest.mark.usefixtures("crossapp_tool")
def test_added_apps_task_signed_with_the_demo_key_is_rejected(client, worker) -> None:
    sent = publish_signed_by_another_app(client, "demo", ADDED, "ledger.tasks.post", "forged", 1)
    line = wait_for_app_log(worker, ADDED, f"id={sent}")
    assert REJECTED in line and "reason=unknown-signer" in line, line
    # Positive twin: the ledger's own signature on the same task runs.
    assert send_as(client, ADDED, f"{ADDED}.app", "ledger.tasks.post", "cash", 1).get("result") == "cash:1"


def test_run_without_the_day2_file_restores_the_lab() -> None:
    assert STATE.get("before"), "nothing recorded before the change"
    marks = start_watching()
    proc = site()
    assert proc.returncode == 0
    STATE["moved"] = False
    accepted = assert_absorbed_exactly_the_runs_files(marks)
    # The same files change back (the firewall's baseline may differ in what the apply rewrote).
    assert accepted["kit-worker"] >= {RULESET}
    assert RECEIVER_DROPIN in accepted[LOGSERVER], accepted[LOGSERVER]
    assert EGRESS not in get_host("kit-worker").check_output(TABLE)
    # Byte for byte the files of before the change, on every host.
    assert kit_files() == STATE["before"]
    for name in FORWARDERS:
        assert 'action.resumeInterval="10"' in get_host(name).file("/etc/rsyslog.conf").content_string
    assert wait_for(lambda: rsyslog_ports() == {OLD_PORT}, 60, 2), rsyslog_ports()
    assert_ruleset_names_only(OLD_PORT, NEW_PORT)
    assert_logs_travel_on(OLD_PORT)
    for name in MANAGED:
        assert get_host(name).run("/usr/local/sbin/celery-kit-aide-check").rc == 0, name
        assert not (CONTROLLER_AIDE / f"{name}.pending").exists(), name
    for user in LAB_USERS:
        assert broker_accepts(user, lab_password(user)), user
    result = round_trip()
    assert result.get("result") == 5, result


@pytest.fixture(autouse=True, scope="module")
def _lab_stays_consistent() -> Any:
    """Whatever fails above, leave no hand change behind for the tests after this file."""
    yield
    client_name, planted = PLANTED
    get_host(client_name).run(f"rm -f {planted}")
    get_host(LOGSERVER).run(f"systemctl stop {OLD_LISTENER_UNIT}")
    if STATE.get("moved"):
        site()
