"""Shared helpers of the full-stack tests (lab containers, reached with docker exec)."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import sys
import time
from typing import Any

import pytest
import testinfra

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
