"""The app hosts as a reviewer inspects them: user, files, venv, unit sandbox."""

from __future__ import annotations

import re

import pytest

from conftest import APP, SERVICE, as_app_user, get_host

APP_HOSTS = ["kit-worker", "kit-client"]


@pytest.fixture(params=APP_HOSTS)
def app_host(request):
    return request.param, get_host(request.param)


def test_app_user_is_an_unprivileged_system_account(app_host):
    _, host = app_host
    user = host.user("celery-demo")
    assert user.exists
    assert 0 < user.uid < 1000
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == "/var/lib/celery-kit/demo"
    assert user.group == "celery-demo"
    assert "sudo" not in user.groups


@pytest.mark.parametrize(
    "path",
    [
        "/etc/ssl/private/celery-demo-broker-client.key",
        "/etc/celery-kit/demo/signing/signer.key",
    ],
)
def test_private_keys_belong_to_the_app_user_only(app_host, path):
    _, host = app_host
    key = host.file(path)
    assert (key.user, key.group, key.mode) == ("celery-demo", "celery-demo", 0o600)


def test_certificates_have_the_contract_names(app_host):
    name, host = app_host
    producer = name == "kit-client"
    broker_cn = host.check_output(
        "openssl x509 -noout -subject -nameopt RFC2253 -in /etc/ssl/certs/celery-demo-broker-client.pem"
    )
    signer = host.check_output(
        "openssl x509 -noout -subject -ext extendedKeyUsage -nameopt RFC2253 -in /etc/celery-kit/demo/signing/signer.pem"
    )
    assert f"CN={APP}-{'producer' if producer else 'worker'}" in broker_cn
    assert f"CN=signer-{APP}-{'producer' if producer else 'worker'}" in signer
    assert "Code Signing" in signer


def test_signing_key_is_the_default_ed25519_and_the_broker_key_rsa(app_host):
    """celery_app_signing_key_type defaults to ed25519; the broker TLS client key stays RSA."""
    _, host = app_host
    signer = host.check_output("openssl x509 -noout -text -in /etc/celery-kit/demo/signing/signer.pem")
    broker = host.check_output("openssl x509 -noout -text -in /etc/ssl/certs/celery-demo-broker-client.pem")
    assert "Public Key Algorithm: ED25519" in signer, signer
    assert "Public Key Algorithm: rsaEncryption" in broker, broker


def test_config_module_and_secret_are_readable_by_the_app_group_only(app_host):
    _, host = app_host
    for path in ("/etc/celery-kit/demo/celery_kit_config.py", "/etc/celery-kit/demo/broker.secret"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "celery-demo", 0o640), path
    config = host.file("/etc/celery-kit/demo/celery_kit_config.py").content_string
    assert "security_lib.harden(" in config
    # The password is read from the secret file, never written into the module.
    secret = host.file("/etc/celery-kit/demo/broker.secret").content_string.strip()
    assert secret and secret not in config


def test_signer_store_holds_exactly_the_inventory_signers(app_host):
    _, host = app_host
    store = host.file("/etc/celery-kit/demo/signers")
    assert (store.user, store.group, store.mode) == ("root", "celery-demo", 0o750)
    assert sorted(store.listdir()) == ["kit-client.pem", "kit-worker.pem"]
    subjects = host.check_output(
        "for f in /etc/celery-kit/demo/signers/*.pem; do openssl x509 -noout -subject -nameopt RFC2253 -in $f; done"
    )
    assert sorted(re.findall(r"CN=(\S+)", subjects)) == [f"signer-{APP}-producer", f"signer-{APP}-worker"]


def test_venv_is_root_owned_and_not_writable_by_the_app(app_host):
    _, host = app_host
    venv = f"/opt/celery-kit/{APP}/venv"
    assert host.file(venv).user == "root"
    foreign = host.check_output("find /opt/celery-kit ! -user root -print -quit")
    assert foreign == ""
    writable = host.run(f"runuser -u celery-demo -- find {venv} -writable -print -quit")
    assert writable.stdout.strip() == ""
    freeze = host.check_output(f"{venv}/bin/pip freeze --all")
    assert "celery==5.7.0" in freeze
    assert "celery-kit-security-lib==" in freeze


