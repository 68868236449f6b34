"""Two apps side by side on one worker and one client: demo and reports.

Each app has its own user (celery-<app>), vhost, broker users, queues,
keys, signer store and allowlist (inventory/lab/group_vars/all.yml). The
second app's signed round trip works, and neither app can use the other's
vhost, read the other's keys or run tasks signed with the other's key.
Every refusal has a positive twin that shows the same probe sees success.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import uuid

import pytest

from conftest import (
    REJECTED,
    amqp,
    app_journal,
    app_paths,
    publish_signed_by_another_app,
    send_as,
    wait_for_app_log,
)

APPS = ("demo", "reports")
QUEUE = {"demo": "celery", "reports": "reports"}
MARKS = "/var/lib/celery-kit/reports/marks"
PAIRS = list(itertools.permutations(APPS, 2))  # (owner, other)


def send(client, app: str, task: str, *args) -> dict:
    return send_as(client, app, f"{app}.app", task, *args)


def marks(worker) -> list[str]:
    f = worker.file(MARKS)
    return f.content_string.split() if f.exists else []


# --- the second app works ------------------------------------------------------


def test_both_workers_run_under_their_own_user(worker):
    for app in APPS:
        service = f"celery-worker@{app}.service"
        assert worker.service(service).is_running, worker.run(f"journalctl -u {service} --no-pager -n 50").stdout
        pid = worker.check_output(f"systemctl show -p MainPID --value {service}")
        assert worker.check_output(f"stat -c %U /proc/{pid}") == f"celery-{app}"


def test_second_app_signed_round_trip(client, worker):
    result = send(client, "reports", "reports.tasks.total", [1, 2, 3])
    assert result.get("result") == 6, result
    assert result["id"] in app_journal(worker, "reports")
    # The demo's worker never saw it: another vhost, another queue.
    assert result["id"] not in app_journal(worker, "demo")


def test_first_app_round_trip_still_works(client):
    result = send(client, "demo", "demo.tasks.add", 2, 3)
    assert result.get("result") == 5, result


# --- broker: neither app can use the other's vhost -----------------------------


@pytest.mark.parametrize("app", APPS)
def test_producer_publishes_to_its_own_vhost(client, app):
    """Positive twin: the same probe, with the app's own vhost."""
    result = amqp(client, app, "producer", f"/{app}", op="publish", arg=QUEUE[app])
    assert result["allowed"] is True, result


@pytest.mark.parametrize(("owner", "other"), PAIRS)
def test_producer_cannot_open_or_publish_to_the_other_apps_vhost(client, owner, other):
    for op in ("login", "publish"):
        result = amqp(client, owner, "producer", f"/{other}", op=op, arg=QUEUE[other] if op == "publish" else "")
        assert result["allowed"] is False, (op, result)
        assert result["stage"] == "login", result
        assert re.search(r"ACCESS_REFUSED|NOT_ALLOWED|access to vhost|403|530", result["error"]), result


@pytest.mark.parametrize("app", APPS)
def test_worker_consumes_its_own_queue(worker, app):
    """Positive twin (unacked deliveries go back to the queue when the probe closes)."""
    result = amqp(worker, app, "worker", f"/{app}", op="consume", arg=QUEUE[app])
    assert result["allowed"] is True, result


@pytest.mark.parametrize(("owner", "other"), PAIRS)
def test_worker_cannot_consume_the_other_apps_queue(worker, owner, other):
    result = amqp(worker, owner, "worker", f"/{other}", op="consume", arg=QUEUE[other])
    assert result["allowed"] is False, result
    assert result["stage"] == "login", result


# --- signing: a task of one app signed with the other's key does not run -------


def test_reports_task_signed_by_reports_runs(client, worker):
    """Positive twin: the side effect the next test looks for is real."""
    marker = f"legit-{uuid.uuid4()}"
    result = send(client, "reports", "reports.tasks.mark", marker)
    assert result.get("result") == MARKS, result
    assert marker in marks(worker)


