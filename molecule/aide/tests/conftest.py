"""Helpers shared by the aide scenario's tests: the check, syslog, playbooks."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import time
import uuid

import testinfra

HOST = "aide-worker"
CONFIG = "/etc/aide/celery-kit.conf"
DB = "/var/lib/celery-kit-aide/celery-kit.db"
RECORD = "/var/lib/celery-kit-aide/celery-kit.db.sha256"
UNIT = "celery-kit-aide-check.service"
CHECK = "/usr/local/sbin/celery-kit-aide-check"
TAG = "celery-kit-aide"
MODULE = "/etc/celery-kit/celery_kit_config.py"
CERT = "/etc/ssl/certs/celery-kit-test.pem"
KEY = "/etc/ssl/private/celery-kit-test.key"
EXIT_BASELINE = 32
SCENARIO = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.path.dirname(os.path.dirname(SCENARIO)))
CONTROLLER_DIR = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "aide-controller")
CONTROLLER_RECORD = os.path.join(CONTROLLER_DIR, f"{HOST}.sha256")
CONTROLLER_DB = os.path.join(CONTROLLER_DIR, HOST, "celery-kit.db")
SUMMARY = re.compile(
    r"AIDE check: changed=(\d+) added=(\d+) removed=(\d+) exit=(\d+) context=(\S+)(?: files: (.*))?$")


@functools.cache
def lab(name: str = HOST):
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


@dataclasses.dataclass
class Report:
    """One run of the check: its exit status and what it sent to syslog."""

    exit: int
    lines: list[str]

    @property
    def summary(self) -> dict:
        for line in self.lines:
            match = SUMMARY.search(line)
            if match:
                changed, added, removed, code, context, files = match.groups()
                return {"changed": int(changed), "added": int(added), "removed": int(removed),
                        "exit": int(code), "context": context,
                        "files": sorted((files or "").split())}
        raise AssertionError(f"no summary line among {self.lines!r}")


def journal_tail_after(marker: str) -> list[str]:
    out = lab().check_output(f"journalctl --no-pager -o cat -t {TAG} -n 2000")
    lines = out.splitlines()
    if marker not in lines:
        return []
    return [line for line in lines[lines.index(marker) + 1:] if line.strip()]


def run_scheduled_check() -> Report:
    """Start the timer's service, as the timer would, and collect its report."""
    host = lab()
    # A marker line under the same tag: lines after it belong to this run.
    # (journalctl --after-cursor with a filter skips the first matching line.)
    marker = f"test-marker {uuid.uuid4()}"
    host.check_output(f"logger -t {TAG} '{marker}'")
    host.run(f"systemctl reset-failed {UNIT}")
    host.run(f"systemctl start {UNIT}")
    status = int(host.check_output(f"systemctl show -P ExecMainStatus {UNIT}"))
    lines: list[str] = []
    for _ in range(20):
        lines = journal_tail_after(marker)
        if any(SUMMARY.search(line) or "FAILED" in line for line in lines):
            break
        time.sleep(0.5)
    return Report(status, lines)


def in_auth_log(text: str, timeout: float = 20.0) -> bool:
    """rsyslog writes authpriv to /var/log/auth.log asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab().run(f"grep -qF -- {quote(text)} /var/log/auth.log").rc == 0:
            return True
        time.sleep(1)
    return False


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def sha256(path: str) -> str:
    return lab().check_output(f"sha256sum {path}").split()[0]


def controller_record() -> str:
    with open(CONTROLLER_RECORD, encoding="ascii") as handle:
        return handle.read().split()[0]


def playbook(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run a playbook of the scenario (or the project) against the lab."""
    path = name if os.path.isabs(name) else os.path.join(SCENARIO, name)
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], path, *args]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1200, env=env)
    print(f"$ {' '.join(cmd)}\nrc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    return proc


def converge(*args: str) -> subprocess.CompletedProcess:
    return playbook("converge.yml", *args)


def said(proc: subprocess.CompletedProcess, text: str) -> bool:
    """Whether the playbook's output says text (Ansible wraps long messages)."""
    return " ".join(text.split()) in " ".join((proc.stdout + proc.stderr).split())


def unchanged(proc: subprocess.CompletedProcess) -> bool:
    recap = re.search(rf"{HOST}\s*:\s*ok=\d+\s+changed=(\d+)", proc.stdout)
    return bool(recap) and recap.group(1) == "0"
