"""Shared helpers of the full-stack tests (lab containers, reached with docker exec)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import testinfra
import yaml

# The kit's shared test helpers (molecule/shared/kit_testlib.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
import kit_testlib  # noqa: E402

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
APP = "demo"
SERVICE = f"celery-worker@{APP}.service"
VENV_PY = f"/opt/celery-kit/{APP}/venv/bin/python"
TOOLS = "/usr/local/lib/celery-kit-lab"
ATTACK = f"{TOOLS}/attack.py"
BROKER = "kit-broker"
DANGEROUS_FILE = "/var/lib/celery-kit/demo/dangerous-ran"
REJECTED = "security_lib rejected message:"
MANAGED = ["kit-logserver", "kit-broker", "kit-worker", "kit-client"]
# Hosts that forward their logs (the log server keeps its own locally).
FORWARDERS = [name for name in MANAGED if name != "kit-logserver"]
REMOTE_LOGS = "/var/log/remote"

# The kit's checkout, and the lab deployment's state directory on the
# controller (pki_export.state_dir of inventory/lab: pki_deployment "lab").
ROOT = pathlib.Path(__file__).resolve().parents[3]
LAB_STATE = pathlib.Path.home() / ".local/share/celery-kit/lab"
CONTROLLER_AIDE = LAB_STATE / "aide"
HOST_DB = "/var/lib/celery-kit-aide/celery-kit.db"
TAG = "celery-kit-aide"
STAMP = "/tmp/day2-stamp"
_AIDE_DEFAULTS = yaml.safe_load((ROOT / "roles/aide/defaults/main.yml").read_text())
PROTECTED = _AIDE_DEFAULTS["aide_protected_paths"]
EXCLUDED = _AIDE_DEFAULTS["aide_excluded_paths"]
# Paths may hold spaces (setuptools' "script (dev).tmpl"); AIDE's flags hold no brackets.
ACCEPTED = re.compile(r"^AIDE check: (changed|added|removed): (.+?) \[([^\[\]]*)\] context=accepted-by-kit-run$")
# The summary line of the same check: counts per kind (the per-file lines stop at aide_report_max_files).
ACCEPTED_COUNTS = re.compile(r"^AIDE check: changed=(\d+) added=(\d+) removed=(\d+) exit=\d+ context=accepted-by-kit-run")
REBUILT = re.compile(r"^AIDE baseline rebuilt by celery-kit: sha256=(\w+) reasons=(.*)$")


def get_host(name: str) -> testinfra.host.Host:
    # docker exec is many times faster than one ansible call per command.
    return kit_testlib.lab(name)


@pytest.fixture(scope="session")
def worker() -> testinfra.host.Host:
    return get_host("kit-worker")


@pytest.fixture(scope="session")
def client() -> testinfra.host.Host:
    return get_host("kit-client")


@pytest.fixture(scope="session")
def broker() -> testinfra.host.Host:
    return get_host(BROKER)


@pytest.fixture(scope="session")
def logserver() -> testinfra.host.Host:
    return get_host("kit-logserver")


@pytest.fixture(scope="session")
def outsider() -> testinfra.host.Host:
    return get_host("kit-outsider")


def can_connect(host: testinfra.host.Host, target: str, port: int) -> bool:
    """Whether a plain TCP connection from host to target:port succeeds within 3 s."""
    probe = f"import socket; socket.create_connection(({target!r}, {port}), 3)"
    return host.run(f"timeout 5 python3 -c {shlex.quote(probe)}").rc == 0


def as_app_user(host: testinfra.host.Host, *argv: str, stdin: str | None = None) -> Any:
    """Run the app venv's python as the app user with the host's config module."""
    cmd = " ".join(
        ["runuser", "-u", f"celery-{APP}", "--", "env", f"PYTHONPATH=/etc/celery-kit/{APP}", "PYTHONDONTWRITEBYTECODE=1", VENV_PY]
        + [shlex.quote(a) for a in argv]
    )
    if stdin is not None:
        cmd = f"printf %s {shlex.quote(stdin)} | {cmd}"
    return host.run(cmd)


def json_line(result: Any) -> dict[str, Any]:
    """The last JSON line a lab tool printed (fails with its output otherwise)."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"rc={result.rc}\nstdout={result.stdout}\nstderr={result.stderr}"
    return json.loads(lines[-1])