@pytest.mark.usefixtures("crossapp_tool")
def test_reports_task_signed_with_the_demo_key_is_rejected(client, worker):
    marker = f"cross-{uuid.uuid4()}"
    sent = publish_signed_by_another_app(client, "demo", "reports", "reports.tasks.mark", marker)
    line = wait_for_app_log(worker, "reports", f"id={sent}")
    assert REJECTED in line, line
    assert "reason=unknown-signer" in line, line
    # Messages are handled in order: once a later legitimate task has a result,
    # the forged one was handled too.
    assert send(client, "reports", "reports.tasks.total", [1, 1]).get("result") == 2
    assert marker not in marks(worker)


# --- files: each app's secrets are its own -------------------------------------


@pytest.mark.parametrize("host_name", ["client", "worker"])
@pytest.mark.parametrize(("owner", "other"), PAIRS)
def test_app_secrets_are_readable_by_their_app_only(request, host_name, owner, other):
    host = request.getfixturevalue(host_name)
    for what, path in app_paths(owner).items():
        assert host.file(path).exists, path
        # Positive twin: the owner's user reads its own file with the same check.
        assert host.run(f"runuser -u celery-{owner} -- test -r {path}").rc == 0, (what, path)
        assert host.run(f"runuser -u celery-{other} -- test -r {path}").rc != 0, (what, path)


@pytest.mark.parametrize(("owner", "other"), PAIRS)
def test_running_worker_cannot_read_the_other_apps_signing_key(worker, owner, other):
    """Inside the worker's own sandbox (mount namespace) and user: what a task could do."""
    pid = worker.check_output(f"systemctl show -p MainPID --value celery-worker@{owner}.service")
    enter = f"nsenter -t {pid} -m -- runuser -u celery-{owner} --"
    assert worker.run(f"{enter} head -c1 {app_paths(owner)['signing key']}").rc == 0
    result = worker.run(f"{enter} head -c1 {app_paths(other)['signing key']}")
    assert result.rc != 0
    assert "Permission denied" in result.stderr or "No such file" in result.stderr, result.stderr


@pytest.mark.parametrize("app", APPS)
def test_both_worker_units_are_sandboxed(worker, app):
    service = f"celery-worker@{app}.service"
    result = worker.run(f"systemd-analyze security --no-pager {service}")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"systemd-analyze security exposure of {service}: {match.group(1)}")
    assert float(match.group(1)) <= 3.0
    status = worker.check_output(
        f"grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/$(systemctl show -p MainPID --value {service})/status"
    )
    assert re.search(r"CapEff:\s+0+$", status, re.M)
    assert re.search(r"NoNewPrivs:\s+1$", status, re.M)


# --- preflight: a bad app list stops the role with a message naming the problem --

PREFLIGHT_PLAY = __file__.rsplit("/tests/", 1)[0] + "/files/preflight_check.yml"
ROLES = __file__.rsplit("/molecule/", 1)[0] + "/roles"
GOOD_APPS = [
    {
        "name": "alpha",
        "requirement": "alpha-app==1.0",
        "source": {"path": "/srv/alpha"},
        "module": "alpha.app",
        "allowed_tasks": {"signer-alpha-producer": ["alpha.tasks.*"]},
    },
    {
        "name": "beta",
        "requirement": "beta-app==2.0",
        "source": {"wheel": "/srv/beta-2.0-py3-none-any.whl"},
        "module": "beta.app",
        "allowed_tasks": {"signer-beta-producer": ["beta.tasks.*"]},
    },
]


# The Python of the pseudo-hosts (the controller's /usr/bin/python3).
LOCAL_PYTHON = subprocess.run(
    ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
    capture_output=True,
    text=True,
    check=True,
).stdout.strip()


