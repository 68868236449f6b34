"""Helpers shared by the aide scenario's tests: the check, syslog, playbooks."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import sys
import uuid

# The kit's shared test helpers (molecule/shared/kit_testlib.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
import kit_testlib  # noqa: E402
from kit_testlib import PlaybookRun, quote, wait_for  # noqa: E402  (re-exported for the tests)

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


def lab(name: str = HOST):
    return kit_testlib.lab(name)


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
    wait_for(lambda: any(SUMMARY.search(line) or "FAILED" in line for line in journal_tail_after(marker)), 10, 0.5)
    return Report(status, journal_tail_after(marker))


def in_auth_log(text: str, timeout: float = 20.0) -> bool:
    """rsyslog writes authpriv to /var/log/auth.log asynchronously."""
    return wait_for(lambda: lab().run(f"grep -qF -- {quote(text)} /var/log/auth.log").rc == 0, timeout)


def sha256(path: str) -> str:
    return lab().check_output(f"sha256sum {path}").split()[0]


def controller_record() -> str:
    with open(CONTROLLER_RECORD, encoding="ascii") as handle:
        return handle.read().split()[0]


def playbook(name: str, *args: str) -> PlaybookRun:
    """Run a playbook of the scenario (or the project) against the lab."""
    return kit_testlib.playbook(name if os.path.isabs(name) else os.path.join(SCENARIO, name), *args)


def converge(*args: str) -> PlaybookRun:
    return playbook("converge.yml", *args)


def said(proc: PlaybookRun, text: str) -> bool:
    """Whether the playbook's output says text (Ansible wraps long messages)."""
    return proc.said(text)


def unchanged(proc: PlaybookRun) -> bool:
    return HOST in proc.recap and proc.recap[HOST]["changed"] == 0
