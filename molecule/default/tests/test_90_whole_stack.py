"""The other defences around the app, checked in the converged full stack.

Each test makes what it checks (no test relies on another having run): a
rejected message must reach the log server; the firewall must refuse the
outsider while managed hosts get through; AIDE must catch tampering with the
config module.
"""

from __future__ import annotations

import time
import uuid

from conftest import (
    FORWARDERS,
    REJECTED,
    REMOTE_LOGS,
    attack,
    can_connect,
    get_host,
    wait_for_log,
    wait_for_remote_line,
)


def test_worker_rejections_reach_the_log_server(client, worker, logserver):
    """This test sends its own unsigned message; its rejection line must travel to the log server."""
    sent = attack(client, "unsigned", f"stack-{uuid.uuid4()}")
    task_id = sent["ids"][0]
    local = wait_for_log(worker, f"id={task_id}")
    assert REJECTED in local, local
    lines = wait_for_remote_line(logserver, f"id={task_id}")
    assert REJECTED in lines, lines
    assert "reason=unsigned" in lines, lines


def test_every_managed_host_logs_to_the_log_server(logserver):
    marker = f"kit-stack-marker-{time.time_ns()}"
    for name in FORWARDERS:
        get_host(name).check_output(f"logger -t kit-stack-test {marker}-{name}")
    for name in FORWARDERS:
        assert f"{marker}-{name}" in wait_for_remote_line(logserver, f"{marker}-{name}")


def test_log_server_files_are_not_world_readable(logserver):
    listing = logserver.check_output(f"find {REMOTE_LOGS} -type f -perm /o+r")
    assert listing == ""


def test_outsider_cannot_reach_the_broker_or_the_log_server(outsider):
    for target, port in [("kit-broker", 5671), ("kit-broker", 4369), ("kit-broker", 25672),
                         ("kit-logserver", 6514)]:
        assert not can_connect(outsider, target, port), f"outsider reached {target}:{port}"


def test_control_managed_hosts_do_reach_the_broker_and_the_log_server(client, worker):
    """The positive twin of the outsider test: the same probe sees the listeners the outsider may not reach."""
    for name, host in [("kit-client", client), ("kit-worker", worker)]:
        for target, port in [("kit-broker", 5671), ("kit-logserver", 6514)]:
            assert can_connect(host, target, port), f"{name} could not reach {target}:{port}"


def test_worker_egress_is_limited_and_drops_are_counted(outsider):
    worker = get_host("kit-worker")
    outsider.check_output(
        "systemd-run --unit kit-stack-http --collect python3 -m http.server 8080 --bind 0.0.0.0"
    )
    try:
        before = worker.check_output("nft list counter inet celery_kit_fw worker_egress_dropped")
        assert not can_connect(worker, "kit-outsider", 8080), "the worker reached a host outside its egress allowlist"
        after = worker.check_output("nft list counter inet celery_kit_fw worker_egress_dropped")
        assert after != before
        # The broker stays reachable from the worker.
        assert can_connect(worker, "kit-broker", 5671)
    finally:
        outsider.run("systemctl stop kit-stack-http")


def test_aide_catches_a_changed_config_module_and_tells_the_log_server(logserver):
    worker = get_host("kit-worker")
    module = "/etc/celery-kit/demo/celery_kit_config.py"
    original = worker.check_output(f"base64 -w0 {module}")
    worker.check_output(f"echo '# tampered' >> {module}")
    try:
        check = worker.run("systemctl start celery-kit-aide-check.service")
        assert check.rc != 0
        journal = worker.check_output("journalctl -t celery-kit-aide -n 20 --no-pager")
        assert module in journal
        assert module in wait_for_remote_line(logserver, module)
    finally:
        # The content is restored; AIDE still reports the new times until an
        # operator accepts them (aide_update_baseline=true), as it should.
        worker.check_output(f"echo {original} | base64 -d > {module}")
        worker.run("systemctl reset-failed celery-kit-aide-check.service")