def attack(host: testinfra.host.Host, *args: str) -> dict[str, Any]:
    """Run the lab's attack tool as the app user on host; its JSON report (ids of the messages sent)."""
    return json_line(as_app_user(host, ATTACK, *args))


def journal(worker: testinfra.host.Host) -> str:
    return worker.check_output(f"journalctl -u {SERVICE} --no-pager -o cat")


def wait_for_log(worker: testinfra.host.Host, needle: str, timeout: float = 60) -> str:
    """Wait until the worker's journal has a line containing ``needle``; return that line."""
    deadline = time.monotonic() + timeout
    while True:
        for line in journal(worker).splitlines():
            if needle in line:
                return line
        if time.monotonic() > deadline:
            tail = "\n".join(journal(worker).splitlines()[-40:])
            pytest.fail(f"no worker log line with {needle!r} within {timeout}s; journal tail:\n{tail}")
        time.sleep(1)


def dangerous_markers(worker: testinfra.host.Host) -> list[str]:
    f = worker.file(DANGEROUS_FILE)
    return f.content_string.split() if f.exists else []


def wait_for_remote_line(logserver: testinfra.host.Host, pattern: str, timeout: float = 60.0) -> str:
    """The log server's stored lines (every sender) that contain pattern, once there are any."""
    return kit_testlib.wait_for(lambda: logserver.run(f"grep -rhF -- {pattern!r} {REMOTE_LOGS}").stdout, timeout, 2)


# --- day-2 runs of site.yml by hand, and what AIDE absorbs from them --------

def site(*args: str) -> subprocess.CompletedProcess[str]:
    """The README's hand re-converge, from the repository root with its ansible.cfg:
    molecule's own ANSIBLE_* settings and inventory are left out on purpose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    cmd = ["ansible-playbook", "-i", "inventory/lab", "site.yml", *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=3600)
    took = time.monotonic() - started
    print(f"$ {shlex.join(cmd)}\nrc={proc.returncode} in {took:.0f} s\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}")
    return proc


def changed_tasks(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Every "TASK [...] -> host" that reported changed in the run: says WHAT changed when a recap is not 0."""
    found: list[str] = []
    task = "?"
    for line in proc.stdout.splitlines():
        header = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line)
        if header:
            task = header[1]
            continue
        host = re.match(r"^changed: \[([^\]]+)\]", line)
        if host:
            found.append(f"{task} -> {host[1]}")
    return found


def said(proc: subprocess.CompletedProcess[str], text: str) -> bool:
    """Whether the output says text (Ansible folds long messages)."""
    return " ".join(text.split()) in " ".join((proc.stdout + proc.stderr).split())


