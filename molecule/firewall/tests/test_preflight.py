"""Bad variables are refused before anything changes; --check changes nothing."""

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

from conftest import lab

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.join(PROJECT, "molecule", "firewall"))
FILES = "/etc/celery-kit-fw/ruleset.nft /etc/celery-kit-fw/baseline.nft"


def _playbook(*args: str) -> PlaybookRun:
    return playbook(os.path.join(SCENARIO, "converge.yml"), *args, timeout=900)


def _fingerprint(name: str) -> str:
    return lab(name).check_output(
        f"sha256sum {FILES} && stat -c %Y {FILES} && nft -s list table inet celery_kit_fw"
    )


def _case(name: str, variables: dict, refused: str | None) -> Case:
    return Case(name, "firewall", "fw-worker", variables, refused)


# All cases run the role's argument spec and preflight only, in one
# ansible-playbook run; the checks read every host's address and the
# connection's environment from facts, gathered once (min + network).
CASES = [
    _case("good-inventory", {}, None),
    _case("good-admin-network", {"firewall_admin_networks": ["10.20.0.0/24"]}, None),
    _case("bad-admin-address", {"firewall_admin_networks": ["10.0.0.300"]},
          "not an IPv4/IPv6 address or network in canonical form"),
    _case("host-bits-set", {"firewall_admin_networks": ["10.20.0.1/24"]},
          "not an IPv4/IPv6 address or network in canonical form"),
    _case("bad-egress-port",
          {"firewall_worker_extra_egress": [{"address": "192.0.2.10", "port": 70000, "proto": "tcp"}]},
          "firewall_worker_extra_egress[0] needs address"),
    _case("bad-port", {"log_server_port": 0}, "ports must be integers in 1-65535"),
    _case("ssh-lockout", {"firewall_admin_networks": []}, "SSH would be dropped from everywhere"),
    _case("bad-check-schedule", {"firewall_check_on_calendar": "every tuesday-ish"},
          "is not a systemd calendar expression"),
]


@pytest.fixture(scope="module")
def verdicts() -> dict[str, Verdict]:
    return run_preflight_cases(CASES, gather={"all": "!all,network"})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_preflight_refuses_bad_variables_and_accepts_good_ones(case, verdicts):
    assert_verdict(case, verdicts[case.name])


def test_bad_variables_stop_the_real_play_before_any_change():
    """The role's entry point runs those checks first: files, ruleset and live table stay as they were."""
    assert_refused_and_unchanged(
        lambda: _playbook("--limit", "fw-worker,fw-outsider,fw-client", "-e",
                          json.dumps({"log_server_port": 0})),
        "ports must be integers in 1-65535",
        "fw-worker",
        lambda: _fingerprint("fw-worker"),
    )


def test_check_mode_reports_no_change_on_a_converged_lab():
    res = _playbook("--check", "--diff")
    assert res.returncode == 0, res.tail()
    recap = {name: r for name, r in res.recap.items() if name.startswith("fw-")}
    assert len(recap) == 6, res.tail()
    for name, r in recap.items():
        assert (r["changed"], r["failed"]) == (0, 0), f"{name}: {res.tail()}"
