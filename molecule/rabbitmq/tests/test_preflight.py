"""Bad input is refused by the role's preflight with a clear message, and
nothing on the broker changes (the play stops before the first change)."""

import json
import os
import pathlib
import re
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
GOOD_APP = {"name": "demo", "vhost": "/demo", "producer_user": "demo-producer",
            "worker_user": "demo-worker", "monitor_user": "demo-monitor", "queues": ["celery"]}
STRONG = "Xq7Lr2Vn9Tz4Wk1Pb6Hc3Md8"
GOOD_PASSWORDS = {"demo-producer": STRONG, "demo-worker": STRONG + "w", "demo-monitor": STRONG + "m"}

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


@pytest.mark.parametrize("case", sorted(CASES))
def test_preflight_refuses_bad_input_and_changes_nothing(case, tmp_path):
    extra, message = CASES[case]
    variables = {"rabbitmq_apps": [GOOD_APP], "rabbitmq_passwords": GOOD_PASSWORDS, **extra}
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(variables))
    # molecule exports ANSIBLE_FORCE_COLOR; colour codes would split the recap.
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_STDOUT_CALLBACK="default")
    cfg = pathlib.Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "ansible.cfg"
    if cfg.exists():
        env["ANSIBLE_CONFIG"] = str(cfg)
    run = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", "rmq-broker",
         "-e", f"@{vars_file}", str(REPO / "playbooks" / "broker.yml")],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    out = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)
    assert run.returncode != 0, out
    messages = (message,) if isinstance(message, str) else message
    flat = re.sub(r"\s+", " ", out)
    assert any(re.sub(r"\s+", " ", m) in flat for m in messages), out
    recap = re.search(r"rmq-broker\s*:\s*ok=\d+\s+changed=(\d+)", out)
    assert recap and recap.group(1) == "0", out
