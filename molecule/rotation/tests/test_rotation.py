"""Signer rotation under load: no task lost, none rejected, the old key refused once retired.

Tests run in file order on one lab (the rotation changes it). Every figure the
lead's note needs is a ``ROTATION`` line in the "rotation figures" section of the
test summary (conftest.py): tasks sent / run / rejected and the time each step took.
"""

from __future__ import annotations

import time

import pytest
from kit_testlib import PROJECT, PlaybookRun, lab, playbook, wait_for

from conftest import (
    APP,
    CLIENT,
    EXPIRY_CHECK,
    FIGURES,
    HOME,
    LOAD,
    MANIFEST,
    REJECTED,
    ROTATE,
    SERVICE,
    SIGNING,
    STORE,
    WORKER,
    Load,
    as_app_user,
    main_pid,
    serial,
    stores,
    worker_log,
)

STEP = PROJECT / "molecule" / "rotation" / "files" / "rotate_step.yml"


def rotate(*extra: str) -> tuple[float, PlaybookRun]:
    start = time.monotonic()
    run = playbook(ROTATE, "-e", "rotate_kind=signer", "-e", f"rotate_app={APP}", *extra)
    return time.monotonic() - start, run


@pytest.fixture(scope="module")
def old_signer() -> str:
    """Keep a copy of the producer's current key and config (for the retired-key probe)."""
    c = lab(CLIENT)
    c.check_output(f"rm -rf {HOME}/old && install -d -o celery-{APP} -g celery-{APP} -m 0700 {HOME}/old && "
                   f"cp -p {SIGNING}/signer.key {SIGNING}/signer.pem {HOME}/old/ && "
                   f"sed -e 's#{SIGNING}/signer#{HOME}/old/signer#g' /etc/celery-kit/{APP}/celery_kit_config.py "
                   f"> {HOME}/old/celery_kit_config.py && chown -R celery-{APP}: {HOME}/old")
    return serial(CLIENT, f"{SIGNING}/signer.pem")


def test_signer_rotation_under_load(old_signer: str) -> None:
    pid = main_pid()
    assert stores() == {WORKER: [old_signer], CLIENT: [old_signer]}
    load = Load("rot-signer").start()
    load.wait_batches(2)
    began = time.monotonic()

    # Interrupted after its first step: the new key exists, nothing trusts or uses it yet.
    took_issue, run = rotate("-e", "rotate_stage=issue")
    assert run.returncode == 0, run.tail()
    assert serial(CLIENT, f"{SIGNING}/signer.pem") == old_signer
    assert stores() == {WORKER: [old_signer], CLIENT: [old_signer]}
    load.wait_batches(1)  # every host still works

    # The re-run completes: issue (no change), trust + reload, switch.
    took_switch, run = rotate()
    assert run.returncode == 0, run.tail()
    new = serial(CLIENT, f"{SIGNING}/signer.pem")
    assert new != old_signer
    # Both signers trusted in every store, the producer's own too (its processes load it at start).
    assert stores() == {WORKER: sorted([old_signer, new]), CLIENT: sorted([old_signer, new])}
    assert "security_lib signer store reloaded:" in worker_log()
    # Retire before the replay window has passed: refused, says how long to wait.
    run_early = rotate("-e", "rotate_stage=retire")[1]
    assert run_early.returncode != 0
    assert run_early.said("Re-run the retire step in")
    assert stores() == {WORKER: sorted([old_signer, new]), CLIENT: sorted([old_signer, new])}
    load.wait_batches(2)  # signed with the new key now
    took_retire, run = rotate("-e", "rotate_stage=retire", "-e", "rotate_wait=true")
    assert run.returncode == 0, run.tail()
    # The old certificate left every store; the new one is the producer's, as the pki role issues it
    # (root's certificate), and the next pair is gone from the expiry report's list too: the expiry
    # check reads every file listed (a listed file that is gone is an error at each check).
    assert stores() == {WORKER: [new], CLIENT: [new]}
    c = lab(CLIENT)
    assert c.check_output(f"stat -c '%U:%G %a' {SIGNING}/signer.pem") == "root:root 644"
    assert not c.file(f"{SIGNING}/signer-next.pem").exists and not c.file(f"{SIGNING}/signer-next.key").exists
    assert f"{SIGNING}/signer-next.pem" not in c.file(MANIFEST).content_string
    assert f"{SIGNING}/signer.pem" in c.file(MANIFEST).content_string.splitlines()
    expiry = c.run(EXPIRY_CHECK)
    assert expiry.rc == 0 and "failed=0" in expiry.stdout + expiry.stderr, expiry.stdout + expiry.stderr
    load.wait_batches(2)
    total = time.monotonic() - began
    sent, ran, rejected = load.stop()
    assert main_pid() == pid, "the worker was reloaded, never restarted"
    FIGURES.append(f"ROTATION signer: sent={sent} run={ran} rejected={rejected} "
                   f"issue={took_issue:.0f}s switch={took_switch:.0f}s retire(with wait)={took_retire:.0f}s "
                   f"total={total:.0f}s old_serial={old_signer} new_serial={new}")


