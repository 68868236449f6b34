"""Forged, re-targeted and replayed messages, published with the producer's own
broker credentials, are rejected by the worker before any task code runs.

Each attack carries a unique marker as the argument of demo.tasks.dangerous;
the task would append it to /var/lib/celery-kit/demo/dangerous-ran. The worker
must log `security_lib rejected message: reason=<reason> ... id=<id>` and the
marker must never appear. test_30 shows the same file does get written by a
legitimately signed, allowed call.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from conftest import ATTACK, REJECTED, as_app_user, attack, dangerous_markers, json_line, wait_for_log


@pytest.fixture
def marker() -> str:
    return f"attack-{uuid.uuid4()}"


def assert_rejected(worker, client, task_id: str, reason: str, marker: str) -> str:
    line = wait_for_log(worker, f"id={task_id}")
    assert REJECTED in line, line
    assert f"reason={reason}" in line, line
    # Messages are consumed in order: once a later legitimate task has a
    # result, the attack message was already handled.
    done = json_line(as_app_user(client, "-m", "demo.send", "demo.tasks.add", "1", "1", "--timeout", "60"))
    assert done.get("result") == 2, done
    assert marker not in dangerous_markers(worker)
    print(line)
    return line


def test_unsigned_message_is_rejected(client, worker, marker):
    sent = attack(client, "unsigned", marker)
    assert_rejected(worker, client, sent["ids"][0], "unsigned", marker)


def test_message_signed_outside_the_store_is_rejected(client, worker, marker):
    # The forger's certificate even claims the producer's CN.
    sent = attack(client, "foreign", marker)
    assert_rejected(worker, client, sent["ids"][0], "unknown-signer", marker)


def test_retargeted_message_is_rejected(client, worker, marker):
    sent = attack(client, "retarget", marker)
    assert_rejected(worker, client, sent["ids"][0], "header-mismatch:task", marker)


def test_replayed_message_is_rejected(client, worker):
    # The first copy is legitimate and runs; only the second is the attack.
    marker = f"replayed-{uuid.uuid4()}"
    sent = attack(client, "replay", marker)
    task_id = sent["ids"][0]
    line = wait_for_log(worker, f"reason=replay task=demo.tasks.dangerous id={task_id}")
    assert REJECTED in line
    # The first copy was legitimate and ran once; the replay did not run again.
    assert dangerous_markers(worker).count(marker) == 1
    worker.run("rm -f /var/lib/celery-kit/demo/dangerous-ran")


def test_signer_in_the_store_but_not_allowed_is_rejected(client, worker, marker, tmp_path):
    """The worker's own identity is trusted for demo.tasks.add only."""
    built = as_app_user(worker, ATTACK, "build", "demo.tasks.dangerous", f'"{marker}"')
    assert built.rc == 0, built.stderr
    message = json_line(built)
    client.run("install -d -o celery-demo -g celery-demo -m 0700 /var/lib/celery-kit/demo/inbox")
    path = "/var/lib/celery-kit/demo/inbox/message.json"
    local = tmp_path / "message.json"
    local.write_text(built.stdout.strip().splitlines()[-1])
    subprocess.run(["docker", "cp", str(local), f"kit-client:{path}"], check=True)
    client.run(f"chown celery-demo:celery-demo {path}")
    sent = attack(client, "publish-file", path)
    assert sent["ids"] == [message["id"]]
    assert_rejected(worker, client, message["id"], "signer-not-allowed", marker)
    client.run("rm -rf /var/lib/celery-kit/demo/inbox")


def test_no_attack_ever_ran_the_dangerous_task(worker):
    assert not [m for m in dangerous_markers(worker) if m.startswith("attack-")]