def recap(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    rows = re.finditer(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout, re.MULTILINE)
    return {m[1]: {"changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])} for m in rows}


def sha256(name: str, path: str) -> str:
    return get_host(name).check_output(f"sha256sum {path}").split()[0]


def controller_record(name: str) -> str:
    return (CONTROLLER_AIDE / f"{name}.sha256").read_text().split()[0]


def _find(extra: str, kind: str = "! -type d") -> str:
    prune = " -o ".join(f"-path {shlex.quote(x)}" for x in EXCLUDED)
    starts = " ".join(shlex.quote(p) for p in PROTECTED)
    return f"find {starts} -xdev \\( {prune} \\) -prune -o {kind} {extra} -print 2>/dev/null; true"


def dirs_now(name: str) -> set[str]:
    return set(get_host(name).check_output(_find("", "-type d")).splitlines())


def files_now(name: str) -> set[str]:
    # One path a line: paths may hold spaces.
    return set(get_host(name).check_output(_find("")).splitlines())


def start_watching() -> dict[str, Any]:
    """Per host: a journal marker, a ctime stamp and the list of protected files."""
    marks: dict[str, Any] = {}
    for name in MANAGED:
        host = get_host(name)
        marker = f"day2-marker {uuid.uuid4()}"
        host.check_output(f"logger -t {TAG} {shlex.quote(marker)} && touch {STAMP}")
        marks[name] = {"marker": marker, "files": files_now(name), "dirs": dirs_now(name), "db": sha256(name, HOST_DB)}
    # ctime has nanoseconds, but make sure nothing of this second counts.
    time.sleep(1.1)
    return marks


def aide_lines_after(name: str, marker: str) -> list[str]:
    out = get_host(name).check_output(f"journalctl --no-pager -o cat -t {TAG} -n 20000")
    lines = out.splitlines()
    assert marker in lines, f"{name}: marker not in the journal"
    return lines[lines.index(marker) + 1 :]


def changed_during_run(name: str, before: set[str]) -> set[str]:
    """The independent probe: protected files whose ctime moved, plus removed ones."""
    host = get_host(name)
    touched = set(host.check_output(_find(f"-cnewer {STAMP}")).splitlines())
    return touched | (before - files_now(name))


def absorbed(name: str, mark: dict[str, Any]) -> tuple[set[str], list[str], int]:
    """Files the run's rebuild accepted (its audit lines, directories left out), its reasons, and how
    many it accepted: len(files) when the audit listed every path; else the count of its summary line
    (files and directories), since the audit lists at most aide_report_max_files paths of each kind."""
    lines = aide_lines_after(name, mark["marker"])
    paths = {m[2] for m in map(ACCEPTED.match, lines) if m}
    dirs = set()
    if paths:
        test = " ".join(shlex.quote(p) for p in sorted(paths))
        dirs = set(get_host(name).check_output(f'for p in {test}; do [ -d "$p" ] && echo "$p"; done; true').splitlines())
    reasons = [m[2] for m in map(REBUILT.match, lines) if m]
    counts = [sum(map(int, m.groups())) for m in map(ACCEPTED_COUNTS.match, lines) if m]
    # An audit that lists every path (no "+N more") lists its directories too, left out above.
    total = counts[-1] if counts else len(paths)
    return paths - dirs, reasons, (len(paths - dirs) if total == len(paths) else total)


def assert_absorbed_exactly_the_runs_files(marks: dict[str, Any]) -> dict[str, set[str]]:
    accepted_by_host: dict[str, set[str]] = {}
    for name in MANAGED:
        expected = changed_during_run(name, marks[name]["files"])
        accepted, reasons, total = absorbed(name, marks[name])
        if not expected:
            # E.g. the log server, which forwards to nobody: no change, no rebuild.
            assert not accepted and not reasons, f"{name}: nothing changed, yet AIDE accepted {accepted} ({reasons})"
            assert sha256(name, HOST_DB) == marks[name]["db"], name
            accepted_by_host[name] = set()
            continue
        if total == len(accepted):
            assert accepted == expected, (
                f"{name}: AIDE accepted {sorted(accepted)}, the run changed {sorted(expected)};"
                f" accepted only: {sorted(accepted - expected)}; changed only: {sorted(expected - accepted)}"
            )
        else:
            # More than the audit lists (a new app's venv): the listed ones are among the run's
            # files, and the count of all accepted files is the count of the run's files.
            assert accepted <= expected, f"{name}: AIDE accepted files the run did not change: {sorted(accepted - expected)}"
            # AIDE's counts hold the directories it added or removed (a changed directory is no
            # change to it: no times in its directory rule).
            dirs = len(dirs_now(name) ^ marks[name]["dirs"])
            assert total == len(expected) + dirs, (
                f"{name}: AIDE accepted {total} paths, the run changed {len(expected)} files and {dirs} directories")
        assert len(reasons) == 1, f"{name}: expected one rebuild, got {reasons}"
        assert "another kit role changed protected files" in reasons[0], reasons
        assert "aide_update_baseline" not in reasons[0] and "interrupted" not in reasons[0], reasons
        db = sha256(name, HOST_DB)
        assert db != marks[name]["db"] and db == controller_record(name)
        accepted_by_host[name] = accepted
    return accepted_by_host


def round_trip() -> dict[str, Any]:
    client = get_host("kit-client")
    return json_line(as_app_user(client, "-m", "demo.send", "demo.tasks.add", "2", "3", "--timeout", "90"))


# --- several apps on one host: per-app helpers (test_50_apps, test_80_day2) ----

PROBE = f"{TOOLS}/probe.py"
CROSSAPP = f"{TOOLS}/crossapp.py"
# A sender for any app: its Celery app object, one signed task, the result.
_SEND = (
    "import importlib, json, sys\n"
    "app = importlib.import_module(sys.argv[1]).app\n"
    "r = app.send_task(sys.argv[2], args=[json.loads(a) for a in sys.argv[3:]])\n"
    "try:\n"
    "    print(json.dumps({'id': r.id, 'result': r.get(timeout=60)}))\n"
    "except Exception as exc:\n"
    "    print(json.dumps({'id': r.id, 'error': f'{type(exc).__name__}: {exc}'}))\n"
)


def app_paths(app: str) -> dict[str, str]:
    """The per-app contract paths (docs/architecture.md, App hosts contract)."""
    return {
        "signing key": f"/etc/celery-kit/{app}/signing/signer.key",
        "broker key": f"/etc/ssl/private/celery-{app}-broker-client.key",
        "broker secret": f"/etc/celery-kit/{app}/broker.secret",
        "config module": f"/etc/celery-kit/{app}/celery_kit_config.py",
    }


def as_app(host: testinfra.host.Host, app: str, *argv: str, stdin_file: str | None = None) -> Any:
    """Run the app's venv python as the app's user with the app's config module."""
    cmd = " ".join(
        ["runuser", "-u", f"celery-{app}", "--", "env", f"PYTHONPATH=/etc/celery-kit/{app}", "PYTHONDONTWRITEBYTECODE=1",
         f"/opt/celery-kit/{app}/venv/bin/python"]
        + [shlex.quote(a) for a in argv]
    )
    if stdin_file is not None:
        cmd = f"{cmd} < {shlex.quote(stdin_file)}"
    return host.run(cmd)


def send_as(client: testinfra.host.Host, app: str, module: str, task: str, *args: Any) -> dict[str, Any]:
    """One signed task of app (Celery app object in module) from client; {"id", "result"} or {"id", "error"}."""
    return json_line(as_app(client, app, "-c", _SEND, module, task, *(json.dumps(a) for a in args)))


def app_journal(worker: testinfra.host.Host, app: str) -> str:
    return worker.check_output(f"journalctl -u celery-worker@{app}.service --no-pager -o cat")


def wait_for_app_log(worker: testinfra.host.Host, app: str, needle: str, timeout: float = 60) -> str:
    """Wait until celery-worker@app's journal has a line containing needle; return that line."""
    found = kit_testlib.wait_for(
        lambda: next((line for line in app_journal(worker, app).splitlines() if needle in line), ""), timeout, 1)
    if not found:
        tail = "\n".join(app_journal(worker, app).splitlines()[-40:])
        pytest.fail(f"no line with {needle!r} in celery-worker@{app} within {timeout}s:\n{tail}")
    return found


def amqp(host: testinfra.host.Host, app: str, side: str, vhost: str, *, op: str, arg: str = "") -> dict[str, Any]:
    """A broker operation with app's credentials, certificate and key (as app's user, password from its secret)."""
    p = app_paths(app)
    cert = f"/etc/ssl/certs/celery-{app}-broker-client.pem"
    argv = [PROBE, "amqp", BROKER, "5671", vhost, f"{app}-{side}", op, *([arg] if arg else [])]
    return json_line(as_app(host, app, *argv, "--cert", cert, "--key", p["broker key"], stdin_file=p["broker secret"]))


@pytest.fixture(scope="session")
def crossapp_tool(client: testinfra.host.Host) -> None:
    """Put the lab tool on the client (root-owned, read-only), next to attack.py."""
    src = pathlib.Path(__file__).resolve().parents[1] / "files" / "crossapp.py"
    subprocess.run(["docker", "cp", str(src), f"kit-client:{CROSSAPP}"], check=True)
    client.check_output(f"chown root:root {CROSSAPP} && chmod 0644 {CROSSAPP}")


def publish_signed_by_another_app(client: testinfra.host.Host, signer: str, target: str, task: str, *args: Any) -> str:
    """Sign target's task with signer's key (as signer's user), publish it with target's credentials; its id."""
    built = json_line(as_app(client, signer, CROSSAPP, "build", f"{signer}.app", task, *(json.dumps(a) for a in args)))
    assert built["headers"]["task"] == task
    path = f"/var/lib/celery-kit/{target}/cross-message.json"
    try:
        # Hand the signer's message to the target's user (its home; root writes it).
        client.check_output(f"install -o celery-{target} -g celery-{target} -m 0600 /dev/null {path}")
        client.check_output(f"printf %s {shlex.quote(json.dumps(built))} > {path}")
        sent = json_line(as_app(client, target, CROSSAPP, "publish", f"{target}.app", stdin_file=path))
    finally:
        client.run(f"rm -f {path}")
    return str(sent["ids"][0])
