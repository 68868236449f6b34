"""CA rotation under load: a new CA trusted next to the old one, every certificate re-issued by it, the old one retired.

Runs first on the rotation lab (file order); the signer and TLS rotations after it run on the rotated CA, and
the last test of test_tls_rotation.py shows the kit's regular plays change nothing afterwards. Signed tasks with
known ids flow the whole time; the rotation is run step by step (issue, then trust: stopped after each), its switch
is interrupted half-way (a worker's next signer key path is blocked, so the run fails after the TLS re-issue and
before the signers), and re-run. Afterwards every task ran exactly once and none was rejected; the broker presents a
certificate of the new CA; a client pair of the old CA is refused; every host's bundle holds the new CA only; the
controller's live CA is the new one and the old one is kept aside. Figures: ``ROTATION`` lines (conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
import time

from kit_testlib import PlaybookRun, lab, playbook, quote

from conftest import (
    APP,
    BROKER,
    CA_BUNDLE,
    CLIENT,
    EXPIRY_CHECK,
    FIGURES,
    ROTATE,
    SIGNING,
    STORE,
    WORKER,
    Load,
    fresh_connection,
    main_pid,
    served,
)

HOSTS = (BROKER, WORKER, CLIENT)
STATE = pathlib.Path.home() / ".local/share/celery-kit/molecule-rotation"
CA_DIR, NEXT_DIR = STATE / "ca", STATE / "ca.next"
CLIENT_NAME = f"celery-{APP}-broker-client"
CLIENT_KEY, CLIENT_CERT = f"/etc/ssl/private/{CLIENT_NAME}.key", f"/etc/ssl/certs/{CLIENT_NAME}.pem"
OLD_KEY, OLD_CERT = "/root/ca-rotation-old-client.key", "/root/ca-rotation-old-client.pem"


def rotate(*extra: str) -> tuple[float, PlaybookRun]:
    start = time.monotonic()
    run = playbook(ROTATE, "-e", "rotate_kind=ca", *extra)
    return time.monotonic() - start, run


def fingerprint(pem: str) -> str:
    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    return hashlib.sha256(base64.b64decode(body)).hexdigest()


def bundle_fingerprints(host: str) -> list[str]:
    """The CAs in a host's bundle, in order."""
    text = lab(host).file(CA_BUNDLE).content_string
    blocks = text.split("-----BEGIN CERTIFICATE-----")[1:]
    return [fingerprint("-----BEGIN CERTIFICATE-----" + b.split("-----END CERTIFICATE-----")[0]) for b in blocks]


def controller_ca(directory: pathlib.Path) -> str:
    return fingerprint((directory / "ca.pem").read_text(encoding="ascii"))


def issued_by(host: str, cert: str, ca_pem: str) -> bool:
    """openssl verify on the host against exactly this CA (written to a temporary file there)."""
    h = lab(host)
    h.check_output(f"printf '%s\\n' {quote(ca_pem)} > /tmp/ca-rotation-check.pem")
    return h.run(f"openssl verify -partial_chain -CAfile /tmp/ca-rotation-check.pem -purpose any {quote(cert)}").rc == 0


def test_ca_rotation_refuses_part_of_the_deployment() -> None:
    before = {h: bundle_fingerprints(h) for h in HOSTS}
    run = rotate("--limit", f"{CLIENT},localhost")[1]
    assert run.returncode != 0, run.tail()
    assert run.said("rotate_kind=ca runs on every managed host at once"), run.tail()
    assert {h: bundle_fingerprints(h) for h in HOSTS} == before
    assert not NEXT_DIR.exists(), "nothing was made on the controller"


