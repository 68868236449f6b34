"""A signed task goes from the client over amqps to the worker, and its result comes back."""

from __future__ import annotations

import uuid

from conftest import DANGEROUS_FILE, as_app_user, dangerous_markers, json_line

SEND = "/opt/celery-kit/demo/venv/bin/demo-send"


def send(client, *args: str):
    return json_line(as_app_user(client, "-m", "demo.send", *args, "--timeout", "60"))


def test_signed_task_runs_on_the_worker_and_the_result_comes_back(client, worker):
    result = send(client, "demo.tasks.add", "2", "3")
    assert result.get("result") == 5, result
    # The worker says who signed it: the producer's identity, verified.
    log = worker.check_output("journalctl -u celery-worker@demo.service --no-pager -o cat")
    assert result["id"] in log


def test_allowed_dangerous_task_leaves_its_trace(client, worker):
    """The positive control for the attack tests: the side effect they look for is real."""
    marker = f"legit-{uuid.uuid4()}"
    try:
        result = send(client, "demo.tasks.dangerous", marker)
        assert result.get("result") == DANGEROUS_FILE, result
        assert marker in dangerous_markers(worker)
    finally:
        worker.run(f"rm -f {DANGEROUS_FILE}")
    assert not worker.file(DANGEROUS_FILE).exists
