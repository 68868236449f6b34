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
   worker egress destination, a log-forwarding setting, new RabbitMQ passwords);
   it succeeds and AIDE absorbs exactly the files the run changed on each host
   (compared with an independent probe: files whose ctime moved during the run),
   for the reason "another kit role changed protected files".
4. The producer and the worker keep working with the new passwords (a signed round
   trip), and the broker refuses the old ones.
5. The next run without the day-2 file restores the lab's values (passwords too) and
   AIDE again absorbs exactly that run's files; every host's scheduled check is clean.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any

import pytest

from conftest import (
    CONTROLLER_AIDE,
    FORWARDERS,
    HOST_DB,
    LAB_STATE,
    MANAGED,
    ROOT,
    assert_absorbed_exactly_the_runs_files,
    changed_tasks,
    controller_record,
    get_host,
    recap,
    round_trip,
    said,
    sha256,
    site,
    start_watching,
)

CHANGES = "molecule/default/day2/changes.yml"
SECRETS = LAB_STATE / "secrets"
LAB_USERS = ["demo-producer", "demo-worker", "demo-monitor"]
EGRESS = "192.0.2.10"
HAND_CHANGED = ("kit-worker", "/etc/celery-kit-fw/ruleset.nft")
PLANTED = ("kit-client", "/etc/celery-kit/day2-planted.py")

# What the tests hand on to the next one (they run in file order).
STATE: dict[str, Any] = {}


def lab_password(user: str, prefix: str = "") -> str:
    return (SECRETS / f"{prefix}rabbitmq-{user}").read_text().split()[0]


def broker_accepts(user: str, password: str) -> bool:
    cmd = f"rabbitmqctl -q authenticate_user {shlex.quote(user)} {shlex.quote(password)}"
    return get_host("kit-broker").run(cmd).rc == 0


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
    marks = start_watching()
    proc = site("-e", f"@{CHANGES}")
    assert proc.returncode == 0
    rows = recap(proc)
    assert all(row["failed"] == 0 and row["unreachable"] == 0 for row in rows.values()), rows
    accepted = assert_absorbed_exactly_the_runs_files(marks)
    STATE["day2"] = accepted
    # Each change reached its files, and AIDE names them among the accepted ones.
    assert {"/etc/celery-kit-fw/ruleset.nft", "/etc/celery-kit-fw/baseline.nft"} <= accepted["kit-worker"]
    assert EGRESS in get_host("kit-worker").check_output("nft list table inet celery_kit_fw")
    for name in FORWARDERS:
        assert "/etc/rsyslog.conf" in accepted[name], name
        assert 'action.resumeInterval="20"' in get_host(name).file("/etc/rsyslog.conf").content_string
    for name in ("kit-worker", "kit-client"):
        assert any(p.startswith("/etc/celery-kit/") and "secret" in p for p in accepted[name]), accepted[name]
    # Point 3: the log server's receiver drop-in is the same under both inventories.
    assert not any(p.startswith("/etc/rsyslog.d/") for p in accepted["kit-logserver"]), accepted["kit-logserver"]


def test_apps_use_the_new_passwords_and_the_old_ones_are_refused() -> None:
    result = round_trip()
    assert result.get("result") == 5, result
    for user in LAB_USERS:
        assert broker_accepts(user, lab_password(user, "day2-")), user
        assert not broker_accepts(user, lab_password(user)), f"{user}: the old password still works"


def test_run_without_the_day2_file_restores_the_lab() -> None:
    marks = start_watching()
    proc = site()
    assert proc.returncode == 0
    accepted = assert_absorbed_exactly_the_runs_files(marks)
    # The same files change back (the firewall's baseline may differ in what the apply rewrote).
    assert accepted["kit-worker"] >= {"/etc/celery-kit-fw/ruleset.nft"}
    assert EGRESS not in get_host("kit-worker").check_output("nft list table inet celery_kit_fw")
    for name in FORWARDERS:
        assert 'action.resumeInterval="10"' in get_host(name).file("/etc/rsyslog.conf").content_string
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