def run_preflight(tmp_path, apps: list[dict], pythons: str | None = LOCAL_PYTHON) -> subprocess.CompletedProcess:
    """The role's preflight on two local pseudo-hosts (a worker and a client); nothing is changed.

    pythons: what the wheelhouse records as built for (.celery-kit-pythons), None for no record.
    """
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir(exist_ok=True)
    for name in ("celery-5.7.0", "kombu-5.7.0", "celery_kit_security_lib-0.1.0", "alpha_app-1.0", "beta_app-2.0"):
        (wheels / f"{name}-py3-none-any.whl").touch()
    if pythons is not None:
        (wheels / ".celery-kit-pythons").write_text(pythons + "\n")
    (tmp_path / "hosts.ini").write_text(
        "[brokers]\nb1 ansible_connection=local\n[workers]\nw1 ansible_connection=local\n[clients]\nc1 ansible_connection=local\n"
    )
    users = [f"{n}-{side}" for n in ("alpha", "beta") for side in ("producer", "worker", "monitor")]
    variables = {
        "celery_app_apps": apps,
        "celery_app_wheelhouse_dir": str(wheels),
        "rabbitmq_apps": [
            {
                "name": n,
                "vhost": f"/{n}",
                "producer_user": f"{n}-producer",
                "worker_user": f"{n}-worker",
                "monitor_user": f"{n}-monitor",
                "queues": [n],
                "results": "rpc",
            }
            for n in ("alpha", "beta")
        ],
        "rabbitmq_passwords": {u: "x" * 8 + uuid.uuid4().hex for u in users},
    }
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=ROLES, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    cmd = ["ansible-playbook", "-i", str(tmp_path / "hosts.ini"), "-e", f"@{tmp_path / 'vars.json'}", PREFLIGHT_PLAY]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_preflight_accepts_a_good_app_list(tmp_path):
    """Positive twin of the refusals below."""
    result = run_preflight(tmp_path, GOOD_APPS)
    assert result.returncode == 0, result.stdout[-3000:]


def _bad(change) -> list[dict]:
    apps = json.loads(json.dumps(GOOD_APPS))
    change(apps)
    return apps


@pytest.mark.parametrize(
    ("apps", "message"),
    [
        (_bad(lambda a: a[0].pop("source")), "source, exactly one of"),
        (_bad(lambda a: a[0].update(source={"path": "/a", "wheel": "/b.whl"})), "source, exactly one of"),
        (_bad(lambda a: a[0].update(name="gamma")), "also names a rabbitmq_apps"),
        (_bad(lambda a: a[0].pop("module")), "module, a dotted Python module name (got nothing)"),
        (_bad(lambda a: a[1].update(source={"path": "/srv/alpha"})), "name the same source"),
        (_bad(lambda a: a[1].update(name="alpha")), "no name twice"),
        (_bad(lambda a: a[0].update(workers=["nosuchgroup"])), "unknown: nosuchgroup"),
        (_bad(lambda a: a[0].update(requirement="alpha-app")), "pinned"),
        (_bad(lambda a: a[1].update(requirement="beta-app==9.9")), "beta_app==9.9"),
    ],
    ids=[
        "no-source",
        "two-sources",
        "unknown-app",
        "no-module",
        "same-source",
        "same-name",
        "unknown-group",
        "unpinned",
        "missing-wheel",
    ],
)
def test_preflight_refuses_a_bad_app_list(tmp_path, apps, message):
    result = run_preflight(tmp_path, apps)
    # Under molecule (display_failed_stderr) the failure goes to stderr.
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert message in " ".join(output.split()), output[-3000:]


@pytest.mark.parametrize(
    ("pythons", "message"),
    [
        ("3.9", f"runs Python {LOCAL_PYTHON}, but the wheelhouse"),
        (None, "no .celery-kit-pythons: built by an older kit"),
    ],
    ids=["other-python", "no-record"],
)
def test_preflight_refuses_a_wheelhouse_built_for_another_python(tmp_path, pythons, message):
    """A compiled wheel for another Python would fail in pip, halfway; the positive twin is
    test_preflight_accepts_a_good_app_list (the same wheelhouse recording the hosts' Python)."""
    result = run_preflight(tmp_path, GOOD_APPS, pythons=pythons)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert message in " ".join(output.split()), output[-3000:]
    assert "celery_app_wheelhouse_pythons" in output, output[-3000:]
