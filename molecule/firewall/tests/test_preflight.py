"""Bad variables are refused before anything changes; --check changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import lab

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.join(PROJECT, "molecule", "firewall"))
FILES = "/etc/celery-kit-fw/ruleset.nft /etc/celery-kit-fw/baseline.nft"


def _playbook(*args: str) -> subprocess.CompletedProcess:
    # Only molecule's ansible.cfg is inherited: variables that pytest's
    # testinfra backend leaves in the environment confuse ansible-playbook.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=os.environ.get("ANSIBLE_CONFIG", os.path.join(PROJECT, "ansible.cfg")),
        ANSIBLE_ROLES_PATH=os.path.join(PROJECT, "roles"),
        ANSIBLE_NOCOLOR="1",
    )
    cmd = [
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        os.path.join(SCENARIO, "converge.yml"),
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def _fingerprint(name: str) -> str:
    return lab(name).check_output(
        f"sha256sum {FILES} && stat -c %Y {FILES} && nft -s list table inet celery_kit_fw"
    )


BAD = {
    "bad-admin-address": (
        {"firewall_admin_networks": ["10.0.0.300"]},
        "not an IPv4/IPv6 address or network in canonical form",
    ),
    "bad-egress-port": (
        {"firewall_worker_extra_egress": [{"address": "192.0.2.10", "port": 70000, "proto": "tcp"}]},
        "firewall_worker_extra_egress[0] needs address",
    ),
    "bad-port": ({"firewall_syslog_tls_port": 0}, "ports must be integers in 1-65535"),
    "ssh-lockout": (
        {"firewall_admin_networks": []},
        "SSH would be\ndropped from everywhere",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_variables_are_refused_before_any_change(case):
    extra, message = BAD[case]
    before = _fingerprint("fw-worker")
    res = _playbook("--limit", "fw-worker,fw-outsider", "-e", json.dumps(extra))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert re.sub(r"\s+", " ", message) in re.sub(r"\s+", " ", out), out
    # Nothing on the host changed: the play stopped in the preflight.
    assert "changed=0" in re.search(r"fw-worker\s*:.*", out).group(0), out
    assert _fingerprint("fw-worker") == before


def test_check_mode_reports_no_change_on_a_converged_lab():
    res = _playbook("--check", "--diff")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    recap = re.findall(r"^(fw-\S+)\s*:\s*ok=\d+\s+changed=(\d+).*failed=(\d+)", out, re.MULTILINE)
    assert len(recap) == 6, out
    for name, changed, failed in recap:
        assert (changed, failed) == ("0", "0"), f"{name}: {out}"
