"""Bad variables are refused before anything changes; a config rsyslog rejects is never installed."""

from __future__ import annotations

import json
import os

import pytest
from kit_testlib import (
    Case,
    PlaybookRun,
    Verdict,
    assert_refused_and_unchanged,
    assert_verdict,
    playbook,
    run_preflight_cases,
)

from conftest import CLIENT, SERVER, lab

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.join(PROJECT, "molecule", "logging"))
FILES = ("/etc/rsyslog.conf /etc/rsyslog.d/*.conf /etc/systemd/journald.conf.d/*.conf "
         "/etc/logrotate.d/celery-kit-log-server")


def _playbook(*args: str) -> PlaybookRun:
    return playbook(os.path.join(SCENARIO, "logging_only.yml"), *args, timeout=900)


def _fingerprint(name: str) -> str:
    return lab(name).check_output(
        f"sha256sum {FILES} 2>/dev/null; stat -c '%n %Y' {FILES} 2>/dev/null; "
        "systemctl show -p MainPID --value rsyslog")


# Every case runs only the role's argument spec and preflight, all in one
# ansible-playbook run; the good cases show the same probe sees acceptance.
CASES = [
    Case("good-client", "log_forwarding", CLIENT, {}, None),
    Case("good-server", "log_server", SERVER, {}, None),
    # The port is the log server's (log_server_export): a bad one stops the forwarders too.
    Case("port-out-of-range", "log_forwarding", CLIENT, {"log_server_port": 70000},
         "log_server_port (the log servers' port, log_server_export.port) must be 1-65535"),
    Case("server-port-out-of-range", "log_server", SERVER, {"log_server_port": 70000},
         "log_server_port must be 1-65535"),
    Case("servers-as-a-string", "log_forwarding", CLIENT, {"log_forwarding_servers": "logging-server"},
         "must be YAML lists"),
    Case("relative-file-path", "log_forwarding", CLIENT,
         {"log_forwarding_files": [{"path": "rabbit.log", "tag": "rabbitmq"}]}, "needs an absolute path"),
    Case("old-tls", "log_forwarding", CLIENT, {"log_forwarding_tls_min_version": "TLSv1.0"},
         "log_forwarding_tls_min_version"),
    Case("missing-cert", "log_forwarding", CLIENT, {"log_forwarding_cert_file": "/etc/ssl/certs/nope.pem"},
         "Run playbooks/pki.yml first. Missing: /etc/ssl/certs/nope.pem"),
    Case("no-permitted-peer", "log_server", SERVER, {"log_server_permitted_peers": []},
         "the server would accept nobody"),
    Case("log-dir-is-var-log", "log_server", SERVER, {"log_server_log_dir": "/var/log"},
         "a dedicated absolute directory"),
]


@pytest.fixture(scope="module")
def verdicts() -> dict[str, Verdict]:
    return run_preflight_cases(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_preflight_refuses_bad_variables_and_accepts_good_ones(case, verdicts):
    assert_verdict(case, verdicts[case.name])


@pytest.mark.parametrize(("name", "extra", "message"), [
    (CLIENT, {"log_server_port": 70000}, "log_server_port (the log servers' port, log_server_export.port) must be 1-65535"),
    (SERVER, {"log_server_log_dir": "/var/log"}, "a dedicated absolute directory"),
])
def test_the_real_play_stops_before_any_change(name, extra, message):
    """The roles' own entry points run those checks first: nothing on the host changes."""
    assert_refused_and_unchanged(
        lambda: _playbook("--limit", name, "-e", json.dumps(extra)), message, name, lambda: _fingerprint(name))


def test_a_configuration_rsyslog_rejects_is_not_installed():
    """A broken drop-in makes the validated main file fail: the old file and daemon stay."""
    host = lab(CLIENT)
    host.check_output("echo 'this is not rsyslog syntax(' > /etc/rsyslog.d/99-broken.conf")
    try:
        before = _fingerprint(CLIENT)
        res = _playbook("--limit", CLIENT, "-e", json.dumps({"log_forwarding_retry_interval": 11}))
        assert res.returncode != 0, res.tail()
        assert res.said("failed to validate"), res.tail()
        assert _fingerprint(CLIENT) == before
        assert 'action.resumeInterval="10"' in host.file("/etc/rsyslog.conf").content_string
    finally:
        host.run("rm -f /etc/rsyslog.d/99-broken.conf")
    assert host.service("rsyslog").is_running


def test_check_mode_reports_no_change_on_a_converged_lab():
    res = _playbook("--check", "--diff")
    assert res.returncode == 0, res.tail()
    assert sorted(res.recap) == [CLIENT, SERVER], res.tail()
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in res.recap.values()), res.tail()
