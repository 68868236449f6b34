"""Bad input is refused by the role's preflight with a clear message, and
nothing on the broker changes (the play stops before the first change)."""

import json
import pathlib

import pytest
from kit_testlib import Case, Verdict, assert_refused_and_unchanged, assert_verdict, lab, playbook, run_preflight_cases

REPO = pathlib.Path(__file__).resolve().parents[3]
BROKER = "rmq-broker"
GOOD_APP = {"name": "demo", "vhost": "/demo", "producer_user": "demo-producer",
            "worker_user": "demo-worker", "monitor_user": "demo-monitor", "queues": ["celery"]}
STRONG = "Xq7Lr2Vn9Tz4Wk1Pb6Hc3Md8"
GOOD_PASSWORDS = {"demo-producer": STRONG, "demo-worker": STRONG + "w", "demo-monitor": STRONG + "m"}
BASE = {"rabbitmq_apps": [GOOD_APP], "rabbitmq_passwords": GOOD_PASSWORDS}

CASES = {
    "placeholder-password": (
        {"rabbitmq_passwords": {**GOOD_PASSWORDS, "demo-producer": "CHANGE_ME"}},
        "placeholder such as CHANGE_ME"),
    "missing-password": (
        {"rabbitmq_passwords": {"demo-producer": STRONG}},
        "rabbitmq_passwords[demo-worker] is missing"),
    "old-tls-version": (
        {"rabbitmq_tls_versions": ["tlsv1.2", "tlsv1.1"]},
        # The argument spec stops it even before preflight.
        ("rabbitmq_tls_versions must be a non-empty list of tlsv1.2 and/or tlsv1.3",
         "rabbitmq_tls_versions must be one or more of: tlsv1.2, tlsv1.3")),
    "queues-as-string": (
        {"rabbitmq_apps": [{**GOOD_APP, "queues": "celery"}]},
        "rabbitmq_apps entry demo is invalid"),
    "regex-in-queue-name": (
        {"rabbitmq_apps": [{**GOOD_APP, "queues": ["celery|.*"]}]},
        "rabbitmq_apps entry demo is invalid"),
    "shared-user": (
        {"rabbitmq_apps": [{**GOOD_APP, "monitor_user": "demo-producer"}]},
        "its own three users"),
    "epmd-port-clash": (
        {"rabbitmq_dist_port": 4369},
        "Ports must be 1-65535 and distinct"),
}


# Every case runs the role's argument spec and preflight only, in one
# ansible-playbook run; the good case shows the probe sees acceptance.
PREFLIGHT = [Case("good-apps-and-passwords", "rabbitmq", BROKER, BASE, None)] + [
    Case(name, "rabbitmq", BROKER, {**BASE, **extra}, message) for name, (extra, message) in sorted(CASES.items())
]


@pytest.fixture(scope="module")
def verdicts() -> dict[str, Verdict]:
    return run_preflight_cases(PREFLIGHT)


@pytest.mark.parametrize("case", PREFLIGHT, ids=lambda c: c.name)
def test_preflight_refuses_bad_input_and_accepts_good(case, verdicts):
    assert_verdict(case, verdicts[case.name])


def _broker_state() -> str:
    return lab(BROKER).check_output(
        "sha256sum /etc/rabbitmq/rabbitmq.conf /etc/rabbitmq/advanced.config 2>/dev/null; "
        "stat -c '%n %Y' /etc/rabbitmq/*; systemctl show -p MainPID --value rabbitmq-server")


def test_bad_input_stops_the_real_play_before_any_change(tmp_path):
    """The role's entry point runs those checks first: the broker's files and process stay as they were."""
    extra, message = CASES["placeholder-password"]
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps({**BASE, **extra}))
    assert_refused_and_unchanged(
        lambda: playbook(REPO / "playbooks" / "broker.yml", "--limit", BROKER, "-e", f"@{vars_file}", timeout=600),
        message, BROKER, _broker_state)
