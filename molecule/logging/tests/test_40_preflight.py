"""Bad variables are refused before anything changes; a config rsyslog rejects is never installed."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import CLIENT, SERVER, lab

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.join(PROJECT, "molecule", "logging"))
FILES = ("/etc/rsyslog.conf /etc/rsyslog.d/*.conf /etc/systemd/journald.conf.d/*.conf "
         "/etc/logrotate.d/celery-kit-log-server")


def _playbook(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_ROLES_PATH=os.path.join(PROJECT, "roles"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1")
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
           os.path.join(SCENARIO, "logging_only.yml"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def _fingerprint(name: str) -> str:
    return lab(name).check_output(
        f"sha256sum {FILES} 2>/dev/null; stat -c '%n %Y' {FILES} 2>/dev/null; "
        "systemctl show -p MainPID --value rsyslog")


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


BAD = {
    "port-out-of-range": (CLIENT, {"log_forwarding_port": 70000}, "log_forwarding_port must be 1-65535"),
    "servers-as-a-string": (CLIENT, {"log_forwarding_servers": "logging-server"},
                            "must be YAML lists"),
    "relative-file-path": (CLIENT, {"log_forwarding_files": [{"path": "rabbit.log", "tag": "rabbitmq"}]},
                           "needs an absolute path"),
    "old-tls": (CLIENT, {"log_forwarding_tls_min_version": "TLSv1.0"}, "log_forwarding_tls_min_version"),
    "missing-cert": (CLIENT, {"log_forwarding_cert_file": "/etc/ssl/certs/nope.pem"},
                     "Run playbooks/pki.yml first. Missing: /etc/ssl/certs/nope.pem"),
    "no-permitted-peer": (SERVER, {"log_server_permitted_peers": []}, "the server would accept nobody"),
    "log-dir-is-var-log": (SERVER, {"log_server_log_dir": "/var/log"}, "a dedicated absolute directory"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_variables_are_refused_before_any_change(case):
    name, extra, message = BAD[case]
    before = _fingerprint(name)
    res = _playbook("--limit", name, "-e", json.dumps(extra))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert _squash(message) in _squash(out), out
    assert "changed=0" in re.search(rf"{name}\s*:.*", out).group(0), out
    assert _fingerprint(name) == before


def test_a_configuration_rsyslog_rejects_is_not_installed():
    """A broken drop-in makes the validated main file fail: the old file and daemon stay."""
    host = lab(CLIENT)
    host.check_output("echo 'this is not rsyslog syntax(' > /etc/rsyslog.d/99-broken.conf")
    try:
        before = _fingerprint(CLIENT)
        res = _playbook("--limit", CLIENT, "-e", json.dumps({"log_forwarding_retry_interval": 11}))
        out = res.stdout + res.stderr
        assert res.returncode != 0, out
        assert "failed to validate" in out, out
        assert _fingerprint(CLIENT) == before
        assert 'action.resumeInterval="10"' in host.file("/etc/rsyslog.conf").content_string
    finally:
        host.run("rm -f /etc/rsyslog.d/99-broken.conf")
    assert host.service("rsyslog").is_running


def test_check_mode_reports_no_change_on_a_converged_lab():
    res = _playbook("--check", "--diff")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    recap = re.findall(r"^(logging-\S+)\s*:\s*ok=\d+\s+changed=(\d+).*failed=(\d+)", out, re.M)
    assert len(recap) == 2, out
    assert all(changed == "0" and failed == "0" for _, changed, failed in recap), out
