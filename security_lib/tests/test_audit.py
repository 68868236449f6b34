"""The audit CLI: a table (or JSON) of checks, exit status 1 on any failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PKI, write_private

SRC = Path(__file__).resolve().parents[1] / "src"

APP_MODULE = """
from celery import Celery
import security_lib

app = Celery("audited", broker={broker!r}, set_as_current=False)
security_lib.harden(
    app,
    key={key!r},
    cert={cert!r},
    cert_store={store!r},
    broker_ca={ca!r},
    broker_cert={bcert!r},
    broker_key={bkey!r},
    allowed_tasks={allowed},
    allow_insecure_broker={insecure!r},
)
"""


def write_app(tmp_path: Path, pki: PKI, **overrides: object) -> str:
    values: dict[str, object] = {
        "broker": "amqps://kit-broker:5671/kit",
        "key": str(pki.worker.key),
        "cert": str(pki.worker.cert),
        "store": str(pki.store),
        "ca": str(pki.ca.pem),
        "bcert": str(pki.client.cert),
        "bkey": str(pki.client.key),
        "allowed": '{"signer-client": ["proj.*"]}',
        "insecure": False,
    }
    values.update(overrides)
    name = f"auditapp_{abs(hash(tuple(sorted(map(str, values.items()))))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(APP_MODULE.format(**values))
    return name


def run_audit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{tmp_path}"}
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "security_lib", "audit", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_passes_on_a_hardened_app(tmp_path: Path, pki: PKI) -> None:
    name = write_app(tmp_path, pki)
    proc = run_audit(tmp_path, "--app", f"{name}:app")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in ("serializers", "signing", "broker TLS", "file modes", "expiry", "allowlist"):
        assert check in proc.stdout
    assert "FAIL" not in proc.stdout


def test_audit_json_reports_insecure_broker(tmp_path: Path, pki: PKI) -> None:
    name = write_app(
        tmp_path, pki, broker="memory://", ca=None, bcert=None, bkey=None, insecure=True
    )
    proc = run_audit(tmp_path, "--app", f"{name}:app", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["broker TLS"] == "FAIL"
    assert status["serializers"] == "PASS"


def test_audit_reports_a_refused_configuration(tmp_path: Path, pki: PKI) -> None:
    loose = write_private(tmp_path / "loose.key", pki.worker.key.read_bytes(), 0o644)
    name = write_app(tmp_path, pki, key=str(loose))
    proc = run_audit(tmp_path, "--app", f"{name}:app")
    assert proc.returncode == 1
    assert "chmod 0600" in proc.stdout


def test_audit_warns_on_allow_any_signer(tmp_path: Path, pki: PKI) -> None:
    name = write_app(tmp_path, pki, allowed="security_lib.ALLOW_ANY_SIGNER")
    proc = run_audit(tmp_path, "--app", f"{name}:app", "--json")
    assert proc.returncode == 0  # a warning, not a failure
    status = {c["name"]: c["status"] for c in json.loads(proc.stdout)["checks"]}
    assert status["allowlist"] == "WARN"


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        ('{"signer-client": ["proj.add"], "signer-worker": ["celery.*"]}', "WARN"),
        ('{"signer-client": ["proj.*"], "signer-worker": ["proj.add"]}', "PASS"),
        ('{"signer-client": ["proj.add"], "signer-worker": []}', "PASS"),
    ],
)
def test_audit_warns_on_a_worker_signer_wildcard(
    tmp_path: Path, pki: PKI, allowed: str, expected: str
) -> None:
    """The worker's signer (this process's own, a follow-up signer) needs [] or exact names."""
    name = write_app(tmp_path, pki, allowed=allowed)
    proc = run_audit(tmp_path, "--app", f"{name}:app", "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["allowlist"]["status"] == expected, checks["allowlist"]
    if expected == "WARN":
        assert "signer-worker: celery.*" in checks["allowlist"]["detail"]


def test_audit_usage_errors(tmp_path: Path) -> None:
    assert run_audit(tmp_path, "--app", "no_such_module:app").returncode == 2
    assert run_audit(tmp_path).returncode == 2


@pytest.mark.parametrize("argv", [["--help"]])
def test_console_entry_point_parses(argv: list[str]) -> None:
    from security_lib.audit import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0


def test_audit_fails_a_broker_url_override_from_the_environment(tmp_path: Path, pki: PKI) -> None:
    """CELERY_BROKER_URL wins over the app's broker_url after harden(): the audit sees it."""
    name = write_app(tmp_path, pki)
    assert run_audit(tmp_path, "--app", f"{name}:app").returncode == 0  # the positive twin
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{tmp_path}"}
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "security_lib", "audit", "--app", f"{name}:app"],
        cwd=tmp_path,
        env={**env, "CELERY_BROKER_URL": "memory://"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "transport 'memory'" in done.stdout


def test_worker_refuses_to_start_with_a_broker_override(tmp_path: Path, pki: PKI) -> None:
    """`celery -b memory://` after harden(): the real worker stops before it consumes."""
    name = write_app(tmp_path, pki)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{tmp_path}"}
    command = [sys.executable, "-m", "celery", "-A", f"{name}:app"]
    worker = ["worker", "-P", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [*command, "-b", "memory://", *worker],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode != 0
    assert "transport 'memory'" in done.stdout + done.stderr
    assert "security_lib gate active" not in done.stdout + done.stderr