def test_ca_rotation_under_load_interrupted_and_re_run() -> None:  # noqa: PLR0915 - one rotation, step by step
    old_ca = controller_ca(CA_DIR)
    old_ca_pem = (CA_DIR / "ca.pem").read_text(encoding="ascii")
    assert {h: bundle_fingerprints(h) for h in HOSTS} == {h: [old_ca] for h in HOSTS}
    # An old-CA client pair kept aside (root only): after the retire the broker must refuse it.
    lab(CLIENT).check_output(f"install -m 0600 {CLIENT_KEY} {OLD_KEY} && install -m 0600 {CLIENT_CERT} {OLD_CERT}")
    assert fresh_connection(CLIENT, OLD_CERT, OLD_KEY) == "accepted"
    pid = main_pid()
    load = Load("rot-ca").start()
    load.wait_batches(2)
    began = time.monotonic()

    # Stopped after its first step: the next CA exists on the controller only.
    took_issue, run = rotate("-e", "rotate_stage=issue")
    assert run.returncode == 0, run.tail()
    new_ca = controller_ca(NEXT_DIR)
    new_ca_pem = (NEXT_DIR / "ca.pem").read_text(encoding="ascii")
    assert new_ca != old_ca
    assert (NEXT_DIR / "ca.key").stat().st_mode & 0o777 == 0o600
    assert {h: bundle_fingerprints(h) for h in HOSTS} == {h: [old_ca] for h in HOSTS}
    # The regular plays refuse to run in the middle of a rotation (the pki play's preflight alone: read only).
    converge = playbook(ROTATE.parent / "pki.yml", "--tags", "pki_preflight")
    assert converge.returncode != 0 and converge.said("A CA rotation is in progress"), converge.tail()
    load.wait_batches(1)

    # Stopped after the trust step: every bundle holds both CAs, nothing is issued by the new one yet.
    took_trust, run = rotate("-e", "rotate_stage=trust")
    assert run.returncode == 0, run.tail()
    assert {h: bundle_fingerprints(h) for h in HOSTS} == {h: [old_ca, new_ca] for h in HOSTS}
    assert (NEXT_DIR / "trusted").exists()
    assert issued_by(CLIENT, CLIENT_CERT, old_ca_pem), "nothing issued by the new CA before every host trusts it"
    load.wait_batches(1)

    # The switch interrupted half-way: the worker's next signer key cannot be made (a directory in its place),
    # so the run fails after the TLS certificates were re-issued and before any signer changed.
    blocker = f"{SIGNING}/signer-next.key"
    lab(WORKER).check_output(f"mkdir -p {blocker}")
    took_broken, run = rotate()
    assert run.returncode != 0, run.tail()
    lab(WORKER).check_output(f"rmdir {blocker}")
    for host, cert in ((BROKER, "/etc/ssl/certs/rabbitmq.pem"), (CLIENT, CLIENT_CERT), (WORKER, CLIENT_CERT),
                       (BROKER, f"/etc/ssl/certs/{BROKER}.pem")):
        assert issued_by(host, cert, new_ca_pem), f"{host}:{cert} re-issued before the interruption"
    assert issued_by(CLIENT, f"{SIGNING}/signer.pem", old_ca_pem), "no signer switched yet"
    load.wait_batches(1)  # half-way: both CAs trusted, tasks flow

    took_switch, run = rotate()
    assert run.returncode == 0, run.tail()
    served_cert = served()
    lab(CLIENT).check_output(f"printf '%s\\n' {quote(served_cert)} > /tmp/ca-rotation-served.pem")
    assert issued_by(CLIENT, "/tmp/ca-rotation-served.pem", new_ca_pem), "the broker presents a new-CA certificate"
    for host in (CLIENT, WORKER):
        assert issued_by(host, f"{SIGNING}/signer.pem", new_ca_pem), host
        assert lab(host).file(f"{STORE}/{CLIENT}.previous.pem").exists, "the old signer stays trusted until retire"
    restarted = main_pid() != pid
    load.wait_batches(2)

    took_retire, run = rotate("-e", "rotate_stage=retire", "-e", "rotate_wait=true")
    assert run.returncode == 0, run.tail()
    total = time.monotonic() - began
    sent, ran, rejected = load.stop()

    assert controller_ca(CA_DIR) == new_ca, "the new CA is the live one"
    assert not NEXT_DIR.exists()
    retired = sorted(STATE.glob("ca.retired-*"))
    assert retired and any(controller_ca(d) == old_ca for d in retired), "the old CA is kept aside"
    assert {h: bundle_fingerprints(h) for h in HOSTS} == {h: [new_ca] for h in HOSTS}
    for host in (CLIENT, WORKER):
        assert not lab(host).file(f"{STORE}/{CLIENT}.previous.pem").exists, host
        assert not lab(host).file(f"{SIGNING}/signer-next.pem").exists, host
    # From the outside: the old CA's client pair is refused now, the new pairs are accepted.
    assert fresh_connection(CLIENT, OLD_CERT, OLD_KEY) != "accepted"
    for host in (CLIENT, WORKER):
        assert fresh_connection(host, CLIENT_CERT, CLIENT_KEY) == "accepted", host
    for host in HOSTS:
        out = lab(host).run(EXPIRY_CHECK)
        assert out.rc == 0 and "failed=0" in out.stdout + out.stderr, f"{host}: {out.stdout}{out.stderr}"
    lab(CLIENT).check_output(f"rm -f {OLD_KEY} {OLD_CERT} /tmp/ca-rotation-*.pem")
    FIGURES.append(f"ROTATION ca: sent={sent} run={ran} rejected={rejected} issue={took_issue:.0f}s "
                   f"trust={took_trust:.0f}s switch(interrupted)={took_broken:.0f}s switch(re-run)={took_switch:.0f}s "
                   f"retire(waits the replay window)={took_retire:.0f}s total={total:.0f}s worker_restarted={restarted} "
                   f"old_ca={old_ca[:16]} new_ca={new_ca[:16]}")