def test_the_audit_cli_passes_as_the_app_user(app_host):
    _, host = app_host
    result = as_app_user(host, "-m", "security_lib", "audit", "--app", "demo.app:app")
    print(result.stdout)
    assert result.rc == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def test_worker_runs_as_its_own_user_not_root(worker):
    service = worker.service(SERVICE)
    assert service.is_running, worker.run(f"journalctl -u {SERVICE} --no-pager -n 50").stdout
    assert service.is_enabled
    pid = worker.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    assert pid != "0"
    children = worker.check_output(f"cat /proc/{pid}/task/*/children").split()
    assert children, "the prefork pool has no child processes"
    users = {worker.check_output(f"stat -c %U /proc/{p}") for p in [pid, *children]}
    assert users == {"celery-demo"}, users
    status = worker.check_output(f"grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/{pid}/status")
    print(status)
    assert re.search(r"CapEff:\s+0+$", status, re.M)
    assert re.search(r"CapBnd:\s+0+$", status, re.M)
    assert re.search(r"NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"Seccomp:\s+2$", status, re.M)


def test_worker_unit_exposure_is_reported_and_low(worker):
    result = worker.run(f"systemd-analyze security --no-pager {SERVICE}")
    print(result.stdout)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure of {SERVICE}: {exposure}")
    assert exposure <= 3.0


def test_worker_cannot_write_its_code_or_config(worker):
    pid = worker.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    # Enter the worker's mount namespace as the worker's user: what a task could do.
    # Positive twin: the same probe writes into the worker's home (its only
    # writable place), so a refusal below is the sandbox's, not the probe's.
    home = f"/var/lib/celery-kit/{APP}/probe-{pid}"
    assert worker.run(f"nsenter -t {pid} -m -- runuser -u celery-demo -- touch {home}").rc == 0
    worker.check_output(f"rm -f {home}")
    for path in (f"/opt/celery-kit/{APP}/venv/x", "/etc/celery-kit/demo/x", "/usr/local/bin/x"):
        result = worker.run(f"nsenter -t {pid} -m -- runuser -u celery-demo -- touch {path}")
        assert result.rc != 0, path
        assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr


def test_a_weak_key_mode_refuses_to_start_the_worker(worker):
    """Fail closed: when harden() raises, ExecStartPre (the audit) stops the start.

    The worker sees a world-readable copy of its key, bound over the real one in
    its own mount namespace by a runtime drop-in: the real key's inode is never
    touched, so AIDE has nothing to report afterwards (a chmod and back moves
    its ctime, and the next site.yml run would rightly stop on that drift).
    """
    key = "/etc/celery-kit/demo/signing/signer.key"
    weak = "/run/celery-kit-test-weak-signer.key"
    dropin = f"/run/systemd/system/{SERVICE}.d/zz-test-weak-key.conf"
    worker.check_output(f"install -m 0644 {key} {weak}")
    worker.check_output(
        f"install -d /run/systemd/system/{SERVICE}.d && "
        f"printf '[Service]\\nBindReadOnlyPaths={weak}:{key}\\n' > {dropin} && systemctl daemon-reload")
    try:
        result = worker.run(f"systemctl restart {SERVICE}")
        assert result.rc != 0
        assert not worker.service(SERVICE).is_running
        log = worker.check_output(f"journalctl -u {SERVICE} --no-pager -n 80 -o cat")
        assert "signer.key" in log, log
    finally:
        worker.check_output(f"rm -f {dropin} {weak} && systemctl daemon-reload")
        worker.run(f"systemctl reset-failed {SERVICE}")
        worker.check_output(f"systemctl restart {SERVICE}")
    # The positive twin: the same unit with the real key starts.
    assert worker.service(SERVICE).is_running
    assert worker.check_output(f"stat -c %a {key}") == "600"