def _send_one(pythonpath: str, prefix: str) -> str:
    out = lab(CLIENT).run(as_app_user(pythonpath, LOAD, prefix, "0", "1", "15"))
    return out.stdout + out.stderr


def test_new_key_accepted_and_retired_key_refused(old_signer: str) -> None:
    # Positive twin: the probe's own path, with the current key, runs.
    assert "ok rot-new-0-0" in _send_one(f"/etc/celery-kit/{APP}", "rot-new")
    # The retired key, same probe: refused by the worker, never run.
    assert serial(CLIENT, f"{HOME}/old/signer.pem") == old_signer
    out = _send_one(f"{HOME}/old", "rot-old")
    assert "ok rot-old-0-0" not in out, out
    line = wait_for(lambda: [x for x in worker_log().splitlines() if REJECTED in x and "id=rot-old-0-0" in x], 30)
    assert line and "reason=unknown-signer" in line[0], line
    assert "Task demo.tasks.add[rot-old-0-0] succeeded" not in worker_log()


def test_bad_store_keeps_the_old_one_and_tasks_flow() -> None:
    """A foreign certificate dropped into the store: the reload is refused, nothing else changes."""
    w = lab(WORKER)
    pid = main_pid()
    load = Load("rot-bad").start()
    load.wait_batches(1)
    w.check_output(
        "cd /tmp && openssl req -x509 -newkey rsa:2048 -nodes -keyout f.key -out f.pem -days 1 "
        f"-subj /CN=signer-{APP}-producer 2>/dev/null && install -m 0644 f.pem {STORE}/{CLIENT}.next.pem")
    try:
        run = playbook(STEP, "-e", "rotate_step=switch", "-e", f"rotate_hosts={WORKER}")
        # The switch step moves the foreign file in and reloads: the worker refuses it.
        assert run.returncode != 0, run.tail()
        assert run.said("refused the new signer store and keeps the old one"), run.tail()
        assert "security_lib signer store reload refused:" in worker_log()
        load.wait_batches(2)
    finally:
        # Put the store back as it was (the test made the bad file, the test removes it).
        w.check_output(f"if [ -e {STORE}/{CLIENT}.previous.pem ]; then "
                       f"mv -T {STORE}/{CLIENT}.previous.pem {STORE}/{CLIENT}.pem; fi; "
                       f"rm -f {STORE}/{CLIENT}.next.pem; systemctl reload {SERVICE}")
    sent, ran, rejected = load.stop()
    assert main_pid() == pid
    FIGURES.append(f"ROTATION bad-store: sent={sent} run={ran} rejected={rejected} (old store kept)")


def test_trust_refuses_a_certificate_from_another_ca_before_any_change() -> None:
    c, w = lab(CLIENT), lab(WORKER)
    c.check_output(
        f"cd /tmp && openssl req -x509 -newkey ed25519 -nodes -keyout n.key -out n.pem -days 1 "
        f"-subj /CN=signer-{APP}-producer 2>/dev/null && install -m 0644 n.pem {SIGNING}/signer-next.pem")
    before = w.check_output(f"sha256sum {STORE}/*")
    try:
        run = playbook(STEP, "-e", "rotate_step=trust", "-e", f"rotate_hosts={WORKER}")
        assert run.returncode != 0, run.tail()
        assert run.said("was not issued by the deployment CA"), run.tail()
        assert run.said("nothing changed"), run.tail()
        assert w.check_output(f"sha256sum {STORE}/*") == before
    finally:
        c.check_output(f"rm -f {SIGNING}/signer-next.pem")
